"""run_recipe end to end on digits: records, structure, BN re-estimation, cancel and resume."""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.checkpoint import CHECKPOINT
from app.pruning.pipeline import run_recipe
from app.pruning.report import Cancelled
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import train

torch.set_num_threads(1)
FAST = {"epochs": 1, "lr": 0.003, "optimizer": "adam", "batch_size": 64}


@lru_cache(maxsize=2)
def _trained(arch: str) -> dict:
    torch.manual_seed(0)
    model = zoo.build(arch)
    spec = FinetuneSpec(
        epochs=4,
        lr=0.003 if arch == "mlp" else 0.05,
        optimizer="adam" if arch == "mlp" else "sgd",
        batch_size=64,
    )
    train(model, load_digits(), spec)
    return copy.deepcopy(model.state_dict())


def trained(arch: str) -> torch.nn.Module:
    model = zoo.build(arch)
    model.load_state_dict(_trained(arch))
    return model


def recipe(
    pruning: dict, schedule: dict | None = None, finetune: dict | None = None, kind: str = "prune"
) -> Recipe:
    return Recipe.from_dict(
        {
            "kind": kind,
            "name": "t",
            "pruning": pruning,
            "schedule": schedule or {"kind": "oneshot"},
            "finetune": finetune or FAST,
        }
    )


ELEMENT = {"granularity": "element", "criterion": "l1", "sparsity": 0.8}
FILTER = {
    "granularity": "filter",
    "criterion": "l1",
    "sparsity": 0.5,
    "scope": "layerwise",
    "physical": True,
    "exclude": ["classifier"],
}


def test_a_run_records_baseline_steps_layers_histograms_and_curve() -> None:
    events: list[tuple[str, dict]] = []
    result = run_recipe(
        recipe(ELEMENT),
        trained("mlp"),
        load_digits(),
        latency=False,
        report=lambda e, p: events.append((e, p)),
    )
    assert result.steps[0]["step"] == 0 and result.steps[0]["target_sparsity"] == 0.0
    assert result.baseline["accuracy"] > 0.9 and result.baseline["sparsity"] == 0.0
    assert {"accuracy", "loss", "sparsity", "n_nonzero", "flops", "compression"} <= set(
        result.final
    )
    assert {(r["step"], r["layer"]) for r in result.layers} == {
        (s, n) for s in (0, 1) for n in ("fc1", "fc2", "fc3")
    }
    phases = {(h["layer"], h["phase"]) for h in result.histograms}
    assert phases == {
        (n, p) for n in ("fc1", "fc2", "fc3") for p in ("before", "after_prune", "after_finetune")
    }
    assert [p["epoch"] for p in result.curve] == [1]
    assert [e for e, _ in events if e == "step"] == ["step", "step"]
    assert events[0] == ("status", {"status": "running"})
    masks_notes = [n["text"] for n in result.notes if "masks only" in n["text"]]
    assert masks_notes == ["masks only: no speed-up expected"]
    assert [n for n in result.notes if n["level"] == "warning"] == []
    assert not result.physical


def test_a_run_without_fine_tuning_has_no_after_fine_tuning_histogram() -> None:
    result = run_recipe(
        recipe(ELEMENT, finetune={**FAST, "epochs": 0}),
        trained("mlp"),
        load_digits(),
        latency=False,
    )
    assert result.curve == []
    assert {h["phase"] for h in result.histograms} == {"before", "after_prune"}


def test_fine_tuning_recovers_accuracy_lost_by_pruning() -> None:
    result = run_recipe(
        recipe({**ELEMENT, "sparsity": 0.95}), trained("mlp"), load_digits(), latency=False
    )
    step = result.steps[1]
    assert step["after_finetune"]["accuracy"] > step["before_finetune"]["accuracy"]


def test_filter_pruning_physically_shrinks_cnn_and_recalibrates_bn() -> None:
    model = trained("cnn_small")
    result = run_recipe(recipe(FILTER), model, load_digits(), latency=False)
    assert result.physical
    assert result.final["n_params"] < 0.5 * result.baseline["n_params"]
    assert result.final["flops"] < 0.5 * result.baseline["flops"]
    assert result.model.features[0].out_channels == 8
    assert "accuracy_before_bn_recalibration" in result.steps[1]
    assert result.model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert any(n["text"].startswith("physically removed filters") for n in result.notes)
    assert result.final["accuracy"] > 0.8


def test_structured_pruning_of_a_model_that_cannot_be_rebuilt_is_masks_only() -> None:
    result = run_recipe(
        recipe(FILTER), trained("cnn_small"), load_digits(), latency=False, rebuildable=False
    )
    assert not result.physical
    assert result.final["n_params"] == result.baseline["n_params"]
    assert any(n["text"].startswith("masks only: no speed-up expected") for n in result.notes)


def test_should_stop_cancels_the_run() -> None:
    with pytest.raises(Cancelled):
        run_recipe(
            recipe(ELEMENT), trained("mlp"), load_digits(), latency=False, should_stop=lambda: True
        )


def test_resume_continues_after_the_last_completed_step(tmp_path) -> None:
    rec = recipe({**ELEMENT, "sparsity": 0.875}, {"kind": "iterative", "steps": 3})
    polls = {"n": 0}
    batches = 3 * (load_digits().n_train // 64 + 1)  # two steps of one epoch, then a bit

    def stop_in_step_three() -> bool:
        polls["n"] += 1
        return polls["n"] > batches - 10

    with pytest.raises(Cancelled):
        run_recipe(
            rec,
            trained("mlp"),
            load_digits(),
            latency=False,
            checkpoint_dir=tmp_path,
            should_stop=stop_in_step_three,
        )
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["step"] == 2
    assert not list(tmp_path.glob("*.tmp"))
    full = run_recipe(rec, trained("mlp"), load_digits(), latency=False)
    resumed = run_recipe(rec, trained("mlp"), load_digits(), latency=False, checkpoint_dir=tmp_path)
    assert [s["step"] for s in resumed.steps] == [0, 1, 2, 3]
    assert "resumed after step 2" in [n["text"] for n in resumed.notes]
    assert resumed.steps[2] == full.steps[2]
    assert resumed.final["sparsity"] == pytest.approx(0.875, abs=0.01)


def test_agp_resumes_mid_training_at_the_next_epoch(tmp_path) -> None:
    rec = recipe(ELEMENT, {"kind": "agp", "steps": 4}, {**FAST, "epochs": 3})
    per_epoch = -(-load_digits().n_train // 64)
    polls = {"n": 0}

    def stop_in_epoch_three() -> bool:  # 2 epochs of batches and 4 mask updates, then a bit
        polls["n"] += 1
        return polls["n"] > 2 * per_epoch + 4 + 5

    with pytest.raises(Cancelled):
        run_recipe(
            rec,
            trained("mlp"),
            load_digits(),
            latency=False,
            checkpoint_dir=tmp_path,
            should_stop=stop_in_epoch_three,
        )
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["training"]["epoch"] == 2 and saved["training"]["k"] == 4
    assert [p["epoch"] for p in saved["curve"]] == [1, 2]
    full = run_recipe(rec, trained("mlp"), load_digits(), latency=False)
    resumed = run_recipe(rec, trained("mlp"), load_digits(), latency=False, checkpoint_dir=tmp_path)
    assert f"resumed after step {saved['step']}, epoch 2" in [n["text"] for n in resumed.notes]
    assert [s["step"] for s in resumed.steps] == [0, 1, 2, 3, 4]
    assert resumed.steps[:4] == full.steps[:4]
    assert [p["epoch"] for p in resumed.curve] == [1, 2, 3]
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value)
    assert resumed.final["accuracy"] == full.final["accuracy"]
    again = run_recipe(rec, trained("mlp"), load_digits(), latency=False, checkpoint_dir=tmp_path)
    assert [s["step"] for s in again.steps] == [0, 1, 2, 3, 4]  # a finished run is not re-run


def test_at_init_resumes_mid_training_and_keeps_the_fallback_of_max_accuracy_drop(
    tmp_path,
) -> None:
    rec = recipe(
        {**ELEMENT, "criterion": "random"},
        {"kind": "at_init", "max_accuracy_drop": 0.0},
        {**FAST, "epochs": 3},
    )
    per_epoch = -(-load_digits().n_train // 64)
    polls = {"n": 0}

    def stop_in_epoch_three() -> bool:  # one prune check, 2 epochs of batches, then a bit
        polls["n"] += 1
        return polls["n"] > 1 + 2 * per_epoch + 5

    with pytest.raises(Cancelled):
        run_recipe(
            rec,
            trained("mlp"),
            load_digits(),
            latency=False,
            checkpoint_dir=tmp_path,
            should_stop=stop_in_epoch_three,
        )
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["training"]["epoch"] == 2
    full = run_recipe(rec, trained("mlp"), load_digits(), latency=False)
    resumed = run_recipe(rec, trained("mlp"), load_digits(), latency=False, checkpoint_dir=tmp_path)
    assert "resumed after step 0, epoch 2" in [n["text"] for n in resumed.notes]
    assert full.final["n_nonzero"] == full.baseline["n_nonzero"]  # the drop rule fell back
    assert resumed.final == full.final
    assert resumed.steps == full.steps
    assert [p["epoch"] for p in resumed.curve] == [1, 2, 3]


def test_train_kind_trains_the_given_model() -> None:
    torch.manual_seed(0)
    rec = recipe(ELEMENT, finetune={**FAST, "epochs": 3}, kind="train")
    result = run_recipe(rec, zoo.build("mlp"), load_digits(), latency=False)
    assert result.baseline["accuracy"] < 0.3
    assert result.final["accuracy"] > 0.85
    assert len(result.curve) == 3


def test_sensitivity_kind_returns_rows_for_every_layer() -> None:
    rec = Recipe.from_dict(
        {"kind": "sensitivity", "name": "s", "sensitivity": {"sparsities": [0.5, 0.9]}}
    )
    result = run_recipe(rec, trained("mlp"), load_digits(), latency=False)
    assert {(r["layer"], r["sparsity"]) for r in result.sensitivity} == {
        (n, s) for n in ("fc1", "fc2", "fc3") for s in (0.0, 0.5, 0.9)
    }


def test_unknown_excluded_layer_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="nosuch"):
        run_recipe(
            recipe({**ELEMENT, "exclude": ["nosuch"]}), trained("mlp"), load_digits(), latency=False
        )
