"""Lottery-ticket rewinding: a train run keeps its early weights and a retrain run goes back."""

from __future__ import annotations

import pytest
import torch

from app import zoo
from app.catalogue import REWIND_FILES
from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe, ScheduleSpec
from app.pruning.targets import choose_rewind

torch.set_num_threads(1)
TRAIN = {"kind": "train", "name": "t", "finetune": {"epochs": 3, "lr": 0.003, "optimizer": "adam"}}


def _retrain(epochs: int, **schedule: object) -> Recipe:
    return Recipe.from_dict(
        {
            "kind": "prune",
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.8},
            "schedule": {"kind": "retrain", **schedule},
            "finetune": {"epochs": epochs, "lr": 0.003, "optimizer": "adam"},
        }
    )


def test_a_train_run_keeps_its_initial_and_first_epoch_weights() -> None:
    torch.manual_seed(0)
    model = zoo.build("mlp")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_recipe(Recipe.from_dict(TRAIN), model, load_digits(), latency=False)
    assert set(result.rewind) == set(REWIND_FILES) == {"init", "early"}
    for name, weight in init.items():
        assert torch.equal(result.rewind["init"][name], weight)
    early, final = result.rewind["early"]["fc1.weight"], model.state_dict()["fc1.weight"]
    assert not torch.equal(early, init["fc1.weight"]) and not torch.equal(early, final)


def test_retrain_rewind_without_earlier_weights_is_refused_saying_what_to_use() -> None:
    with pytest.raises(ValueError, match='"retrain_init": "reinit", or train the model here'):
        run_recipe(_retrain(1), zoo.build("mlp"), load_digits(), latency=False)


def test_retrain_rewind_restores_the_early_weights_under_the_mask() -> None:
    torch.manual_seed(0)
    model = zoo.build("mlp")
    trained = run_recipe(Recipe.from_dict(TRAIN), model, load_digits(), latency=False)
    early = trained.rewind["early"]
    result = run_recipe(_retrain(0), model, load_digits(), latency=False, initial_state=early)
    got = result.model.state_dict()
    mask = result.masks["fc1"]
    assert torch.equal(got["fc1.weight"], early["fc1.weight"] * mask)
    assert torch.equal(got["fc2.bias"], early["fc2.bias"])
    assert result.final["sparsity"] == pytest.approx(0.8, abs=0.01)


def test_rewind_point_defaults_to_early_and_names_what_is_missing() -> None:
    assert choose_rewind(ScheduleSpec(kind="retrain"), {"init"}) == "init"
    with pytest.raises(ValueError, match="stored only init"):
        choose_rewind(ScheduleSpec(kind="retrain", rewind_from="early"), {"init"})
    with pytest.raises(ValueError, match="schedule.rewind_from"):
        ScheduleSpec(kind="retrain", rewind_from="late")
