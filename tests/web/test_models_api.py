"""Model intake over HTTP: real files built here, hostile ones refused with nothing left behind."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from sqlmodel import select

from app.models import ModelRecord
from app.zoo import build
from tests.factories import make_user


def _files(settings) -> set[Path]:
    roots = [Path(settings.artifacts), settings.data_dir / "tmp"]
    return {p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()}


def _mlp_bytes() -> bytes:
    torch.manual_seed(0)
    model = build("mlp", num_classes=10, input_shape=(1, 8, 8))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _upload(client, headers, content: bytes, filename="m.safetensors", **fields):
    return client.post(
        "/api/models",
        headers=headers,
        files={"file": (filename, io.BytesIO(content))},
        data={k: str(v) for k, v in fields.items()},
    )


def test_safetensors_with_arch_is_accepted_with_its_layers(client: TestClient, member_headers):
    r = _upload(
        client, member_headers, _mlp_bytes(), arch="mlp", input_shape="1,8,8", name="digits mlp"
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "safetensors" and body["arch"] == "mlp"
    assert body["input_shape"] == [1, 8, 8]
    assert body["n_params"] == 64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    names = [layer["name"] for layer in body["layers"] if layer["prunable"]]
    assert names == ["fc1", "fc2", "fc3"]
    assert body["preflight"]["ok"] is True
    # listed, fetched, downloadable byte for byte
    assert client.get("/api/models", headers=member_headers).json()[0]["id"] == body["id"]
    assert (
        client.get(f"/api/models/{body['id']}", headers=member_headers).json()["name"]
        == "digits mlp"
    )
    dl = client.get(f"/api/models/{body['id']}/file", headers=member_headers)
    assert dl.status_code == 200 and dl.content == _mlp_bytes()
    # the same file twice is recognised
    again = _upload(client, member_headers, _mlp_bytes(), arch="mlp")
    assert again.status_code == 200 and again.json()["id"] == body["id"]


def test_onnx_upload_is_converted_and_accepted(client: TestClient, admin_headers, tmp_path):
    torch.manual_seed(0)
    model = build("cnn_small", num_classes=10, input_shape=(1, 8, 8)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    r = _upload(client, admin_headers, path.read_bytes(), filename="whatever.bin")
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "onnx"
    assert r.json()["input_shape"] == [1, 8, 8]


@pytest.mark.parametrize(
    ("content", "fields", "status", "words"),
    [
        (os.urandom(4096), {}, 415, "not a model file we recognise"),
        (b"", {}, 400, "no file received"),
        (b"weights", {"arch": "mlp", "input_shape": "1,eight"}, 422, "input_shape"),
    ],
)
def test_bad_files_get_a_sentence_and_leave_nothing(
    client, member_headers, settings, content, fields, status, words
):
    before = _files(settings)
    r = _upload(client, member_headers, content, **fields)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert _files(settings) == before
    assert client.get("/api/models", headers=member_headers).json() == []


def test_weights_without_arch_are_refused(client, member_headers, settings):
    r = _upload(client, member_headers, _mlp_bytes())
    assert r.status_code == 422 and "also send 'arch'" in r.json()["detail"]
    wrong = _upload(client, member_headers, _mlp_bytes(), arch="cnn_small")
    assert wrong.status_code == 422, wrong.text
    assert _files(settings) == set()


def test_malicious_pickle_never_runs(client, member_headers, settings, tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    buf = io.BytesIO()
    torch.save({"w": Evil()}, buf)
    r = _upload(client, member_headers, buf.getvalue(), filename="model.pt", arch="mlp")
    assert r.status_code == 415, r.text
    assert not sentinel.exists()
    assert _files(settings) == set()


def test_declared_huge_upload_is_refused_before_reading(client, member_headers, settings):
    r = client.post(
        "/api/models",
        headers={
            **member_headers,
            "Content-Type": "multipart/form-data; boundary=x",
            "Content-Length": str(2 * 1024**3),
        },
        content=b"--x--",
    )
    assert r.status_code == 413 and "PRUNELAB_MAX_UPLOAD_MB" in r.json()["detail"]


def test_streamed_upload_over_the_limit_is_413(tmp_path):
    from app.config import Settings
    from app.main import create_app

    settings = Settings(data_dir=tmp_path, max_upload_mb=1)
    with TestClient(create_app(settings)) as c:
        from sqlmodel import Session

        with Session(c.app.state.engine) as s:
            _, headers = make_user(s, "u1")
        r = _upload(c, headers, os.urandom(3 * 1024 * 1024))
        assert r.status_code == 413
        assert _files(settings) == set()


def test_torchscript_is_admin_only_by_default(client, member_headers, admin_headers, tmp_path):
    scripted = torch.jit.script(build("mlp", num_classes=10, input_shape=(1, 8, 8)))
    path = tmp_path / "m.pt"
    torch.jit.save(scripted, str(path))
    r = _upload(client, member_headers, path.read_bytes(), filename="m.pt", input_shape="1,8,8")
    assert r.status_code == 403 and "PRUNELAB_CODE_FORMATS" in r.json()["detail"]
    ok = _upload(client, admin_headers, path.read_bytes(), filename="m.pt", input_shape="1,8,8")
    assert ok.status_code == 201, ok.text
    assert ok.json()["format"] == "torchscript" and ok.json()["structured_ok"] is False


def test_from_architecture_and_architectures(client, member_headers):
    archs = {a["name"]: a for a in client.get("/api/architectures", headers=member_headers).json()}
    assert {"mlp", "lenet5", "cnn_small", "resnet20", "vgg11_bn"} <= set(archs)
    r = client.post(
        "/api/models/from-architecture",
        headers=member_headers,
        json={"arch": "cnn_small", "name": "fresh", "num_classes": 10, "input_shape": [1, 8, 8]},
    )
    assert r.status_code == 201, r.text
    assert r.json()["arch"] == "cnn_small" and r.json()["structured_ok"] is True
    bad = client.post(
        "/api/models/from-architecture", headers=member_headers, json={"arch": "alexnet"}
    )
    assert bad.status_code == 422 and "built-in architectures" in bad.json()["detail"]


def test_viewers_cannot_upload_and_members_cannot_delete_others(client, db_session, member_headers):
    _, viewer = make_user(db_session, "viewer1", role="viewer")
    assert _upload(client, viewer, _mlp_bytes(), arch="mlp").status_code == 403
    model_id = _upload(client, member_headers, _mlp_bytes(), arch="mlp").json()["id"]
    _, other = make_user(db_session, "member2")
    assert client.delete(f"/api/models/{model_id}", headers=other).status_code == 403
    assert client.delete(f"/api/models/{model_id}", headers=member_headers).status_code == 204
    assert db_session.exec(select(ModelRecord)).all() == []


def test_architecture_table_matches_the_zoo():
    from app.catalogue import ARCHITECTURES
    from app.zoo import ARCHITECTURES as ZOO

    assert set(ARCHITECTURES) == set(ZOO)
    for name, info in ARCHITECTURES.items():
        assert tuple(info.default_input_shape) == tuple(ZOO[name].default_input_shape)


def _forward_raises_torchscript(tmp_path) -> bytes:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() == 0:
                raise RuntimeError("this model refuses zeros")
            return self.fc(x.flatten(1))

    path = tmp_path / "broken.pt"
    torch.jit.save(torch.jit.script(Broken()), str(path))
    return path.read_bytes()


def test_model_whose_forward_raises_is_422_with_the_reason(
    client, admin_headers, settings, tmp_path
):
    r = _upload(
        client,
        admin_headers,
        _forward_raises_torchscript(tmp_path),
        filename="b.pt",
        input_shape="1,8,8",
    )
    assert r.status_code == 422, r.text
    assert "forward raised" in r.json()["detail"] and "refuses zeros" in r.json()["detail"]
    assert _files(settings) == set()


def test_wrong_input_shape_is_422_naming_it(client, member_headers, settings):
    r = _upload(client, member_headers, _mlp_bytes(), arch="mlp", input_shape="3,32,32")
    assert r.status_code == 422, r.text
    assert "[300, 3072]" in r.json()["detail"] and "input_shape" in r.json()["detail"]
    assert _files(settings) == set()


@pytest.mark.slow
def test_twenty_concurrent_uploads_leave_exactly_the_good_ones(tmp_path):
    """18 garbage and 2 valid uploads at once on a real server: 2 rows, 2 files, no debris,
    and the server keeps answering health checks meanwhile."""
    import threading
    import time

    import httpx
    import uvicorn
    from sqlmodel import Session

    from app.config import Settings
    from app.main import create_app
    from tests.conftest import free_port

    settings = Settings(data_dir=tmp_path / "data")
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.1)
    with Session(app.state.engine) as s:
        _, headers = make_user(s, "burst")
    torch.manual_seed(1)
    other = build("mlp", num_classes=10, input_shape=(1, 8, 8))
    goods = [_mlp_bytes(), save({k: v.contiguous() for k, v in other.state_dict().items()})]
    bodies = [(g, {"arch": "mlp"}) for g in goods] + [(os.urandom(2048 + i), {}) for i in range(18)]
    results: list[int] = []
    health: list[int] = []

    def send(content: bytes, fields: dict) -> None:
        r = httpx.post(
            f"{base}/api/models",
            headers=headers,
            data=fields,
            timeout=120,
            files={"file": ("m.bin", content)},
        )
        results.append(r.status_code)

    try:
        workers = [threading.Thread(target=send, args=b) for b in bodies]
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            health.append(httpx.get(f"{base}/api/health", timeout=10).status_code)
            time.sleep(0.2)
        for w in workers:
            w.join()
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert sorted(results) == [201, 201] + [415] * 18
    assert health and set(health) == {200}
    stored = sorted(p.name for p in (Path(settings.artifacts) / "models").iterdir())
    assert len(stored) == 2
    assert not any((settings.data_dir / "tmp").iterdir())


def test_onnx_with_its_data_file_as_two_parts_is_stored_as_one_zip(
    client: TestClient, admin_headers, tmp_path
):
    import math
    import zipfile

    import onnx

    torch.manual_seed(0)
    model = build("cnn_small", num_classes=10, input_shape=(1, 8, 8)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    proto = onnx.load(str(path))
    in_file = sum(math.prod(t.dims) for t in proto.graph.initializer if t.data_type == 1)
    onnx.save_model(
        proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0
    )
    alone = _upload(client, admin_headers, path.read_bytes(), filename="m.onnx")
    assert alone.status_code == 422 and ".zip" in alone.json()["detail"]
    files = [
        ("file", ("m.onnx", path.read_bytes())),
        ("data", ("m.onnx.data", (tmp_path / "m.onnx.data").read_bytes())),
    ]
    r = client.post("/api/models", headers=admin_headers, files=files, data={"name": "two"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["format"] == "onnx" and body["input_dtype"] == "float32"
    assert body["n_params"] >= in_file  # every float weight of the file is a parameter
    dl = client.get(f"/api/models/{body['id']}/file", headers=admin_headers)
    assert sorted(zipfile.ZipFile(io.BytesIO(dl.content)).namelist()) == ["m.onnx", "m.onnx.data"]


def test_input_dtype_outside_float32_and_int64_is_refused(client: TestClient, member_headers):
    r = _upload(client, member_headers, _mlp_bytes(), arch="mlp", input_dtype="int8")
    assert r.status_code == 422 and "float32 or int64" in r.json()["detail"]
    r = _upload(client, member_headers, _mlp_bytes(), arch="mlp", input_shape="1,1,8,8")
    assert r.status_code == 201, r.text
    assert r.json()["input_shape"] == [1, 8, 8] and r.json()["input_dtype"] == "float32"
