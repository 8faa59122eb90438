"""Dataset uploads over HTTP: real files built here; bad ones refused with nothing left behind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _files(settings) -> set[Path]:
    roots = [Path(settings.artifacts), settings.data_dir / "tmp"]
    return {p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()}


def _post(client, headers, content: bytes, filename: str, name: str = "mine"):
    return client.post(
        "/api/datasets",
        headers=headers,
        data={"name": name},
        files={"file": (filename, io.BytesIO(content))},
    )


def test_digits_is_always_there(client: TestClient, member_headers) -> None:
    listed = client.get("/api/datasets", headers=member_headers).json()
    assert listed[0]["id"] == "digits"
    one = client.get("/api/datasets/digits", headers=member_headers).json()
    assert (one["n_train"], one["n_test"], one["input_shape"], one["n_classes"]) == (
        1257,
        540,
        [1, 8, 8],
        10,
    )
    assert client.delete("/api/datasets/digits", headers=member_headers).status_code == 409


def test_npz_upload_is_split_and_stored(client: TestClient, member_headers, settings) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((100, 1, 4, 4), dtype=np.float32)
    y = np.repeat(np.arange(4), 25)
    r = _post(client, member_headers, _npz(x=x, y=y), "data.npz", name="toy")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["n_train"], body["n_test"], body["input_shape"], body["n_classes"]) == (
        70,
        30,
        [1, 4, 4],
        4,
    )
    assert body["id"] in {
        d["id"] for d in client.get("/api/datasets", headers=member_headers).json()
    }
    assert client.delete(f"/api/datasets/{body['id']}", headers=member_headers).status_code == 204
    assert _files(settings) == set()


def test_csv_upload(client: TestClient, member_headers) -> None:
    rows = ["label,a,b,c"] + [f"{i % 3},{i},{i * 2},{i * 3}" for i in range(30)]
    r = _post(client, member_headers, "\n".join(rows).encode(), "t.csv")
    assert r.status_code == 201, r.text
    assert r.json()["input_shape"] == [3] and r.json()["n_classes"] == 3


def test_bad_datasets_get_a_sentence_and_leave_nothing(client, member_headers, settings) -> None:
    x = np.ones((20, 3), dtype=np.float32)
    x[3, 1] = np.nan
    cases = [
        (_npz(x=x, y=np.arange(20) % 2), "data.npz", "NaN"),
        (_npz(x=np.ones((20, 3), dtype=np.float32), y=np.arange(19) % 2), "data.npz", ""),
        (b"\x00\x01garbage", "data.csv", ""),
    ]
    for content, filename, words in cases:
        r = _post(client, member_headers, content, filename)
        assert 400 <= r.status_code < 500, r.text
        assert isinstance(r.json()["detail"], str) and words in r.json()["detail"]
    assert _files(settings) == set()
    assert [d["id"] for d in client.get("/api/datasets", headers=member_headers).json()] == [
        "digits"
    ]
