"""Issue 14, items 6 and 8: the one-time login link is one-time under concurrency (SQLite and
PostgreSQL); sign-in takes as long for an unknown user as for a known one; a lockout decays and
cannot shut a user out from everywhere; X-Forwarded-For counts only from trusted proxies."""

from __future__ import annotations

import statistics
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app import db, store
from app.config import Settings
from app.models import WebSession
from app.web.ratelimit import LoginLimiter


def _engine(kind: str, tmp_path, request):
    if kind == "sqlite":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        settings = Settings(
            data_dir=tmp_path / "data", database_url=request.getfixturevalue("pg_url")
        )
    db.upgrade(settings)
    return db.make_engine(settings)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_eight_parallel_uses_of_a_login_link_make_exactly_one_session(
    kind, tmp_path, request
) -> None:
    engine = _engine(kind, tmp_path, request)
    with Session(engine) as s:
        admin = store.ensure_admin_user(s)
        secret = store.create_login_link(s, user=admin, minutes=5)
        s.commit()
    barrier = threading.Barrier(8)
    winners: list[int] = []

    def use() -> None:
        with Session(engine) as s:
            barrier.wait()
            user = store.consume_login_link(s, secret=secret)
            if user is not None:
                store.create_session(s, user=user, hours=1)
                winners.append(user.id)
            s.commit()

    threads = [threading.Thread(target=use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    with Session(engine) as s:
        assert len(list(s.exec(select(WebSession)))) == 1
    assert len(winners) == 1
    engine.dispose()


def _login_seconds(client: TestClient, name: str) -> float:
    start = time.perf_counter()
    r = client.post("/login", data={"username": name, "password": "wrong-password"})
    assert r.status_code == 401
    return time.perf_counter() - start


def test_unknown_and_known_users_take_the_same_time(client: TestClient, db_session) -> None:
    store.create_user(db_session, name="known", password="correct-horse")
    db_session.commit()
    client.app.state.login_limiter = LoginLimiter(per_user=1000, per_address=1000)
    known = statistics.median(_login_seconds(client, "known") for _ in range(5))
    unknown = statistics.median(_login_seconds(client, "nobody-here") for _ in range(5))
    assert unknown > 0.5 * known  # both hash a password (argon2), not one of them only


def test_a_lockout_decays_and_does_not_lock_the_user_out_elsewhere() -> None:
    now = [1000.0]
    limiter = LoginLimiter(per_user=5, per_address=20, window_s=300, clock=lambda: now[0])
    for _ in range(50):  # an attacker at one address keeps guessing
        if limiter.retry_after("alice", "6.6.6.6") == 0:
            limiter.failed("alice", "6.6.6.6")
        now[0] += 30
    for _ in range(5):
        limiter.failed("alice", "6.6.6.6")
    assert limiter.retry_after("alice", "6.6.6.6") > 0
    assert limiter.retry_after("alice", "10.0.0.7") == 0  # alice, from her own machine
    now[0] += 301
    assert limiter.retry_after("alice", "6.6.6.6") == 0  # and it decays


def test_forwarded_for_counts_only_from_trusted_proxies(tmp_path) -> None:
    from app.web.proxies import client_address

    class Req:
        def __init__(self, peer: str, forwarded: str | None) -> None:
            self.client = type("C", (), {"host": peer})()
            self.headers = {"x-forwarded-for": forwarded} if forwarded else {}

    none = Settings(data_dir=tmp_path)
    trusted = Settings(data_dir=tmp_path, trusted_proxies="10.0.0.1, 192.168.0.0/24")
    assert client_address(Req("10.0.0.1", "1.2.3.4"), none) == "10.0.0.1"
    assert client_address(Req("10.0.0.1", "1.2.3.4"), trusted) == "1.2.3.4"
    assert client_address(Req("192.168.0.9", "5.5.5.5, 1.2.3.4"), trusted) == "1.2.3.4"
    assert client_address(Req("8.8.8.8", "1.2.3.4"), trusted) == "8.8.8.8"
    # a forged left-most entry does not help: the right-most untrusted hop counts
    assert client_address(Req("10.0.0.1", "9.9.9.9, 1.2.3.4"), trusted) == "1.2.3.4"
