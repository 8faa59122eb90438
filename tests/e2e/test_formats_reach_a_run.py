"""Issue 4's "done means": each accepted upload format reaches a prune run through the API and a
real worker process: element level for every format, physical filter removal for safetensors +
arch and for ONNX."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from sqlmodel import Session

from app.config import Settings
from app.main import create_app
from app.zoo import build
from tests.factories import make_user, wait_for_run

torch.set_num_threads(1)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("cnn_small", num_classes=10, input_shape=(1, 8, 8)).eval()


def _files(tmp: Path) -> dict[str, tuple[bytes, dict]]:
    m = _model()
    x = torch.zeros(1, 1, 8, 8)
    onnx_path, ts_path, pt2_path = tmp / "m.onnx", tmp / "m.ts", tmp / "m.pt2"
    torch.onnx.export(
        m,
        (x,),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    torch.jit.save(torch.jit.trace(m, x), str(ts_path))
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(
        torch.export.export(m, (torch.zeros(2, 1, 8, 8),), dynamic_shapes={"x": {0: batch}}),
        str(pt2_path),
    )
    weights = save({k: v.contiguous() for k, v in m.state_dict().items()})
    return {
        "safetensors": (weights, {"arch": "cnn_small", "input_shape": "1,8,8"}),
        "onnx": (onnx_path.read_bytes(), {}),
        "torchscript": (ts_path.read_bytes(), {"input_shape": "1,8,8"}),
        "pt2": (pt2_path.read_bytes(), {}),
    }


def _recipe(model_id: int, granularity: str, physical: bool) -> dict:
    return {
        "kind": "prune",
        "name": f"{granularity} physical={physical}",
        "model_id": model_id,
        "dataset_id": "digits",
        "pruning": {
            "granularity": granularity,
            "criterion": "l1",
            "sparsity": 0.5,
            "scope": "layerwise",
            "physical": physical,
        },
        "schedule": {"kind": "oneshot"},
        "finetune": {"epochs": 1, "batch_size": 128},
    }


@pytest.mark.slow
def test_every_upload_format_reaches_a_prune_run(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNELAB_WORKER_THREADS", "1")
    settings = Settings(
        data_dir=tmp_path / "data", max_concurrent_jobs=2, heartbeat_s=0.5, device="cpu"
    )
    files = _files(tmp_path)
    with TestClient(create_app(settings)) as client:
        with Session(client.app.state.engine) as s:
            _, headers = make_user(s, "formats", role="admin")
        runs: dict[str, int] = {}
        for fmt, (content, fields) in files.items():
            r = client.post(
                "/api/models",
                headers=headers,
                data=fields,
                files={"file": ("upload.bin", io.BytesIO(content))},
            )
            assert r.status_code == 201, (fmt, r.text)
            assert r.json()["format"] == fmt
            model_id = r.json()["id"]
            jobs = [("element", False)] + (
                [("filter", True)] if fmt in ("safetensors", "onnx") else []
            )
            for granularity, physical in jobs:
                created = client.post(
                    "/api/runs", headers=headers, json=_recipe(model_id, granularity, physical)
                )
                assert created.status_code == 201, (fmt, created.text)
                runs[f"{fmt}/{granularity}"] = created.json()["id"]
        for label, run_id in runs.items():
            run = wait_for_run(client, headers, run_id)
            assert run["status"] == "succeeded", (label, run.get("error"))
            final, base = run["final"], run["baseline"]
            if label.endswith("/element"):
                assert final["sparsity"] >= 0.4, (label, final)
                if label.startswith(("torchscript", "pt2")):
                    assert any("masks only" in n["text"] for n in run["notes"]), (
                        label,
                        run["notes"],
                    )
            else:
                assert final["n_params"] < 0.6 * base["n_params"], (label, final, base)
                assert final["flops"] < 0.6 * base["flops"], (label, final, base)
                arts = client.get(f"/api/runs/{run_id}/artifacts", headers=headers).json()
                assert {a["name"] for a in arts} >= {
                    "pruned.pt",
                    "pruned.onnx",
                    "pruned.safetensors",
                }
                bad = [
                    (a["name"], a.get("error"))
                    for a in arts
                    if a["name"].startswith("pruned") and not a["verified"]
                ]
                assert not bad, (label, bad)
