"""Browser sign-in: /login (password), /login/link (one-time link), /logout."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app import store
from app.security import same_secret, verify_password
from app.web.deps import SESSION_COOKIE, SessionDep, SettingsDep
from app.web.proxies import client_address
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
    limiter = request.app.state.login_limiter
    address = client_address(request, settings)
    name = username.strip()
    wait = limiter.retry_after(name, address)
    if wait:
        ctx = {"error": f"Too many failed sign-ins; try again in {wait} s.", "username": username}
        return templates.TemplateResponse(
            request, "login.html", ctx, status_code=429, headers={"Retry-After": str(wait)}
        )
    user = store.get_user_by_name(session, name=name)
    # always one argon2 verification, so the time does not tell whether the user exists
    matches = verify_password(user.password_hash if user else None, password)
    if user is None or user.disabled or not matches:
        limiter.failed(name, address)
        ctx = {"error": "Wrong user name or password.", "username": username}
        return templates.TemplateResponse(request, "login.html", ctx, status_code=401)
    limiter.succeeded(name, address)
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
def logout(
    request: Request, session: SessionDep, csrf_token: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    check_origin(request)
    key = request.cookies.get(SESSION_COOKIE)
    found = store.user_for_session(session, key=key) if key else None
    if found is not None:
        if not csrf_token or not same_secret(csrf_token, found[1].csrf_token):
            raise HTTPException(
                403, "missing or wrong CSRF token; reload the page and sign out again"
            )
        store.revoke_session(session, key=key)
        session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
