"""kill -9 of the server mid-run, then a restart: the run is interrupted, resume completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from app import db, store
from app.models import Run
from tests.conftest import free_port
from tests.factories import make_model_record, make_user
from tests.jobs.conftest import job_settings, long_recipe, wait_for

pytestmark = pytest.mark.slow


def _serve(env: dict, port: int, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "prunelab"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    wait_for(lambda: _health(port), timeout=60, every=0.2)
    return proc


def _health(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_kill_9_of_the_server_interrupts_the_run_and_resume_completes_it(tmp_path: Path) -> None:
    settings = job_settings(tmp_path / "data")
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with Session(engine, expire_on_commit=False) as s:
        user, headers = make_user(s, "alice")
        model_id = make_model_record(s, settings, owner_id=user.id).id
    env = {
        **os.environ,
        "PRUNELAB_DATA_DIR": str(settings.data_dir),
        "PRUNELAB_HEARTBEAT_S": "0.25",
        "PRUNELAB_STALE_AFTER_S": "5",
    }
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/runs"
    server = _serve(env, port, tmp_path / "serve.log")
    try:
        r = httpx.post(url, json=long_recipe(model_id, steps=3, epochs=8), headers=headers)
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        wait_for(
            lambda: (httpx.get(f"{url}/{run_id}", headers=headers).json()["last_step"] or 0) >= 1,
            timeout=120,
            every=0.2,
        )
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()

    def row() -> Run:
        with Session(engine) as s:
            return s.get(Run, run_id)

    interrupted = wait_for(lambda: row().status == "interrupted" and row(), timeout=20)
    assert interrupted.last_step >= 1
    wait_for(lambda: not _alive(interrupted.worker_pid), timeout=10)  # no orphan writes on

    server = _serve(env, port, tmp_path / "serve.log")
    try:
        assert httpx.get(f"{url}/{run_id}", headers=headers).json()["status"] == "interrupted"
        r = httpx.post(f"{url}/{run_id}/resume", headers=headers)
        assert r.status_code == 202, r.text
        body = wait_for(
            lambda: (
                (b := httpx.get(f"{url}/{run_id}", headers=headers).json())["status"]
                not in ("queued", "running")
                and b
            ),
            timeout=180,
            every=0.3,
        )
        assert body["status"] == "succeeded", body
        assert body["attempt"] == 2
        assert any(n["text"].startswith("resumed after step") for n in body["notes"]), body["notes"]
        steps = httpx.get(f"{url}/{run_id}/steps", headers=headers).json()
        assert [s["step"] for s in steps] == [0, 1, 2, 3]
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        engine.dispose()
    with Session(engine) as s:
        assert store.list_artifacts(s, run_id=run_id)
