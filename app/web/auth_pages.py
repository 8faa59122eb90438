"""Browser sign-in: /login (password), /login/link (one-time link), /logout."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import store
from app.security import verify_password
from app.web.deps import SESSION_COOKIE, PageUser, SessionDep, SettingsDep
from app.web.templating import templates

router = APIRouter(include_in_schema=False)


def check_origin(request: Request) -> None:
    """CSRF defence for forms: a cross-site Origin (or Referer) is refused."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return  # same-origin navigations from old browsers and non-browser clients
    if urlsplit(origin).netloc != request.headers.get("host", request.url.netloc):
        raise HTTPException(403, "cross-site form submission refused")


def _start_session(request: Request, session, settings, user) -> Response:  # noqa: ANN001
    _, key = store.create_session(session, user=user, hours=settings.session_hours)
    session.commit()
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        key,
        max_age=int(settings.session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies or request.url.scheme == "https",
        path="/",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": None, "username": ""})


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=256)],
) -> Response:
    check_origin(request)
    user = store.get_user_by_name(session, name=username.strip())
    if user is None or user.disabled or not verify_password(user.password_hash, password):
        ctx = {"error": "Wrong user name or password.", "username": username}
        return templates.TemplateResponse(request, "login.html", ctx, status_code=401)
    return _start_session(request, session, settings, user)


@router.get("/login/link")
def login_link(
    request: Request, token: str, session: SessionDep, settings: SettingsDep
) -> Response:
    user = store.consume_login_link(session, secret=token)
    if user is None:
        session.commit()
        ctx = {
            "error": "This login link was already used or has expired; restart "
            "`prunelab serve` for a new one, or sign in with a password.",
            "username": "",
        }
        return templates.TemplateResponse(request, "login.html", ctx, status_code=401)
    return _start_session(request, session, settings, user)


@router.post("/logout")
def logout(request: Request, session: SessionDep, user: PageUser) -> Response:
    check_origin(request)
    key = request.cookies.get(SESSION_COOKIE)
    if key:
        store.revoke_session(session, key=key)
        session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
