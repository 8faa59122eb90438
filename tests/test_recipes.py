"""The reference recipes in recipes/: they load, and the cheap ones land in their expected bands."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec
from app.pruning.train import train
from app.runs.inputs import load_recipe

torch.set_num_threads(1)
RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.json"))
CHEAP = [
    "mlp_iterative_magnitude",
    "mlp_iterative_random",
    "cnn_small_l1_filter_physical",
    "mlp_snip_at_init",
    "mlp_agp_best_20x",
    "mlp_oneshot_2to4_sparsegpt",
]


def expected(path: Path) -> dict:
    return json.loads(path.read_text())["expected"]


@lru_cache(maxsize=4)
def _pretrained(arch: str, pretrain: str) -> dict:
    torch.manual_seed(0)
    model = zoo.build(arch)
    train(model, load_digits(), FinetuneSpec(**json.loads(pretrain)))
    return copy.deepcopy(model.state_dict())


def run_reference(name: str):
    path = next(p for p in RECIPES if p.stem == name)
    exp = expected(path)
    model = zoo.build(exp["arch"])
    model.load_state_dict(_pretrained(exp["arch"], json.dumps(exp["pretrain"], sort_keys=True)))
    return run_recipe(load_recipe(path), model, load_digits(), latency=False), exp


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_reference_recipe_loads_and_names_its_expectations(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    exp = expected(path)
    assert exp["arch"] in zoo.ARCHITECTURES and exp["data"] == "digits"
    assert "accuracy_drop_max" in exp


@pytest.mark.slow
@pytest.mark.parametrize("name", CHEAP)
def test_cheap_reference_recipes_land_in_their_bands(name: str) -> None:
    result, exp = run_reference(name)
    drop = result.baseline["accuracy"] - result.final["accuracy"]
    assert drop <= exp["accuracy_drop_max"], f"{name}: accuracy dropped {drop:.4f}"
    if "sparsity" in exp:
        lo, hi = exp["sparsity"]
        assert lo <= result.steps[-1]["after_finetune"]["sparsity"] <= hi
    if "compression_min" in exp:
        assert result.final["compression"] >= exp["compression_min"]
    if "flops_reduction_min" in exp:
        assert result.baseline["flops"] / result.final["flops"] >= exp["flops_reduction_min"]
    if exp.get("physical"):
        assert result.physical


@pytest.mark.slow
def test_magnitude_beats_its_random_baseline() -> None:
    magnitude, _ = run_reference("mlp_iterative_magnitude")
    random, _ = run_reference("mlp_iterative_random")
    assert magnitude.final["accuracy"] > random.final["accuracy"]


@pytest.mark.slow
def test_sparsegpt_beats_magnitude_one_shot_at_2_4() -> None:
    magnitude, _ = run_reference("mlp_oneshot_2to4_l1")
    sparsegpt, _ = run_reference("mlp_oneshot_2to4_sparsegpt")
    assert sparsegpt.final["accuracy"] > magnitude.final["accuracy"]
    assert sparsegpt.final["loss"] < magnitude.final["loss"]
