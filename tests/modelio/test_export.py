"""Every exported artifact is reloaded the way a user would and matches the in-memory model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from app import zoo
from app.modelio.export import export_all
from app.pruning.structural.rebuild import architecture_config, rebuild
from app.pruning.structural.remove import physical_prune

torch.set_num_threads(1)

RECIPE = {"kind": "prune", "pruning": {"granularity": "filter", "sparsity": 0.5}, "seed": 0}


def _filter_masks(model: nn.Module, frac: float = 0.5) -> dict:
    masks = {}
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, m in convs:
        norms = m.weight.detach().abs().flatten(1).sum(1)
        keep = norms >= norms.quantile(frac)
        masks[name] = keep.view(-1, 1, 1, 1).expand_as(m.weight).clone()
    return masks


def _pruned(arch: str, shape: tuple[int, ...]) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = zoo.build(arch, input_shape=shape).eval()
    x = torch.randn(6, *shape)
    return physical_prune(model, _filter_masks(model), x, granularity="filter"), x


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "shape"), [("cnn_small", (1, 8, 8)), ("resnet20", (3, 8, 8))])
def test_every_export_of_a_physically_pruned_model_round_trips(arch, shape, tmp_path) -> None:
    small, x = _pruned(arch, shape)
    config = architecture_config(small, arch=arch, num_classes=10, input_shape=shape)
    rows = export_all(small, x, tmp_path, recipe=RECIPE, arch_config=config)

    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {
        "pruned.pt",
        "pruned.onnx",
        "pruned.safetensors",
        "architecture.json",
        "recipe.json",
    }
    for row in rows:
        path = tmp_path / row["name"]
        assert row["verified"], row
        assert row["max_abs_diff"] < 1e-4
        assert row["size_bytes"] == path.stat().st_size > 0
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".*.tmp"))

    # reload independently, as a user would, and compare on the real inputs
    with torch.no_grad():
        expected = small(x)
        scripted = torch.jit.load(str(tmp_path / "pruned.pt"))
        assert torch.allclose(scripted(x), expected, atol=1e-5)
        rebuilt = rebuild(json.loads((tmp_path / "architecture.json").read_text()))
        rebuilt.load_state_dict(load_file(str(tmp_path / "pruned.safetensors")))
        assert torch.allclose(rebuilt(x), expected, atol=1e-5)
    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"))
    out = session.run(None, {"input": x[:2].numpy()})[0]  # another batch size: dynamic axis
    assert torch.allclose(torch.from_numpy(out), expected[:2], atol=1e-4)
    assert json.loads((tmp_path / "recipe.json").read_text()) == RECIPE


def test_masked_model_without_architecture_exports_zeroed_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.build("mlp", input_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.05] = 0
    rows = export_all(model, torch.randn(4, 1, 8, 8), tmp_path, recipe=RECIPE, arch_config=None)
    assert [r["name"] for r in rows] == [
        "pruned.pt",
        "pruned.onnx",
        "pruned.safetensors",
        "recipe.json",
    ]
    assert all(r["verified"] for r in rows)
    saved = load_file(str(tmp_path / "pruned.safetensors"))["fc1.weight"]
    assert torch.equal(saved == 0, model.fc1.weight == 0)
    assert model.training is False and not any(p.device.type != "cpu" for p in model.parameters())


class NoOnnx(nn.Module):
    """Runs in PyTorch and TorchScript, but ONNX opset 17 has no singular values."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(self.fc(x).reshape(-1, 2, 2)).reshape(x.shape[0], -1)


def test_a_failing_format_is_reported_and_the_others_still_export(tmp_path: Path) -> None:
    (tmp_path / "pruned.onnx").write_bytes(b"stale file from an earlier step")
    rows = {
        r["name"]: r for r in export_all(NoOnnx().eval(), torch.randn(3, 4), tmp_path, recipe={})
    }
    onnx_row = rows["pruned.onnx"]
    assert onnx_row["verified"] is False
    assert "svdvals" in onnx_row["error"] and "\n" not in onnx_row["error"]
    assert not (tmp_path / "pruned.onnx").exists()
    assert rows["pruned.pt"]["verified"] and rows["pruned.safetensors"]["verified"]


def test_mismatching_rebuild_is_not_verified(tmp_path: Path) -> None:
    small, x = _pruned("cnn_small", (1, 8, 8))
    wrong = architecture_config(zoo.build("cnn_small", input_shape=(1, 8, 8)), arch="cnn_small")
    rows = {r["name"]: r for r in export_all(small, x, tmp_path, recipe={}, arch_config=wrong)}
    assert rows["pruned.safetensors"]["verified"] is False
    assert "size mismatch" in rows["pruned.safetensors"]["error"]
    assert rows["architecture.json"]["verified"] is False
