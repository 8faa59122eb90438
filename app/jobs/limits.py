"""What one worker may use: memory (``PRUNELAB_WORKER_MEMORY_MB``) and wall time
(``PRUNELAB_WORKER_MAX_SECONDS``), and the sentences a run ends with when it goes over.

The memory limit is the worker's own address-space limit (``RLIMIT_AS``), set by the worker
before torch is imported, so it holds for local and Ray workers alike; an allocation over it
fails inside the run, which ends ``failed`` with :func:`memory_sentence`. The wall-time limit is
enforced by the dispatcher, which stops workers whose attempt started too long ago.
"""

from __future__ import annotations

import resource
from datetime import datetime, timedelta

from app.config import Settings
from app.models import utcnow

_OOM_MARKERS = ("can't allocate memory", "out of memory", "cannot allocate memory", "bad_alloc")


def apply_memory_limit(settings: Settings) -> None:
    """Limit this process's address space to ``PRUNELAB_WORKER_MEMORY_MB`` (never raise it)."""
    limit = settings.worker_memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def memory_sentence(exc: BaseException, settings: Settings) -> str | None:
    """The run's error when ``exc`` is an allocation over the worker's memory limit."""
    text = str(exc).lower()
    if (
        isinstance(exc, MemoryError)
        or any(m in text for m in _OOM_MARKERS)
        or (isinstance(exc, SystemError) and _address_space_limited())
    ):
        return (
            f"the run needed more memory than the worker's limit of {settings.worker_memory_mb} "
            "MB; raise PRUNELAB_WORKER_MEMORY_MB on the server (or use a smaller batch size "
            "or model)"
        )
    return None


def _address_space_limited() -> bool:
    """A C extension whose allocation fails under ``RLIMIT_AS`` often returns NULL without
    setting an exception, which Python reports as ``SystemError``; under a finite limit that is
    the memory limit speaking, not a bug in the run."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


def wall_time_sentence(settings: Settings) -> str:
    return (
        f"the run took longer than the worker's wall-time limit of "
        f"{settings.worker_max_seconds:g} s and was stopped; raise PRUNELAB_WORKER_MAX_SECONDS "
        "on the server for longer runs"
    )


def started_before(settings: Settings) -> datetime:
    """Attempts started before this moment are over the wall-time limit."""
    return utcnow() - timedelta(seconds=settings.worker_max_seconds)
