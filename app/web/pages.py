"""HTML pages -> templates. The dashboard pages grow here."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.web.deps import PageUser
from app.web.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, user: PageUser) -> Response:
    return templates.TemplateResponse(request, "index.html", {"user": user})


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request) -> Response:
    """Swagger UI served from the vendored swagger-ui-bundle (nothing from a CDN)."""
    return templates.TemplateResponse(request, "docs.html", {})
