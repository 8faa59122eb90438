"""The application factory: ``create_app(settings)`` builds a FastAPI app and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlmodel import Session

from app import __version__, db, store
from app.config import Settings, load_settings
from app.errors import LabError
from app.logs import install_redaction
from app.web import auth_pages, pages
from app.web.api import auth as auth_api
from app.web.api import system as system_api
from app.web.deps import LoginRequired
from app.web.security_headers import SecurityHeadersMiddleware
from app.web.templating import STATIC_DIR

log = logging.getLogger(__name__)


def _bootstrap(settings: Settings, engine) -> None:  # noqa: ANN001
    if settings.admin_token:
        with Session(engine) as session:
            store.ensure_admin_token(session, secret=settings.admin_token)
            session.commit()


def create_app(settings: Settings | None = None, *, migrate: bool = True) -> FastAPI:
    """Build the app. The lifespan owns the engine (and, later, the runner)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_redaction()
        if migrate:
            db.upgrade(settings)
        engine = db.make_engine(settings)
        app.state.engine = engine
        _bootstrap(settings, engine)
        try:
            yield
        finally:
            engine.dispose()

    app = FastAPI(
        title="PruneLab",
        version=__version__,
        description="A self-hosted lab for pruning neural networks.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    _install_handlers(app)
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.mount("/vendor/plotly", StaticFiles(packages=[("plotly", "package_data")]), name="plotly")
    import swagger_ui_bundle

    app.mount(
        "/vendor/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger"
    )
    for router in (system_api.router, auth_api.router, auth_pages.router, pages.router):
        app.include_router(router)
    return app


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(LabError)
    async def lab_error(_: Request, exc: LabError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal error; the server log has the details"}, status_code=500
        )
