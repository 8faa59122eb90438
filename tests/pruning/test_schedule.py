"""Schedules: per-step targets, and every schedule kind reaching its target sparsity."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch

from app import zoo
from app.intake.datasets import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.schedule import agp_update_iterations
from app.pruning.spec import FinetuneSpec, Recipe, ScheduleSpec
from app.pruning.targets import agp_sparsity, within_drop
from app.pruning.targets import schedule_targets as targets
from app.pruning.train import train

torch.set_num_threads(1)
FAST = {"epochs": 1, "lr": 0.003, "optimizer": "adam", "batch_size": 64}


@lru_cache(maxsize=1)
def _trained_state() -> dict:
    torch.manual_seed(0)
    model = zoo.build("mlp")
    train(model, load_digits(), FinetuneSpec(epochs=5, lr=0.003, optimizer="adam", batch_size=64))
    return copy.deepcopy(model.state_dict())


def trained_mlp() -> torch.nn.Module:
    model = zoo.build("mlp")
    model.load_state_dict(_trained_state())
    return model


def test_iterative_targets_are_geometric_in_the_kept_fraction() -> None:
    got = targets(ScheduleSpec(kind="iterative", steps=3), 0.875)
    assert got == pytest.approx([0.5, 0.75, 0.875])
    kept = [1 - s for s in [0.0, *got]]
    ratios = [b / a for a, b in zip(kept, kept[1:], strict=False)]
    assert ratios == pytest.approx([0.5, 0.5, 0.5])


def test_agp_targets_follow_the_cubic_ramp() -> None:
    got = targets(ScheduleSpec(kind="agp", steps=4), 0.9)
    assert got == pytest.approx([0.9 * (1 - (1 - k / 4) ** 3) for k in range(1, 5)])
    assert got[-1] == pytest.approx(0.9)
    gains = [b - a for a, b in zip([0.0, *got], got, strict=False)]
    assert gains == sorted(gains, reverse=True)  # prunes fast early, slowly late
    assert agp_sparsity(0, 4, 0.9, initial=0.2) == pytest.approx(0.2)


@pytest.mark.parametrize("kind", ["oneshot", "at_init", "retrain"])
def test_single_shot_schedules_have_one_target(kind: str) -> None:
    assert targets(ScheduleSpec(kind=kind, steps=3), 0.7) == [0.7]


def test_agp_updates_spread_over_the_first_three_quarters() -> None:
    its = agp_update_iterations(4, 100)
    assert its == [0, 18, 37, 56]
    assert agp_update_iterations(5, 2)[-1] <= 1


def test_targets_reject_an_impossible_sparsity() -> None:
    with pytest.raises(ValueError, match="pruning.sparsity"):
        targets(ScheduleSpec(kind="iterative", steps=2), 1.0)


def test_within_drop_is_absolute_accuracy() -> None:
    assert within_drop(0.95, 0.94, 0.01)
    assert not within_drop(0.95, 0.93, 0.01)
    assert within_drop(0.95, 0.10, None)


def _recipe(kind: str, steps: int, sparsity: float = 0.8, **pruning: object) -> Recipe:
    body = {"granularity": "element", "criterion": "l1", "sparsity": sparsity, **pruning}
    return Recipe.from_dict(
        {
            "kind": "prune",
            "name": kind,
            "pruning": body,
            "schedule": {"kind": kind, "steps": steps},
            "finetune": FAST,
        }
    )


@pytest.mark.parametrize(
    ("kind", "steps", "criterion"),
    [
        ("oneshot", 1, "l1"),
        ("iterative", 3, "l1"),
        ("agp", 4, "l1"),
        ("at_init", 1, "snip"),
        ("retrain", 1, "l1"),
    ],
)
def test_every_schedule_reaches_its_target_sparsity(kind: str, steps: int, criterion: str) -> None:
    result = run_recipe(
        _recipe(kind, steps, criterion=criterion), trained_mlp(), load_digits(), latency=False
    )
    assert [s["step"] for s in result.steps] == list(range(steps + 1))
    assert result.final["sparsity"] == pytest.approx(0.8, abs=0.01)
    achieved = [s["after_finetune"]["sparsity"] for s in result.steps]
    assert achieved == sorted(achieved)  # never un-prunes
    assert result.final["compression"] == pytest.approx(1 / (1 - 0.8), rel=0.05)
    for name, module in result.model.named_modules():
        if name in result.masks:
            assert (module.weight[~result.masks[name]] == 0).all()


def test_iterative_steps_record_each_geometric_target() -> None:
    result = run_recipe(
        _recipe("iterative", 2, sparsity=0.75), trained_mlp(), load_digits(), latency=False
    )
    got = [(s["target_sparsity"], s["after_finetune"]["sparsity"]) for s in result.steps[1:]]
    assert got[0] == (pytest.approx(0.5), pytest.approx(0.5, abs=0.01))
    assert got[1] == (pytest.approx(0.75), pytest.approx(0.75, abs=0.01))


def test_at_init_trains_from_a_fresh_initialisation() -> None:
    result = run_recipe(
        _recipe("at_init", 1, criterion="snip"), trained_mlp(), load_digits(), latency=False
    )
    step = result.steps[1]
    assert step["before_finetune"]["accuracy"] < 0.3  # re-initialised: near chance
    assert step["after_finetune"]["accuracy"] > step["before_finetune"]["accuracy"] + 0.2


def test_retrain_reinit_starts_from_new_weights() -> None:
    recipe = _recipe("retrain", 1)
    recipe = Recipe.from_dict(
        {**recipe.to_dict(), "schedule": {"kind": "retrain", "retrain_init": "reinit"}}
    )
    result = run_recipe(recipe, trained_mlp(), load_digits(), latency=False)
    assert result.steps[1]["before_finetune"]["accuracy"] < 0.3
    assert result.final["sparsity"] == pytest.approx(0.8, abs=0.01)


def test_max_accuracy_drop_stops_at_the_deepest_step_within_the_drop() -> None:
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "stop",
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.99},
            "schedule": {"kind": "iterative", "steps": 4, "max_accuracy_drop": 0.05},
            "finetune": {**FAST, "epochs": 0},
        }
    )
    result = run_recipe(recipe, trained_mlp(), load_digits(), latency=False)
    assert len(result.steps) < 5  # stopped before the last step
    base = result.baseline["accuracy"]
    kept = [s for s in result.steps if base - s["after_finetune"]["accuracy"] <= 0.05]
    assert kept[-1]["step"] >= 1  # at least one pruning step was within the drop
    assert result.final["accuracy"] == pytest.approx(kept[-1]["after_finetune"]["accuracy"])
    assert result.final["sparsity"] == pytest.approx(kept[-1]["after_finetune"]["sparsity"])
    assert any("max_accuracy_drop" in note["text"] for note in result.notes)
