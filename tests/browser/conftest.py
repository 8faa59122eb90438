"""A real PruneLab server on loopback (``prunelab serve`` in a subprocess, its own data dir),
seeded rows plus real runs, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from tests.browser import seed
from tests.conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROME_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@dataclass
class Lab:
    url: str
    token: str
    login_link: str
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def _wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the server did not become ready")


def _seed(data_dir: Path) -> tuple[dict[str, int], str]:
    """Rows for the pages, and a one-time login link for the admin (as ``serve`` prints)."""
    from app import store
    from app.config import Settings
    from app.db import make_engine

    settings = Settings(data_dir=data_dir)
    engine = make_engine(settings)
    try:
        with Session(engine, expire_on_commit=False) as s:
            model = seed.seed_model(s)
            art = Path(settings.artifacts)
            a = seed.seed_run(s, model=model, name="element l1 80%", artifacts_dir=art)
            b = seed.seed_run(
                s,
                model=model,
                name="kernel l2 60%",
                criterion="l2",
                granularity="kernel",
                final_sparsity=0.6,
                artifacts_dir=art,
            )
            sens = seed.seed_sensitivity(s, model=model)
            sweep = seed.seed_sweep(s, model=model)
            admin = store.ensure_admin_user(s)
            link = store.create_login_link(s, user=admin, minutes=60)
            s.commit()
            ids = {"model": model.id, "a": a.id, "b": b.id, "sens": sens.id, "sweep": sweep.id}
            return ids, link
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    data_dir = tmp_path_factory.mktemp("lab") / "data"
    token = "pl_test_" + secrets.token_urlsafe(24)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNELAB_")}
    env |= {
        "PRUNELAB_DATA_DIR": str(data_dir),
        "PRUNELAB_ADMIN_TOKEN": token,
        "PRUNELAB_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
    }
    log = (tmp_path_factory.mktemp("log") / "server.log").open("w+")
    proc = subprocess.Popen(  # the app factory migrates the empty database on start
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        ids, link = _seed(data_dir)
        yield Lab(url=url, token=token, login_link=f"{url}/login/link?token={link}", ids=ids)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@dataclass
class Watched:
    page: object
    console_errors: list[str]
    outside: list[str]


@pytest.fixture(scope="module")
def browser_page(lab: Lab) -> Iterator[Watched]:
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        watched = Watched(page, [], [])
        page.on("console", lambda m: m.type == "error" and watched.console_errors.append(m.text))
        page.on("pageerror", lambda e: watched.console_errors.append(str(e)))

        def check_request(req) -> None:  # noqa: ANN001
            host = re.match(r"^[a-z]+://([^/:]+)", req.url)
            if host and host.group(1) not in ("127.0.0.1", "localhost"):
                watched.outside.append(req.url)

        page.on("request", check_request)
        page.goto(lab.login_link)
        assert page.url.rstrip("/") == lab.url, "the login link did not sign in"
        yield watched
        context.close()
        browser.close()
