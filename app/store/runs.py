"""Runs and what they produce: steps, layers, histograms, curve, sensitivity, artifacts, events,
sweeps. Status changes are conditional UPDATEs (``WHERE status IN ...``) so the web process,
the dispatcher and a worker never overwrite each other's decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from app.errors import Conflict, NotFound
from app.models import (
    Artifact,
    CurvePoint,
    Histogram,
    LayerStat,
    ModelRecord,
    Run,
    RunEvent,
    RunStep,
    SensitivityRow,
    Sweep,
    utcnow,
)

__all__ = [
    "ACTIVE_STATUSES",
    "create_run",
    "get_run",
    "require_run",
    "list_runs",
    "count_runs",
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
    "save_step",
    "add_curve_point",
    "replace_results",
    "add_artifacts",
    "list_steps",
    "list_layers",
    "list_histograms",
    "list_curve",
    "list_sensitivity",
    "list_artifacts",
    "get_artifact",
    "add_model_record",
    "create_sweep",
    "get_sweep",
    "aware",
]

ACTIVE_STATUSES = ("queued", "running")


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
    return session.get(Run, run_id)


def require_run(session: Session, *, run_id: int) -> Run:
    """The run, or ``NotFound`` with a sentence."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def _filtered(query: Any, status: str | None, model_id: int | None, owner_id: int | None,
              sweep_id: int | None) -> Any:  # fmt: skip
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
    limit: int = 50,
    offset: int = 0,
) -> list[Run]:
    """Runs, newest first."""
    query = _filtered(select(Run), status, model_id, owner_id, sweep_id)
    query = query.order_by(col(Run.id).desc()).offset(offset).limit(limit)
    return list(session.exec(query))


def count_runs(
    session: Session,
    *,
    status: str | None = None,
    model_id: int | None = None,
    owner_id: int | None = None,
    sweep_id: int | None = None,
) -> int:
    query = _filtered(select(func.count()).select_from(Run), status, model_id, owner_id, sweep_id)
    return int(session.exec(query).one())


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
        session, run_id=run_id, from_=("queued",), to="running", started_at=now,
        heartbeat_at=now, attempt=attempt, worker_pid=worker_pid, error=None, finished_at=None,
    )  # fmt: skip


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
        session, run_id=run_id, from_=("interrupted",), to="queued", cancel_requested=False,
        finished_at=None, error=None, heartbeat_at=None,
    )  # fmt: skip
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


# ---------------------------------------------------------------- events
def add_event(session: Session, *, run_id: int, type: str, data: dict) -> RunEvent:
    event = RunEvent(run_id=run_id, type=type, data=data)
    session.add(event)
    session.flush()
    return event


def events_after(
    session: Session, *, run_id: int, after_id: int = 0, limit: int = 200
) -> list[RunEvent]:
    query = (
        select(RunEvent)
        .where(RunEvent.run_id == run_id, col(RunEvent.id) > after_id)
        .order_by(col(RunEvent.id))
        .limit(limit)
    )
    return list(session.exec(query))


# ---------------------------------------------------------------- results
def save_step(session: Session, *, run_id: int, item: dict) -> None:
    """Insert or replace one steps item (live, as the worker finishes each step)."""
    step = int(item["step"])
    session.exec(delete(RunStep).where(RunStep.run_id == run_id, RunStep.step == step))  # type: ignore[call-overload]
    extra = {k: v for k, v in item.items()
             if k not in ("step", "target_sparsity", "before_finetune", "after_finetune")}  # fmt: skip
    session.add(
        RunStep(
            run_id=run_id, step=step, target_sparsity=float(item.get("target_sparsity") or 0.0),
            before_finetune=item.get("before_finetune"), after_finetune=item.get("after_finetune"),
            extra=extra or None,
        )
    )  # fmt: skip
    session.exec(update(Run).where(col(Run.id) == run_id).values(last_step=step))  # type: ignore[call-overload]


def add_curve_point(session: Session, *, run_id: int, point: dict) -> None:
    session.add(_curve_row(run_id, point))


def _curve_row(run_id: int, p: dict) -> CurvePoint:
    return CurvePoint(run_id=run_id, epoch=int(p.get("epoch", 0)), step=int(p.get("step", 0)),
                      loss=p.get("loss"), accuracy=p.get("accuracy"), lr=p.get("lr"))  # fmt: skip


_LAYER_KEYS = ("layer", "kind", "shape", "sparsity", "requested", "n_params", "n_nonzero",
               "threshold", "flops")  # fmt: skip


def replace_results(
    session: Session,
    *,
    run_id: int,
    steps: Iterable[dict],
    layers: Iterable[dict],
    histograms: Iterable[dict],
    curve: Iterable[dict],
    sensitivity: Iterable[dict],
) -> None:
    """Write a finished run's full results, replacing what was written live."""
    for table in (RunStep, LayerStat, Histogram, CurvePoint, SensitivityRow):
        session.exec(delete(table).where(col(table.run_id) == run_id))  # type: ignore[call-overload]
    session.flush()
    for item in steps:
        save_step(session, run_id=run_id, item=item)
    for row in layers:
        fields = {k: row.get(k) for k in _LAYER_KEYS if row.get(k) is not None}
        fields["shape"] = list(fields["shape"]) if "shape" in fields else None
        session.add(LayerStat(run_id=run_id, step=int(row.get("step", 0)), **fields))
    for h in histograms:
        session.add(Histogram(run_id=run_id, layer=h["layer"], phase=h["phase"],
                              edges=list(h["edges"]), counts=[int(c) for c in h["counts"]],
                              threshold=h.get("threshold")))  # fmt: skip
    session.add_all(_curve_row(run_id, p) for p in curve)
    session.add_all(
        SensitivityRow(run_id=run_id, layer=r["layer"], sparsity=float(r["sparsity"]),
                       accuracy=float(r["accuracy"]))
        for r in sensitivity
    )  # fmt: skip


def add_artifacts(session: Session, *, run_id: int, items: Iterable[dict]) -> None:
    """Record artifacts (``name``, ``kind``, ``size_bytes``, ``storage_key`` ...), replacing."""
    for a in items:
        session.exec(delete(Artifact).where(Artifact.run_id == run_id, Artifact.name == a["name"]))  # type: ignore[call-overload]
        session.add(
            Artifact(run_id=run_id, name=a["name"], kind=a.get("kind", "file"),
                     size_bytes=int(a.get("size_bytes", 0)), verified=bool(a.get("verified")),
                     max_abs_diff=a.get("max_abs_diff"), sha256=a.get("sha256"),
                     storage_key=a["storage_key"])
        )  # fmt: skip


def list_steps(session: Session, *, run_id: int) -> list[RunStep]:
    query = select(RunStep).where(RunStep.run_id == run_id).order_by(col(RunStep.step))
    return list(session.exec(query))


def list_layers(session: Session, *, run_id: int) -> list[LayerStat]:
    query = select(LayerStat).where(LayerStat.run_id == run_id)
    return list(session.exec(query.order_by(col(LayerStat.step), col(LayerStat.id))))


def list_histograms(session: Session, *, run_id: int, layer: str | None = None) -> list[Histogram]:
    query = select(Histogram).where(Histogram.run_id == run_id)
    if layer is not None:
        query = query.where(Histogram.layer == layer)
    return list(session.exec(query.order_by(col(Histogram.id))))


def list_curve(session: Session, *, run_id: int) -> list[CurvePoint]:
    query = select(CurvePoint).where(CurvePoint.run_id == run_id).order_by(col(CurvePoint.id))
    return list(session.exec(query))


def list_sensitivity(session: Session, *, run_id: int) -> list[SensitivityRow]:
    query = select(SensitivityRow).where(SensitivityRow.run_id == run_id)
    return list(session.exec(query.order_by(col(SensitivityRow.id))))


def list_artifacts(session: Session, *, run_id: int) -> list[Artifact]:
    query = select(Artifact).where(Artifact.run_id == run_id).order_by(col(Artifact.name))
    return list(session.exec(query))


def get_artifact(session: Session, *, run_id: int, name: str) -> Artifact | None:
    query = select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name)
    return session.exec(query).first()


def add_model_record(session: Session, **fields: Any) -> ModelRecord:
    """A model row (a run's result model; the worker has written the file)."""
    record = ModelRecord(**fields)
    session.add(record)
    session.flush()
    return record


# ---------------------------------------------------------------- sweeps
def create_sweep(
    session: Session,
    *,
    owner_id: int | None,
    name: str,
    recipe: dict,
    sparsities: list[float],
    criteria: list[str],
) -> Sweep:
    sweep = Sweep(name=name[:200], recipe=recipe, sparsities=sparsities, criteria=criteria,
                  owner_id=owner_id)  # fmt: skip
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(session: Session, *, sweep_id: int) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} does not exist")
    return sweep


def stale_before(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)
