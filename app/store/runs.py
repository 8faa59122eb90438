"""Runs and their events; what they produce and sweeps are in ``store.results``.
Status changes are conditional UPDATEs (``WHERE status IN ...``) so the web process,
the dispatcher and a worker never overwrite each other's decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from app.errors import Conflict, NotFound
from app.models import (
    Artifact,
    CurvePoint,
    Histogram,
    LayerStat,
    Run,
    RunEvent,
    RunStep,
    SensitivityRow,
    utcnow,
)
from app.store.events import add_event, events_after

__all__ = [
    "ACTIVE_STATUSES",
    "create_run",
    "get_run",
    "require_run",
    "list_runs",
    "count_runs",
    "runs_by_ids",
    "count_queued",
    "queued_runs",
    "active_runs",
    "claim_run",
    "set_runner_ref",
    "touch_heartbeat",
    "set_progress",
    "transition",
    "request_cancel",
    "queue_resume",
    "delete_run",
    "add_event",
    "events_after",
    "aware",
]

ACTIVE_STATUSES = ("queued", "running")
T = TypeVar("T")


def aware(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


# ---------------------------------------------------------------- runs
def create_run(
    session: Session,
    *,
    owner_id: int | None,
    recipe: dict,
    model_id: int | None,
    dataset_id: str,
    sweep_id: int | None = None,
) -> Run:
    """A queued run row (the caller commits, then wakes the dispatcher)."""
    run = Run(
        name=str(recipe.get("name") or "")[:200],
        kind=str(recipe.get("kind") or "prune"),
        status="queued",
        recipe=recipe,
        model_id=model_id,
        dataset_id=dataset_id,
        owner_id=owner_id,
        sweep_id=sweep_id,
    )
    session.add(run)
    session.flush()
    add_event(session, run_id=run.id, type="status", data={"status": "queued"})
    return run


def get_run(session: Session, *, run_id: int) -> Run | None:
    """The run, or None."""
    return session.get(Run, run_id)


def require_run(session: Session, *, run_id: int) -> Run:
    """The run, or ``NotFound`` with a sentence."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def _filtered(
    query: SelectOfScalar[T],
    status: str | None,
    model_id: int | None,
    owner_id: int | None,
    sweep_id: int | None,
    dataset_id: str | None,
) -> SelectOfScalar[T]:
    if dataset_id:
        query = query.where(Run.dataset_id == dataset_id)
    if status is not None:
        query = query.where(Run.status == status)
    if model_id is not None:
        query = query.where(Run.model_id == model_id)
    if owner_id is not None:
        query = query.where(Run.owner_id == owner_id)
    if sweep_id is not None:
        query = query.where(Run.sweep_id == sweep_id)
    return query


def list_runs(
    session: Session,
    *,
    status: str | None = None,
    model_id: int | None = None,
    owner_id: int | None = None,
    sweep_id: int | None = None,
    dataset_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Run]:
    """Runs matching the filters, newest first."""
    query = _filtered(select(Run), status, model_id, owner_id, sweep_id, dataset_id)
    query = query.order_by(col(Run.id).desc()).offset(offset).limit(limit)
    return list(session.exec(query))


def count_runs(
    session: Session,
    *,
    status: str | None = None,
    model_id: int | None = None,
    owner_id: int | None = None,
    sweep_id: int | None = None,
    dataset_id: str | None = None,
) -> int:
    """How many runs match the filters (``list_runs`` gives a page of them)."""
    query = _filtered(
        select(func.count()).select_from(Run), status, model_id, owner_id, sweep_id, dataset_id
    )
    return int(session.exec(query).one())


def runs_by_ids(session: Session, *, ids: Sequence[int]) -> list[Run]:
    """The runs with these ids, in the order asked (missing ids are skipped)."""
    found = {r.id: r for r in session.exec(select(Run).where(col(Run.id).in_(list(ids)))).all()}
    return [found[i] for i in ids if i in found]


def count_queued(session: Session, *, owner_id: int | None) -> int:
    return count_runs(session, status="queued", owner_id=owner_id)


def queued_runs(session: Session, *, limit: int = 500) -> list[Run]:
    """Queued runs, oldest first (FIFO)."""
    query = select(Run).where(Run.status == "queued").order_by(col(Run.id)).limit(limit)
    return list(session.exec(query))


def active_runs(session: Session) -> list[Run]:
    """Runs the dispatcher has started and not yet seen finish."""
    return list(session.exec(select(Run).where(Run.status == "running").order_by(col(Run.id))))


def transition(
    session: Session, *, run_id: int, from_: Sequence[str], to: str, **values: Any
) -> bool:
    """Move a run from one of ``from_`` to ``to`` (setting ``values``); False if it was not there.

    Finished states stamp ``finished_at``; every change is also a ``status`` event.
    """
    if to in ("succeeded", "failed", "cancelled", "interrupted"):
        values.setdefault("finished_at", utcnow())
    stmt = (
        update(Run)
        .where(col(Run.id) == run_id, col(Run.status).in_(list(from_)))
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    changed = session.exec(stmt).rowcount == 1  # type: ignore[call-overload]
    if changed:
        data: dict[str, Any] = {"status": to}
        if values.get("error"):
            data["error"] = values["error"]
        add_event(session, run_id=run_id, type="status", data=data)
    return changed


def claim_run(session: Session, *, run_id: int, worker_pid: int | None = None) -> bool:
    """Queued -> running for a new attempt (the dispatcher, just before it starts the worker)."""
    now = utcnow()
    run = session.get(Run, run_id)
    attempt = (run.attempt if run else 0) + 1
    return transition(
        session,
        run_id=run_id,
        from_=("queued",),
        to="running",
        started_at=now,
        heartbeat_at=now,
        attempt=attempt,
        worker_pid=worker_pid,
        error=None,
        finished_at=None,
    )


def set_runner_ref(
    session: Session, *, run_id: int, runner_ref: str | None, worker_pid: int | None = None
) -> None:
    values: dict[str, Any] = {"runner_ref": runner_ref}
    if worker_pid is not None:
        values["worker_pid"] = worker_pid
    session.exec(update(Run).where(col(Run.id) == run_id).values(**values))  # type: ignore[call-overload]


def touch_heartbeat(session: Session, *, run_id: int, worker_pid: int | None = None) -> bool:
    """Stamp the heartbeat of a running run; returns ``cancel_requested``."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if worker_pid is not None:
        values["worker_pid"] = worker_pid
    stmt = update(Run).where(col(Run.id) == run_id, Run.status == "running").values(**values)
    session.exec(stmt)  # type: ignore[call-overload]
    flag = session.exec(select(Run.cancel_requested).where(Run.id == run_id)).first()
    return bool(flag)


def set_progress(session: Session, *, run_id: int, fraction: float, message: str | None) -> None:
    stmt = (
        update(Run)
        .where(col(Run.id) == run_id, Run.status == "running")
        .values(progress=float(fraction), message=(message or "")[:500], heartbeat_at=utcnow())
    )
    session.exec(stmt)  # type: ignore[call-overload]


def request_cancel(session: Session, *, run_id: int) -> Run:
    """Cancel: a queued run ends at once; a running one gets the flag its worker polls."""
    run = require_run(session, run_id=run_id)
    if transition(session, run_id=run_id, from_=("queued", "interrupted"), to="cancelled"):
        session.refresh(run)
        return run
    if run.status != "running":
        raise Conflict(f"run {run_id} is already {run.status}; only queued or running runs stop")
    session.exec(update(Run).where(col(Run.id) == run_id).values(cancel_requested=True))  # type: ignore[call-overload]
    add_event(session, run_id=run_id, type="progress", data={"message": "cancel requested"})
    session.refresh(run)
    return run


def queue_resume(session: Session, *, run_id: int) -> Run:
    """Interrupted -> queued; the next attempt continues from the last checkpoint."""
    run = require_run(session, run_id=run_id)
    ok = transition(
        session,
        run_id=run_id,
        from_=("interrupted",),
        to="queued",
        cancel_requested=False,
        finished_at=None,
        error=None,
        heartbeat_at=None,
    )
    if not ok:
        raise Conflict(f"run {run_id} is {run.status}; only an interrupted run can be resumed")
    session.refresh(run)
    return run


def delete_run(session: Session, *, run_id: int) -> None:
    """Delete a run and its rows (not while it is queued or running)."""
    run = require_run(session, run_id=run_id)
    if run.status in ACTIVE_STATUSES:
        raise Conflict(f"run {run_id} is {run.status}; cancel it before deleting it")
    for table in (RunEvent, RunStep, LayerStat, Histogram, CurvePoint, SensitivityRow, Artifact):
        session.exec(delete(table).where(col(table.run_id) == run_id))  # type: ignore[call-overload]
    session.delete(run)


def stale_before(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
