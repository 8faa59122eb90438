"""How a run's worker is started and stopped: one small interface, three implementations.

    Runner (protocol)
    ├── LocalRunner   one OS process per run on this machine (the embedded default)
    ├── RayRunner     one Ray job per run attempt (team mode, ``PRUNELAB_RUNNER=ray``)
    └── FakeRunner    an in-process double for dispatcher unit tests (no process at all)

The dispatcher is the only caller. Runners never touch the database and never import torch:
they start ``python -m app.jobs.worker --run ID`` and report what they see.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from app.artifacts import log_path
from app.config import Settings

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent.parent
WORKER_MODULE = "app.jobs.worker"
PARENT_ENV = "PRUNELAB_WORKER_PARENT_PID"


@dataclass(frozen=True)
class Exit:
    """A worker that ended: its run, exit code (negative: killed by that signal), last log line."""

    run_id: int
    returncode: int
    detail: str = ""


class Runner(Protocol):
    name: str

    def launch(self, run_id: int, attempt: int) -> str:
        """Start the worker of one attempt; returns its reference (pid or Ray submission id)."""

    def poll(self) -> list[Exit]:
        """Workers this runner started that have ended since the last poll."""

    def tracked(self) -> set[int]:
        """Run ids whose worker this runner started and has not yet seen end."""

    def terminate(self, run_id: int, ref: str | None, *, force: bool = False) -> None:
        """Ask (SIGTERM, Ray stop) or, with ``force``, make (SIGKILL) a worker stop."""

    def job_status(self, ref: str) -> str | None:
        """The cluster's view of a job (``RUNNING`` ...), None if it does not know it (Ray)."""

    def shutdown(self) -> None:
        """The server is stopping."""


def worker_env(settings: Settings) -> dict[str, str]:
    """The ``PRUNELAB_*`` environment that points a worker at this server's database and store."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is not None and name not in ("database_url", "artifact_url", "data_dir"):
            env[f"PRUNELAB_{name.upper()}"] = str(value)
    env["PRUNELAB_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    env["PRUNELAB_DATABASE_URL"] = settings.db_url
    env["PRUNELAB_ARTIFACT_URL"] = settings.artifacts
    return env


def log_tail(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines else ""


def is_worker_of(pid: int, run_id: int) -> bool:
    """True when ``pid`` is alive and is the worker of ``run_id`` (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return WORKER_MODULE in args and str(run_id) in args


def signal_group(pid: int, sig: int) -> bool:
    """Send ``sig`` to the process group led by ``pid``; False if it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


class LocalRunner:
    """Each run is ``python -m app.jobs.worker --run ID`` in its own session, logging to a file."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[int, subprocess.Popen] = {}

    def launch(self, run_id: int, attempt: int) -> str:
        path = log_path(self.settings.data_dir, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **worker_env(self.settings), PARENT_ENV: str(os.getpid())}
        with open(path, "ab") as fh:
            fh.write(f"--- attempt {attempt}\n".encode())
            fh.flush()
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, "--run", str(run_id)],
                cwd=str(ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[run_id] = proc
        log.info("run %s attempt %s: worker pid %s", run_id, attempt, proc.pid)
        return str(proc.pid)

    def poll(self) -> list[Exit]:
        ended = []
        for run_id, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:
                del self.procs[run_id]
                tail = log_tail(log_path(self.settings.data_dir, run_id))
                ended.append(Exit(run_id, code, tail))
        return ended

    def tracked(self) -> set[int]:
        return set(self.procs)

    def terminate(self, run_id: int, ref: str | None, *, force: bool = False) -> None:
        sig = signal.SIGKILL if force else signal.SIGTERM
        proc = self.procs.get(run_id)
        if proc is not None:
            signal_group(proc.pid, sig)
        elif ref and ref.isdigit() and is_worker_of(int(ref), run_id):
            signal_group(int(ref), sig)  # an orphan of an earlier server

    def job_status(self, ref: str) -> str | None:
        return None

    def shutdown(self) -> None:
        """Stop our workers cooperatively; each records ``interrupted`` and exits."""
        for run_id in list(self.procs):
            self.terminate(run_id, None)


class RayRunner:
    """Each attempt is a Ray job running the same worker entry on some node of the cluster."""

    name = "ray"

    def __init__(self, settings: Settings, client: object | None = None) -> None:
        self.settings = settings
        self._client = client
        self.refs: dict[int, str] = {}

    @property
    def client(self):  # noqa: ANN201 - ray.job_submission.JobSubmissionClient
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.settings.ray_address)
        return self._client

    def submission_id(self, run_id: int, attempt: int) -> str:
        return f"prunelab-run-{run_id}-{attempt}"

    def runtime_env(self) -> dict:
        env = worker_env(self.settings)
        env.pop("PRUNELAB_DATA_DIR", None)  # the node's own default; logs live in Ray
        env["PRUNELAB_RUNNER"] = "local"  # the worker itself never submits jobs
        env.pop("PRUNELAB_RAY_ADDRESS", None)
        env["RAY_JOB_STOP_WAIT_TIME_S"] = str(int(max(30, 3 * self.settings.cancel_grace_s)))
        return {"env_vars": env}

    def launch(self, run_id: int, attempt: int) -> str:
        sub_id = self.submission_id(run_id, attempt)
        kwargs: dict = {"entrypoint_num_cpus": self.settings.ray_num_cpus}
        if self.settings.ray_num_gpus > 0:
            kwargs["entrypoint_num_gpus"] = self.settings.ray_num_gpus
        try:
            self.client.submit_job(
                entrypoint=f"python -m {WORKER_MODULE} --run {run_id}",
                submission_id=sub_id,
                runtime_env=self.runtime_env(),
                metadata={"prunelab_run": str(run_id)},
                **kwargs,
            )
        except RuntimeError as exc:
            if "already exists" not in str(exc):  # idempotent: the same attempt submitted twice
                raise
        self.refs[run_id] = sub_id
        return sub_id

    def poll(self) -> list[Exit]:
        return []  # the dispatcher's reconciler asks job_status for every running row

    def tracked(self) -> set[int]:
        return set(self.refs)

    def forget(self, run_id: int) -> None:
        self.refs.pop(run_id, None)

    def terminate(self, run_id: int, ref: str | None, *, force: bool = False) -> None:
        ref = ref or self.refs.get(run_id)
        if ref:
            try:
                self.client.stop_job(ref)  # SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S
            except RuntimeError as exc:
                log.warning("run %s: Ray could not stop %s: %s", run_id, ref, exc)

    def job_status(self, ref: str) -> str | None:
        try:
            return str(self.client.get_job_status(ref).value)
        except RuntimeError as exc:
            if "404" in str(exc) or "does not exist" in str(exc):
                return None
            raise

    def job_error(self, ref: str) -> str:
        try:
            logs = self.client.get_job_logs(ref).strip().splitlines()
        except RuntimeError:
            return ""
        return logs[-1].strip()[:500] if logs else ""

    def shutdown(self) -> None:
        """Ray jobs outlive the server on purpose; the next start reconciles them."""


@dataclass
class FakeRunner:
    """Records launches; a test ends a worker with :meth:`finish` (like httpx's MockTransport)."""

    name: str = "fake"
    launched: list[tuple[int, int]] = field(default_factory=list)
    running: dict[int, str] = field(default_factory=dict)
    signals: list[tuple[int, str]] = field(default_factory=list)
    _ended: list[Exit] = field(default_factory=list)

    def launch(self, run_id: int, attempt: int) -> str:
        self.launched.append((run_id, attempt))
        self.running[run_id] = f"fake-{run_id}-{attempt}"
        return self.running[run_id]

    def finish(self, run_id: int, returncode: int = 0, detail: str = "") -> None:
        self.running.pop(run_id, None)
        self._ended.append(Exit(run_id, returncode, detail))

    def poll(self) -> list[Exit]:
        ended, self._ended = self._ended, []
        return ended

    def tracked(self) -> set[int]:
        return set(self.running)

    def terminate(self, run_id: int, ref: str | None, *, force: bool = False) -> None:
        self.signals.append((run_id, "SIGKILL" if force else "SIGTERM"))

    def job_status(self, ref: str) -> str | None:
        return None

    def shutdown(self) -> None:
        return None


def make_runner(settings: Settings) -> Runner:
    return RayRunner(settings) if settings.runner == "ray" else LocalRunner(settings)
