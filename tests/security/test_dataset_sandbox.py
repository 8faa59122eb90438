"""Issue 14, item 2: datasets are decoded in a limited child process; hostile uploads get their
own 4xx sentence and the web process's memory stays flat, measured on a real uvicorn."""

from __future__ import annotations

import io
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.browser.conftest import _wait_ready
from tests.conftest import free_port
from tests.factories import make_user
from tests.security.hostile import hostile_uploads

HOSTILE = hostile_uploads()
GOOD_CSV = b"label,a,b\n" + b"".join(b"%d,%d,1\n" % (i % 2, i) for i in range(20))


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(data_dir=tmp_path / "data", max_classes=1000, preflight_memory_mb=1024)
    with TestClient(create_app(settings)) as client:
        from sqlmodel import Session

        with Session(client.app.state.engine) as s:
            _, headers = make_user(s, "alice")
        yield client, headers


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_each_hostile_upload_gets_its_own_sentence(api, case: str) -> None:
    client, headers = api
    upload = HOSTILE[case]
    files = {"file": (upload.filename, io.BytesIO(upload.content))}
    r = client.post("/api/datasets", files=files, headers=headers)
    assert r.status_code == upload.status, r.text
    detail = r.json()["detail"]
    assert all(part in detail for part in upload.says), detail
    assert client.get("/api/datasets", headers=headers).json()[1:] == []  # nothing was stored


def test_decoding_over_the_memory_limit_is_413_naming_the_setting(tmp_path) -> None:
    # 40 M sparse bytes (320 MB as int64: integer x stays integer) in a 2 MB .npz, no zip bomb
    import numpy as np

    rng = np.random.default_rng(0)
    x = np.zeros((2_000_000, 20), dtype=np.uint8)
    x.reshape(-1)[::50] = rng.integers(0, 255, x.size // 50)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=rng.integers(0, 2, len(x)).astype(np.uint8))
    settings = Settings(data_dir=tmp_path / "data", preflight_memory_mb=300)
    with TestClient(create_app(settings)) as client:
        from sqlmodel import Session

        with Session(client.app.state.engine) as s:
            _, headers = make_user(s, "alice")
        files = {"file": ("big.npz", io.BytesIO(buf.getvalue()))}
        r = client.post("/api/datasets", files=files, headers=headers)
    assert r.status_code == 413, r.text
    assert "PRUNELAB_PREFLIGHT_MEMORY_MB" in r.json()["detail"]
    assert "300 MB" in r.json()["detail"]


def test_the_web_process_never_imports_the_decoders(tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import io, sys
        from fastapi.testclient import TestClient
        from sqlmodel import Session
        from app.config import Settings
        from app.main import create_app
        from tests.factories import make_user

        with TestClient(create_app(Settings(data_dir={str(tmp_path / "d")!r}))) as c:
            with Session(c.app.state.engine) as s:
                _, headers = make_user(s, "alice")
            files = {{"file": ("ok.csv", io.BytesIO({GOOD_CSV!r}))}}
            r = c.post("/api/datasets", files=files, headers=headers)
            assert r.status_code == 201, r.text
            assert r.json()["n_classes"] == 2 and r.json()["input_shape"] == [2], r.text
        decoders = ("app.modelio.dataset_formats", "app.modelio.dataset_files", "app.pruning.data")
        print(sorted(m for m in (*decoders, "torch", "sklearn") if m in sys.modules))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNELAB_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _rss_kb(pid: int) -> dict[str, int]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, dict[str, str], int]]:
    token = "pl_test_" + secrets.token_urlsafe(24)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRUNELAB_")}
    env |= {
        "PRUNELAB_DATA_DIR": str(tmp_path / "data"),
        "PRUNELAB_ADMIN_TOKEN": token,
        "PRUNELAB_MAX_CLASSES": "1000",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        yield url, {"Authorization": f"Bearer {token}"}, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_web_process_memory_stays_flat_under_hostile_uploads(server) -> None:
    url, headers, pid = server
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        warm = http.post("/api/datasets", files={"file": ("ok.csv", GOOD_CSV)})
        assert warm.status_code == 201, warm.text
        before = _rss_kb(pid)
        for case, upload in sorted(HOSTILE.items()):
            r = http.post("/api/datasets", files={"file": (upload.filename, upload.content)})
            assert r.status_code == upload.status, (case, r.text)
        after = _rss_kb(pid)
    print(f"web RSS before {before} KB, after {len(HOSTILE)} hostile uploads {after} KB")
    assert after["VmRSS"] - before["VmRSS"] < 3 * 1024 * len(HOSTILE)
    assert after["VmHWM"] - before["VmHWM"] < 3 * 1024 * len(HOSTILE)
