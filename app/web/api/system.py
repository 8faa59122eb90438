"""Health and identity."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import text

from app import __version__
from app.models import UserPublic
from app.web.deps import CurrentUser, SessionDep, SettingsDep

router = APIRouter(prefix="/api", tags=["system"])


class Health(BaseModel):
    status: str
    version: str
    database: str
    runner: str


@router.get("/health", response_model=Health)
def health(session: SessionDep, settings: SettingsDep) -> Health:
    """Liveness and readiness: no authentication needed."""
    try:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        database = "ok"
    except Exception:  # noqa: BLE001 (any driver error means "not ok")
        database = "unavailable"
    return Health(
        status="ok" if database == "ok" else "degraded",
        version=__version__,
        database=database,
        runner=settings.runner,
    )


@router.get("/me", response_model=UserPublic)
def me(user: CurrentUser) -> UserPublic:
    """The caller's account."""
    return UserPublic.model_validate(user, from_attributes=True)
