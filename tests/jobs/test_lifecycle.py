"""Real worker processes through the API: queued -> running -> succeeded, cancel, crash."""

from __future__ import annotations

import os
import signal

import pytest
from sqlmodel import Session

from app.models import Run
from tests.factories import make_model_record, make_user
from tests.jobs.conftest import long_recipe, tiny_recipe, wait_for

pytestmark = pytest.mark.slow

METRICS = (
    "accuracy",
    "loss",
    "sparsity",
    "n_params",
    "n_nonzero",
    "flops",
    "size_bytes",
    "sparse_size_bytes",
    "latency_ms",
    "compression",
)


def _setup(client):
    engine = client.app.state.engine
    with Session(engine, expire_on_commit=False) as s:
        user, headers = make_user(s, "alice")
        model_id = make_model_record(s, client.app.state.settings, owner_id=user.id).id
    return headers, model_id


def _get(client, headers, run_id):
    r = client.get(f"/api/runs/{run_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _ended(client, headers, run_id):
    body = _get(client, headers, run_id)
    return body if body["status"] not in ("queued", "running") else None


def test_prune_run_goes_queued_running_succeeded_with_every_result(job_client) -> None:
    headers, model_id = _setup(job_client)
    r = job_client.post("/api/runs", json=tiny_recipe(model_id), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "queued"
    run_id = r.json()["id"]
    body = wait_for(lambda: _ended(job_client, headers, run_id), timeout=120)
    assert body["status"] == "succeeded", body
    assert body["progress"] == 1.0 and body["error"] is None
    assert set(METRICS) <= set(body["final"]) and set(METRICS) <= set(body["baseline"])
    assert body["final"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert body["final"]["compression"] > 1.8
    assert body["result_model_id"] is not None

    steps = job_client.get(f"/api/runs/{run_id}/steps", headers=headers).json()
    assert [s["step"] for s in steps] == [0, 1]
    assert set(METRICS) <= set(steps[1]["after_finetune"])
    layers = job_client.get(f"/api/runs/{run_id}/layers", headers=headers).json()
    assert {row["layer"] for row in layers} == {"fc1", "fc2", "fc3"}
    hists = job_client.get(f"/api/runs/{run_id}/histograms?layer=fc1", headers=headers).json()
    assert {h["phase"] for h in hists} == {"before", "after_prune", "after_finetune"}
    assert len(job_client.get(f"/api/runs/{run_id}/curve", headers=headers).json()) >= 1

    arts = {
        a["name"]: a
        for a in job_client.get(f"/api/runs/{run_id}/artifacts", headers=headers).json()
    }
    assert {"pruned.pt", "pruned.onnx", "pruned.safetensors", "recipe.json"} <= set(arts)
    assert arts["pruned.onnx"]["verified"] is True
    got = job_client.get(f"/api/runs/{run_id}/artifacts/recipe.json", headers=headers)
    assert got.status_code == 200
    assert got.headers["content-disposition"].startswith('attachment; filename="recipe.json"')
    assert got.json()["pruning"]["sparsity"] == 0.5
    onnx = job_client.get(f"/api/runs/{run_id}/artifacts/pruned.onnx", headers=headers)
    assert len(onnx.content) == arts["pruned.onnx"]["size_bytes"]

    log = job_client.app.state.settings.data_dir / "logs" / f"run-{run_id}.log"
    assert log.exists()


def test_cancel_while_running_stops_within_seconds_and_saves_nothing(job_client) -> None:
    headers, model_id = _setup(job_client)
    run_id = job_client.post("/api/runs", json=long_recipe(model_id), headers=headers).json()["id"]
    wait_for(lambda: _get(job_client, headers, run_id)["progress"] > 0.0, timeout=90)
    r = job_client.post(f"/api/runs/{run_id}/cancel", headers=headers)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    body = wait_for(lambda: _ended(job_client, headers, run_id), timeout=15)
    assert body["status"] == "cancelled"
    assert body["final"] is None and body["result_model_id"] is None
    assert job_client.get(f"/api/runs/{run_id}/artifacts", headers=headers).json() == []


def test_worker_killed_by_sigkill_ends_failed_with_one_line_and_its_log(job_client) -> None:
    headers, model_id = _setup(job_client)
    run_id = job_client.post("/api/runs", json=long_recipe(model_id), headers=headers).json()["id"]
    wait_for(lambda: _get(job_client, headers, run_id)["progress"] > 0.0, timeout=90)
    engine = job_client.app.state.engine
    with Session(engine) as s:
        pid = s.get(Run, run_id).worker_pid
    os.kill(pid, signal.SIGKILL)
    body = wait_for(lambda: _ended(job_client, headers, run_id), timeout=15)
    assert body["status"] == "failed"
    assert "killed by SIGKILL" in body["error"] and "\n" not in body["error"]
    log = job_client.app.state.settings.data_dir / "logs" / f"run-{run_id}.log"
    assert log.read_text().strip()


def test_exception_in_the_job_ends_failed_with_its_last_line(job_client) -> None:
    headers, model_id = _setup(job_client)
    settings = job_client.app.state.settings
    with Session(job_client.app.state.engine) as s:
        from app.models import ModelRecord

        key = s.get(ModelRecord, model_id).storage_key
    (settings.data_dir / "artifacts" / key).write_bytes(b"not a safetensors file")
    run_id = job_client.post("/api/runs", json=tiny_recipe(model_id), headers=headers).json()["id"]
    body = wait_for(lambda: _ended(job_client, headers, run_id), timeout=90)
    assert body["status"] == "failed"
    assert body["error"] and "\n" not in body["error"]


def test_two_users_runs_both_finish_one_at_a_time_under_the_limit(job_client) -> None:
    headers_a, model_id = _setup(job_client)
    with Session(job_client.app.state.engine, expire_on_commit=False) as s:
        _, headers_b = make_user(s, "bob")
    ids = [
        job_client.post("/api/runs", json=tiny_recipe(model_id), headers=h).json()["id"]
        for h in (headers_a, headers_b)
    ]
    most = 0

    def both_done():
        nonlocal most
        statuses = [_get(job_client, headers_a, i)["status"] for i in ids]
        most = max(most, statuses.count("running"))
        return all(st not in ("queued", "running") for st in statuses) and statuses

    statuses = wait_for(both_done, timeout=180, every=0.05)
    assert statuses == ["succeeded", "succeeded"]
    assert most == 1  # PRUNELAB_MAX_CONCURRENT_JOBS=1
    r = job_client.post(f"/api/runs/{ids[0]}/cancel", headers=headers_b)
    assert r.status_code == 403
