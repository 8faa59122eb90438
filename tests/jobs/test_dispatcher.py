"""The dispatcher with the in-process FakeRunner: FIFO, limits, fairness, crashes, recovery."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from sqlmodel import Session

from app import db, store
from app.jobs.dispatcher import Dispatcher, pick_fair
from app.jobs.runner import FakeRunner, RayRunner, worker_env
from app.models import Run, utcnow
from tests.factories import make_run
from tests.jobs.conftest import job_settings


@pytest.fixture
def engine(tmp_path):
    settings = job_settings(tmp_path / "data", max_concurrent_jobs=2, cancel_grace_s=0.05)
    db.upgrade(settings)
    eng = db.make_engine(settings)
    eng.settings = settings  # type: ignore[attr-defined]
    yield eng
    eng.dispose()


def _users(engine, *names):
    with Session(engine, expire_on_commit=False) as s:
        users = [store.create_user(s, name=n) for n in names]
        s.commit()
        return [u.id for u in users]


def _queue(engine, owner_id, n=1):
    with Session(engine) as s:
        return [make_run(s, owner_id=owner_id).id for _ in range(n)]


def _status(engine, run_id):
    with Session(engine) as s:
        return s.get(Run, run_id)


def test_runs_start_fifo_and_never_more_than_max_concurrent(engine) -> None:
    (alice,) = _users(engine, "alice")
    ids = _queue(engine, alice, 5)
    fake = FakeRunner()
    d = Dispatcher(engine.settings, engine, fake)
    d.tick()
    assert [r for r, _ in fake.launched] == ids[:2]
    assert [_status(engine, i).status for i in ids] == ["running"] * 2 + ["queued"] * 3
    d.tick()
    assert len(fake.launched) == 2  # still at the limit
    fake.finish(ids[0], 0)
    with Session(engine) as s:  # the worker records its own success
        store.transition(s, run_id=ids[0], from_=("running",), to="succeeded")
        s.commit()
    d.tick()
    assert [r for r, _ in fake.launched] == ids[:3]
    assert _status(engine, ids[2]).attempt == 1


def test_a_busy_user_does_not_starve_another(engine) -> None:
    alice, bob = _users(engine, "alice", "bob")
    a = _queue(engine, alice, 3)
    b = _queue(engine, bob, 1)
    fake = FakeRunner()
    Dispatcher(engine.settings, engine, fake).tick()
    assert [r for r, _ in fake.launched] == [a[0], b[0]]


def test_pick_fair_prefers_the_least_busy_user_then_the_oldest_run() -> None:
    queued = [(1, 10), (2, 10), (3, 20), (4, 30)]
    assert pick_fair(queued, {10: 0, 20: 1}, 3) == [1, 4, 2]


def test_a_worker_that_dies_without_recording_ends_failed_with_the_signal(engine) -> None:
    (alice,) = _users(engine, "alice")
    (run_id,) = _queue(engine, alice)
    fake = FakeRunner()
    d = Dispatcher(engine.settings, engine, fake)
    d.tick()
    fake.finish(run_id, -9, "Killed")
    d.tick()
    run = _status(engine, run_id)
    assert run.status == "failed"
    assert (
        run.error
        == "the worker process was killed by SIGKILL (out of memory, or killed by hand): Killed"
    )
    fake2 = FakeRunner()
    (run2,) = _queue(engine, alice)
    d2 = Dispatcher(engine.settings, engine, fake2)
    d2.tick()
    fake2.finish(run2, -11)
    d2.tick()
    assert "SIGSEGV" in _status(engine, run2).error


def test_an_ignored_cancel_escalates_to_sigterm_then_sigkill(engine) -> None:
    (alice,) = _users(engine, "alice")
    (run_id,) = _queue(engine, alice)
    fake = FakeRunner()
    d = Dispatcher(engine.settings, engine, fake)
    d.tick()
    with Session(engine) as s:
        store.request_cancel(s, run_id=run_id)
        s.commit()
    d.tick()
    assert fake.signals == []  # the grace period first
    time.sleep(0.06)
    d.tick()
    time.sleep(0.06)
    d.tick()
    assert fake.signals == [(run_id, "SIGTERM"), (run_id, "SIGKILL")]
    fake.finish(run_id, -9)
    d.tick()
    assert _status(engine, run_id).status == "cancelled"


def test_cancel_of_a_queued_run_ends_it_without_a_worker(engine) -> None:
    (alice,) = _users(engine, "alice")
    (run_id,) = _queue(engine, alice)
    with Session(engine) as s:
        assert store.request_cancel(s, run_id=run_id).status == "cancelled"
        s.commit()
    fake = FakeRunner()
    Dispatcher(engine.settings, engine, fake).tick()
    assert fake.launched == []


def test_start_marks_orphaned_running_runs_interrupted_and_requeues_nothing_else(engine) -> None:
    (alice,) = _users(engine, "alice")
    dead, fresh_dead, queued = _queue(engine, alice, 3)
    with Session(engine) as s:
        for rid in (dead, fresh_dead):
            store.claim_run(s, run_id=rid, worker_pid=2**22 + 7)  # no such process
        s.get(Run, dead).heartbeat_at = utcnow() - timedelta(hours=1)
        s.commit()
    fake = FakeRunner()
    d = Dispatcher(engine.settings, engine, fake)
    d.recover()
    assert _status(engine, dead).status == "interrupted"
    assert _status(engine, fresh_dead).status == "interrupted"  # its process is gone
    assert "stopped unfinished" in _status(engine, dead).error
    d.tick()
    assert [r for r, _ in fake.launched] == [queued]  # queued runs are dispatched again


def test_a_live_orphan_with_a_fresh_heartbeat_is_left_to_stop_itself(engine) -> None:
    (alice,) = _users(engine, "alice")
    (run_id,) = _queue(engine, alice)
    with Session(engine) as s:
        store.claim_run(s, run_id=run_id, worker_pid=os.getpid())  # alive, but not a worker
        s.commit()
    Dispatcher(engine.settings, engine, FakeRunner()).recover()
    assert _status(engine, run_id).status == "interrupted"  # pid is not this run's worker


class FakeRay:
    """Stands in for JobSubmissionClient in unit tests (the real one runs in test_ray.py)."""

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}
        self.submitted: list[dict] = []
        self.stopped: list[str] = []

    def submit_job(self, **kw):
        if kw["submission_id"] in self.jobs:
            raise RuntimeError(f"Job with submission_id {kw['submission_id']} already exists.")
        self.submitted.append(kw)
        self.jobs[kw["submission_id"]] = "RUNNING"
        return kw["submission_id"]

    def get_job_status(self, ref):
        if ref not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {ref} does not exist.")

        class S:
            value = self.jobs[ref]

        return S()

    def stop_job(self, ref):
        self.stopped.append(ref)
        self.jobs[ref] = "STOPPED"
        return True

    def get_job_logs(self, ref):
        return "Traceback...\nRuntimeError: CUDA out of memory\n"


def test_ray_runner_submits_idempotently_and_reconciles_job_states(tmp_path) -> None:
    settings = job_settings(
        tmp_path / "data",
        runner="ray",
        ray_address="http://127.0.0.1:1",
        ray_num_gpus=1.0,
        cancel_grace_s=0.0,
    )
    db.upgrade(settings)
    engine = db.make_engine(settings)
    (alice,) = _users(engine, "alice")
    a, b, c = _queue(engine, alice, 3)
    client = FakeRay()
    runner = RayRunner(settings, client=client)
    d = Dispatcher(settings, engine, runner)
    d.tick()
    sub = client.submitted[0]
    assert sub["submission_id"] == f"prunelab-run-{a}-1"
    assert sub["entrypoint"] == f"python -m app.jobs.worker --run {a}"
    assert sub["entrypoint_num_gpus"] == 1.0 and sub["entrypoint_num_cpus"] == 1.0
    env = sub["runtime_env"]["env_vars"]
    assert env["PRUNELAB_DATABASE_URL"] == settings.db_url
    assert env["PRUNELAB_ARTIFACT_URL"] == settings.artifacts
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    assert runner.launch(a, 1) == f"prunelab-run-{a}-1"  # resubmitting the same attempt is fine
    client.jobs[f"prunelab-run-{a}-1"] = "FAILED"
    del client.jobs[f"prunelab-run-{b}-1"]
    with Session(engine) as s:
        store.request_cancel(s, run_id=c)
        s.commit()
    d.tick()  # cancel: grace 0 -> stop_job
    d.tick()
    assert _status(engine, a).status == "failed"
    assert "CUDA out of memory" in _status(engine, a).error
    assert _status(engine, b).status == "interrupted"
    assert client.stopped == [f"prunelab-run-{c}-1"]
    assert _status(engine, c).status == "cancelled"
    engine.dispose()


def test_worker_env_points_workers_at_the_same_database_and_store(tmp_path) -> None:
    settings = job_settings(tmp_path / "data")
    env = worker_env(settings)
    assert env["PRUNELAB_DATABASE_URL"] == settings.db_url
    assert env["PRUNELAB_ARTIFACT_URL"] == settings.artifacts
    assert env["PRUNELAB_HEARTBEAT_S"] == "0.25"
