"""Read-only queries the dashboard charts need (keyword-only, session first).

Rows come back as plain dicts so the chart functions stay free of ORM objects; rows themselves
(runs, models, datasets, sweeps, artifacts) are read through the other store modules.
"""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.models import (
    CurvePoint,
    Histogram,
    LayerStat,
    Run,
    RunEvent,
    RunStep,
    SensitivityRow,
)
from app.store.results import LAYER_COLUMNS


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
        | ({"perplexity": r.perplexity} if r.perplexity is not None else {})
        for r in session.exec(stmt).all()
    ]


def latest_event_id(session: Session, *, run_id: int) -> int:
    """The id of the run's newest event (the page's SSE stream starts after it)."""
    stmt = select(func.max(RunEvent.id)).where(RunEvent.run_id == run_id)
    return int(session.exec(stmt).one() or 0)
