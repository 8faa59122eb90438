"""Every database read and write: keyword-only functions taking the session first.

Split by resource: ``accounts`` (users, tokens, sessions, login links).
"""

from __future__ import annotations

from app.store.accounts import *  # noqa: F403
from app.store.assets import *  # noqa: F403
from app.store.runs import *  # noqa: F403
