"""Team mode's start-up check and install advice, against a stand-in for Ray's job client
(the real cluster: test_ray.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from app import db, store
from app.jobs.dispatcher import Dispatcher
from app.jobs.ray_errors import explain_job_log
from app.jobs.ray_preflight import RayPreflight
from app.jobs.runner import RayRunner
from app.models import Run
from tests.factories import make_user
from tests.jobs.conftest import FakeRay, job_settings

NO_TORCH = (
    'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
    "ModuleNotFoundError: No module named 'torch'\n"
)
NO_APP = (
    "/usr/bin/python3: Error while finding module specification for 'app.jobs.worker' "
    "(ModuleNotFoundError: No module named 'app')\n"
)
VERSIONS = "prunelab-preflight 0.1.0 2.13.0+cpu 3.11.7\n"


def _settings(tmp_path: Path, **over: object):
    values: dict = {"runner": "ray", "ray_address": "http://127.0.0.1:1"} | over
    return job_settings(tmp_path / "data", **values)


def test_a_missing_package_in_a_job_log_reads_as_install_advice() -> None:
    for logs, named in ((NO_TORCH, "cannot import torch"), (NO_APP, "cannot import PruneLab")):
        sentence = explain_job_log(logs)
        assert named in sentence
        assert "install PruneLab and torch on every Ray node" in sentence
        assert "pip install 'prunelab[ray]'" in sentence
        assert not sentence.startswith("ModuleNotFoundError")
    assert explain_job_log("step 1\nRuntimeError: CUDA out of memory\n") == (
        "RuntimeError: CUDA out of memory"
    )
    assert explain_job_log("") == ""


def test_the_preflight_submits_a_job_that_imports_the_package_and_torch(tmp_path) -> None:
    settings = _settings(tmp_path, ray_num_gpus=1.0, ray_num_cpus=2.0)
    client = FakeRay(outcome="SUCCEEDED", logs=VERSIONS)
    result = RayPreflight(RayRunner(settings, client=client), timeout_s=5).run()
    assert result.state == "ok"
    assert "PruneLab 0.1.0, torch 2.13.0+cpu, Python 3.11.7" in result.detail
    assert result.checked_at is not None
    (job,) = client.submitted
    assert "import sys, app, torch" in job["entrypoint"]
    assert job["entrypoint_num_gpus"] == 1.0 and job["entrypoint_num_cpus"] == 2.0
    assert job["runtime_env"]["env_vars"]["PRUNELAB_DATABASE_URL"] == settings.db_url
    assert job["submission_id"] == result.submission_id


def test_a_node_without_torch_fails_the_preflight_with_the_install_sentence(tmp_path) -> None:
    client = FakeRay(outcome="FAILED", logs=NO_TORCH)
    result = RayPreflight(RayRunner(_settings(tmp_path), client=client), timeout_s=5).run()
    assert result.state == "failed"
    assert result.detail.startswith("the test job failed on the Ray cluster: ")
    assert "install PruneLab and torch on every Ray node" in result.detail


def test_an_unreachable_or_busy_cluster_fails_the_preflight_with_a_sentence(tmp_path) -> None:
    class Unreachable(FakeRay):
        def submit_job(self, **kw):
            raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:1.")

    result = RayPreflight(RayRunner(_settings(tmp_path), client=Unreachable()), timeout_s=5).run()
    assert result.state == "failed"
    assert "PRUNELAB_RAY_ADDRESS=http://127.0.0.1:1 did not accept the test job" in result.detail

    busy = FakeRay(outcome="PENDING")
    preflight = RayPreflight(
        RayRunner(_settings(tmp_path), client=busy), timeout_s=0.2, poll_s=0.05
    )
    result = preflight.run()
    assert result.state == "failed"
    assert "did not finish within 0.2 s (Ray status: PENDING)" in result.detail
    assert "PRUNELAB_RAY_NUM_CPUS=1" in result.detail
    assert busy.stopped == [preflight.submission_id]  # no test job left waiting


def test_a_run_whose_ray_node_lacks_torch_fails_with_the_install_sentence(tmp_path) -> None:
    settings = _settings(tmp_path)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with Session(engine) as s:
        owner = store.create_user(s, name="alice")
        s.commit()
        run = store.create_run(
            s, owner_id=owner.id, recipe={"kind": "prune"}, model_id=None, dataset_id="digits"
        )
        s.commit()
        run_id = run.id
    client = FakeRay(logs=NO_TORCH)
    dispatcher = Dispatcher(settings, engine, RayRunner(settings, client=client))
    dispatcher.tick()
    client.jobs[f"prunelab-run-{run_id}-1"] = "FAILED"
    dispatcher.tick()
    with Session(engine) as s:
        row = s.get(Run, run_id)
        assert row.status == "failed"
        assert "install PruneLab and torch on every Ray node" in row.error
        assert "ModuleNotFoundError" not in row.error
    engine.dispose()


def test_health_and_the_admin_page_report_the_preflight(tmp_path) -> None:
    from app.main import create_app

    settings = _settings(tmp_path)
    runner = RayRunner(settings, client=FakeRay(outcome="FAILED", logs=NO_TORCH))
    with TestClient(create_app(settings, runner=runner)) as client:
        client.app.state.ray_preflight.join(10)
        body = client.get("/api/health").json()
        assert body["status"] == "degraded" and body["runner"] == "ray"
        assert body["ray_preflight"]["state"] == "failed"
        assert "install PruneLab and torch on every Ray node" in body["ray_preflight"]["detail"]
        assert body["ray_preflight"]["checked_at"]
        with Session(client.app.state.engine) as s:
            _, admin = make_user(s, "root", role="admin")
            _, member = make_user(s, "bob")
        page = client.get("/admin", headers=admin)
        assert page.status_code == 200
        assert "install PruneLab and torch on every Ray node" in page.text
        assert "http://127.0.0.1:1" in page.text
        assert client.get("/admin", headers=member).status_code == 403


def test_health_says_ok_once_the_cluster_ran_the_test_job(tmp_path) -> None:
    from app.main import create_app

    settings = _settings(tmp_path)
    runner = RayRunner(settings, client=FakeRay(outcome="SUCCEEDED", logs=VERSIONS))
    with TestClient(create_app(settings, runner=runner)) as client:
        client.app.state.ray_preflight.join(10)
        body = client.get("/api/health").json()
        assert body["status"] == "ok"
        assert body["ray_preflight"]["state"] == "ok"
        assert "torch 2.13.0+cpu" in body["ray_preflight"]["detail"]


def test_the_local_runner_has_no_preflight_and_the_admin_page_says_so(
    client: TestClient, admin_headers: dict[str, str]
) -> None:
    assert "ray_preflight" not in client.get("/api/health").json()
    page = client.get("/admin", headers=admin_headers)
    assert page.status_code == 200
    assert "there is no cluster to check" in page.text
    assert 'href="/admin"' in page.text  # the admin's menu leads there
    with Session(client.app.state.engine) as s:
        _, member = make_user(s, "carol")
    assert 'href="/admin"' not in client.get("/runs", headers=member).text
