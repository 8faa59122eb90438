"""Every database read and write: keyword-only functions taking the session first.

Split by resource: ``accounts`` (users, tokens, sessions, login links), ``assets`` (models,
datasets), ``runs`` (runs, their status and events), ``results`` (what runs produce, sweeps);
``views`` holds the dict-shaped reads the dashboard pages chart. One function per question:
``get_*`` returns None when the row is missing, ``require_*`` raises :class:`app.errors.NotFound`.
"""

from __future__ import annotations

from app.store.accounts import *  # noqa: F403
from app.store.assets import *  # noqa: F403
from app.store.results import *  # noqa: F403
from app.store.runs import *  # noqa: F403
