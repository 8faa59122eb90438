"""The runs store on SQLite and PostgreSQL: conditional transitions, cancel, resume, events."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from app import db, store
from app.config import Settings
from app.errors import Conflict
from tests.factories import make_run


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def session(request, tmp_path):
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with Session(engine, expire_on_commit=False) as s:
        yield s
    engine.dispose()


def _run(s, owner=None):
    return make_run(s, owner_id=owner, recipe={"kind": "prune", "name": "r"}).id


def test_a_transition_only_happens_from_the_expected_state(session) -> None:
    rid = _run(session)
    assert store.claim_run(session, run_id=rid)
    assert not store.claim_run(session, run_id=rid)  # a second dispatcher loses the race
    assert store.transition(session, run_id=rid, from_=("running",), to="succeeded")
    assert not store.transition(session, run_id=rid, from_=("running",), to="failed")
    session.commit()
    run = store.get_run(session, run_id=rid)
    session.refresh(run)
    assert run.status == "succeeded" and run.finished_at is not None and run.attempt == 1
    kinds = [(e.type, e.data["status"]) for e in store.events_after(session, run_id=rid)]
    assert kinds == [("status", "queued"), ("status", "running"), ("status", "succeeded")]


def test_cancel_flags_running_runs_and_resume_requeues_only_interrupted(session) -> None:
    rid = _run(session)
    store.claim_run(session, run_id=rid)
    assert store.request_cancel(session, run_id=rid).cancel_requested is True
    assert store.touch_heartbeat(session, run_id=rid) is True
    with pytest.raises(Conflict, match="only an interrupted run"):
        store.queue_resume(session, run_id=rid)
    store.transition(session, run_id=rid, from_=("running",), to="interrupted")
    run = store.queue_resume(session, run_id=rid)
    assert run.status == "queued" and run.cancel_requested is False and run.finished_at is None
    with pytest.raises(Conflict, match="cancel it before deleting"):
        store.delete_run(session, run_id=rid)


def test_results_replace_what_was_written_live(session) -> None:
    rid = _run(session)
    store.save_step(
        session,
        run_id=rid,
        item={
            "step": 0,
            "target_sparsity": 0.0,
            "before_finetune": {"accuracy": 0.5},
            "after_finetune": {"accuracy": 0.5},
        },
    )
    store.add_curve_point(session, run_id=rid, point={"epoch": 0, "loss": 2.0})
    store.replace_results(
        session,
        run_id=rid,
        steps=[
            {"step": 0, "target_sparsity": 0.0, "before_finetune": {}, "after_finetune": {}},
            {
                "step": 1,
                "target_sparsity": 0.5,
                "before_finetune": {},
                "after_finetune": {},
                "latency_ms_batch": 1.0,
            },
        ],
        layers=[
            {
                "step": 1,
                "layer": "fc1",
                "sparsity": 0.5,
                "n_params": 10,
                "n_nonzero": 5,
                "shape": (5, 2),
                "threshold": 0.1,
                "flops": 10,
            }
        ],
        histograms=[
            {
                "layer": "fc1",
                "phase": "before",
                "edges": [0.0, 1.0],
                "counts": [3],
                "threshold": None,
            }
        ],
        curve=[{"epoch": 0, "step": 1, "loss": 1.0, "accuracy": 0.9}],
        sensitivity=[{"layer": "fc1", "sparsity": 0.5, "accuracy": 0.8}],
    )
    session.commit()
    assert [s.step for s in store.list_steps(session, run_id=rid)] == [0, 1]
    assert store.list_steps(session, run_id=rid)[1].extra == {"latency_ms_batch": 1.0}
    assert [(p.loss, p.step) for p in store.list_curve(session, run_id=rid)] == [(1.0, 1)]
    assert store.list_layers(session, run_id=rid)[0].shape == [5, 2]
    assert store.list_sensitivity(session, run_id=rid)[0].accuracy == 0.8
    assert store.get_run(session, run_id=rid).last_step == 1
