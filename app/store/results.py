"""What runs produce (steps, layers, histograms, curve, sensitivity, artifacts, the result
model) and sweeps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from app.catalogue import REWIND_FILES
from app.errors import NotFound
from app.models import (
    Artifact,
    CurvePoint,
    Histogram,
    LayerStat,
    ModelRecord,
    Run,
    RunStep,
    SensitivityRow,
    Sweep,
)

__all__ = [
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
    "rewind_points",
    "add_model_record",
    "create_sweep",
    "get_sweep",
    "require_sweep",
]


# ---------------------------------------------------------------- results
def save_step(session: Session, *, run_id: int, item: dict) -> None:
    """Insert or replace one steps item (live, as the worker finishes each step)."""
    step = int(item["step"])
    session.exec(delete(RunStep).where(RunStep.run_id == run_id, RunStep.step == step))  # type: ignore[call-overload]
    extra = {
        k: v
        for k, v in item.items()
        if k not in ("step", "target_sparsity", "before_finetune", "after_finetune")
    }
    session.add(
        RunStep(
            run_id=run_id,
            step=step,
            target_sparsity=float(item.get("target_sparsity") or 0.0),
            before_finetune=item.get("before_finetune"),
            after_finetune=item.get("after_finetune"),
            extra=extra or None,
        )
    )
    session.exec(update(Run).where(col(Run.id) == run_id).values(last_step=step))  # type: ignore[call-overload]


def add_curve_point(session: Session, *, run_id: int, point: dict) -> None:
    session.add(_curve_row(run_id, point))


def _curve_row(run_id: int, p: dict) -> CurvePoint:
    return CurvePoint(
        run_id=run_id,
        epoch=int(p.get("epoch", 0)),
        step=int(p.get("step", 0)),
        loss=p.get("loss"),
        accuracy=p.get("accuracy"),
        lr=p.get("lr"),
        test_loss=p.get("test_loss"),
    )


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
"""A layer row's fields, as the API and the pages read them."""
_LAYER_KEYS = LAYER_COLUMNS[1:]  # what a step's layer dict carries (the step is the row's)


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
        session.add(
            Histogram(
                run_id=run_id,
                layer=h["layer"],
                phase=h["phase"],
                edges=list(h["edges"]),
                counts=[int(c) for c in h["counts"]],
                threshold=h.get("threshold"),
            )
        )
    session.add_all(_curve_row(run_id, p) for p in curve)
    session.add_all(
        SensitivityRow(
            run_id=run_id,
            layer=r["layer"],
            sparsity=float(r["sparsity"]),
            accuracy=float(r["accuracy"]),
            perplexity=r.get("perplexity"),
        )
        for r in sensitivity
    )


def add_artifacts(session: Session, *, run_id: int, items: Iterable[dict]) -> None:
    """Record artifacts (``name``, ``kind``, ``size_bytes``, ``storage_key`` ...), replacing."""
    for a in items:
        session.exec(delete(Artifact).where(Artifact.run_id == run_id, Artifact.name == a["name"]))  # type: ignore[call-overload]
        session.add(
            Artifact(
                run_id=run_id,
                name=a["name"],
                kind=a.get("kind", "file"),
                size_bytes=int(a.get("size_bytes", 0)),
                verified=bool(a.get("verified")),
                max_abs_diff=a.get("max_abs_diff"),
                sha256=a.get("sha256"),
                storage_key=a["storage_key"],
                error=(a.get("error") or None) and str(a["error"])[:500],
            )
        )


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


def rewind_points(session: Session, *, model_id: int | None) -> dict[str, str]:
    """Rewind point -> storage key: the early weights (``catalogue.REWIND_FILES``) stored by the
    train run that produced the model; empty for an upload or a model without them."""
    model = None if model_id is None else session.get(ModelRecord, model_id)
    if model is None or model.source_run_id is None:
        return {}
    names = {a.name: a.storage_key for a in list_artifacts(session, run_id=model.source_run_id)}
    return {p: names[n] for p, n in REWIND_FILES.items() if n in names}


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
    sweep = Sweep(
        name=name[:200], recipe=recipe, sparsities=sparsities, criteria=criteria, owner_id=owner_id
    )
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(session: Session, *, sweep_id: int) -> Sweep | None:
    """The sweep, or None."""
    return session.get(Sweep, sweep_id)


def require_sweep(session: Session, *, sweep_id: int) -> Sweep:
    """The sweep, or ``NotFound`` with a sentence."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id} does not exist")
    return sweep
