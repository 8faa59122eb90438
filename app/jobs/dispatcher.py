"""The one dispatcher thread of a server: queued rows in, worker processes (or Ray jobs) out.

Each tick it (1) records workers that ended without writing their end (crash, OOM kill,
segfault -> ``failed`` with one line; after a cancel -> ``cancelled``), (2) escalates cancels
that the worker did not honour within ``cancel_grace_s`` (SIGTERM, then SIGKILL of the process
group; Ray: ``stop_job``), (3) reconciles Ray jobs with their rows, (4) marks ``interrupted``
the running rows nobody owns any more (stale heartbeat, dead worker, unknown Ray job), and
(5) starts queued runs FIFO, fair between users, up to ``max_concurrent_jobs``. Starting the
thread first recovers what an earlier server left behind. The thread never imports torch.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app import store
from app.config import Settings
from app.db import session_scope
from app.jobs.limits import started_before, wall_time_sentence
from app.jobs.runner import Exit, Runner, is_worker_of, signal_group
from app.models import Run, utcnow

log = logging.getLogger(__name__)
RAY_ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}
RAY_SUBMIT_LIMIT = 256


def describe_exit(code: int) -> str:
    """Why a worker ended, in words (negative codes are signals, as ``Popen`` reports them)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory, or killed by hand)" if name == "SIGKILL" else ""
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {code} without recording a result"


class Dispatcher:
    """Owns the runner; call :meth:`start` in the lifespan, :meth:`wake` after queueing a run."""

    def __init__(
        self, settings: Settings, engine: Engine, runner: Runner, *, interval_s: float = 0.5
    ) -> None:
        self.settings, self.engine, self.runner = settings, engine, runner
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._cancel_seen: dict[int, float] = {}
        self._signalled: dict[int, int] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="prunelab-dispatcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop dispatching; local workers are asked to stop and end ``interrupted``."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.runner.shutdown()
        deadline = time.monotonic() + timeout_s
        while self.runner.tracked() and time.monotonic() < deadline and self.runner.name != "ray":
            self._handle_exits(self.runner.poll(), default="interrupted")
            time.sleep(0.05)
        for run_id in self.runner.tracked() if self.runner.name != "ray" else ():
            self.runner.terminate(run_id, None, force=True)
            self._end(run_id, "interrupted", "the server stopped while the run was running")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad tick must not end dispatching
                log.exception("dispatcher tick failed")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def tick(self) -> None:
        self._handle_exits(self.runner.poll())
        self._escalate_cancels()
        self._enforce_wall_time()
        self._reconcile()
        if not self._stopping.is_set():
            self._dispatch()

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> None:
        """At start: running rows an earlier server left become ``interrupted`` when orphaned."""
        self._reconcile(at_start=True)

    def _reconcile(self, *, at_start: bool = False) -> None:
        with Session(self.engine) as s:
            rows = [
                (r.id, r.worker_pid, r.runner_ref, r.heartbeat_at) for r in store.active_runs(s)
            ]
        tracked = self.runner.tracked()
        stale = utcnow() - timedelta(seconds=self.settings.stale_after_s)
        for run_id, pid, ref, beat in rows:
            if self.runner.name == "ray":
                self._reconcile_ray(run_id, ref)
            elif run_id not in tracked:
                alive = pid is not None and is_worker_of(pid, run_id)
                fresh = beat is not None and store.aware(beat) > stale
                if alive and fresh:
                    continue  # an orphan worker notices the server is gone and stops itself
                if alive:
                    signal_group(pid, signal.SIGKILL)
                why = "its heartbeat went stale" if alive else "its worker process is gone"
                self._end(run_id, "interrupted", f"the run stopped unfinished: {why}")

    def _reconcile_ray(self, run_id: int, ref: str | None) -> None:
        status = self.runner.job_status(ref) if ref else None
        if status is None:
            self._end(run_id, "interrupted", "the Ray cluster no longer knows this run's job")
        elif status in RAY_ENDED:
            self.runner.forget(run_id)  # type: ignore[attr-defined]
            if status == "STOPPED":
                self._end(
                    run_id,
                    "cancelled" if self._cancelling(run_id) else "interrupted",
                    "the Ray job was stopped",
                )
            else:
                detail = self.runner.job_error(ref) if status == "FAILED" else ""  # type: ignore[attr-defined]
                why = f"the Ray job ended {status.lower()} without recording a result"
                self._end(run_id, "failed", f"{why}: {detail}" if detail else why)

    # -- exits and cancels --------------------------------------------------------------------
    def _handle_exits(self, exits: list[Exit], default: str | None = None) -> None:
        for ex in exits:
            self._cancel_seen.pop(ex.run_id, None)
            self._signalled.pop(ex.run_id, None)
            if self._cancelling(ex.run_id):
                self._end(ex.run_id, "cancelled", None)
            elif default is not None or ex.returncode == 3:
                self._end(ex.run_id, default or "interrupted", None)
            else:
                why = describe_exit(ex.returncode)
                self._end(ex.run_id, "failed", f"{why}: {ex.detail}" if ex.detail else why)

    def _enforce_wall_time(self) -> None:
        """Attempts running longer than PRUNELAB_WORKER_MAX_SECONDS end ``failed`` and stop."""
        cutoff = started_before(self.settings)
        with Session(self.engine) as s:
            rows = [
                (r.id, r.runner_ref)
                for r in store.active_runs(s)
                if r.status == "running" and r.started_at and store.aware(r.started_at) < cutoff
            ]
        for run_id, ref in rows:
            self._end(run_id, "failed", wall_time_sentence(self.settings))
            self.runner.terminate(run_id, ref, force=True)

    def _cancelling(self, run_id: int) -> bool:
        with Session(self.engine) as s:
            run = s.get(Run, run_id)
            return bool(run and run.cancel_requested)

    def _escalate_cancels(self) -> None:
        with Session(self.engine) as s:
            rows = [(r.id, r.runner_ref) for r in store.active_runs(s) if r.cancel_requested]
        now, grace = time.monotonic(), self.settings.cancel_grace_s
        for run_id, ref in rows:
            first = self._cancel_seen.setdefault(run_id, now)
            level = self._signalled.get(run_id, 0)
            if level == 0 and now - first >= grace:
                log.warning("run %s ignored its cancel flag for %.0f s: SIGTERM", run_id, grace)
                self.runner.terminate(run_id, ref)
                self._signalled[run_id] = 1
            elif level == 1 and now - first >= 2 * grace and self.runner.name != "ray":
                log.warning("run %s still running after SIGTERM: SIGKILL", run_id)
                self.runner.terminate(run_id, ref, force=True)
                self._signalled[run_id] = 2

    def _end(self, run_id: int, status: str, error: str | None) -> None:
        with session_scope(self.engine) as s:
            if store.transition(s, run_id=run_id, from_=("running",), to=status, error=error):
                log.info("run %s -> %s%s", run_id, status, f": {error}" if error else "")

    # -- dispatching --------------------------------------------------------------------------
    def _capacity(self) -> int:
        if self.runner.name == "ray":
            return RAY_SUBMIT_LIMIT - len(self.runner.tracked())
        return self.settings.max_concurrent_jobs - len(self.runner.tracked())

    def _dispatch(self) -> None:
        free = self._capacity()
        if free <= 0:
            return
        with Session(self.engine) as s:
            queued = [(r.id, r.owner_id) for r in store.queued_runs(s)]
            busy: dict[int | None, int] = {}
            for r in store.active_runs(s):
                busy[r.owner_id] = busy.get(r.owner_id, 0) + 1
        for run_id in pick_fair(queued, busy, free):
            self._start(run_id)

    def _start(self, run_id: int) -> None:
        with session_scope(self.engine) as s:
            if not store.claim_run(s, run_id=run_id):
                return  # cancelled or deleted meanwhile
            attempt = s.get(Run, run_id).attempt  # type: ignore[union-attr]
        try:
            ref = self.runner.launch(run_id, attempt)
        except Exception as exc:  # noqa: BLE001 - the run fails, the dispatcher goes on
            log.exception("run %s could not be started", run_id)
            self._end(run_id, "failed", f"the worker could not be started: {exc}"[:2000])
            return
        with session_scope(self.engine) as s:
            pid = int(ref) if ref.isdigit() else None
            store.set_runner_ref(s, run_id=run_id, runner_ref=ref, worker_pid=pid)


def pick_fair(
    queued: list[tuple[int, int | None]], busy: dict[int | None, int], free: int
) -> list[int]:
    """Up to ``free`` run ids: FIFO within a user, the least busy user first across users."""
    busy = dict(busy)
    heads: dict[int | None, list[int]] = {}
    for run_id, owner in queued:  # queued is oldest first
        heads.setdefault(owner, []).append(run_id)
    chosen: list[int] = []
    while len(chosen) < free and heads:
        owner = min(heads, key=lambda o: (busy.get(o, 0), heads[o][0]))
        chosen.append(heads[owner].pop(0))
        busy[owner] = busy.get(owner, 0) + 1
        if not heads[owner]:
            del heads[owner]
    return chosen
