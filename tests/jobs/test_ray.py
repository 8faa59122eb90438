"""Team mode end to end: a real local Ray head, PostgreSQL, a run that succeeds, one cancelled."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from tests.conftest import free_port
from tests.factories import make_model_record, make_user
from tests.jobs.conftest import job_settings, long_recipe, tiny_recipe, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.postgres, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line names our Ray temp dir: only the head this test started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop_head(marker: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _pids_using(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while _pids_using(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


def _jobs_api_up(address: str) -> bool:
    from ray.job_submission import JobSubmissionClient

    try:
        JobSubmissionClient(address).list_jobs()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.fixture
def ray_address() -> Iterator[str]:
    """`ray start --head` on loopback with free ports and a private temp dir; stopped after."""
    if not (BIN / "ray").exists():
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    temp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    dash = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={free_port()}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
        address = f"http://127.0.0.1:{dash}"
        wait_for(lambda: _jobs_api_up(address), timeout=120, every=1.0)
        yield address
    finally:
        _stop_head(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _status(client, headers, run_id):
    return client.get(f"/api/runs/{run_id}", headers=headers).json()


def test_a_ray_job_runs_a_prune_end_to_end_and_a_cancel_stops_it(
    ray_address: str, pg_url: str, tmp_path: Path
) -> None:
    from app.main import create_app

    settings = job_settings(
        tmp_path / "data",
        runner="ray",
        ray_address=ray_address,
        database_url=pg_url,
        artifact_url=str(tmp_path / "shared"),
        ray_num_cpus=0.5,
    )
    with TestClient(create_app(settings)) as client:
        with Session(client.app.state.engine, expire_on_commit=False) as s:
            user, headers = make_user(s, "alice")
            model_id = make_model_record(s, settings, owner_id=user.id).id
        run_id = client.post("/api/runs", json=tiny_recipe(model_id), headers=headers).json()["id"]
        body = wait_for(
            lambda: (
                (b := _status(client, headers, run_id))["status"] not in ("queued", "running") and b
            ),
            timeout=300,
            every=0.5,
        )
        assert body["status"] == "succeeded", (body["error"], body["notes"])
        assert body["final"]["sparsity"] == pytest.approx(0.5, abs=0.02)
        names = {
            a["name"] for a in client.get(f"/api/runs/{run_id}/artifacts", headers=headers).json()
        }
        assert "pruned.onnx" in names
        assert (tmp_path / "shared" / "runs" / str(run_id) / "artifacts" / "pruned.onnx").exists()

        long_id = client.post("/api/runs", json=long_recipe(model_id), headers=headers).json()["id"]
        wait_for(lambda: _status(client, headers, long_id)["progress"] > 0, timeout=300, every=0.5)
        from app.models import Run

        with Session(client.app.state.engine) as s:
            assert s.get(Run, long_id).runner_ref == f"prunelab-run-{long_id}-1"
        client.post(f"/api/runs/{long_id}/cancel", headers=headers)
        body = wait_for(
            lambda: (
                (b := _status(client, headers, long_id))["status"] not in ("queued", "running")
                and b
            ),
            timeout=60,
            every=0.5,
        )
        assert body["status"] == "cancelled"
