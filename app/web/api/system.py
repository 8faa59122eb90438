"""Health and identity."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy import text

from app import __version__
from app.models import UserPublic
from app.web.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api", tags=["system"])


class RayPreflightPublic(BaseModel):
    """Team mode: did the test job submitted at start run on the Ray cluster?"""

    state: Literal["checking", "ok", "failed"]
    detail: str
    checked_at: datetime | None
    submission_id: str | None


class Health(BaseModel):
    status: str
    version: str
    database: str
    runner: str
    ray_preflight: RayPreflightPublic | None = None


def ray_preflight(request: Request) -> RayPreflightPublic | None:
    """The start-up check's latest result (None with the local runner)."""
    preflight = getattr(request.app.state, "ray_preflight", None)
    if preflight is None:
        return None
    return RayPreflightPublic.model_validate(preflight.result, from_attributes=True)


@router.get("/health", response_model=Health, response_model_exclude_unset=True)
def health(request: Request, session: SessionDep, settings: SettingsDep) -> Health:
    """Liveness and readiness: no authentication needed. In team mode ``ray_preflight`` says
    whether the Ray cluster ran a test worker; a failed one makes ``status`` "degraded"."""
    try:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        database = "ok"
    except Exception:  # noqa: BLE001 (any driver error means "not ok")
        database = "unavailable"
    preflight = ray_preflight(request)
    ok = database == "ok" and (preflight is None or preflight.state != "failed")
    body = Health(
        status="ok" if ok else "degraded",
        version=__version__,
        database=database,
        runner=settings.runner,
    )
    if preflight is not None:
        body.ray_preflight = preflight  # only then in the answer (response_model_exclude_unset)
    return body


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    """The caller's account."""
    return UserPublic.model_validate(user, from_attributes=True)
