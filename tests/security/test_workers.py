"""Issue 14, items 3 and 5: real local workers run under a memory and a wall-time limit and end
``failed`` with a sentence naming the setting; they never see the admin or metrics token or the
database password, and neither does a Ray job's spec."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlmodel import Session

from app.jobs.runner import RayRunner
from tests.factories import make_model_record, make_torchscript_record, make_user
from tests.jobs.conftest import job_settings, long_recipe, tiny_recipe, wait_for

pytestmark = pytest.mark.slow

ADMIN = "admin-token-0123456789abcdef"
METRICS = "metrics-token-0123456789abcdef"
PASSWORD = "db-pass-0123456789"


def _client(settings):
    from app.main import create_app

    return TestClient(create_app(settings))


def _start(client: TestClient, body_of) -> tuple[dict, int]:
    with Session(client.app.state.engine, expire_on_commit=False) as s:
        user, headers = make_user(s, "alice")
        model_id = make_model_record(s, client.app.state.settings, owner_id=user.id).id
    r = client.post("/api/runs", json=body_of(model_id), headers=headers)
    assert r.status_code == 201, r.text
    return headers, r.json()["id"]


def _ended(client, headers, run_id):
    body = client.get(f"/api/runs/{run_id}", headers=headers).json()
    return body if body["status"] not in ("queued", "running") else None


def test_a_local_worker_gets_no_token_and_no_password(tmp_path, pg_url, monkeypatch) -> None:
    monkeypatch.setenv("PRUNELAB_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("SOME_SERVICE_API_TOKEN", "leaked-if-you-see-this")
    url = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    settings = job_settings(
        tmp_path / "data", admin_token=ADMIN, metrics_token=METRICS, database_url=url
    )
    with _client(settings) as client:
        headers, run_id = _start(client, lambda m: long_recipe(m, steps=2, epochs=20))
        pid = wait_for(
            lambda: (
                client.get(f"/api/runs/{run_id}", headers=headers).json()["status"] == "running"
                and client.app.state.dispatcher.runner.procs.get(run_id)
            ),
            timeout=60,
        ).pid
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        client.post(f"/api/runs/{run_id}/cancel", headers=headers)
        wait_for(lambda: _ended(client, headers, run_id), timeout=60)
    for secret in (ADMIN, METRICS, PASSWORD, "leaked-if-you-see-this"):
        assert secret not in environ
    env = dict(line.split("=", 1) for line in environ.split("\0") if "=" in line)
    assert "PRUNELAB_ADMIN_TOKEN" not in env and "PRUNELAB_METRICS_TOKEN" not in env
    password_file = Path(env["PRUNELAB_DATABASE_PASSWORD_FILE"])
    assert password_file.read_text() == PASSWORD
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert env["PRUNELAB_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_the_ray_job_spec_holds_no_secret(tmp_path) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    os.chmod(tmp_path / "pw", 0o600)
    settings = job_settings(
        tmp_path / "data",
        runner="ray",
        ray_address="http://127.0.0.1:1",
        admin_token=ADMIN,
        metrics_token=METRICS,
        database_url="postgresql://prunelab@db.internal/prunelab",
        database_password_file=tmp_path / "pw",
    )
    assert PASSWORD in settings.db_url  # the server itself connects with it

    class Client:
        spec: dict = {}

        def submit_job(self, **kwargs):
            Client.spec = kwargs

    RayRunner(settings, client=Client()).launch(7, 1)
    shown = repr(Client.spec)
    for secret in (ADMIN, METRICS, PASSWORD):
        assert secret not in shown
    env = Client.spec["runtime_env"]["env_vars"]
    assert env["PRUNELAB_DATABASE_PASSWORD_FILE"] == str(tmp_path / "pw")
    with_password = job_settings(
        tmp_path / "data",
        runner="ray",
        ray_address="http://127.0.0.1:1",
        database_url=f"postgresql://prunelab:{PASSWORD}@db.internal/prunelab",
    )
    with pytest.raises(RuntimeError, match="PRUNELAB_DATABASE_PASSWORD_FILE"):
        RayRunner(with_password, client=Client()).launch(8, 1)


def _memory_hog_record(client: TestClient, owner_id: int) -> int:
    """A TorchScript model whose forward needs batch x 64 x 16384 floats (1 GiB at batch 256):
    over a 1100 MB worker limit whatever the worker's own baseline is, yet tiny on disk and at
    the preflight's batch of 2."""
    import torch
    from torch import nn

    class Hog(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            wide = x.flatten(1).unsqueeze(-1).expand(-1, -1, 16384).contiguous()
            return self.fc(wide.mean(-1))

    traced = torch.jit.trace(Hog().eval(), torch.zeros(2, 1, 8, 8))
    with Session(client.app.state.engine, expire_on_commit=False) as s:
        settings = client.app.state.settings
        return make_torchscript_record(s, settings, traced, name="hog", owner_id=owner_id).id


def test_a_worker_over_its_memory_limit_fails_with_a_sentence(tmp_path) -> None:
    settings = job_settings(tmp_path / "data", worker_memory_mb=1100)
    with _client(settings) as client:
        with Session(client.app.state.engine, expire_on_commit=False) as s:
            user, headers = make_user(s, "alice")
        model_id = _memory_hog_record(client, user.id)
        body = tiny_recipe(model_id, finetune={"epochs": 1, "batch_size": 1024})
        r = client.post("/api/runs", json=body, headers=headers)
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        run = wait_for(lambda: _ended(client, headers, run_id), timeout=120)
        assert client.get("/api/health").status_code == 200  # the server stays up
    assert run["status"] == "failed", run
    assert "PRUNELAB_WORKER_MEMORY_MB" in run["error"] and "1100 MB" in run["error"], run["error"]


def test_a_worker_over_its_wall_time_is_stopped_and_failed(tmp_path) -> None:
    settings = job_settings(tmp_path / "data", worker_max_seconds=3)
    with _client(settings) as client:
        headers, run_id = _start(client, lambda m: long_recipe(m, steps=3, epochs=40))
        run = wait_for(lambda: _ended(client, headers, run_id), timeout=60)
        assert client.get("/api/health").status_code == 200
    assert run["status"] == "failed"
    assert (
        "wall-time limit of 3 s" in run["error"] and "PRUNELAB_WORKER_MAX_SECONDS" in run["error"]
    )


def test_an_allocation_failure_under_the_limit_reads_as_the_memory_limit(tmp_path) -> None:
    # Under RLIMIT_AS a C extension may fail an allocation without setting an exception, which
    # Python reports as SystemError; the run must still end with the memory sentence.
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        limited, unlimited = pool.apply(_sentences_in_a_limited_child, (str(tmp_path),))
    assert "PRUNELAB_WORKER_MEMORY_MB" in limited and "900 MB" in limited
    assert unlimited is None


def _sentences_in_a_limited_child(data_dir: str):
    from app.jobs.limits import apply_memory_limit, memory_sentence

    settings = job_settings(Path(data_dir) / "data", worker_memory_mb=900)
    unlimited = memory_sentence(SystemError("error return without exception set"), settings)
    apply_memory_limit(settings)
    limited = memory_sentence(SystemError("error return without exception set"), settings)
    return limited, unlimited
