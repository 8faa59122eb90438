"""HTML pages -> templates, plus the small JSON chart endpoints those pages fetch.

Routes are thin: :mod:`app.web.page_data` and :mod:`app.web.run_view`
(the run page) read the rows and build the figures.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from app import catalogue, store
from app.models import RUN_STATUSES
from app.store import views
from app.web import page_data, run_view
from app.web.chart_style import fmt_metric, fmt_quality
from app.web.deps import (
    PageModelDep,
    PageRunDep,
    PageSweepDep,
    PageUser,
    SessionDep,
    SettingsDep,
)
from app.web.templating import templates

router = APIRouter(include_in_schema=False)
templates.env.globals.update(
    fmt_metric=fmt_metric, fmt_quality=fmt_quality, json_block=page_data.json_block
)
PageNo = Annotated[int, Query(ge=1, le=100_000)]


def render(request: Request, name: str, user: object, ctx: dict, status: int = 200) -> Response:
    web_session = getattr(request.state, "web_session", None)
    base = {"user": user, "csrf_token": getattr(web_session, "csrf_token", "")}
    return templates.TemplateResponse(request, name, base | ctx, status_code=status)


def _figure(fig: dict) -> JSONResponse:
    return JSONResponse(fig, headers={"Cache-Control": "no-store"})


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request,
    user: PageUser,
    session: SessionDep,
    model_id: Annotated[int | None, Query()] = None,
    dataset_id: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    ctx = page_data.overview_context(session, model_id=model_id, dataset_id=dataset_id or None)
    return render(request, "index.html", user, ctx)


@router.get("/runs", response_class=HTMLResponse)
def runs_list(
    request: Request,
    user: PageUser,
    session: SessionDep,
    page: PageNo = 1,
    status: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    status = status if status in RUN_STATUSES else None
    pag = page_data.pagination(store.count_runs(session, status=status), page)
    rows = store.list_runs(session, status=status, limit=pag["per_page"], offset=pag["offset"])
    ctx = {
        "runs": [page_data.run_summary(r) for r in rows],
        "pag": pag,
        "status": status,
        "statuses": RUN_STATUSES,
    }
    return render(request, "runs.html", user, ctx)


@router.get("/runs/new", response_class=HTMLResponse)
def run_new(
    request: Request,
    user: PageUser,
    session: SessionDep,
    model_id: Annotated[int | None, Query()] = None,
) -> Response:
    ctx = page_data.run_form_context(session, model_id=model_id)
    return render(request, "run_new.html", user, ctx)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run: PageRunDep, user: PageUser, session: SessionDep) -> Response:
    return render(request, "run.html", user, run_view.run_context(session, run))


@router.get("/runs/{run_id}/figures.json")
def run_figures(run: PageRunDep, session: SessionDep) -> JSONResponse:
    """The run page's row-based charts and status, for the live refresh."""
    body = {
        "status": run.status,
        "progress": run.progress,
        "message": run.message,
        "error": run.error,
        "figures": run_view.run_figures(session, run),
        "layers": views.run_layer_names(session, run_id=run.id),
    }
    return _figure(body)


@router.get("/runs/{run_id}/charts/histogram")
def run_histogram(
    run: PageRunDep, session: SessionDep, layer: Annotated[str, Query(max_length=200)]
) -> JSONResponse:
    return _figure(run_view.histogram_figure(session, run, layer))


@router.get("/runs/{run_id}/charts/mask")
def run_mask(
    run: PageRunDep,
    session: SessionDep,
    settings: SettingsDep,
    layer: Annotated[str, Query(max_length=200)],
) -> JSONResponse:
    return _figure(run_view.mask_figure(session, run, layer, settings.artifacts))


@router.get("/compare", response_class=HTMLResponse)
def compare(
    request: Request,
    user: PageUser,
    session: SessionDep,
    runs: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    try:
        ids = page_data.parse_run_ids(runs)
    except ValueError as exc:
        recent = store.list_runs(session, limit=20)
        ctx = {
            "error": str(exc),
            "recent": [page_data.run_summary(r) for r in recent],
            "max_compare": catalogue.MAX_COMPARE,
        }
        return render(request, "compare_pick.html", user, ctx, status=422 if runs else 200)
    return render(request, "compare.html", user, page_data.compare_context(session, ids))


@router.get("/compare/histogram")
def compare_histogram(
    user: PageUser,
    session: SessionDep,
    runs: Annotated[str, Query(max_length=200)],
    layer: Annotated[str, Query(max_length=200)],
) -> JSONResponse:
    try:
        ids = page_data.parse_run_ids(runs)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return _figure(page_data.compare_histogram(session, ids, layer))


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(
    request: Request, sweep: PageSweepDep, user: PageUser, session: SessionDep
) -> Response:
    return render(request, "sweep.html", user, page_data.sweep_context(session, sweep))


@router.get("/models", response_class=HTMLResponse)
def models_list(
    request: Request, user: PageUser, session: SessionDep, page: PageNo = 1
) -> Response:
    pag = page_data.pagination(store.count_models(session), page)
    rows = store.list_models(session, limit=pag["per_page"], offset=pag["offset"])
    return render(request, "models.html", user, {"models": rows, "pag": pag})


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(
    request: Request, model: PageModelDep, user: PageUser, session: SessionDep
) -> Response:
    runs = store.list_runs(session, model_id=model.id, limit=10)
    n_runs = store.count_runs(session, model_id=model.id)
    ctx = {"model": model, "runs": [page_data.run_summary(r) for r in runs], "n_runs": n_runs}
    return render(request, "model.html", user, ctx)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_list(request: Request, user: PageUser, session: SessionDep) -> Response:
    return render(request, "datasets.html", user, {"datasets": page_data.dataset_choices(session)})


@router.get("/docs", response_class=HTMLResponse)
def api_docs(request: Request, user: PageUser) -> Response:
    """Swagger UI served from the vendored swagger-ui-bundle (nothing from a CDN)."""
    return templates.TemplateResponse(request, "docs.html", {})
