"""Models and datasets: rows for uploaded files, lookups, deletes."""

from __future__ import annotations

from sqlmodel import Session, col, select

from app.models import DatasetRecord, ModelRecord, Run

__all__ = [
    "add_model",
    "list_models",
    "model_by_sha",
    "runs_using_model",
    "add_dataset",
    "list_datasets",
]


def add_model(session: Session, **fields: object) -> ModelRecord:
    row = ModelRecord(**fields)  # type: ignore[arg-type]
    session.add(row)
    session.flush()
    return row


def list_models(session: Session, *, limit: int = 100, offset: int = 0) -> list[ModelRecord]:
    query = select(ModelRecord).order_by(col(ModelRecord.id).desc()).offset(offset).limit(limit)
    return list(session.exec(query))


def model_by_sha(session: Session, *, sha256: str) -> ModelRecord | None:
    return session.exec(select(ModelRecord).where(ModelRecord.sha256 == sha256)).first()


def runs_using_model(session: Session, *, model_id: int) -> list[int]:
    query = select(Run.id).where(Run.model_id == model_id).order_by(Run.id)
    return [int(i) for i in session.exec(query)]


def add_dataset(session: Session, **fields: object) -> DatasetRecord:
    row = DatasetRecord(**fields)  # type: ignore[arg-type]
    session.add(row)
    session.flush()
    return row


def list_datasets(session: Session) -> list[DatasetRecord]:
    return list(session.exec(select(DatasetRecord).order_by(DatasetRecord.created_at)))
