"""Shared fixtures: settings on a temporary data dir, apps, API clients, a fresh PostgreSQL DB."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from tests.factories import make_user

PG_ADMIN_URL = os.environ.get(
    "PRUNELAB_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's PRUNELAB_* environment."""
    for key in list(os.environ):
        if key.startswith("PRUNELAB_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path):
    from app.config import Settings

    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def app(settings):
    from app.main import create_app

    return create_app(settings)


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def db_session(client) -> Iterator[Session]:
    with Session(client.app.state.engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def member_headers(db_session) -> dict[str, str]:
    return make_user(db_session, "member1")[1]


@pytest.fixture
def admin_headers(db_session) -> dict[str, str]:
    return make_user(db_session, "admin1", role="admin")[1]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"prunelab_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
