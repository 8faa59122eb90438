"""Sweeps: one recipe queued once per (criterion, sparsity), ShrinkBench-style."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app import store
from app.web.api.run_checks import queue_room, validate_body, wake
from app.web.deps import CurrentUser, SessionDep, SettingsDep, SweepDep, may_create

router = APIRouter(prefix="/api", tags=["sweeps"])


class SweepCreate(BaseModel):
    name: str = Field(default="sweep", max_length=200)
    recipe: dict[str, Any]
    sparsities: list[float] = Field(min_length=1, max_length=50)
    criteria: list[str] = Field(min_length=1, max_length=20)
    baseline: bool = True


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
def create_sweep(
    body: SweepCreate,
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
) -> dict:
    """Queue one run per (criterion, sparsity) of one recipe (ShrinkBench-style reporting)."""
    may_create(user)
    bodies = sweep_bodies(body)
    checked = [validate_body(session, b) for b in bodies]
    queue_room(session, settings, user, len(checked))
    sweep = store.create_sweep(
        session,
        owner_id=user.id,
        name=body.name,
        recipe=body.recipe,
        sparsities=body.sparsities,
        criteria=sorted({b["pruning"]["criterion"] for b in bodies}),
    )
    runs = [
        store.create_run(
            session, owner_id=user.id, recipe=r, model_id=m, dataset_id=d, sweep_id=sweep.id
        )
        for r, m, d in checked
    ]
    session.commit()
    wake(request)
    return {"id": sweep.id, "run_ids": [r.id for r in runs]}


@router.get("/sweeps/{sweep_id}")
def get_sweep(sweep: SweepDep, session: SessionDep) -> dict:
    """The sweep's runs with their final metrics, for accuracy-vs-compression plots."""
    runs = store.list_runs(session, sweep_id=sweep.id, limit=1000)
    return {
        "id": sweep.id,
        "name": sweep.name,
        "sparsities": sweep.sparsities,
        "criteria": sweep.criteria,
        "created_at": sweep.created_at,
        "runs": [
            {
                "id": r.id,
                "name": r.name,
                "status": r.status,
                "criterion": (r.recipe or {}).get("pruning", {}).get("criterion"),
                "sparsity": (r.recipe or {}).get("pruning", {}).get("sparsity"),
                "baseline": r.baseline,
                "final": r.final,
            }
            for r in reversed(runs)
        ],
    }
