"""Issue 12's conformance matrix, intake half: public architectures (transformers configs,
random weights) and the zoo, exported every usual way, uploaded through the real API.

Each (model, exporter) has a designed outcome: accepted (201) with the input dtype the file
declares and at least 90% of the file's float weights visible as parameters, or refused at
upload (422) with the export call that fixes it. An exporter that itself cannot write the
model is recorded as such.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conformance.conftest import ARCHS, FORMATS
from tests.factories import make_user

pytestmark = pytest.mark.slow

ACCEPTED = 201
EXPORTER_FAILS = "exporter"
# (model, exporter) -> 201, EXPORTER_FAILS, or (422, words the refusal must hold)
BATCH_REFUSAL = (422, "dynamic_axes")
PT2_REFUSAL = (422, "dynamic_shapes")
# a fixed-batch .pt2 is refused the same way whatever it holds: one image and one text model
FIXED_BATCH_PT2 = ("cnn_small", "bert")
# the dynamo exporter (about 6 s a model) on one image model and the two text models; llama has
# no other ONNX route. cnn_small's static dynamo export has its own test below.
DYNAMO = ("resnet", "bert", "llama")
EXPECTED: dict[tuple[str, str], object] = {
    **{
        (a, f): ACCEPTED
        for a in ARCHS
        for f in FORMATS
        if f != "pt2_static" and (f != "onnx_dynamo_zip" or a in DYNAMO)
    },
    **{(a, "pt2_static"): PT2_REFUSAL for a in FIXED_BATCH_PT2},
    ("vit", "onnx_static"): BATCH_REFUSAL,  # the class token's Expand keeps batch 1
    ("llama", "onnx_dynamic"): EXPORTER_FAILS,  # aten::diff has no opset-17 export
    ("llama", "onnx_static"): EXPORTER_FAILS,
}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from app.config import Settings
    from app.main import create_app

    settings = Settings(data_dir=tmp_path_factory.mktemp("conformance") / "data")
    with TestClient(create_app(settings)) as client:
        from sqlmodel import Session

        with Session(client.app.state.engine) as s:
            _, headers = make_user(s, "conformance", role="admin")
        yield client, headers


def float_weights_in_file(path: Path, model: torch.nn.Module) -> int:
    """Float weights the file holds: ONNX initializers (with external data), else parameters."""
    if path.suffix in (".onnx", ".zip"):
        onnx_path = path.with_suffix(".onnx") if path.suffix == ".zip" else path
        proto = onnx.load(str(onnx_path))  # the exporter's own folder holds the data file
        return sum(
            int(torch.tensor(t.dims).prod()) if t.dims else 1
            for t in proto.graph.initializer
            if t.data_type in (1, 10, 11, 16)
        )
    return sum(p.numel() for p in model.parameters())


def upload(client: TestClient, headers: dict, path: Path, arch_name: str):
    arch = ARCHS[arch_name]
    fields = {}
    if path.suffix == ".pt":  # TorchScript does not say what its input looks like
        fields = {"input_shape": ",".join(map(str, arch.sample)), "input_dtype": arch.dtype}
    return client.post(
        "/api/models",
        headers=headers,
        files={"file": (path.name, io.BytesIO(path.read_bytes()))},
        data=fields,
    )


@pytest.mark.parametrize(("arch_name", "fmt"), list(EXPECTED))
def test_every_export_is_accepted_or_refused_at_upload(api, built, exported, arch_name, fmt):
    client, headers = api
    expected = EXPECTED[arch_name, fmt]
    path = exported(arch_name, fmt)
    if expected == EXPORTER_FAILS:
        assert isinstance(path, str), f"the exporter now writes {arch_name} as {fmt}"
        return
    assert isinstance(path, Path), path
    r = upload(client, headers, path, arch_name)
    if expected != ACCEPTED:
        status, words = expected
        assert r.status_code == status, r.text
        assert words in r.json()["detail"], r.text
        return
    assert r.status_code == ACCEPTED, r.text
    body = r.json()
    assert body["input_dtype"] == ARCHS[arch_name].dtype
    in_file = float_weights_in_file(path, built[arch_name])
    assert body["n_params"] >= 0.9 * in_file, (body["n_params"], in_file)
    assert body["preflight"]["weights_seen_fraction"] >= 0.9
    assert not any("the lab sees" in w for w in body["preflight"]["warnings"])
    assert any(layer["prunable"] for layer in body["layers"])


def test_onnx_and_its_data_file_as_two_parts_are_one_model(api, exported):
    client, headers = api
    folder = exported("bert", "onnx_dynamo_zip").parent
    parts = [("file", (f.name, f.read_bytes())) for f in sorted(folder.glob("model.onnx*"))]
    assert len(parts) == 2  # model.onnx and model.onnx.data
    r = client.post("/api/models", headers=headers, files=parts)
    assert r.status_code in (200, 201), r.text  # 200: the same zip came in the matrix
    body = r.json()
    assert body["format"] == "onnx" and body["input_dtype"] == "int64"
    dl = client.get(f"/api/models/{body['id']}/file", headers=headers)
    assert zipfile.ZipFile(io.BytesIO(dl.content)).namelist() == ["model.onnx", "model.onnx.data"]


def test_static_dynamo_export_is_made_batch_agnostic(api, built, tmp_path):
    from tests.conformance.conftest import export

    client, headers = api
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(built["cnn_small"], ARCHS["cnn_small"], "onnx_dynamo_static_zip", tmp_path)
    r = upload(client, headers, path, "cnn_small")
    # a static dynamo export of cnn_small is rewritten for any batch and accepted
    assert r.status_code == ACCEPTED, r.text
    assert r.json()["input_shape"] == [1, 8, 8]
