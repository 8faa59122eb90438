"""Datasets: the built-in ``digits`` and uploads (.npz, .csv, .zip of class folders)."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from app import store
from app.config import Settings
from app.jobs.artifacts import ArtifactStore
from app.modelio.dataset_preflight import decode_dataset
from app.models import DatasetRecord, Run, User
from app.web.deps import CurrentUser, SessionDep, SettingsDep
from app.web.uploads import receive_upload

router = APIRouter(prefix="/api", tags=["datasets"])

DIGITS = {
    "id": "digits",
    "name": "digits (scikit-learn 8x8, built in)",
    "format": "builtin",
    "n_train": 1257,
    "n_test": 540,
    "input_shape": [1, 8, 8],
    "n_classes": 10,
    "builtin": True,
    "owner_id": None,
}


class DatasetPublic(BaseModel):
    id: str
    name: str
    format: str
    n_train: int
    n_test: int
    input_shape: list[int] | None
    n_classes: int
    builtin: bool = False
    owner_id: int | None = None


def _public(row: DatasetRecord) -> DatasetPublic:
    return DatasetPublic(**row.model_dump(exclude={"sha256", "storage_key", "created_at"}))


def _format_of(path: Path, filename: str) -> str:
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "npz" if filename.lower().endswith(".npz") else "zip"
    return "csv"


def _ingest(
    settings: Settings, session, user: User, path: Path, filename: str, name: str, sha: str
) -> DatasetRecord:
    """Decode and validate the file in a limited child, store it normalised, add the row."""
    ds_id = "ds_" + secrets.token_hex(5)
    key = f"datasets/{ds_id}/dataset.npz"
    artifacts = ArtifactStore(settings.artifacts)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        ds = decode_dataset(path, name=name, out_dir=Path(work), settings=settings)
        artifacts.put_file(ds.path, key)
    try:
        row = store.add_dataset(
            session,
            id=ds_id,
            name=name,
            format=_format_of(path, filename),
            n_train=ds.n_train,
            n_test=ds.n_test,
            input_shape=ds.input_shape,
            n_classes=ds.n_classes,
            sha256=sha,
            storage_key=key,
            owner_id=user.id,
        )
        session.commit()
    except Exception:
        session.rollback()
        artifacts.delete_prefix(f"datasets/{ds_id}")
        raise
    return row


@router.post("/datasets", response_model=DatasetPublic, status_code=201)
async def upload_dataset(
    request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> DatasetPublic:
    """Upload ``file`` (.npz with x, y[, x_test, y_test]; .csv with a label column; .zip of
    class folders of PNG/JPEG images) and an optional ``name``."""
    if user.role == "viewer":
        raise HTTPException(403, "viewers cannot upload datasets; ask an admin for the member role")
    upload = await receive_upload(
        request, tmp_dir=settings.data_dir / "tmp", max_bytes=settings.max_upload_mb * 1024 * 1024
    )
    try:
        filename = upload.filename or "dataset"
        name = (upload.fields.get("name") or Path(filename).stem)[:200]
        row = await run_in_threadpool(
            _ingest, settings, session, user, upload.path, filename, name, upload.sha256
        )
    finally:
        upload.discard()
    return _public(row)


@router.get("/datasets", response_model=list[DatasetPublic])
def list_datasets(_: CurrentUser, session: SessionDep) -> list[DatasetPublic]:
    """The built-in digits first, then uploads (oldest first)."""
    return [DatasetPublic(**DIGITS)] + [_public(r) for r in store.list_datasets(session)]


@router.get("/datasets/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, _: CurrentUser, session: SessionDep) -> DatasetPublic:
    if dataset_id == "digits":
        return DatasetPublic(**DIGITS)
    row = session.get(DatasetRecord, dataset_id)
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id!r} does not exist")
    return _public(row)


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(
    dataset_id: str, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> None:
    if user.role == "viewer":
        raise HTTPException(403, "viewers cannot delete datasets; ask an admin for the member role")
    if dataset_id == "digits":
        raise HTTPException(409, "the built-in digits dataset cannot be deleted")
    row = session.get(DatasetRecord, dataset_id)
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id!r} does not exist")
    if user.role != "admin" and row.owner_id != user.id:
        raise HTTPException(403, "you can only delete your own datasets")
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
