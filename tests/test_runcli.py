"""`prunelab run`: a recipe file, a model file and digits in; every result file out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app import zoo
from app.intake.datasets import load_digits
from app.pruning.spec import FinetuneSpec
from app.pruning.train import train
from app.runs.cli import parse_shape, run_command
from app.runs.inputs import load_recipe

torch.set_num_threads(1)
RECIPE = {
    "kind": "prune",
    "name": "cli filter",
    "expected": {"note": "ignored by the loader"},
    "pruning": {
        "granularity": "filter",
        "criterion": "l1",
        "scope": "layerwise",
        "sparsity": 0.5,
        "physical": True,
        "exclude": ["classifier"],
    },
    "schedule": {"kind": "oneshot"},
    "finetune": {"epochs": 1, "lr": 0.02, "optimizer": "sgd", "batch_size": 64},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = zoo.build("cnn_small")
    train(model, load_digits(), FinetuneSpec(epochs=2, lr=0.05, batch_size=64))
    path = tmp_path_factory.mktemp("m") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_run_command_writes_summary_histograms_curve_and_artifacts(tmp_path, weights) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    summary = run_command(recipe, weights, "digits", out, arch="cnn_small", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "summary.json",
        "histograms.json",
        "curve.json",
        "pruned.pt",
        "pruned.onnx",
        "pruned.safetensors",
        "recipe.json",
    } <= names
    body = json.loads((out / "summary.json").read_text())
    assert body == json.loads(json.dumps(summary))
    assert {
        "name",
        "kind",
        "status",
        "recipe",
        "baseline",
        "final",
        "steps",
        "layers",
        "notes",
    } <= set(body)
    assert body["status"] == "succeeded" and body["physical"] is True
    assert body["final"]["n_params"] < body["baseline"]["n_params"]
    assert body["recipe"]["pruning"]["granularity"] == "filter"
    assert json.loads((out / "curve.json").read_text())[0]["epoch"] == 1
    assert {h["phase"] for h in json.loads((out / "histograms.json").read_text())} == {
        "before",
        "after_prune",
        "after_finetune",
    }
    assert {a["name"] for a in body["artifacts"]} >= {
        "pruned.pt",
        "pruned.onnx",
        "pruned.safetensors",
    }


def test_yaml_recipes_load_like_json(tmp_path) -> None:
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert load_recipe(path).pruning.sparsity == 0.5


def test_bad_recipe_field_is_a_value_error_naming_it(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**RECIPE, "schedule": {"kind": "sometimes"}}))
    with pytest.raises(ValueError, match="schedule.kind"):
        load_recipe(path)


def test_input_shape_drops_a_leading_batch_of_one() -> None:
    assert parse_shape("1,1,8,8") == (1, 8, 8)
    assert parse_shape("3,32,32") == (3, 32, 32)
    with pytest.raises(ValueError, match="--input-shape"):
        parse_shape("a,b")


@pytest.mark.slow
def test_prunelab_run_from_the_command_line(tmp_path, weights) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            str(recipe),
            "--model",
            str(weights),
            "--data",
            "digits",
            "--out",
            str(out),
            "--arch",
            "cnn_small",
            "--input-shape",
            "1,1,8,8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compression" in proc.stdout
    assert (out / "summary.json").exists() and (out / "pruned.onnx").exists()
