"""Issue 14, items 1, 4 and 7: every number a user sends is bounded by a setting, sweeps are
sized before they expand, huge ids are never a 5xx, and a cascading model delete removes only
what the caller may delete."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app import store
from app.jobs.dispatcher import Dispatcher
from app.jobs.runner import FakeRunner
from app.models import Run
from tests.factories import make_model_record, make_user
from tests.jobs.conftest import job_settings, tiny_recipe


@pytest.fixture
def api(tmp_path) -> Iterator[TestClient]:
    from app.main import create_app

    settings = job_settings(tmp_path / "data", max_queued_per_user=50, max_schedule_steps=10)
    with TestClient(create_app(settings)) as client:
        client.app.state.dispatcher.stop()
        client.app.state.dispatcher = Dispatcher(settings, client.app.state.engine, FakeRunner())
        yield client


@pytest.fixture
def people(api):
    with Session(api.app.state.engine, expire_on_commit=False) as s:
        alice, ha = make_user(s, "alice")
        _, hb = make_user(s, "bob")
        _, hadmin = make_user(s, "root", role="admin")
        model_id = make_model_record(s, api.app.state.settings, owner_id=alice.id).id
    return {"alice": ha, "bob": hb, "admin": hadmin, "model_id": model_id}


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"schedule": {"kind": "iterative", "steps": 1_000_000}}, "PRUNELAB_MAX_SCHEDULE_STEPS"),
        ({"finetune": {"epochs": 10**9}}, "PRUNELAB_MAX_FINETUNE_EPOCHS"),
        ({"finetune": {"batch_size": 10**8}}, "PRUNELAB_MAX_BATCH_SIZE"),
        (
            {
                "pruning": {
                    "granularity": "filter",
                    "criterion": "l1",
                    "physical": True,
                    "target": {"latency_ms": 5.0, "batch": 10**8},
                }
            },
            "PRUNELAB_MAX_BATCH_SIZE",
        ),
        ({"seed": 2**64}, "2^63-1"),
    ],
)
def test_numbers_over_a_limit_are_422_naming_the_setting(api, people, change, setting) -> None:
    r = api.post(
        "/api/runs", json=tiny_recipe(people["model_id"], **change), headers=people["alice"]
    )
    assert r.status_code == 422, r.text
    assert setting in r.json()["detail"]


def test_the_limit_is_a_setting(api, people) -> None:
    body = tiny_recipe(people["model_id"], schedule={"kind": "iterative", "steps": 10})
    assert api.post("/api/runs", json=body, headers=people["alice"]).status_code == 201
    body["schedule"]["steps"] = 11
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 422
    assert "limit of 10 (PRUNELAB_MAX_SCHEDULE_STEPS)" in r.json()["detail"]


def test_from_architecture_input_shape_is_bounded(api, people) -> None:
    body = {"arch": "cnn_small", "input_shape": [1, 512, 512]}
    r = api.post("/api/models/from-architecture", json=body, headers=people["alice"])
    assert r.status_code == 422
    assert "PRUNELAB_MAX_INPUT_ELEMENTS" in r.json()["detail"] and "262144" in r.json()["detail"]


def test_a_big_sweep_is_refused_before_it_expands(api, people) -> None:
    recipe = tiny_recipe(people["model_id"])
    recipe["pruning"]["exclude"] = ["x" * 100] * 4000  # about 0.4 MB of recipe
    body = {"recipe": recipe, "sparsities": [i / 1000 for i in range(1, 1000)], "criteria": ["l1"]}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    r = api.post("/api/sweeps", json=body, headers=people["alice"])
    assert r.status_code == 422 and "PRUNELAB_MAX_SWEEP_RUNS" in r.json()["detail"]
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB
    body["sparsities"] = [0.5]
    r = api.post("/api/sweeps", json=body, headers=people["alice"])
    assert r.status_code == 422 and "recipe is at most 64 KB" in r.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/{big}",
        "/api/models/{big}",
        "/api/sweeps/{big}",
        "/api/runs?model_id={big}",
        "/api/runs/{big}/steps",
    ],
)
def test_ids_beyond_2_63_are_never_a_server_error(api, people, path) -> None:
    r = api.get(path.format(big=2**64 + 5), headers=people["admin"])
    assert r.status_code in (404, 422), r.text
    body = tiny_recipe(2**70)
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 422 and "does not exist" in r.json()["detail"]


def _finished_run(api, model_id: int, owner_headers: dict) -> int:
    r = api.post("/api/runs", json=tiny_recipe(model_id), headers=owner_headers)
    assert r.status_code == 201, r.text
    with Session(api.app.state.engine) as s:
        store.transition(s, run_id=r.json()["id"], from_=("queued",), to="cancelled")
        s.commit()
    return r.json()["id"]


def test_cascade_delete_removes_the_owners_runs_and_nothing_else(api, people) -> None:
    model_id = people["model_id"]
    mine = _finished_run(api, model_id, people["alice"])
    r = api.delete(f"/api/models/{model_id}", headers=people["alice"])
    assert r.status_code == 409 and "cascade=true" in r.json()["detail"]
    theirs = _finished_run(api, model_id, people["bob"])
    r = api.delete(f"/api/models/{model_id}?cascade=true", headers=people["alice"])
    assert r.status_code == 403 and str(theirs) in r.json()["detail"]
    with Session(api.app.state.engine) as s:
        assert s.get(Run, mine) is not None and s.get(Run, theirs) is not None
    r = api.delete(f"/api/models/{model_id}?cascade=true", headers=people["admin"])
    assert r.status_code == 204, r.text
    assert api.get(f"/api/models/{model_id}", headers=people["admin"]).status_code == 404
    assert api.get(f"/api/runs/{mine}", headers=people["admin"]).status_code == 404
