"""Users and API tokens over the API (tokens: own; users: admin)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from app import store
from app.models import ApiToken, ApiTokenPublic, UserPublic
from app.web.deps import AdminUser, CurrentUser, SessionDep

router = APIRouter(prefix="/api", tags=["accounts"])


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: str = "member"
    password: str | None = Field(default=None, min_length=8, max_length=256)


class UserUpdate(BaseModel):
    disabled: bool


class TokenCreate(BaseModel):
    name: str = Field(default="token", min_length=1, max_length=64)
    expires_at: datetime | None = None


class TokenCreated(ApiTokenPublic):
    token: str = Field(description="the secret, shown this once")


@router.get("/users", response_model=list[UserPublic])
def list_users(_: AdminUser, session: SessionDep) -> list[UserPublic]:
    return [UserPublic.model_validate(u, from_attributes=True) for u in store.list_users(session)]


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, _: AdminUser, session: SessionDep) -> UserPublic:
    user = store.create_user(session, name=body.name, role=body.role, password=body.password)
    session.commit()
    return UserPublic.model_validate(user, from_attributes=True)


@router.patch("/users/{user_id}", response_model=UserPublic)
def update_user(user_id: int, body: UserUpdate, me: AdminUser, session: SessionDep) -> UserPublic:
    if user_id == me.id and body.disabled:
        raise HTTPException(409, "you cannot disable your own account")
    user = store.set_user_disabled(session, user_id=user_id, disabled=body.disabled)
    session.commit()
    return UserPublic.model_validate(user, from_attributes=True)


@router.get("/tokens", response_model=list[ApiTokenPublic])
def list_tokens(user: CurrentUser, session: SessionDep) -> list[ApiTokenPublic]:
    rows = store.list_tokens(session, user_id=None if user.role == "admin" else user.id)
    return [ApiTokenPublic.model_validate(r, from_attributes=True) for r in rows]


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(
    body: TokenCreate, user: CurrentUser, session: SessionDep, response: Response
) -> TokenCreated:
    row, secret = store.create_token(session, user=user, name=body.name, expires_at=body.expires_at)
    session.commit()
    response.headers["Cache-Control"] = "no-store"  # the secret must not sit in any cache
    return TokenCreated(
        **ApiTokenPublic.model_validate(row, from_attributes=True).model_dump(), token=secret
    )


@router.delete("/tokens/{token_id}", status_code=204)
def revoke_token(token_id: int, user: CurrentUser, session: SessionDep) -> None:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise HTTPException(404, f"token {token_id} does not exist")
    if row.user_id != user.id and user.role != "admin":
        raise HTTPException(403, "you can only revoke your own tokens")
    store.revoke_token(session, token_id=token_id)
    session.commit()
