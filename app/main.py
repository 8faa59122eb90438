"""The application factory: ``create_app(settings)`` builds a FastAPI app and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app import __version__, db, store
from app.config import Settings, load_settings
from app.errors import LabError
from app.jobs.runner import Runner
from app.logs import install_redaction
from app.web import auth_pages, metrics, pages
from app.web import events as events_api
from app.web.api import auth as auth_api
from app.web.api import catalogue as catalogue_api
from app.web.api import datasets as datasets_api
from app.web.api import models as models_api
from app.web.api import runs as runs_api
from app.web.api import sweeps as sweeps_api
from app.web.api import system as system_api
from app.web.deps import LoginRequired
from app.web.limits import BodyLimitMiddleware
from app.web.metrics import LatencyMiddleware, make_registry
from app.web.ratelimit import LoginLimiter
from app.web.security_headers import SecurityHeadersMiddleware
from app.web.templating import STATIC_DIR

if TYPE_CHECKING:
    from app.jobs.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def _bootstrap(settings: Settings, engine) -> None:  # noqa: ANN001
    if settings.admin_token:
        with Session(engine) as session:
            store.ensure_admin_token(session, secret=settings.admin_token)
            session.commit()


def _start_dispatcher(
    settings: Settings, engine: Engine, runner: Runner | None, *, thread: bool
) -> Dispatcher:
    """The one dispatcher (recovers unfinished runs first) driving ``runner``; without its
    thread it only moves when :meth:`~app.jobs.dispatcher.Dispatcher.tick` is called."""
    from app.jobs.dispatcher import Dispatcher
    from app.jobs.runner import make_runner

    dispatcher = Dispatcher(settings, engine, runner or make_runner(settings))
    if thread:
        dispatcher.start()
    else:
        dispatcher.recover()
    return dispatcher


def create_app(
    settings: Settings | None = None,
    *,
    runner: Runner | None = None,
    dispatch_thread: bool = True,
    migrate: bool = True,
    demo: bool = False,
) -> FastAPI:
    """Build the app. The lifespan owns the engine and the dispatcher driving ``runner``
    (default: the one ``settings`` name, local worker processes or Ray jobs).

    ``dispatch_thread=False`` builds the dispatcher without its thread: a test steps it with
    ``app.state.dispatcher.tick()`` (with a :class:`~app.jobs.runner.FakeRunner`, say)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_redaction()
        if migrate:
            db.upgrade(settings)
        engine = db.make_engine(settings)
        app.state.engine = engine
        app.state.metrics_registry, app.state.http_latency = make_registry(engine)
        _bootstrap(settings, engine)
        app.state.dispatcher = _start_dispatcher(settings, engine, runner, thread=dispatch_thread)
        seeder = None
        if demo:
            from app.demo import DemoSeeder

            seeder = DemoSeeder(settings, engine, wake=app.state.dispatcher.wake)
            seeder.start()
        try:
            yield
        finally:
            if seeder is not None:
                seeder.stop()
            if app.state.dispatcher is not None:
                app.state.dispatcher.stop()
            engine.dispose()

    app = FastAPI(
        title="PruneLab",
        version=__version__,
        description="A self-hosted lab for pruning neural networks.",
        lifespan=lifespan,
        docs_url=None,
        openapi_url=None,  # served below, to signed-in users only
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.dispatcher = None
    app.state.login_limiter = LoginLimiter()
    _install_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(LatencyMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.mount("/vendor/plotly", StaticFiles(packages=[("plotly", "package_data")]), name="plotly")
    import swagger_ui_bundle

    app.mount(
        "/vendor/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger"
    )
    routers = (
        system_api,
        auth_api,
        catalogue_api,
        models_api,
        datasets_api,
        runs_api,
        sweeps_api,
        events_api,
    )
    for router in [m.router for m in routers] + [auth_pages.router, pages.router, metrics.router]:
        app.include_router(router)
    _openapi_route(app)
    return app


def _openapi_route(app: FastAPI) -> None:
    """``/openapi.json`` for signed-in users and token holders (outsiders get nothing but the
    login page and health)."""
    from fastapi import Depends

    from app.web.deps import current_user

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(current_user)])
    def openapi_schema() -> JSONResponse:
        return JSONResponse(app.openapi())


def _wants_html(request: Request) -> bool:
    """A browser asking for a page (not the API): errors come back as a page with a sentence."""
    path = request.url.path
    if path.startswith(("/api", "/openapi.json", "/metrics", "/static", "/vendor")):
        return False
    return "text/html" in request.headers.get("accept", "")


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
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_html(request) and isinstance(exc.detail, str):
            from app.web.templating import templates

            titles = {403: "Not allowed", 404: "Not found", 422: "Cannot show this"}
            ctx = {
                "status_code": exc.status_code,
                "detail": exc.detail,
                "title": titles.get(exc.status_code, "Something went wrong"),
                "user": getattr(request.state, "user", None),
            }
            return templates.TemplateResponse(
                request, "error.html", ctx, status_code=exc.status_code
            )
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": "internal error; the server log has the details"}, status_code=500
        )
