"""Models: upload, list, get, download, delete, from-architecture.

Thin routes: detection, preflight and the new row are ``app.intake.models``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from app import store
from app.artifacts import ArtifactStore, content_disposition, run_prefix
from app.catalogue import ARCHITECTURES
from app.errors import Invalid
from app.intake import models as intake
from app.limits import check_input_shape, over
from app.models import ModelRecord
from app.web.deps import (
    CurrentUser,
    ModelDep,
    OwnedModelDep,
    SessionDep,
    SettingsDep,
    may_write_models,
)
from app.web.uploads import Upload, receive_upload

router = APIRouter(prefix="/api", tags=["models"])


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
    may_write_models(user)
    upload: Upload = await receive_upload(
        request,
        tmp_dir=intake.tmp_dir(settings),
        max_bytes=settings.max_upload_mb * 1024 * 1024,
        max_extra=intake.MAX_DATA_PARTS,
    )
    try:
        f = upload.fields
        num_classes = f.get("num_classes")
        if num_classes is not None and not num_classes.strip().isdigit():
            raise Invalid(f"num_classes must be a positive integer; got {num_classes!r}")
        shape = intake.parse_shape(f.get("input_shape"))
        if shape:
            check_input_shape(shape, settings)
        if num_classes and int(num_classes) > settings.max_classes:
            raise over("num_classes", int(num_classes), settings.max_classes, "max_classes")
        row, created = await run_in_threadpool(
            intake.accept_upload,
            settings,
            session,
            user,
            [(upload.filename or "", upload.path), *upload.extra],
            upload.sha256,
            name=(f.get("name") or Path(upload.filename or "model").stem)[:200],
            arch=(f.get("arch") or None),
            input_shape=shape,
            num_classes=int(num_classes) if num_classes else None,
            input_dtype=intake.parse_dtype(f.get("input_dtype")),
        )
    finally:
        upload.discard()
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


@router.get("/models/{model_id}", response_model=ModelPublic)
def get_model(model: ModelDep) -> ModelPublic:
    return to_public(model)


@router.get("/models/{model_id}/file", response_class=StreamingResponse)
def download_model(row: ModelDep, settings: SettingsDep):
    """The model file as uploaded (or as a run produced it)."""
    artifacts = ArtifactStore(settings.artifacts)
    if not artifacts.exists(row.storage_key):
        raise HTTPException(410, f"the file of model {row.id} is missing from the artifact store")
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
    row: OwnedModelDep,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    cascade: bool = False,
) -> None:
    """Delete a model; 409 naming the runs that use it unless ``?cascade=true``, which also
    deletes those runs (all of them must be the caller's, or the caller an admin)."""
    model_id = row.id
    runs = [
        store.require_run(session, run_id=i)
        for i in store.runs_using_model(session, model_id=model_id)
    ]
    if runs and not cascade:
        raise HTTPException(
            409,
            f"model {model_id} is used by runs {sorted(r.id for r in runs)}; delete them first "
            "or send ?cascade=true to delete them too",
        )
    others = sorted(r.id for r in runs if user.role != "admin" and r.owner_id != user.id)
    if others:
        raise HTTPException(
            403, f"model {model_id} is used by runs {others} of other users; ask an admin"
        )
    for run in runs:
        store.delete_run(session, run_id=run.id)  # 409 for a queued or running run
    session.flush()  # the runs go before the model they point at
    key, sha = row.storage_key, row.sha256
    session.delete(row)
    session.commit()
    artifacts = ArtifactStore(settings.artifacts)
    for run in runs:
        artifacts.delete_prefix(run_prefix(run.id))
    if store.model_by_sha(session, sha256=sha) is None:
        artifacts.delete_prefix(key)


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


@router.post("/models/from-architecture", response_model=ModelPublic, status_code=201)
def from_architecture(
    body: FromArchitecture, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> ModelPublic:
    """An untrained built-in architecture (train it with a ``kind: "train"`` run)."""
    may_write_models(user)
    row = intake.create_from_architecture(
        settings,
        session,
        user,
        arch=body.arch,
        name=body.name,
        num_classes=body.num_classes,
        input_shape=body.input_shape,
    )
    return to_public(row)
