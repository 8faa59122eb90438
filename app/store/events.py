"""A run's event log (status, progress, metrics) that the SSE stream replays; re-exported by
``store.runs``.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from app.models import RunEvent

__all__ = ["add_event", "events_after"]


def add_event(session: Session, *, run_id: int, type: str, data: dict) -> RunEvent:
    event = RunEvent(run_id=run_id, type=type, data=data)
    session.add(event)
    session.flush()
    return event


def events_after(
    session: Session, *, run_id: int, after_id: int = 0, limit: int = 200
) -> list[RunEvent]:
    query = (
        select(RunEvent)
        .where(RunEvent.run_id == run_id, col(RunEvent.id) > after_id)
        .order_by(col(RunEvent.id))
        .limit(limit)
    )
    return list(session.exec(query))
