"""Sensitivity results are data: the allocation is a column, the API returns it, and a prune run
created with ``pruning.allocation_from`` prunes each layer as the sweep allocated."""

from __future__ import annotations

import pytest
import torch
from sqlmodel import Session

from app import store
from app.models import Run
from app.web.api.run_checks import validate_body
from app.web.api.runs import public
from tests.factories import make_model_record
from tests.jobs.test_results import _execute

torch.set_num_threads(1)


@pytest.mark.slow
def test_a_prune_run_uses_the_allocation_a_sensitivity_run_stored(lab) -> None:
    settings, engine = lab
    with Session(engine) as s:
        model_id = make_model_record(s, settings).id
    sweep = _execute(
        lab,
        {"kind": "sensitivity", "sensitivity": {"sparsities": [0.5, 0.9], "target": 0.7}},
        model_id=model_id,
    )
    assert set(sweep.allocation) == {"fc1", "fc2", "fc3"}
    assert public(sweep).allocation == sweep.allocation
    body = {
        "kind": "prune",
        "model_id": model_id,
        "pruning": {
            "granularity": "element",
            "criterion": "l1",
            "sparsity": 0.7,
            "scope": "layerwise",
            "allocation_from": sweep.id,
            "overrides": {"fc3": 0.25},
        },
        "finetune": {"epochs": 0},
    }
    with Session(engine) as s:
        stored, _, _ = validate_body(s, body, settings)
    want = {**sweep.allocation, "fc3": 0.25}
    assert stored["pruning"]["overrides"] == want
    assert stored["pruning"]["allocation_from"] == sweep.id
    run = _execute(lab, stored, model_id=model_id)
    with Session(engine) as s:
        rows = [r for r in store.list_layers(s, run_id=int(run.id)) if r.step == 1]
    got = {r.layer: r.sparsity for r in rows}
    for layer, sparsity in want.items():
        assert got[layer] == pytest.approx(sparsity, abs=0.01)
    assert isinstance(run, Run)
