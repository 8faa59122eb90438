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


class _Tokens(nn.Module):
    """Token ids in (vocabulary 17), three class scores out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(17, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def test_a_token_id_model_exports_files_that_take_int64_ids(tmp_path: Path) -> None:
    from app.modelio.export_input import export_batch
    from app.modelio.signature import cast_inputs

    torch.manual_seed(0)
    model = cast_inputs(_Tokens().eval(), "int64")  # as load_model hands it to a run
    floats = torch.tensor([[1.0, 16.0, 3.0], [0.0, 2.0, 5.0], [7.0, 7.0, 9.0]])  # a dataset's ids
    x = export_batch(model, floats, "int64")
    assert x.dtype == torch.int64 and x.shape == (2, 3) and torch.equal(x, floats[:2].long())
    rows = {r["name"]: r for r in export_all(model, x, tmp_path, recipe={})}
    assert all(r["verified"] and not r.get("error") for r in rows.values()), rows
    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"))
    assert session.get_inputs()[0].type == "tensor(int64)"
    ids = torch.tensor([[16, 0, 1]] * 3)  # another batch size
    got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), model(ids), atol=1e-5)


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).reshape(x.shape[0], -1)


@pytest.mark.slow
def test_a_trace_that_fixes_the_batch_says_so_and_onnx_takes_any_batch(tmp_path: Path) -> None:
    """A ``.pt2`` program's graph reads the batch as a number: traces of it fix the batch."""
    from app.modelio.load import load_model

    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        _Flat().eval(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(tmp_path / "in.pt2"))
    module = load_model(tmp_path / "in.pt2", "pt2").module
    out = tmp_path / "out"
    rows = {r["name"]: r for r in export_all(module, torch.randn(2, 4), out, recipe={})}
    pt = rows["pruned.pt"]
    assert not pt["verified"] and "fixed the batch size, so feed it batches of 2" in pt["error"]
    assert (out / "pruned.pt").is_file()  # still good at the batch it was traced at
    for name in ("pruned.onnx", "pruned.pt2"):  # the dynamo exporter's, and torch.export's
        assert rows[name]["verified"] and not rows[name].get("error"), rows[name]
    session = ort.InferenceSession(str(out / "pruned.onnx"))
    x5 = torch.randn(5, 4)
    got = session.run(None, {session.get_inputs()[0].name: x5.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), module(x5), atol=1e-5)
    assert not list(out.glob(".*"))
