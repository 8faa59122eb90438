"""Users, API tokens, browser sessions and one-time login links."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from app.errors import Conflict, Invalid, NotFound
from app.models import ROLES, ApiToken, LoginLink, User, WebSession, utcnow
from app.security import hash_password, hash_secret, new_secret, new_token, token_prefix

__all__ = [
    "create_user",
    "get_user_by_name",
    "list_users",
    "set_user_disabled",
    "create_token",
    "list_tokens",
    "revoke_token",
    "user_for_token",
    "ensure_admin_token",
    "ensure_admin_user",
    "create_session",
    "user_for_session",
    "revoke_session",
    "create_login_link",
    "consume_login_link",
]


def _aware(dt: datetime | None) -> datetime | None:
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt


def create_user(
    session: Session, *, name: str, role: str = "member", password: str | None = None
) -> User:
    """Add a user; ``Conflict`` if the name is taken, ``Invalid`` for a bad role or name."""
    name = name.strip()
    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise Invalid("user names are 1-64 letters, digits, '-' or '_'")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    if get_user_by_name(session, name=name) is not None:
        raise Conflict(f"a user named {name!r} already exists")
    user = User(name=name, role=role, password_hash=hash_password(password) if password else None)
    session.add(user)
    session.flush()
    return user


def get_user_by_name(session: Session, *, name: str) -> User | None:
    return session.exec(select(User).where(User.name == name)).first()


def list_users(session: Session) -> list[User]:
    return list(session.exec(select(User).order_by(User.id)))


def set_user_disabled(session: Session, *, user_id: int, disabled: bool) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    user.disabled = disabled
    session.add(user)
    return user


def create_token(
    session: Session, *, user: User, name: str = "token", expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A new API token for ``user``: returns the row and the secret (shown once)."""
    secret = new_token()
    row = ApiToken(
        user_id=user.id,
        name=name[:64],
        token_hash=hash_secret(secret),
        prefix=token_prefix(secret),
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, secret


def list_tokens(session: Session, *, user_id: int | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return list(session.exec(query))


def revoke_token(session: Session, *, token_id: int) -> ApiToken:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"token {token_id} does not exist")
    row.revoked = True
    session.add(row)
    return row


def user_for_token(session: Session, *, secret: str) -> User | None:
    """The active user holding this token (not revoked, not expired, user enabled)."""
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(secret))).first()
    if row is None or row.revoked:
        return None
    expires = _aware(row.expires_at)
    if expires is not None and expires <= utcnow():
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    last = _aware(row.last_used_at)
    if last is None or utcnow() - last > timedelta(seconds=60):
        row.last_used_at = utcnow()  # throttled: one write a minute per token
        session.add(row)
    return user


def ensure_admin_user(session: Session, *, name: str = "admin") -> User:
    """The first admin (created without a password when there is none)."""
    admin = session.exec(select(User).where(User.role == "admin").order_by(User.id)).first()
    return admin or create_user(session, name=name, role="admin")


def ensure_admin_token(session: Session, *, secret: str) -> User:
    """``PRUNELAB_ADMIN_TOKEN``: make sure an admin holds exactly this token."""
    digest = hash_secret(secret)
    row = session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first()
    if row is not None:
        row.revoked = False
        session.add(row)
        return session.get(User, row.user_id)  # type: ignore[return-value]
    admin = ensure_admin_user(session)
    session.add(
        ApiToken(user_id=admin.id, name="PRUNELAB_ADMIN_TOKEN", token_hash=digest, prefix="env")
    )
    session.flush()
    return admin


def create_session(session: Session, *, user: User, hours: float) -> tuple[WebSession, str]:
    """A browser session; returns the row and the cookie value."""
    key = new_secret()
    row = WebSession(
        key_hash=hash_secret(key),
        user_id=user.id,
        csrf_token=new_secret(),
        expires_at=utcnow() + timedelta(hours=hours),
    )
    session.add(row)
    session.flush()
    return row, key


def user_for_session(session: Session, *, key: str) -> tuple[User, WebSession] | None:
    row = session.exec(select(WebSession).where(WebSession.key_hash == hash_secret(key))).first()
    if row is None or row.revoked or _aware(row.expires_at) <= utcnow():
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    return user, row


def revoke_session(session: Session, *, key: str) -> None:
    row = session.exec(select(WebSession).where(WebSession.key_hash == hash_secret(key))).first()
    if row is not None:
        row.revoked = True
        session.add(row)


def create_login_link(session: Session, *, user: User, minutes: float) -> str:
    """A one-time login secret for ``user`` (the ``?token=`` of the printed URL)."""
    secret = new_secret()
    session.add(
        LoginLink(
            token_hash=hash_secret(secret),
            user_id=user.id,
            expires_at=utcnow() + timedelta(minutes=minutes),
        )
    )
    session.flush()
    return secret


def consume_login_link(session: Session, *, secret: str) -> User | None:
    """The user of an unused, unexpired link, marking it used; None otherwise.

    The claim is one ``UPDATE ... WHERE used_at IS NULL``: of any number of concurrent uses,
    exactly one changes the row and gets the user.
    """
    now = utcnow()
    claim = (
        update(LoginLink)
        .where(col(LoginLink.token_hash) == hash_secret(secret))
        .where(col(LoginLink.used_at).is_(None))
        .where(col(LoginLink.expires_at) > now)
        .values(used_at=now)
    )
    result = session.exec(claim)  # type: ignore[call-overload]
    if result.rowcount != 1:
        return None
    row = session.exec(select(LoginLink).where(LoginLink.token_hash == hash_secret(secret))).one()
    user = session.get(User, row.user_id)
    return None if user is None or user.disabled else user
