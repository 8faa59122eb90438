"""Crash aftermath: at start, runs an earlier server left ``interrupted`` are queued again.

On with ``PRUNELAB_AUTO_RESUME=true`` (the default for the local runner; for Ray, where a
restart of the web server does not stop jobs, it is off unless set). Each run keeps why and
when it was interrupted (``interrupted_reason``, ``interrupted_at``) and resumes from its last
checkpoint; a run already started ``MAX_ATTEMPTS`` times is left for a person to look at.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlmodel import col, select

from app import store
from app.config import Settings
from app.db import session_scope
from app.models import Run

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


def resume_interrupted(settings: Settings, engine: Engine) -> list[int]:
    """Queue every interrupted run again (when auto-resume is on); the ids queued."""
    if not settings.resumes_automatically:
        return []
    resumed: list[int] = []
    with session_scope(engine) as s:
        rows = s.exec(select(Run).where(Run.status == "interrupted").order_by(col(Run.id)))
        for run in list(rows):
            if run.attempt >= MAX_ATTEMPTS:
                log.warning(
                    "run %s was interrupted after %d attempts; not resumed automatically",
                    run.id,
                    run.attempt,
                )
                continue
            store.queue_resume(s, run_id=run.id)
            log.info(
                "run %s resumed automatically (interrupted: %s)", run.id, run.interrupted_reason
            )
            resumed.append(run.id)
    return resumed
