"""Issue 14, item 9 (part): token secrets are never cached; partial uploads go at start."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_token_creation_is_not_cacheable(client: TestClient, member_headers) -> None:
    r = client.post("/api/tokens", json={"name": "ci"}, headers=member_headers)
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"


def test_partial_uploads_are_removed_at_start(tmp_path) -> None:
    tmp = tmp_path / "data" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "upload-0123456789abcdef.part").write_bytes(b"half a model")
    (tmp / "keep.txt").write_text("not an upload")
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))):
        assert not (tmp / "upload-0123456789abcdef.part").exists()
        assert (tmp / "keep.txt").exists()
