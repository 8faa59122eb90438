from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app import store
from app.models import ApiToken
from app.security import hash_secret
from tests.factories import make_user


def test_health_needs_no_token(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body == {"status": "ok", "version": "0.1.0", "database": "ok", "runner": "local"}


def test_api_answers_401_without_a_token(client: TestClient) -> None:
    r = client.get("/api/me")
    assert r.status_code == 401
    assert "Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_api_answers_401_with_a_wrong_token(client: TestClient) -> None:
    r = client.get("/api/me", headers={"Authorization": "Bearer pl_not-a-real-token"})
    assert r.status_code == 401
    assert "not valid" in r.json()["detail"]


def test_every_api_route_but_health_needs_auth(client: TestClient) -> None:
    """No /api route answers 2xx without credentials, except health."""
    for route in client.app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/api") or path == "/api/health":
            continue
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        for method in getattr(route, "methods", set()) - {"HEAD", "OPTIONS"}:
            r = client.request(method, concrete)
            assert r.status_code == 401, (method, path, r.status_code)


def test_a_valid_token_identifies_the_user(client: TestClient, db_session: Session) -> None:
    _, headers = make_user(db_session, "alice")
    r = client.get("/api/me", headers=headers)
    assert r.status_code == 200
    assert r.json()["name"] == "alice"
    assert r.json()["role"] == "member"


def test_tokens_are_stored_only_as_sha256(client: TestClient, db_session: Session) -> None:
    _, headers = make_user(db_session, "bob")
    secret = headers["Authorization"].split()[1]
    rows = db_session.exec(select(ApiToken)).all()
    assert all(secret not in (r.token_hash, r.prefix) for r in rows)
    assert any(r.token_hash == hash_secret(secret) for r in rows)


def test_revoked_token_stops_working_on_the_next_request(
    client: TestClient, db_session: Session
) -> None:
    _, headers = make_user(db_session, "carol")
    created = client.post("/api/tokens", json={"name": "second"}, headers=headers)
    assert created.status_code == 201
    second = {"Authorization": f"Bearer {created.json()['token']}"}
    assert client.get("/api/me", headers=second).status_code == 200
    assert client.delete(f"/api/tokens/{created.json()['id']}", headers=headers).status_code == 204
    assert client.get("/api/me", headers=second).status_code == 401


def test_admin_token_from_the_environment(tmp_path, monkeypatch) -> None:
    from app.config import Settings
    from app.main import create_app

    secret = "admin-token-from-env-0123456789"
    with TestClient(create_app(Settings(data_dir=tmp_path, admin_token=secret))) as c:
        r = c.get("/api/me", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 200
        assert r.json()["role"] == "admin"


def test_members_cannot_manage_users(client: TestClient, member_headers, admin_headers) -> None:
    assert client.get("/api/users", headers=member_headers).status_code == 403
    r = client.post("/api/users", json={"name": "dave"}, headers=admin_headers)
    assert r.status_code == 201
    assert (
        client.post("/api/users", json={"name": "dave"}, headers=admin_headers).status_code == 409
    )


def test_disabled_user_is_locked_out_at_once(client: TestClient, db_session, admin_headers) -> None:
    user, headers = make_user(db_session, "erin")
    assert client.get("/api/me", headers=headers).status_code == 200
    r = client.patch(f"/api/users/{user.id}", json={"disabled": True}, headers=admin_headers)
    assert r.status_code == 200
    assert client.get("/api/me", headers=headers).status_code == 401


def test_pages_redirect_to_login_without_a_session(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")
    assert "Sign in" in client.get("/login").text


def test_one_time_login_link_sets_a_session_cookie(client: TestClient, db_session) -> None:
    admin = store.ensure_admin_user(db_session)
    secret = store.create_login_link(db_session, user=admin, minutes=5)
    db_session.commit()
    r = client.get(f"/login/link?token={secret}", follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "prunelab_session=" in cookie
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "admin · admin" in client.get("/").text
    # the link works once only
    client.cookies.clear()
    again = client.get(f"/login/link?token={secret}", follow_redirects=False)
    assert again.status_code == 401
    assert "already used or has expired" in again.text


def test_password_login_and_logout(client: TestClient, db_session) -> None:
    make_user(db_session, "frank", password="correct horse")
    bad = client.post("/login", data={"username": "frank", "password": "wrong pass"})
    assert bad.status_code == 401
    assert "Wrong user name or password" in bad.text
    ok = client.post(
        "/login", data={"username": "frank", "password": "correct horse"}, follow_redirects=False
    )
    assert ok.status_code == 303
    assert "frank · member" in client.get("/").text
    assert client.post("/logout", follow_redirects=False).status_code == 403  # no CSRF token
    page = client.get("/").text
    csrf = page.split('name="csrf_token" value="')[1].split('"')[0]
    out = client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_cross_site_login_form_is_refused(client: TestClient, db_session) -> None:
    make_user(db_session, "gina", password="correct horse")
    r = client.post(
        "/login",
        data={"username": "gina", "password": "correct horse"},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403


def test_errors_are_json_with_detail(client: TestClient, member_headers) -> None:
    r = client.post("/api/tokens", json={"name": ""}, headers=member_headers)
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], list)
    r = client.delete("/api/tokens/999", headers=member_headers)
    assert r.status_code == 404
    assert r.json() == {"detail": "token 999 does not exist"}


def test_security_headers_and_local_assets(client: TestClient, member_headers) -> None:
    r = client.get("/login")
    csp = r.headers["content-security-policy"]
    assert (
        "script-src 'self'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/vendor/plotly/plotly.min.js").status_code == 200
    docs = client.get("/docs", headers=member_headers).text
    assert "/vendor/swagger/swagger-ui-bundle.js" in docs and "cdn" not in docs
    schema = client.get("/openapi.json", headers=member_headers).json()
    assert schema["info"]["title"] == "PruneLab" and "/api/runs" in schema["paths"]


def test_outsiders_get_only_the_login_page_and_health(client: TestClient) -> None:
    assert client.get("/api/health").status_code == 200
    assert client.get("/login").status_code == 200
    assert client.get("/openapi.json").status_code == 401
    for path in ("/", "/docs", "/runs", "/models", "/datasets", "/runs/new", "/compare"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), path


def test_cookie_authenticated_api_writes_need_the_csrf_token(
    client: TestClient, db_session
) -> None:
    make_user(db_session, "hank", password="correct horse")
    client.post("/login", data={"username": "hank", "password": "correct horse"})
    assert client.get("/api/me").status_code == 200  # reads need no token
    assert client.post("/api/tokens", json={"name": "x"}).status_code == 403
    csrf = client.get("/").text.split('name="csrf_token" value="')[1].split('"')[0]
    ok = client.post("/api/tokens", json={"name": "x"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 201
    evil = client.post(
        "/api/tokens",
        json={"name": "x"},
        headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    )
    assert evil.status_code == 403


def test_login_attempts_are_rate_limited(client: TestClient, db_session) -> None:
    make_user(db_session, "ivan", password="correct horse")
    for _ in range(5):
        assert (
            client.post("/login", data={"username": "ivan", "password": "nope-nope"}).status_code
            == 401
        )
    blocked = client.post("/login", data={"username": "ivan", "password": "correct horse"})
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in blocked.text


def test_json_bodies_are_limited(client: TestClient, member_headers) -> None:
    r = client.post(
        "/api/tokens",
        content=b"x" * (2 * 1024 * 1024),
        headers={**member_headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert "request body larger" in r.json()["detail"]


def test_metrics_for_admins_or_the_metrics_token(
    client: TestClient, member_headers, admin_headers
) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=member_headers).status_code == 403
    client.get("/api/me", headers=member_headers)
    r = client.get("/metrics", headers=admin_headers)
    assert r.status_code == 200
    assert 'prunelab_runs{status="queued"} 0.0' in r.text
    assert "prunelab_queue_length 0.0" in r.text
    assert "prunelab_http_request_duration_seconds_bucket" in r.text
    assert 'method="GET",route="/api/me",status="200"' in r.text
