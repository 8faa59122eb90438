"""The admin page: how this server runs work, and in team mode whether the Ray cluster can."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.engine import make_url

from app import __version__
from app.models import User
from app.web.api.system import ray_preflight
from app.web.deps import PageUser, SettingsDep
from app.web.pages import render

router = APIRouter(include_in_schema=False)
BADGES = {"ok": "succeeded", "failed": "failed", "checking": "running"}


def page_admin(user: PageUser) -> User:
    if user.role != "admin":
        raise HTTPException(403, "only an admin may see the admin page")
    return user


@router.get("/admin", response_class=HTMLResponse)
def admin_page(
    request: Request, user: Annotated[User, Depends(page_admin)], settings: SettingsDep
) -> Response:
    ctx = {
        "version": __version__,
        "runner": settings.runner,
        "ray_address": settings.ray_address,
        "database": make_url(settings.db_url).get_backend_name(),
        "artifacts": settings.artifacts,
        "preflight": ray_preflight(request),
        "badges": BADGES,
    }
    return render(request, "admin.html", user, ctx)
