"""Typed dependencies: database session, current user (bearer token or session cookie)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlmodel import Session

from app import store
from app.config import Settings
from app.models import User

SESSION_COOKIE = "prunelab_session"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine, expire_on_commit=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


class LoginRequired(Exception):
    """Raised by page dependencies: the handler redirects the browser to /login."""


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "x-csrf-token"


def check_csrf(request: Request, web_session) -> None:  # noqa: ANN001 (WebSession)
    """Cookie-authenticated writes need the session's CSRF token (header or form field)
    and, when the browser sends one, a same-site Origin."""
    if request.method in SAFE_METHODS:
        return
    from urllib.parse import urlsplit

    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site request refused (Origin does not match this server)")
    sent = request.headers.get(CSRF_HEADER) or getattr(request.state, "form_csrf", None)
    if not sent or not secrets.compare_digest(sent, web_session.csrf_token):
        raise HTTPException(
            403, "missing or wrong CSRF token: send the page's X-CSRF-Token header with the request"
        )


def resolve_user(request: Request, session: Session) -> User | None:
    """The caller: a valid bearer token first, else a valid session cookie."""
    token = _bearer(request)
    if token is not None:
        user = store.user_for_token(session, secret=token)
        session.commit()  # last_used_at
        return user
    key = request.cookies.get(SESSION_COOKIE)
    if key:
        found = store.user_for_session(session, key=key)
        if found is not None:
            request.state.web_session = found[1]
            check_csrf(request, found[1])
            return found[0]
    return None


def current_user(request: Request, session: SessionDep) -> User:
    user = resolve_user(request, session)
    if user is None:
        detail = (
            "this API token is not valid (revoked, expired or unknown); create one with "
            "`prunelab token create NAME`"
            if _bearer(request)
            else "authentication required: send 'Authorization: Bearer <token>' "
            "(create one with `prunelab token create NAME`)"
        )
        raise HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})
    request.state.user = user
    return user


def page_user(request: Request, session: SessionDep) -> User:
    user = resolve_user(request, session)
    if user is None:
        raise LoginRequired()
    request.state.user = user
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if user.role != "admin":
        raise HTTPException(403, "only an admin may do this")
    return user


CurrentUser = Annotated[User, Depends(current_user)]
PageUser = Annotated[User, Depends(page_user)]
AdminUser = Annotated[User, Depends(admin_user)]
