"""Runs and sweeps: persist the row, commit, wake the dispatcher. Nothing here imports torch.

A recipe is checked before anything is queued, without loading the model: the recipe itself
(``spec.Recipe.from_dict``), the model and dataset rows, their input shape and class count,
and the layer names of ``exclude``/``overrides`` against the model row's ``layers``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app import store
from app.artifacts import ArtifactStore, content_disposition, log_path, run_prefix
from app.models import RUN_STATUSES, Run
from app.pruning.notes import Note, as_note
from app.store.results import LAYER_COLUMNS
from app.web.api.run_checks import invalid, queue_room, validate_body, wake
from app.web.deps import CurrentUser, OwnedRunDep, RunDep, SessionDep, SettingsDep, may_create
from app.web.page_data import run_metric, run_task

router = APIRouter(prefix="/api", tags=["runs"])


class RunCreate(BaseModel):
    """A run recipe (``shared/design/API.md``) plus the model and dataset it runs on."""

    model_config = ConfigDict(extra="allow")
    kind: str = "prune"
    name: str = ""
    model_id: int | None = None
    dataset_id: str = "digits"
    arch: str | None = Field(default=None, description="train runs: a built-in architecture")
    pruning: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    seed: int = 0
    sensitivity: dict[str, Any] | None = None


class NotePublic(BaseModel):
    """One note of a run: ``level`` "info" or "warning", the ``layer`` it is about, if any."""

    level: str
    layer: str | None
    text: str


class RunPublic(BaseModel):
    id: int
    name: str
    kind: str
    status: str
    progress: float
    message: str | None
    error: str | None
    recipe: dict | None
    model_id: int | None
    dataset_id: str
    owner_id: int | None
    sweep_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested: bool
    attempt: int
    last_step: int | None
    baseline: dict | None
    final: dict | None
    notes: list[NotePublic] | None
    physical: bool | None = Field(
        description="units were physically removed (a smaller model); null until it succeeds"
    )
    masks_only: bool | None = Field(
        description="pruned with masks only: weights zeroed in place, no speed-up expected"
    )
    result_model_id: int | None
    interrupted_at: datetime | None = None
    interrupted_reason: str | None = None
    allocation: dict[str, float] | None = None
    task: str | None = Field(
        default=None,
        description="classification or language_model (from what the run measured: a "
        "perplexity means a language model); null before the baseline is measured",
    )
    metric: str | None = Field(
        default=None,
        description="the headline quality metric: accuracy (higher is better) or perplexity "
        "(lower is better; baseline.perplexity and final.perplexity)",
    )

    @field_validator("notes", mode="before")
    @classmethod
    def _structured(cls, notes: list | None) -> list[Note] | None:
        """Older runs stored plain sentences: they read as info notes."""
        return None if notes is None else [as_note(n) for n in notes]


def public(run: Run) -> RunPublic:
    out = RunPublic.model_validate(run, from_attributes=True)
    out.task, out.metric = run_task(run), run_metric(run)
    return out


# ---------------------------------------------------------------- routes
@router.post("/runs", response_model=RunPublic, status_code=201)
def create_run(
    body: RunCreate, request: Request, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> RunPublic:
    """Validate the recipe, persist a queued run, then hand it to the dispatcher."""
    may_create(user)
    recipe, model_id, dataset_id = validate_body(
        session, body.model_dump(exclude_unset=True), settings
    )
    queue_room(session, settings, user, 1)
    run = store.create_run(
        session, owner_id=user.id, recipe=recipe, model_id=model_id, dataset_id=dataset_id
    )
    session.commit()
    wake(request)
    return public(run)


@router.get("/runs", response_model=list[RunPublic])
def list_runs(
    response: Response,
    session: SessionDep,
    _: CurrentUser,
    status: str | None = None,
    model_id: int | None = None,
    owner_id: int | None = None,
    sweep_id: int | None = None,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0),
) -> list[RunPublic]:
    """Runs, newest first; ``X-Total-Count`` carries the number matching the filters."""
    if status is not None and status not in RUN_STATUSES:
        raise invalid(f"status must be one of {', '.join(RUN_STATUSES)}")
    filters = {"status": status, "model_id": model_id, "owner_id": owner_id, "sweep_id": sweep_id}
    response.headers["X-Total-Count"] = str(store.count_runs(session, **filters))
    return [public(r) for r in store.list_runs(session, limit=limit, offset=offset, **filters)]


@router.get("/runs/{run_id}", response_model=RunPublic)
def get_run(run: RunDep) -> RunPublic:
    return public(run)


@router.post("/runs/{run_id}/cancel", response_model=RunPublic, status_code=202)
def cancel_run(run: OwnedRunDep, request: Request, session: SessionDep) -> RunPublic:
    """A queued run ends at once; a running one stops at its next batch."""
    run = store.request_cancel(session, run_id=run.id)
    session.commit()
    wake(request)
    return public(run)


@router.post("/runs/{run_id}/resume", response_model=RunPublic, status_code=202)
def resume_run(
    run: OwnedRunDep,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> RunPublic:
    """Queue an interrupted run again; it continues after its last completed step."""
    queue_room(session, settings, user, 1)
    run = store.queue_resume(session, run_id=run.id)
    session.commit()
    wake(request)
    return public(run)


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(run: OwnedRunDep, session: SessionDep, settings: SettingsDep) -> None:
    run_id = run.id
    store.delete_run(session, run_id=run_id)
    session.commit()
    ArtifactStore(settings.artifacts).delete_prefix(run_prefix(run_id))
    log_path(settings.data_dir, run_id).unlink(missing_ok=True)


@router.get("/runs/{run_id}/steps")
def run_steps(run: RunDep, session: SessionDep) -> list[dict]:
    return [
        {
            "step": s.step,
            "target_sparsity": s.target_sparsity,
            **(s.extra or {}),
            "before_finetune": s.before_finetune,
            "after_finetune": s.after_finetune,
        }
        for s in store.list_steps(session, run_id=run.id)
    ]


@router.get("/runs/{run_id}/layers")
def run_layers(run: RunDep, session: SessionDep) -> list[dict]:
    rows = store.list_layers(session, run_id=run.id)
    return [{k: getattr(r, k) for k in LAYER_COLUMNS} for r in rows]


@router.get("/runs/{run_id}/histograms")
def run_histograms(run: RunDep, session: SessionDep, layer: str | None = None) -> list[dict]:
    rows = store.list_histograms(session, run_id=run.id, layer=layer)
    return [
        {
            "layer": h.layer,
            "phase": h.phase,
            "edges": h.edges,
            "counts": h.counts,
            "threshold": h.threshold,
        }
        for h in rows
    ]


@router.get("/runs/{run_id}/curve")
def run_curve(run: RunDep, session: SessionDep) -> list[dict]:
    return [
        {"epoch": p.epoch, "step": p.step, "loss": p.loss, "accuracy": p.accuracy, "lr": p.lr}
        for p in store.list_curve(session, run_id=run.id)
    ]


@router.get("/runs/{run_id}/sensitivity")
def run_sensitivity(run: RunDep, session: SessionDep) -> list[dict]:
    return [
        {"layer": r.layer, "sparsity": r.sparsity, "accuracy": r.accuracy}
        for r in store.list_sensitivity(session, run_id=run.id)
    ]


@router.get("/runs/{run_id}/artifacts")
def run_artifacts(run: RunDep, session: SessionDep) -> list[dict]:
    """The run's files; ``error`` says why one failed its reload check (None when it passed).
    A file that could not be written or reloaded at all has ``size_bytes`` 0 and no download."""
    return [
        {
            "name": a.name,
            "kind": a.kind,
            "size_bytes": a.size_bytes,
            "verified": a.verified,
            "max_abs_diff": a.max_abs_diff,
            "sha256": a.sha256,
            "error": a.error,
        }
        for a in store.list_artifacts(session, run_id=run.id)
    ]


@router.get("/runs/{run_id}/artifacts/{name}")
def download_artifact(
    run: RunDep, name: str, session: SessionDep, settings: SettingsDep
) -> StreamingResponse:
    """One artifact as an attachment (streamed from a local folder or an fsspec store)."""
    row = store.get_artifact(session, run_id=run.id, name=name)
    artifacts = ArtifactStore(settings.artifacts)
    if row is None or not artifacts.exists(row.storage_key):
        raise HTTPException(404, f"run {run.id} has no artifact named {name!r}")
    session.close()  # no transaction held while the file streams
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    headers = {
        "Content-Disposition": content_disposition(name),
        "Content-Length": str(artifacts.size(row.storage_key)),
    }
    return StreamingResponse(
        artifacts.iter_bytes(row.storage_key), media_type=media, headers=headers
    )
