"""Runs and sweeps: persist the row, commit, wake the dispatcher. Nothing here imports torch.

A recipe is checked before anything is queued, without loading the model: the recipe itself
(``spec.Recipe.from_dict``), the model and dataset rows, their input shape and class count,
and the layer names of ``exclude``/``overrides`` against the model row's ``layers``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from app import store
from app.jobs.artifacts import ArtifactStore, content_disposition, log_path, run_prefix
from app.models import RUN_STATUSES, DatasetRecord, ModelRecord, Run, User
from app.web.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api", tags=["runs"])
BUILTIN_DATASETS = {"digits": {"input_shape": [1, 8, 8], "n_classes": 10}}


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
    notes: list[str] | None
    result_model_id: int | None


class SweepCreate(BaseModel):
    name: str = Field(default="sweep", max_length=200)
    recipe: dict[str, Any]
    sparsities: list[float] = Field(min_length=1, max_length=50)
    criteria: list[str] = Field(min_length=1, max_length=20)
    baseline: bool = True


def public(run: Run) -> RunPublic:
    return RunPublic.model_validate(run, from_attributes=True)


# ---------------------------------------------------------------- validation
def _invalid(message: str) -> HTTPException:
    return HTTPException(422, message)


def _shape(shape: list[int] | None, like: list[int]) -> list[int] | None:
    if shape and len(shape) == len(like) + 1:
        return list(shape[1:])  # a leading batch dimension
    return list(shape) if shape else None


def _dataset_meta(session: Session, dataset_id: str) -> dict:
    if dataset_id in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[dataset_id]
    record = session.get(DatasetRecord, dataset_id)
    if record is None:
        raise _invalid(f"dataset_id {dataset_id!r} does not exist; use 'digits' or upload one")
    return {"input_shape": record.input_shape, "n_classes": record.n_classes}


def _check_model(model: ModelRecord, data: dict, pruning: dict) -> None:
    want = data.get("input_shape")
    have = _shape(model.input_shape, want or [])
    if want and have and list(want) != have:
        raise _invalid(f"model_id {model.id} takes inputs of shape {have} but dataset_id has "
                       f"samples of shape {list(want)}")  # fmt: skip
    if model.num_classes and data.get("n_classes") and model.num_classes != data["n_classes"]:
        raise _invalid(f"model_id {model.id} predicts {model.num_classes} classes but the "
                       f"dataset has {data['n_classes']}")  # fmt: skip
    names = {layer.get("name") for layer in model.layers or []}
    if not names:
        return
    asked = [("exclude", n) for n in pruning.get("exclude") or []]
    asked += [("overrides", n) for n in pruning.get("overrides") or {}]
    for field_name, name in asked:
        if name not in names:
            known = ", ".join(sorted(n for n in names if n)[:20])
            raise _invalid(f"pruning.{field_name} names layer {name!r}, which model_id "
                           f"{model.id} does not have; its layers: {known}")  # fmt: skip


def validate_body(session: Session, body: dict) -> tuple[dict, int | None, str]:
    """The stored recipe, model id and dataset id of a valid body; 422 with a sentence if not."""
    from app.pruning.spec import Recipe  # torch-free

    envelope = {"model_id", "dataset_id", "arch"}
    try:
        recipe = Recipe.from_dict({k: v for k, v in body.items() if k not in envelope})
    except ValueError as exc:
        raise _invalid(str(exc)) from None
    stored = recipe.to_dict()
    model_id, dataset_id = body.get("model_id"), str(body.get("dataset_id") or "digits")
    data = _dataset_meta(session, dataset_id)
    if model_id is None:
        arch = body.get("arch")
        if recipe.kind != "train" or not arch:
            raise _invalid("model_id is required (a train run may give arch instead)")
        stored["arch"] = str(arch)
        return stored, None, dataset_id
    model = session.get(ModelRecord, model_id)
    if model is None:
        raise _invalid(f"model_id {model_id} does not exist")
    _check_model(model, data, stored["pruning"])
    return stored, model_id, dataset_id


# ---------------------------------------------------------------- permissions
def may_create(user: User) -> None:
    if user.role == "viewer":
        raise HTTPException(403, "viewers can look at runs but not start, change or delete them")


def may_change(user: User, run: Run) -> None:
    may_create(user)
    if user.role != "admin" and run.owner_id != user.id:
        raise HTTPException(403, f"run {run.id} belongs to another user; you can change only yours")


def _queue_room(session: Session, settings: Any, user: User, adding: int) -> None:
    queued = store.count_queued(session, owner_id=user.id)
    if queued + adding > settings.max_queued_per_user:
        raise HTTPException(429, f"you have {queued} queued runs and this adds {adding}, over "
                                 f"the limit of {settings.max_queued_per_user}; wait for some "
                                 "to start or cancel them")  # fmt: skip


def _wake(request: Request) -> None:
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()


def _run(session: Session, run_id: int) -> Run:
    run = store.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return run


# ---------------------------------------------------------------- routes
@router.post("/runs", response_model=RunPublic, status_code=201)
def create_run(body: RunCreate, request: Request, user: CurrentUser, session: SessionDep,
               settings: SettingsDep) -> RunPublic:  # fmt: skip
    """Validate the recipe, persist a queued run, then hand it to the dispatcher."""
    may_create(user)
    recipe, model_id, dataset_id = validate_body(session, body.model_dump(exclude_unset=True))
    _queue_room(session, settings, user, 1)
    run = store.create_run(session, owner_id=user.id, recipe=recipe, model_id=model_id,
                           dataset_id=dataset_id)  # fmt: skip
    session.commit()
    _wake(request)
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
        raise _invalid(f"status must be one of {', '.join(RUN_STATUSES)}")
    filters = {"status": status, "model_id": model_id, "owner_id": owner_id, "sweep_id": sweep_id}
    response.headers["X-Total-Count"] = str(store.count_runs(session, **filters))
    return [public(r) for r in store.list_runs(session, limit=limit, offset=offset, **filters)]


@router.get("/runs/{run_id}", response_model=RunPublic)
def get_run(run_id: int, session: SessionDep, _: CurrentUser) -> RunPublic:
    return public(_run(session, run_id))


@router.post("/runs/{run_id}/cancel", response_model=RunPublic, status_code=202)
def cancel_run(run_id: int, request: Request, user: CurrentUser, session: SessionDep) -> RunPublic:
    """A queued run ends at once; a running one stops at its next batch."""
    may_change(user, _run(session, run_id))
    run = store.request_cancel(session, run_id=run_id)
    session.commit()
    _wake(request)
    return public(run)


@router.post("/runs/{run_id}/resume", response_model=RunPublic, status_code=202)
def resume_run(run_id: int, request: Request, user: CurrentUser, session: SessionDep,
               settings: SettingsDep) -> RunPublic:  # fmt: skip
    """Queue an interrupted run again; it continues after its last completed step."""
    may_change(user, _run(session, run_id))
    _queue_room(session, settings, user, 1)
    run = store.queue_resume(session, run_id=run_id)
    session.commit()
    _wake(request)
    return public(run)


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(run_id: int, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> None:
    may_change(user, _run(session, run_id))
    store.delete_run(session, run_id=run_id)
    session.commit()
    ArtifactStore(settings.artifacts).delete_prefix(run_prefix(run_id))
    log_path(settings.data_dir, run_id).unlink(missing_ok=True)


@router.get("/runs/{run_id}/steps")
def run_steps(run_id: int, session: SessionDep, _: CurrentUser) -> list[dict]:
    _run(session, run_id)
    return [{"step": s.step, "target_sparsity": s.target_sparsity, **(s.extra or {}),
             "before_finetune": s.before_finetune, "after_finetune": s.after_finetune}
            for s in store.list_steps(session, run_id=run_id)]  # fmt: skip


@router.get("/runs/{run_id}/layers")
def run_layers(run_id: int, session: SessionDep, _: CurrentUser) -> list[dict]:
    _run(session, run_id)
    keys = ("step", "layer", "kind", "shape", "sparsity", "requested", "n_params", "n_nonzero",
            "threshold", "flops")  # fmt: skip
    return [{k: getattr(r, k) for k in keys} for r in store.list_layers(session, run_id=run_id)]


@router.get("/runs/{run_id}/histograms")
def run_histograms(run_id: int, session: SessionDep, _: CurrentUser,
                   layer: str | None = None) -> list[dict]:  # fmt: skip
    _run(session, run_id)
    rows = store.list_histograms(session, run_id=run_id, layer=layer)
    return [{"layer": h.layer, "phase": h.phase, "edges": h.edges, "counts": h.counts,
             "threshold": h.threshold} for h in rows]  # fmt: skip


@router.get("/runs/{run_id}/curve")
def run_curve(run_id: int, session: SessionDep, _: CurrentUser) -> list[dict]:
    _run(session, run_id)
    return [{"epoch": p.epoch, "step": p.step, "loss": p.loss, "accuracy": p.accuracy,
             "lr": p.lr} for p in store.list_curve(session, run_id=run_id)]  # fmt: skip


@router.get("/runs/{run_id}/sensitivity")
def run_sensitivity(run_id: int, session: SessionDep, _: CurrentUser) -> list[dict]:
    _run(session, run_id)
    return [{"layer": r.layer, "sparsity": r.sparsity, "accuracy": r.accuracy}
            for r in store.list_sensitivity(session, run_id=run_id)]  # fmt: skip


@router.get("/runs/{run_id}/artifacts")
def run_artifacts(run_id: int, session: SessionDep, _: CurrentUser) -> list[dict]:
    _run(session, run_id)
    return [{"name": a.name, "kind": a.kind, "size_bytes": a.size_bytes, "verified": a.verified,
             "max_abs_diff": a.max_abs_diff, "sha256": a.sha256}
            for a in store.list_artifacts(session, run_id=run_id)]  # fmt: skip


@router.get("/runs/{run_id}/artifacts/{name}")
def download_artifact(run_id: int, name: str, session: SessionDep, _: CurrentUser,
                      settings: SettingsDep) -> StreamingResponse:  # fmt: skip
    """One artifact as an attachment (streamed from a local folder or an fsspec store)."""
    _run(session, run_id)
    row = store.get_artifact(session, run_id=run_id, name=name)
    artifacts = ArtifactStore(settings.artifacts)
    if row is None or not artifacts.exists(row.storage_key):
        raise HTTPException(404, f"run {run_id} has no artifact named {name!r}")
    session.close()  # no transaction held while the file streams
    media = "application/json" if name.endswith(".json") else "application/octet-stream"
    headers = {"Content-Disposition": content_disposition(name),
               "Content-Length": str(artifacts.size(row.storage_key))}  # fmt: skip
    return StreamingResponse(artifacts.iter_bytes(row.storage_key), media_type=media,
                             headers=headers)  # fmt: skip


# ---------------------------------------------------------------- sweeps
def sweep_bodies(body: SweepCreate) -> list[dict]:
    """One run body per (criterion, sparsity); ``random`` added as the baseline by default."""
    criteria = list(dict.fromkeys(body.criteria))
    if body.baseline and "random" not in criteria:
        criteria.append("random")
    out = []
    for criterion in criteria:
        for sparsity in body.sparsities:
            run = copy.deepcopy(body.recipe)
            pruning = dict(run.get("pruning") or {})
            pruning.update(criterion=criterion, sparsity=sparsity)
            pruning.pop("threshold", None)
            run.update(pruning=pruning, kind="prune", name=f"{body.name} {criterion} {sparsity:g}")
            out.append(run)
    return out


@router.post("/sweeps", status_code=201)
def create_sweep(body: SweepCreate, request: Request, user: CurrentUser, session: SessionDep,
                 settings: SettingsDep) -> dict:  # fmt: skip
    """Queue one run per (criterion, sparsity) of one recipe (ShrinkBench-style reporting)."""
    may_create(user)
    bodies = sweep_bodies(body)
    checked = [validate_body(session, b) for b in bodies]
    _queue_room(session, settings, user, len(checked))
    sweep = store.create_sweep(session, owner_id=user.id, name=body.name, recipe=body.recipe,
                               sparsities=body.sparsities,
                               criteria=sorted({b["pruning"]["criterion"] for b in bodies}))  # fmt: skip
    runs = [store.create_run(session, owner_id=user.id, recipe=r, model_id=m, dataset_id=d,
                             sweep_id=sweep.id) for r, m, d in checked]  # fmt: skip
    session.commit()
    _wake(request)
    return {"id": sweep.id, "run_ids": [r.id for r in runs]}


@router.get("/sweeps/{sweep_id}")
def get_sweep(sweep_id: int, session: SessionDep, _: CurrentUser) -> dict:
    """The sweep's runs with their final metrics, for accuracy-vs-compression plots."""
    sweep = store.get_sweep(session, sweep_id=sweep_id)
    runs = store.list_runs(session, sweep_id=sweep_id, limit=1000)
    return {
        "id": sweep.id, "name": sweep.name, "sparsities": sweep.sparsities,
        "criteria": sweep.criteria, "created_at": sweep.created_at,
        "runs": [{"id": r.id, "name": r.name, "status": r.status,
                  "criterion": (r.recipe or {}).get("pruning", {}).get("criterion"),
                  "sparsity": (r.recipe or {}).get("pruning", {}).get("sparsity"),
                  "baseline": r.baseline, "final": r.final} for r in reversed(runs)],
    }  # fmt: skip
