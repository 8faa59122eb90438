"""Secrets: API tokens (random, stored as SHA-256), argon2 password hashes, session keys."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "pl_"
_hasher = PasswordHasher()


def new_token() -> str:
    """A fresh API token (shown once; only its hash is stored)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    """A random URL-safe secret for session keys, CSRF tokens and login links."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a token or session key (constant-time compared on lookup)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_prefix(token: str) -> str:
    """The first characters of a token, safe to show in lists and logs."""
    return token[:10]


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise ValueError("passwords must be at least 8 characters long")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; False for a missing or malformed hash.

    A missing hash (unknown user, or one without a password) still costs one argon2
    verification, so the answer takes as long whether or not the user exists.
    """
    if not password_hash:
        with contextlib.suppress(VerificationError, InvalidHashError):
            _hasher.verify(_dummy_hash(), password)
        return False
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@functools.cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
