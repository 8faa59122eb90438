"""``GET /api/runs/{id}/events``: the run's ``progress``, ``metric`` and ``status`` events as SSE.

Events come from the ``run_events`` table (the row id is the SSE ``id``), so a client that
reconnects with ``Last-Event-ID`` gets exactly what it missed. Each poll opens a short session
and closes it: a listener never holds a transaction. Keep-alive comments go out every
``settings.sse_ping_s`` seconds; the stream ends after the event that finishes the run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.engine import Engine
from sqlmodel import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app import store
from app.web.deps import RunDep, SessionDep, SettingsDep

router = APIRouter(prefix="/api", tags=["runs"])
ACTIVE = ("queued", "running")


def _poll(engine: Engine, run_id: int, after: int) -> tuple[str | None, list[tuple]]:
    """The run's status, then the events after ``after`` (status first: see ``stream``)."""
    with Session(engine) as s:
        run = store.get_run(s, run_id=run_id)
        status = run.status if run else None
        rows = store.events_after(s, run_id=run_id, after_id=after)
        return status, [(e.id, e.type, e.data) for e in rows]


async def stream(
    engine: Engine, run_id: int, after: int, poll_s: float
) -> AsyncIterator[ServerSentEvent]:
    """Events after ``after`` until the run has ended and its last event was sent.

    The status is read before the events: a finishing worker commits its ``status`` event
    together with the status, so once a finished status is seen, that event is in the batch.
    """
    while True:
        status, rows = await run_in_threadpool(_poll, engine, run_id, after)
        for event_id, kind, data in rows:
            after = event_id
            yield ServerSentEvent(data=json.dumps(data), event=kind, id=str(event_id))
        if status not in ACTIVE and len(rows) < 200:
            return
        if not rows:
            await asyncio.sleep(poll_s)


def _last_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return 0
    if not raw.strip().isdigit():
        raise HTTPException(422, "Last-Event-ID must be the numeric id of an event")
    return int(raw)


@router.get("/runs/{run_id}/events", response_class=EventSourceResponse)
def run_events(
    run: RunDep, request: Request, session: SessionDep, settings: SettingsDep
) -> EventSourceResponse:
    """Server-Sent Events of one run; resumes from ``Last-Event-ID``; closes when it ends."""
    run_id = run.id
    session.close()  # the stream polls with its own short sessions
    after = _last_id(request)
    events = stream(request.app.state.engine, run_id, after, settings.sse_poll_s)
    return EventSourceResponse(events, ping=settings.sse_ping_s)
