"""Typed dependencies: database session, current user (bearer token or session cookie), and
the rows a route works on (``RunDep``, ``OwnedRunDep``, ``ModelDep`` ...: 404 with a sentence
when missing, 403 when the caller may not change it).

Every resource dependency resolves the caller first (401, or the login redirect for the
``Page*`` variants), so a signed-out caller never learns whether a row exists."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlmodel import Session

from app import catalogue, store
from app.config import Settings
from app.models import DatasetRecord, ModelRecord, Run, Sweep, User

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


# ---------------------------------------------------------------- permissions
def may_create(user: User) -> None:
    if user.role == "viewer":
        raise HTTPException(403, "viewers can look at runs but not start, change or delete them")


def may_change(user: User, run: Run) -> None:
    may_create(user)
    if user.role != "admin" and run.owner_id != user.id:
        raise HTTPException(403, f"run {run.id} belongs to another user; you can change only yours")


def may_write_models(user: User) -> None:
    if user.role == "viewer":
        raise HTTPException(
            403, "viewers cannot upload or change models; ask an admin for the member role"
        )


# ---------------------------------------------------------------- runs
def _run(run_id: int, session: SessionDep) -> Run:
    run = store.get_run(session, run_id=run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} does not exist")
    return run


def run_for_reader(_: CurrentUser, run: Annotated[Run, Depends(_run)]) -> Run:
    """Every signed-in user reads every run of the team."""
    return run


def run_for_page(_: PageUser, run: Annotated[Run, Depends(_run)]) -> Run:
    return run


RunDep = Annotated[Run, Depends(run_for_reader)]
PageRunDep = Annotated[Run, Depends(run_for_page)]


def run_for_changer(user: CurrentUser, run: RunDep) -> Run:
    """A run the caller may cancel, resume or delete: their own (any, for an admin)."""
    may_change(user, run)
    return run


OwnedRunDep = Annotated[Run, Depends(run_for_changer)]


# ---------------------------------------------------------------- models
def _model(model_id: int, session: SessionDep) -> ModelRecord:
    row = store.get_model(session, model_id=model_id)
    if row is None:
        raise HTTPException(404, f"model {model_id} does not exist")
    return row


def model_for_reader(_: CurrentUser, model: Annotated[ModelRecord, Depends(_model)]) -> ModelRecord:
    return model


def model_for_page(_: PageUser, model: Annotated[ModelRecord, Depends(_model)]) -> ModelRecord:
    return model


def model_for_owner(user: CurrentUser, model_id: int, session: SessionDep) -> ModelRecord:
    """A model the caller may delete (a viewer is refused before the model is looked up)."""
    may_write_models(user)
    model = _model(model_id, session)
    if user.role != "admin" and model.owner_id != user.id:
        raise HTTPException(403, "you can only delete your own models")
    return model


ModelDep = Annotated[ModelRecord, Depends(model_for_reader)]
PageModelDep = Annotated[ModelRecord, Depends(model_for_page)]
OwnedModelDep = Annotated[ModelRecord, Depends(model_for_owner)]


# ---------------------------------------------------------------- datasets
def dataset_for_reader(
    dataset_id: str, _: CurrentUser, session: SessionDep
) -> DatasetRecord | catalogue.DatasetInfo:
    """A built-in dataset's catalogue entry, or the uploaded dataset's row."""
    if (info := catalogue.DATASETS.get(dataset_id)) is not None:
        return info
    row = store.get_dataset(session, dataset_id=dataset_id)
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id!r} does not exist")
    return row


def dataset_for_owner(dataset_id: str, user: CurrentUser, session: SessionDep) -> DatasetRecord:
    """An uploaded dataset the caller may delete (built-in ones are 409)."""
    if user.role == "viewer":
        raise HTTPException(403, "viewers cannot delete datasets; ask an admin for the member role")
    if dataset_id in catalogue.DATASETS:
        raise HTTPException(409, f"the built-in {dataset_id} dataset cannot be deleted")
    row = store.get_dataset(session, dataset_id=dataset_id)
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id!r} does not exist")
    if user.role != "admin" and row.owner_id != user.id:
        raise HTTPException(403, "you can only delete your own datasets")
    return row


DatasetDep = Annotated[DatasetRecord | catalogue.DatasetInfo, Depends(dataset_for_reader)]
OwnedDatasetDep = Annotated[DatasetRecord, Depends(dataset_for_owner)]


# ---------------------------------------------------------------- sweeps
def _sweep(sweep_id: int, session: SessionDep) -> Sweep:
    sweep = store.get_sweep(session, sweep_id=sweep_id)
    if sweep is None:
        raise HTTPException(404, f"sweep {sweep_id} does not exist")
    return sweep


def sweep_for_reader(_: CurrentUser, sweep: Annotated[Sweep, Depends(_sweep)]) -> Sweep:
    return sweep


def sweep_for_page(_: PageUser, sweep: Annotated[Sweep, Depends(_sweep)]) -> Sweep:
    return sweep


SweepDep = Annotated[Sweep, Depends(sweep_for_reader)]
PageSweepDep = Annotated[Sweep, Depends(sweep_for_page)]
