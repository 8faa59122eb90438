"""Models: upload (streamed, detected, preflighted), list, get, download, delete, from-architecture."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from app import store
from app.catalogue import ARCHITECTURES, check_arch
from app.config import Settings
from app.errors import Invalid
from app.jobs.artifacts import ArtifactStore, content_disposition
from app.modelio.detect import check_code_format_allowed, detect_format
from app.modelio.onnx_bundle import bundle_files
from app.modelio.preflight import run_preflight
from app.models import ModelRecord, User
from app.web.deps import CurrentUser, SessionDep, SettingsDep
from app.web.uploads import Upload, receive_upload

router = APIRouter(prefix="/api", tags=["models"])
# Each preflight is a child process that imports torch: bound how many run at once so a burst
# of uploads queues instead of exhausting the server's memory and CPU.
PREFLIGHT_SLOTS = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))

EXTENSIONS = {
    "safetensors": "safetensors",
    "state_dict": "pt",
    "onnx": "onnx",
    "torchscript": "pt",
    "pt2": "pt2",
}
INPUT_DTYPES = ("float32", "int64")


class LayerInfo(BaseModel):
    name: str
    kind: str
    shape: list[int]
    n_params: int
    prunable: bool


class ModelPublic(BaseModel):
    id: int
    name: str
    format: str
    arch: str | None
    input_shape: list[int] | None
    input_dtype: str
    num_classes: int | None
    n_params: int
    size_bytes: int
    sha256: str
    structured_ok: bool
    layers: list[LayerInfo]
    preflight: dict | None
    owner_id: int | None
    source_run_id: int | None
    created_at: str


class FromArchitecture(BaseModel):
    arch: str
    name: str | None = Field(default=None, max_length=200)
    num_classes: int = Field(default=10, ge=1, le=100_000)
    input_shape: list[int] | None = Field(default=None, min_length=1, max_length=4)


def to_public(row: ModelRecord) -> ModelPublic:
    data = row.model_dump()
    data["layers"] = row.layers or []
    data["created_at"] = row.created_at.isoformat()
    return ModelPublic(**data)


def tmp_dir(settings: Settings) -> Path:
    return settings.data_dir / "tmp"


def _require_writer(user: User) -> None:
    if user.role == "viewer":
        raise HTTPException(
            403, "viewers cannot upload or change models; ask an admin for the member role"
        )


def parse_shape(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        shape = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise Invalid(
            f"input_shape must be comma-separated integers such as 1,8,8; got {text!r}"
        ) from None
    if not 1 <= len(shape) <= 4 or any(d < 1 or d > 65536 for d in shape):
        raise Invalid(f"input_shape must be 1 to 4 positive sizes such as 1,8,8; got {text!r}")
    return shape


def parse_dtype(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    if text.strip().lower() not in INPUT_DTYPES:
        raise Invalid(f"input_dtype must be float32 or int64 (token ids); got {text!r}")
    return text.strip().lower()


def _storage_ext(fmt: str, path: Path) -> str:
    return "zip" if fmt == "onnx" and zipfile.is_zipfile(path) else EXTENSIONS[fmt]


def _accept(
    settings: Settings,
    session,
    user: User,
    path: Path,
    sha: str,
    *,
    name: str,
    arch: str | None,
    input_shape: list[int] | None,
    num_classes: int | None,
    input_dtype: str | None = None,
) -> tuple[ModelRecord, bool]:
    """Detect, check policy, preflight, then move the file into place and add the row."""
    existing = store.model_by_sha(session, sha256=sha)
    if existing is not None:
        return existing, False
    fmt = detect_format(path)
    check_code_format_allowed(fmt, settings.code_formats, is_admin=user.role == "admin")
    if fmt in ("safetensors", "state_dict") and not arch:
        raise Invalid(
            f"a {fmt} file holds only weights: also send 'arch' (one of {', '.join(ARCHITECTURES)})"
        )
    if arch:
        check_arch(arch)
    with PREFLIGHT_SLOTS:  # at most a few model-loading child processes at once
        report = run_preflight(
            path,
            fmt,
            arch=arch,
            input_shape=input_shape,
            input_dtype=input_dtype,
            num_classes=num_classes,
            timeout_s=settings.preflight_timeout_s,
            memory_mb=settings.preflight_memory_mb,
        )
    key = f"models/{sha}.{_storage_ext(fmt, path)}"
    artifacts = ArtifactStore(settings.artifacts)
    artifacts.put_file(path, key)
    try:
        row = store.add_model(
            session,
            name=name or f"{fmt} model",
            format=fmt,
            arch=arch,
            input_shape=report.get("input_shape"),
            input_dtype=report.get("input_dtype") or "float32",
            num_classes=report.get("num_classes"),
            n_params=int(report.get("n_params", 0)),
            size_bytes=path.stat().st_size,
            sha256=sha,
            storage_key=key,
            structured_ok=bool(report.get("structured_ok")),
            layers=report.get("layers", []),
            preflight=report,
            owner_id=user.id,
        )
        session.commit()
    except Exception:
        session.rollback()
        artifacts.delete_prefix(key)
        raise
    return row, True


@router.post(
    "/models",
    response_model=ModelPublic,
    status_code=201,
    responses={200: {"description": "the same file was uploaded before"}},
)
async def upload_model(
    request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
):
    """Upload a model file (multipart: ``file``, ``name``, ``arch``, ``input_shape``,
    ``input_dtype``, ``num_classes``; an ONNX model's data file may come as a second ``file``
    or a ``data`` part)."""
    _require_writer(user)
    upload: Upload = await receive_upload(
        request,
        tmp_dir=tmp_dir(settings),
        max_bytes=settings.max_upload_mb * 1024 * 1024,
        max_extra=4,
    )
    work = Path(tempfile.mkdtemp(dir=tmp_dir(settings)))
    try:
        f = upload.fields
        num_classes = f.get("num_classes")
        if num_classes is not None and not num_classes.strip().isdigit():
            raise Invalid(f"num_classes must be a positive integer; got {num_classes!r}")
        path, sha = (upload.path, upload.sha256)
        if upload.extra:  # an ONNX model and its data file(s) as separate parts
            parts = [(upload.filename or "", upload.path), *upload.extra]
            path, sha = bundle_files(parts, work / "bundle.zip")
        row, created = await run_in_threadpool(
            _accept,
            settings,
            session,
            user,
            path,
            sha,
            name=(f.get("name") or Path(upload.filename or "model").stem)[:200],
            arch=(f.get("arch") or None),
            input_shape=parse_shape(f.get("input_shape")),
            num_classes=int(num_classes) if num_classes else None,
            input_dtype=parse_dtype(f.get("input_dtype")),
        )
    finally:
        upload.discard()
        shutil.rmtree(work, ignore_errors=True)
    body = to_public(row)
    return body if created else JSONResponse(body.model_dump(mode="json"), status_code=200)


@router.get("/models", response_model=list[ModelPublic])
def list_models(
    _: CurrentUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[ModelPublic]:
    """All models of the team, newest first."""
    return [to_public(r) for r in store.list_models(session, limit=limit, offset=offset)]


def get_model_or_404(session, model_id: int) -> ModelRecord:
    row = session.get(ModelRecord, model_id)
    if row is None:
        raise HTTPException(404, f"model {model_id} does not exist")
    return row


@router.get("/models/{model_id}", response_model=ModelPublic)
def get_model(model_id: int, _: CurrentUser, session: SessionDep) -> ModelPublic:
    return to_public(get_model_or_404(session, model_id))


@router.get("/models/{model_id}/file", response_class=StreamingResponse)
def download_model(model_id: int, _: CurrentUser, session: SessionDep, settings: SettingsDep):
    """The model file as uploaded (or as a run produced it)."""
    row = get_model_or_404(session, model_id)
    artifacts = ArtifactStore(settings.artifacts)
    if not artifacts.exists(row.storage_key):
        raise HTTPException(410, f"the file of model {model_id} is missing from the artifact store")
    filename = f"model-{row.id}.{row.storage_key.rsplit('.', 1)[-1]}"
    return StreamingResponse(
        artifacts.iter_bytes(row.storage_key),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": content_disposition(filename),
            "Content-Length": str(artifacts.size(row.storage_key)),
        },
    )


@router.delete("/models/{model_id}", status_code=204)
def delete_model(
    model_id: int,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    cascade: bool = False,
) -> None:
    """Delete a model; 409 naming the runs that use it unless ``?cascade=true``."""
    _require_writer(user)
    row = get_model_or_404(session, model_id)
    if user.role != "admin" and row.owner_id != user.id:
        raise HTTPException(403, "you can only delete your own models")
    run_ids = store.runs_using_model(session, model_id=model_id)
    if run_ids and not cascade:
        raise HTTPException(
            409,
            f"model {model_id} is used by runs {run_ids}; delete them first "
            "or send ?cascade=true to delete them too",
        )
    from app.models import Run

    for rid in run_ids:
        run = session.get(Run, rid)
        if run is not None and run.status == "running":
            raise HTTPException(409, f"run {rid} of this model is running; cancel it first")
        session.delete(run)
    key = row.storage_key
    session.delete(row)
    session.commit()
    if store.model_by_sha(session, sha256=row.sha256) is None:
        ArtifactStore(settings.artifacts).delete_prefix(key)


@router.get("/architectures")
def architectures(_: CurrentUser) -> list[dict]:
    """The built-in architectures and their default input shapes."""
    return [
        {
            "name": a.name,
            "default_input_shape": list(a.default_input_shape),
            "description": a.description,
        }
        for a in ARCHITECTURES.values()
    ]


def _build_untrained(settings: Settings, body: FromArchitecture, out: Path) -> None:
    shape = body.input_shape or list(ARCHITECTURES[body.arch].default_input_shape)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.modelio.build_worker",
            body.arch,
            str(body.num_classes),
            ",".join(str(d) for d in shape),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=settings.preflight_timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        raise Invalid(lines[-1] if lines else f"building {body.arch!r} failed")


def create_from_architecture(
    settings: Settings, session, user: User, body: FromArchitecture
) -> ModelRecord:
    """Build an untrained built-in architecture in a child process, preflight it, store it."""
    try:
        check_arch(body.arch)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    tmp = tmp_dir(settings)
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp) as work:
        out = Path(work) / "model.safetensors"
        _build_untrained(settings, body, out)
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
        shape = body.input_shape or list(ARCHITECTURES[body.arch].default_input_shape)
        row, _ = _accept(
            settings,
            session,
            user,
            out,
            sha,
            name=body.name or f"{body.arch} (untrained)",
            arch=body.arch,
            input_shape=shape,
            num_classes=body.num_classes,
        )
    return row


@router.post("/models/from-architecture", response_model=ModelPublic, status_code=201)
def from_architecture(
    body: FromArchitecture, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> ModelPublic:
    """An untrained built-in architecture (train it with a ``kind: "train"`` run)."""
    _require_writer(user)
    return to_public(create_from_architecture(settings, session, user, body))
