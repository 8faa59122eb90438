"""What the lab offers (``GET /api/catalogue``) and the sparsity a schedule reaches at each step
(``GET /api/schedule/preview``): the new-run form reads both instead of keeping copies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from app import catalogue
from app.errors import Invalid
from app.pruning.spec import ScheduleSpec
from app.pruning.targets import schedule_targets
from app.web.deps import CurrentUser

router = APIRouter(prefix="/api", tags=["catalogue"])


class SchedulePreview(BaseModel):
    kind: str
    steps: int
    sparsity: float
    targets: list[float]


@router.get("/catalogue")
def get_catalogue(_: CurrentUser) -> dict:
    """Criteria (with the granularities each scores and whether it needs BatchNorm or data),
    granularities, schedules, built-in datasets and architectures, and the compare limit."""
    return catalogue.as_json()


@router.get("/schedule/preview", response_model=SchedulePreview)
def schedule_preview(
    _: CurrentUser,
    kind: Annotated[str, Query(max_length=16)] = "oneshot",
    steps: Annotated[int, Query(ge=1, le=1000)] = 1,
    sparsity: Annotated[float, Query(ge=0.0, lt=1.0)] = 0.5,
) -> SchedulePreview:
    """The target sparsity after each pruning step, as the engine will schedule it."""
    try:
        targets = schedule_targets(ScheduleSpec(kind=kind, steps=steps), sparsity)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return SchedulePreview(kind=kind, steps=steps, sparsity=sparsity, targets=targets)
