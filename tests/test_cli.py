from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import app as cli_app
from tests.conftest import free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("PRUNELAB_DATA_DIR", str(tmp_path / "data"))
    return {**os.environ, "PRUNELAB_DATA_DIR": str(tmp_path / "data")}


def test_user_add_and_token_create_print_a_usable_token(env) -> None:
    runner = CliRunner()
    r = runner.invoke(cli_app, ["user", "add", "alice", "--admin"])
    assert r.exit_code == 0, r.output
    assert "created admin 'alice'" in r.output
    r = runner.invoke(cli_app, ["token", "create", "alice"])
    assert r.exit_code == 0, r.output
    token = r.output.strip().splitlines()[-1]
    assert token.startswith("pl_") and len(token) > 40

    from app import store
    from app.cli import _session, _settings

    with _session(_settings()) as session:
        user = store.user_for_token(session, secret=token)
        assert user is not None and user.name == "alice" and user.role == "admin"

    listed = runner.invoke(cli_app, ["token", "list"])
    assert token not in listed.output and "active" in listed.output
    token_id = listed.output.split()[0]
    assert runner.invoke(cli_app, ["token", "revoke", token_id]).exit_code == 0
    with _session(_settings()) as session:
        assert store.user_for_token(session, secret=token) is None


def test_expiring_token_stops_working_after_its_expiry(env) -> None:
    from datetime import timedelta

    from app import store
    from app.cli import _session, _settings
    from app.models import ApiToken, utcnow

    runner = CliRunner()
    assert runner.invoke(cli_app, ["user", "add", "eve"]).exit_code == 0
    r = runner.invoke(cli_app, ["token", "create", "eve", "--expires-days", "2"])
    assert r.exit_code == 0 and "valid until" in r.output, r.output
    token = r.output.strip().splitlines()[-1]
    with _session(_settings()) as session:
        assert store.user_for_token(session, secret=token) is not None
        row = session.get(ApiToken, 1)
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        session.commit()
        assert store.user_for_token(session, secret=token) is None
    bad = runner.invoke(cli_app, ["token", "create", "eve", "--expires-days", "-1"])
    assert bad.exit_code == 1 and "must be positive" in bad.output


def test_user_add_with_password_from_stdin(env) -> None:
    runner = CliRunner()
    r = runner.invoke(cli_app, ["user", "add", "bob", "--password-stdin"], input="long enough pw\n")
    assert r.exit_code == 0, r.output
    short = runner.invoke(cli_app, ["user", "add", "carl", "--password-stdin"], input="short\n")
    assert short.exit_code == 1
    assert "at least 8 characters" in short.output


def test_duplicate_user_and_unknown_user_are_clear_errors(env) -> None:
    runner = CliRunner()
    assert runner.invoke(cli_app, ["user", "add", "dora"]).exit_code == 0
    again = runner.invoke(cli_app, ["user", "add", "dora"])
    assert again.exit_code == 1 and "already exists" in again.output
    missing = runner.invoke(cli_app, ["token", "create", "nobody"])
    assert missing.exit_code == 1 and "prunelab user add nobody" in missing.output


def test_bad_setting_is_reported_not_a_traceback(env, monkeypatch) -> None:
    monkeypatch.setenv("PRUNELAB_RUNNER", "celery")
    r = CliRunner().invoke(cli_app, ["db", "upgrade"])
    assert r.exit_code == 2
    assert "PRUNELAB_RUNNER" in r.output
    assert "Traceback" not in r.output


def test_db_upgrade(env, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli_app, ["db", "upgrade"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data" / "prunelab.db").exists()


def test_web_layer_does_not_import_torch() -> None:
    code = (
        "import sys; import app.main, app.web.pages, app.web.api.auth, app.store, app.cli;"
        "app.main.create_app; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prunelab_serve_answers_health_on_loopback(env, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    exe = Path(sys.executable).parent / "prunelab"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(port)], env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        body = None
        for _ in range(150):
            try:
                body = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).json()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert body is not None, log.read_text()
        assert body["status"] == "ok" and body["database"] == "ok"
        text = log.read_text()
        link = next(line.strip() for line in text.splitlines() if "/login/link?token=" in line)
        r = httpx.get(link, follow_redirects=False)
        assert r.status_code == 303 and "prunelab_session" in r.headers["set-cookie"]
        # the secret in the link never reaches the log
        secret = link.split("token=")[1]
        time.sleep(0.3)
        assert secret not in log.read_text().replace(link, "")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
