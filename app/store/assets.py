"""Models and datasets: rows for uploaded files, lookups, deletes."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import Session, col, select

from app.errors import NotFound
from app.models import DatasetRecord, ModelRecord, Run

__all__ = [
    "add_model",
    "get_model",
    "require_model",
    "list_models",
    "count_models",
    "model_by_sha",
    "runs_using_model",
    "add_dataset",
    "get_dataset",
    "require_dataset",
    "list_datasets",
]


def add_model(session: Session, **fields: object) -> ModelRecord:
    row = ModelRecord(**fields)  # type: ignore[arg-type]
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, *, model_id: int) -> ModelRecord | None:
    """The model, or None."""
    return session.get(ModelRecord, model_id)


def require_model(session: Session, *, model_id: int) -> ModelRecord:
    """The model, or ``NotFound`` with a sentence."""
    row = session.get(ModelRecord, model_id)
    if row is None:
        raise NotFound(f"model {model_id} does not exist")
    return row


def list_models(session: Session, *, limit: int = 100, offset: int = 0) -> list[ModelRecord]:
    """A page of models, newest first."""
    query = select(ModelRecord).order_by(col(ModelRecord.id).desc()).offset(offset).limit(limit)
    return list(session.exec(query))


def count_models(session: Session) -> int:
    return int(session.exec(select(func.count()).select_from(ModelRecord)).one())


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


def get_dataset(session: Session, *, dataset_id: str) -> DatasetRecord | None:
    """The uploaded dataset, or None (built-in datasets have no row)."""
    return session.get(DatasetRecord, dataset_id)


def require_dataset(session: Session, *, dataset_id: str) -> DatasetRecord:
    """The uploaded dataset, or ``NotFound`` with a sentence."""
    row = session.get(DatasetRecord, dataset_id)
    if row is None:
        raise NotFound(f"dataset {dataset_id} does not exist")
    return row


def list_datasets(session: Session) -> list[DatasetRecord]:
    """Uploaded datasets, oldest first."""
    return list(session.exec(select(DatasetRecord).order_by(DatasetRecord.created_at)))
