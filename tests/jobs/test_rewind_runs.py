"""A server train run stores its rewind points; a retrain run of its result rewinds to them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlmodel import Session

from app import store
from app.artifacts import ArtifactStore
from app.models import Run
from tests.jobs.test_results import _execute

torch.set_num_threads(1)


def _artifact(lab, run: Run, name: str) -> Path:
    settings, engine = lab
    with Session(engine) as s:
        row = store.get_artifact(s, run_id=int(run.id), name=name)
        assert row is not None, f"run {run.id} has no {name}"
        return ArtifactStore(settings.artifacts).local_path(row.storage_key)


@pytest.mark.slow
def test_retrain_rewinds_to_the_early_weights_of_the_train_run(lab) -> None:
    train = _execute(
        lab,
        {"kind": "train", "name": "t", "arch": "mlp", "finetune": {"epochs": 2}},
    )
    early = load_file(str(_artifact(lab, train, "rewind.safetensors")))
    init = load_file(str(_artifact(lab, train, "init.safetensors")))
    assert not torch.equal(early["fc1.weight"], init["fc1.weight"])
    body = {
        "kind": "prune",
        "name": "lottery",
        "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.8},
        "schedule": {"kind": "retrain", "retrain_init": "rewind"},
        "finetune": {"epochs": 0},
    }
    for point, weights in (("early", early), ("init", init)):
        schedule = {**body["schedule"], "rewind_from": point}
        run = _execute(lab, {**body, "schedule": schedule}, model_id=train.result_model_id)
        result = load_file(str(_artifact(lab, run, "pruned.safetensors")))
        kept = result["fc1.weight"] != 0
        assert torch.equal(result["fc1.weight"][kept], weights["fc1.weight"][kept])
        assert run.final["sparsity"] == pytest.approx(0.8, abs=0.01)
