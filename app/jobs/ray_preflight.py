"""Team mode's start-up check: can the Ray cluster run a PruneLab worker at all?

At start with ``PRUNELAB_RUNNER=ray`` a background thread submits one tiny Ray job, asking for
the resources every run asks for, that imports the package and torch and prints their
versions. ``/api/health`` and the admin page show the outcome. The same reading of a job's log
turns a run's ``No module named 'torch'`` into a sentence that says what to install where.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.jobs.runner import RayRunner
from app.models import utcnow

log = logging.getLogger(__name__)
MARK = "prunelab-preflight"
PROBE = (
    "import sys, app, torch; "
    f"print('{MARK}', app.__version__, torch.__version__, sys.version.split()[0])"
)
ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass(frozen=True)
class PreflightResult:
    """``checking`` until the test job ends; then ``ok`` or ``failed`` with a sentence."""

    state: Literal["checking", "ok", "failed"]
    detail: str
    checked_at: datetime | None = None
    submission_id: str | None = None


class RayPreflight:
    """Submits the test job through ``runner`` (its client, runtime_env and resources)."""

    def __init__(self, runner: RayRunner, *, timeout_s: float, poll_s: float = 1.0) -> None:
        self.runner, self.timeout_s, self.poll_s = runner, timeout_s, poll_s
        self.submission_id = f"{MARK}-{time.time_ns()}"
        self.result = PreflightResult(
            "checking", "a test job is being submitted to the Ray cluster", None, None
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the check in a daemon thread: start-up never waits for the cluster."""
        self._thread = threading.Thread(target=self.run, name="ray-preflight", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> PreflightResult:
        try:
            state, detail = self._check()
        except Exception as exc:  # noqa: BLE001 - any client error is the cluster's answer
            state, detail = "failed", self._unreachable(exc)
        self.result = PreflightResult(state, detail, utcnow(), self.submission_id)
        log.log(logging.INFO if state == "ok" else logging.WARNING, "Ray preflight: %s", detail)
        return self.result

    def _unreachable(self, exc: Exception) -> str:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return (
            "the Ray job API at PRUNELAB_RAY_ADDRESS="
            f"{self.runner.settings.ray_address} did not accept the test job: {first}"
        )

    def _check(self) -> tuple[Literal["ok", "failed"], str]:
        runner, ref = self.runner, self.submission_id
        runner.client.submit_job(
            entrypoint=f'python -c "{PROBE}"',
            submission_id=ref,
            runtime_env=runner.runtime_env(),
            metadata={"prunelab": "preflight"},
            **runner.entrypoint_resources(),
        )
        self.result = PreflightResult("checking", f"test job {ref} submitted", None, ref)
        deadline = time.monotonic() + self.timeout_s
        status = runner.job_status(ref)
        while status not in ENDED and time.monotonic() < deadline:
            time.sleep(self.poll_s)
            status = runner.job_status(ref)
        if status == "SUCCEEDED":
            return "ok", self._versions(runner.client.get_job_logs(ref))
        if status == "FAILED":
            why = runner.job_error(ref) or "its log is empty"
            return "failed", f"the test job failed on the Ray cluster: {why}"
        if status not in ENDED:
            runner.client.stop_job(ref)
        return "failed", self._late(status)

    def _late(self, status: str | None) -> str:
        if status == "STOPPED":
            return "the test job was stopped on the Ray cluster before it finished"
        s = self.runner.settings
        return (
            f"the test job did not finish within {self.timeout_s:g} s (Ray status: "
            f"{status or 'unknown'}): no node may have the resources each run asks for free "
            f"(PRUNELAB_RAY_NUM_CPUS={s.ray_num_cpus:g}, PRUNELAB_RAY_NUM_GPUS="
            f"{s.ray_num_gpus:g}); runs wait for the same resources"
        )

    @staticmethod
    def _versions(logs: str) -> str:
        for line in logs.splitlines():
            if line.startswith(MARK):
                parts = line.split()
                if len(parts) == 4:
                    return (
                        f"a Ray node ran the test job: PruneLab {parts[1]}, torch {parts[2]}, "
                        f"Python {parts[3]}"
                    )
        return "a Ray node ran the test job (PruneLab and torch import)"
