"""``GET /metrics`` in Prometheus format, for admins or the metrics token."""

from __future__ import annotations

import secrets
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func
from sqlmodel import Session, col, select
from starlette.types import ASGIApp, Receive, Scope, Send

from app.models import RUN_STATUSES, Run
from app.web.deps import resolve_user

router = APIRouter(include_in_schema=False)
DURATION_BUCKETS = (10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, float("inf"))


class RunCollector:
    """Runs by status, queue length and job durations, read from the database at scrape time."""

    def __init__(self, engine) -> None:  # noqa: ANN001
        self.engine = engine

    def collect(self):  # noqa: ANN201
        with Session(self.engine) as session:
            counts = dict(session.exec(select(Run.status, func.count()).group_by(Run.status)).all())
            done = session.exec(
                select(Run.started_at, Run.finished_at)
                .where(col(Run.finished_at).is_not(None), col(Run.started_at).is_not(None))
                .order_by(col(Run.id).desc())
                .limit(5000)
            ).all()
        by_status = GaugeMetricFamily("prunelab_runs", "Runs by status", labels=["status"])
        for status in RUN_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield GaugeMetricFamily(
            "prunelab_queue_length", "Queued runs", value=counts.get("queued", 0)
        )
        durations = [(f - s).total_seconds() for s, f in done]
        buckets = [
            (str(b) if b != float("inf") else "+Inf", sum(d <= b for d in durations))
            for b in DURATION_BUCKETS
        ]
        yield HistogramMetricFamily(
            "prunelab_job_duration_seconds",
            "Duration of finished runs (last 5000)",
            buckets=buckets,
            sum_value=sum(durations),
        )


def make_registry(engine) -> tuple[CollectorRegistry, Histogram]:  # noqa: ANN001
    registry = CollectorRegistry()
    registry.register(RunCollector(engine))
    latency = Histogram(
        "prunelab_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route", "status"],
        registry=registry,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    return registry, latency


class LatencyMiddleware:
    """Times every HTTP request by its route template (never the raw path: bounded labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            hist = getattr(scope["app"].state, "http_latency", None)
            if hist is not None:
                hist.labels(scope["method"], template, str(status["code"])).observe(
                    time.perf_counter() - start
                )


@router.get("/metrics")
def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    allowed = bool(
        settings.metrics_token and token and secrets.compare_digest(token, settings.metrics_token)
    )
    if not allowed:
        with Session(request.app.state.engine, expire_on_commit=False) as session:
            user = resolve_user(request, session)
            role = user.role if user is not None else None
        if role is None:
            raise HTTPException(401, "metrics need an admin's token or PRUNELAB_METRICS_TOKEN")
        if role != "admin":
            raise HTTPException(403, "only admins (or the metrics token) may read metrics")
    data = generate_latest(request.app.state.metrics_registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
