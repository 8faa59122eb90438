"""Issue 12 item 6: the exports of token-id models take token ids.

A tiny BERT classifier (uploaded as a TorchScript trace) and a tiny Llama causal LM (a ``.pt2``
program) are pruned 50% by magnitude; ``pruned.onnx`` must declare an int64 input, run in
onnxruntime on token ids at a batch it was not traced at with the pruned module's outputs, and
hold the sparsity the run reports. A file that cannot do that says why on its row, and the
result model comes from a format that passed (the Llama program's: ``pruned.pt2``).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app.modelio.load import load_model
from app.pruning.data import ArrayDataset
from app.pruning.layers import prunable_layers
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from app.runs.export import write_run_files
from app.runs.results import registrable_export
from tests.conformance.file_sparsity import sparsity_in_file

pytestmark = pytest.mark.slow

MAGNITUDE_50 = {
    "kind": "prune",
    "name": "magnitude 50%",
    "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5},
    "finetune": {"epochs": 0},
}


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (n, 8), generator=torch.Generator().manual_seed(seed))


def _token_data(n_classes: int) -> ArrayDataset:
    """Token ids (vocabulary 64, 8 per sample) as a dataset; the labels matter only to a run."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 64, (48, 8)).astype(np.float32)
    y = rng.integers(0, n_classes, 48)
    return ArrayDataset("tokens", x, y, x[:16], y[:16], n_classes)


def _onnx_checks(out: Path, module: torch.nn.Module) -> None:
    """pruned.onnx takes int64 ids, at a batch of 3 (it was traced at 2), as the module does."""
    proto = onnx.load(str(out / "pruned.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    session = ort.InferenceSession(str(out / "pruned.onnx"), providers=["CPUExecutionProvider"])
    ids = _ids(3)
    got = session.run(None, {session.get_inputs()[0].name: ids.numpy()})[0]
    with torch.inference_mode():
        want = module(ids)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4 * max(1.0, float(want.abs().max())))


def test_a_pruned_bert_trace_exports_onnx_that_takes_token_ids(exported, tmp_path) -> None:
    path = exported("bert", "torchscript")
    loaded = load_model(path, "torchscript", input_shape=(8,), input_dtype="int64")
    data = _token_data(4)
    recipe = Recipe.from_dict(MAGNITUDE_50)
    result = run_recipe(recipe, loaded.module, data, rebuildable=False, latency=False)
    rows = {r["name"]: r for r in write_run_files(tmp_path, recipe, result, data, None, "int64")[0]}

    for name in ("pruned.pt", "pruned.onnx", "pruned.safetensors"):
        assert rows[name]["verified"] and not rows[name].get("error"), rows[name]
    _onnx_checks(tmp_path, result.model)
    assert result.final["sparsity"] == pytest.approx(0.5, abs=0.01)
    for name in ("pruned.onnx", "pruned.pt", "pruned.safetensors"):
        assert sparsity_in_file(tmp_path / name, result.model) == pytest.approx(
            result.final["sparsity"], abs=1e-9
        ), name
    found = registrable_export(list(rows.values()), tmp_path, "int64")
    assert found is not None and found[1] == "torchscript"


def _magnitude_50(module: torch.nn.Module) -> tuple[dict, float]:
    """Every prunable layer's smallest half of weights zeroed; (masks, achieved sparsity)."""
    masks, zeros, total = {}, 0, 0
    with torch.no_grad():
        for name, layer in prunable_layers(module).items():
            w = layer.weight
            cut = w.abs().flatten().kthvalue(w.numel() // 2).values
            masks[name] = w.abs() > cut
            w.mul_(masks[name])
            zeros += int((w == 0).sum())
            total += w.numel()
    return masks, zeros / total


def test_a_pruned_llama_program_exports_onnx_that_takes_token_ids(exported, tmp_path) -> None:
    path = exported("llama", "pt2")
    loaded = load_model(path, "pt2")
    assert loaded.input_dtype == "int64"
    module = loaded.module.eval()
    masks, sparsity = _magnitude_50(module)
    result = SimpleNamespace(model=module, masks=masks, rewind={}, physical=False)
    data = _token_data(64)
    recipe = Recipe.from_dict(MAGNITUDE_50)
    rows = {r["name"]: r for r in write_run_files(tmp_path, recipe, result, data, None, "int64")[0]}

    # the tracing ONNX exporter cannot write Llama (aten::diff) or fixes its batch: the
    # torch.export-based exporter writes it with a dynamic batch
    assert rows["pruned.onnx"]["verified"] and not rows["pruned.onnx"].get("error")
    _onnx_checks(tmp_path, module)
    assert sparsity == pytest.approx(0.5, abs=0.01)
    assert sparsity_in_file(tmp_path / "pruned.onnx", module) == pytest.approx(sparsity, abs=1e-9)
    # a trace of a .pt2 program fixes the batch: said on the row, the file is kept for it
    pt = rows["pruned.pt"]
    if pt.get("error"):
        assert (
            not pt["verified"] and "batch of 2" in pt["error"] and (tmp_path / "pruned.pt").exists()
        )
    # the result model is the program exported back, taking token ids at any batch
    assert rows["pruned.pt2"]["verified"] and not rows["pruned.pt2"].get("error")
    assert sparsity_in_file(tmp_path / "pruned.pt2", module) == pytest.approx(sparsity, abs=1e-9)
    found = registrable_export(list(rows.values()), tmp_path, "int64")
    assert found is not None and found[1] == "pt2"
    with torch.inference_mode():
        torch.testing.assert_close(found[2](_ids(3)), module(_ids(3)))
