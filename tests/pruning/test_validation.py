"""Choices are made on a validation split carved from the training data; test is only reported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.measure import evaluate
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import fine_tune
from app.pruning.validation import VAL_FRACTION, carve_validation
from tests.pruning.test_schedule import FAST, trained_mlp

torch.set_num_threads(1)


def test_the_validation_split_is_stratified_seeded_and_leaves_the_test_split_alone() -> None:
    data = load_digits()
    part = carve_validation(data, seed=3)
    assert part.n_train + len(part.y_val) == data.n_train
    assert len(part.y_val) == pytest.approx(VAL_FRACTION * data.n_train, abs=data.n_classes)
    counts = np.bincount(part.y_val, minlength=data.n_classes)
    assert counts.min() >= 0.8 * counts.max()  # every class, in proportion
    assert np.array_equal(part.x_test, data.x_test)
    assert np.array_equal(carve_validation(data, seed=3).y_val, part.y_val)
    train_rows = {r.tobytes() for r in part.x_train}
    assert not any(r.tobytes() in train_rows for r in part.x_val)


def test_max_accuracy_drop_chooses_on_validation_and_reports_both() -> None:
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.99},
            "schedule": {"kind": "iterative", "steps": 4, "max_accuracy_drop": 0.05},
            "finetune": {**FAST, "epochs": 0},
        }
    )
    result = run_recipe(recipe, trained_mlp(), load_digits(), latency=False)
    for step in result.steps:
        assert {"accuracy", "val_accuracy"} <= set(step["after_finetune"])
    assert {"accuracy", "val_accuracy"} <= set(result.final)
    base = result.baseline["val_accuracy"]
    kept = [s for s in result.steps if base - s["after_finetune"]["val_accuracy"] <= 0.05]
    assert result.final["val_accuracy"] == pytest.approx(kept[-1]["after_finetune"]["val_accuracy"])
    assert result.final["sparsity"] == pytest.approx(kept[-1]["after_finetune"]["sparsity"])
    assert any(
        "validation accuracy, more than max_accuracy_drop" in n["text"] for n in result.notes
    )
    assert "choices made on a validation split" in result.notes[0]["text"]
    assert "seed 0" in result.notes[0]["text"] and "test split" in result.notes[0]["text"]


def test_early_stopping_keeps_the_best_validation_epoch() -> None:
    torch.manual_seed(0)
    model = zoo.build("mlp")
    data = carve_validation(load_digits(), seed=0)
    spec = FinetuneSpec(
        epochs=30, lr=2.0, optimizer="sgd", lr_schedule="constant", early_stop_patience=2
    )
    curve = fine_tune(model, data, spec)
    assert all("val_accuracy" in p and "accuracy" in p for p in curve)
    best = max(p["val_accuracy"] for p in curve)
    assert evaluate(model, data, split="val")["accuracy"] == pytest.approx(best)


def test_a_sensitivity_sweep_measures_on_validation_data() -> None:
    recipe = Recipe.from_dict(
        {"kind": "sensitivity", "sensitivity": {"sparsities": [0.5], "target": 0.5}}
    )
    result = run_recipe(recipe, trained_mlp(), load_digits(), latency=False)
    assert "val_accuracy" in result.baseline
    assert "choices made on a validation split" in result.notes[0]["text"]
    assert result.allocation


def test_a_run_that_chooses_nothing_trains_on_all_the_training_data() -> None:
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5},
            "finetune": {**FAST, "epochs": 0},
        }
    )
    result = run_recipe(recipe, trained_mlp(), load_digits(), latency=False)
    assert "val_accuracy" not in result.final
    assert not any("validation split" in n["text"] for n in result.notes)
