"""The job process: ``python -m app.jobs.worker --run ID`` (also ``prunelab worker --run ID``).

It runs one attempt of one run. A heartbeat thread stamps ``heartbeat_at`` every
``PRUNELAB_HEARTBEAT_S`` seconds and turns ``cancel_requested`` into the engine's stop flag;
SIGTERM stops the run cooperatively between batches; when the local server that started it
goes away (``PRUNELAB_WORKER_PARENT_PID`` no longer our parent) the run stops as
``interrupted`` instead of writing on as an orphan.

Exit codes: 0 succeeded or cancelled, 1 failed, 2 bad usage or settings, 3 interrupted,
4 the run was not in a state to execute (already finished, deleted).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from app.config import Settings, SettingsError, load_settings

log = logging.getLogger("app.jobs.worker")
PARENT_ENV = "PRUNELAB_WORKER_PARENT_PID"
EXIT_CODES = {"succeeded": 0, "cancelled": 0, "failed": 1, "interrupted": 3}


class Heartbeat(threading.Thread):
    """Stamps the row, and raises the stop flag on cancel or when the server is gone."""

    def __init__(self, engine, run_id: int, settings: Settings, stop) -> None:  # noqa: ANN001
        super().__init__(name=f"heartbeat-{run_id}", daemon=True)
        self.engine, self.run_id, self.settings, self.stop = engine, run_id, settings, stop
        self.done = threading.Event()
        parent = os.environ.get(PARENT_ENV)
        self.parent_pid = int(parent) if parent and parent.isdigit() else None

    def beat(self) -> None:
        from app import store
        from app.db import session_scope

        with session_scope(self.engine) as s:
            if store.touch_heartbeat(s, run_id=self.run_id, worker_pid=os.getpid()):
                self.stop.set("cancel")
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("run %s: the server that started this worker is gone", self.run_id)
            self.stop.set("interrupt")

    def run(self) -> None:
        while not self.done.wait(self.settings.heartbeat_s):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried; stale is the backstop
                log.warning("run %s: heartbeat failed", self.run_id, exc_info=True)


def _claimable(engine, run_id: int) -> bool:  # noqa: ANN001
    """True when the dispatcher has set the run ``running`` for us (and it is not cancelled)."""
    from app import store
    from app.db import session_scope

    with session_scope(engine) as s:
        run = store.get_run(s, run_id=run_id)
        if run is None or run.status != "running":
            return False
        if run.cancel_requested:
            store.transition(s, run_id=run_id, from_=("running",), to="cancelled")
            return False
        store.touch_heartbeat(s, run_id=run_id, worker_pid=os.getpid())
    return True


def run_worker(run_id: int, settings: Settings) -> int:
    """Execute one attempt of ``run_id``; returns the process exit code."""
    from app.db import make_engine
    from app.jobs.attempt import StopFlag
    from app.jobs.tasks import execute_run

    engine = make_engine(settings)
    try:
        if not _claimable(engine, run_id):
            log.info("run %s is not waiting for a worker; nothing to do", run_id)
            return 4
        stop = StopFlag()
        signal.signal(signal.SIGTERM, lambda *_: stop.set("interrupt"))
        beat = Heartbeat(engine, run_id, settings, stop)
        beat.start()
        try:
            status = execute_run(run_id, settings, should_stop=stop, engine=engine)
        finally:
            beat.done.set()
            beat.join(timeout=5)
        log.info("run %s ended %s", run_id, status)
        return EXIT_CODES.get(status, 4)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.jobs.worker", description=__doc__)
    parser.add_argument("--run", type=int, required=True, help="the run id to execute")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from app.jobs.limits import apply_memory_limit

    apply_memory_limit(settings)  # before torch: it must fit in the limit too
    import torch

    torch.set_num_threads(
        max(1, int(os.environ.get("PRUNELAB_WORKER_THREADS", "0")) or torch.get_num_threads())
    )
    return run_worker(args.run, settings)


if __name__ == "__main__":
    sys.exit(main())
