"""Datasets: the built-in ``digits`` and uploads (.npz, .csv, .zip of class folders).

Thin routes: decoding (in a limited child), validation and the new row are
``app.intake.datasets``'s.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from app import catalogue, store
from app.artifacts import ArtifactStore
from app.intake.datasets import ingest_dataset
from app.models import DatasetRecord, Run
from app.web.deps import CurrentUser, DatasetDep, OwnedDatasetDep, SessionDep, SettingsDep
from app.web.uploads import receive_upload

router = APIRouter(prefix="/api", tags=["datasets"])


class DatasetPublic(BaseModel):
    id: str
    name: str
    format: str
    n_train: int
    n_test: int
    input_shape: list[int] | None
    n_classes: int
    task: str = "classification"
    input_dtype: str = "float32"
    text: dict | None = None
    builtin: bool = False
    owner_id: int | None = None


def _builtin(info: catalogue.DatasetInfo) -> DatasetPublic:
    return DatasetPublic(
        id=info.id,
        name=info.name,
        format="builtin",
        n_train=info.n_train,
        n_test=info.n_test,
        input_shape=list(info.input_shape),
        n_classes=info.n_classes,
        builtin=True,
    )


def _public(row: DatasetRecord) -> DatasetPublic:
    return DatasetPublic(**row.model_dump(exclude={"sha256", "storage_key", "created_at"}))


@router.post("/datasets", response_model=DatasetPublic, status_code=201)
async def upload_dataset(
    request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> DatasetPublic:
    """Upload ``file`` (.npz with x, y[, x_test, y_test]; .csv with a label column; .zip of
    class folders of PNG/JPEG images; a .txt or .jsonl text corpus for language modelling,
    with optional ``tokenizer`` byte|char and ``seq_len``) and an optional ``name``."""
    if user.role == "viewer":
        raise HTTPException(403, "viewers cannot upload datasets; ask an admin for the member role")
    upload = await receive_upload(
        request, tmp_dir=settings.data_dir / "tmp", max_bytes=settings.max_upload_mb * 1024 * 1024
    )
    try:
        filename = upload.filename or "dataset"
        name = (upload.fields.get("name") or Path(filename).stem)[:200]
        tokenizer, seq_len = _text_fields(upload.fields)
        row = await run_in_threadpool(
            partial(
                ingest_dataset,
                settings,
                session,
                user,
                upload.path,
                filename=filename,
                name=name,
                sha256=upload.sha256,
                tokenizer=tokenizer,
                seq_len=seq_len,
            )
        )
    finally:
        upload.discard()
    return _public(row)


def _text_fields(fields: dict) -> tuple[str | None, int | None]:
    """The corpus fields of an upload form: ``tokenizer`` and ``seq_len`` (None when absent)."""
    tokenizer = (fields.get("tokenizer") or "").strip() or None
    raw = (fields.get("seq_len") or "").strip()
    if raw and (not raw.isdigit() or int(raw) < 1):
        raise HTTPException(
            422, f"seq_len must be a positive integer (tokens per sequence, e.g. 64); got {raw!r}"
        )
    return tokenizer, int(raw) if raw else None


@router.get("/datasets", response_model=list[DatasetPublic])
def list_datasets(_: CurrentUser, session: SessionDep) -> list[DatasetPublic]:
    """The built-in datasets first, then uploads (oldest first)."""
    builtins = [_builtin(d) for d in catalogue.DATASETS.values()]
    return builtins + [_public(r) for r in store.list_datasets(session)]


@router.get("/datasets/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset: DatasetDep) -> DatasetPublic:
    if isinstance(dataset, catalogue.DatasetInfo):
        return _builtin(dataset)
    return _public(dataset)


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(row: OwnedDatasetDep, session: SessionDep, settings: SettingsDep) -> None:
    dataset_id = row.id
    from sqlmodel import select

    used = list(session.exec(select(Run.id).where(Run.dataset_id == dataset_id)))
    if used:
        raise HTTPException(
            409, f"dataset {dataset_id!r} is used by runs {sorted(used)}; delete them first"
        )
    key = row.storage_key
    session.delete(row)
    session.commit()
    if key:
        ArtifactStore(settings.artifacts).delete_prefix(key.rsplit("/", 1)[0])
