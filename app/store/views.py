"""Read-only queries the dashboard pages need (keyword-only, session first).

Rows come back as plain dicts so the chart functions stay free of ORM objects.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.models import (
    Artifact,
    CurvePoint,
    DatasetRecord,
    Histogram,
    LayerStat,
    ModelRecord,
    Run,
    RunEvent,
    RunStep,
    SensitivityRow,
    Sweep,
)


def list_runs(
    session: Session,
    *,
    status: str | None = None,
    model_id: int | None = None,
    dataset_id: str | None = None,
    sweep_id: int | None = None,
    limit: int = 25,
    offset: int = 0,
) -> tuple[list[Run], int]:
    """A page of runs, newest first, and the total count matching the filters."""
    conds = []
    if status:
        conds.append(Run.status == status)
    if model_id is not None:
        conds.append(Run.model_id == model_id)
    if dataset_id:
        conds.append(Run.dataset_id == dataset_id)
    if sweep_id is not None:
        conds.append(Run.sweep_id == sweep_id)
    total = session.exec(select(func.count()).select_from(Run).where(*conds)).one()
    stmt = select(Run).where(*conds).order_by(col(Run.id).desc()).offset(offset).limit(limit)
    return list(session.exec(stmt).all()), int(total)


def runs_by_ids(session: Session, *, ids: Sequence[int]) -> list[Run]:
    """The runs with these ids, in the order asked (missing ids are skipped)."""
    found = {r.id: r for r in session.exec(select(Run).where(col(Run.id).in_(list(ids)))).all()}
    return [found[i] for i in ids if i in found]


def finished_runs(
    session: Session,
    *,
    model_id: int | None = None,
    dataset_id: str | None = None,
    limit: int = 500,
) -> list[Run]:
    """Succeeded prune runs with final metrics (the overview's scatter), newest first."""
    conds = [Run.status == "succeeded", Run.kind == "prune"]
    if model_id is not None:
        conds.append(Run.model_id == model_id)
    if dataset_id:
        conds.append(Run.dataset_id == dataset_id)
    stmt = select(Run).where(*conds).order_by(col(Run.id).desc()).limit(limit)
    return list(session.exec(stmt).all())


def run_steps(session: Session, *, run_id: int) -> list[dict]:
    stmt = select(RunStep).where(RunStep.run_id == run_id).order_by(col(RunStep.step))
    return [
        {
            "step": s.step,
            "target_sparsity": s.target_sparsity,
            "before_finetune": s.before_finetune or {},
            "after_finetune": s.after_finetune or {},
            **(s.extra or {}),
        }
        for s in session.exec(stmt).all()
    ]


LAYER_COLUMNS = (
    "step",
    "layer",
    "kind",
    "shape",
    "sparsity",
    "requested",
    "n_params",
    "n_nonzero",
    "threshold",
    "flops",
)


def run_layers(session: Session, *, run_id: int) -> list[dict]:
    """Per-layer rows of every step (plain column tuples: no ORM objects, it can be thousands)."""
    cols = [getattr(LayerStat, c) for c in LAYER_COLUMNS]
    stmt = (
        select(*cols)
        .where(LayerStat.run_id == run_id)
        .order_by(col(LayerStat.step), col(LayerStat.id))
    )
    return [dict(zip(LAYER_COLUMNS, row, strict=True)) for row in session.exec(stmt).all()]


def run_layer_names(session: Session, *, run_id: int) -> list[str]:
    """Layer names in model order (from the histograms, else the layer statistics)."""
    stmt = select(Histogram.layer).where(Histogram.run_id == run_id).order_by(col(Histogram.id))
    names = list(dict.fromkeys(session.exec(stmt).all()))
    if names:
        return names
    stmt2 = select(LayerStat.layer).where(LayerStat.run_id == run_id).order_by(col(LayerStat.id))
    return list(dict.fromkeys(session.exec(stmt2).all()))


def run_histograms(session: Session, *, run_id: int, layer: str | None = None) -> list[dict]:
    conds = [Histogram.run_id == run_id]
    if layer is not None:
        conds.append(Histogram.layer == layer)
    stmt = select(Histogram).where(*conds).order_by(col(Histogram.id))
    return [h.model_dump(exclude={"id", "run_id"}) for h in session.exec(stmt).all()]


def run_curve(session: Session, *, run_id: int) -> list[dict]:
    stmt = select(CurvePoint).where(CurvePoint.run_id == run_id).order_by(col(CurvePoint.id))
    return [p.model_dump(exclude={"id", "run_id"}) for p in session.exec(stmt).all()]


def run_sensitivity(session: Session, *, run_id: int) -> list[dict]:
    stmt = (
        select(SensitivityRow)
        .where(SensitivityRow.run_id == run_id)
        .order_by(col(SensitivityRow.id))
    )
    return [
        {"layer": r.layer, "sparsity": r.sparsity, "accuracy": r.accuracy}
        for r in session.exec(stmt).all()
    ]


def run_artifacts(session: Session, *, run_id: int) -> list[Artifact]:
    stmt = select(Artifact).where(Artifact.run_id == run_id).order_by(col(Artifact.id))
    return list(session.exec(stmt).all())


def list_models(session: Session, *, limit: int = 25, offset: int = 0) -> tuple[list, int]:
    total = session.exec(select(func.count()).select_from(ModelRecord)).one()
    stmt = select(ModelRecord).order_by(col(ModelRecord.id).desc()).offset(offset).limit(limit)
    return list(session.exec(stmt).all()), int(total)


def all_models(session: Session, *, limit: int = 500) -> list[ModelRecord]:
    stmt = select(ModelRecord).order_by(col(ModelRecord.id).desc()).limit(limit)
    return list(session.exec(stmt).all())


def get_model(session: Session, *, model_id: int) -> ModelRecord | None:
    return session.get(ModelRecord, model_id)


def list_datasets(session: Session) -> list[DatasetRecord]:
    return list(session.exec(select(DatasetRecord).order_by(col(DatasetRecord.created_at))).all())


def get_run(session: Session, *, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def get_sweep(session: Session, *, sweep_id: int) -> Sweep | None:
    return session.get(Sweep, sweep_id)


def latest_event_id(session: Session, *, run_id: int) -> int:
    """The id of the run's newest event (the page's SSE stream starts after it)."""
    stmt = select(func.max(RunEvent.id)).where(RunEvent.run_id == run_id)
    return int(session.exec(stmt).one() or 0)
