"""Issue 14, item 1 (datasets): label values and image sizes are bounded by settings, checked
before anything large is allocated."""

from __future__ import annotations

import io
import resource
import zipfile

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.factories import make_user


@pytest.fixture
def api(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", max_classes=1000)
    with TestClient(create_app(settings)) as client:
        from sqlmodel import Session

        with Session(client.app.state.engine) as s:
            _, headers = make_user(s, "alice")
        yield client, headers


def _post(client, headers, content: bytes, filename: str):
    return client.post(
        "/api/datasets", files={"file": (filename, io.BytesIO(content))}, headers=headers
    )


def _npz(y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((len(y), 4), dtype=np.float32), y=y)
    return buf.getvalue()


@pytest.mark.parametrize("label", [1e8, 1e15])
def test_a_huge_label_is_422_naming_the_limit(api, label) -> None:
    client, headers = api
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = _post(client, headers, _npz(np.array([0, 1, label, 1, 0, 1])), "big.npz")
    assert r.status_code == 422, r.text
    assert "PRUNELAB_MAX_CLASSES" in r.json()["detail"] and "1000 classes" in r.json()["detail"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB


def test_big_images_in_a_zip_are_422_before_decoding(api) -> None:
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (4096, 4096)).save(png, format="PNG")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(12):
            zf.writestr(f"{'ab'[i % 2]}/{i}.png", png.getvalue())
    client, headers = api
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = _post(client, headers, buf.getvalue(), "bomb.zip")
    assert r.status_code == 422, r.text
    assert "4096x4096" in r.json()["detail"] and "PRUNELAB_MAX_IMAGE_PIXELS" in r.json()["detail"]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB
