"""Issue 12's conformance matrix, run half: one model per upload format, pruned 50% by
magnitude with one epoch of fine-tuning, leaves exports that reload and hold what the run
reports.

Every ``pruned.*`` file is reloaded and matches the pruned module at the batch it was traced
at; ``pruned.onnx`` and ``pruned.safetensors`` also at other batches; a ``pruned.pt`` whose
trace fixed the batch (traces of converted ONNX graphs and ``.pt2`` programs) says so on its
row. The sparsity counted in each file equals the run's. A ``.pt2`` upload's result model is
``pruned.pt2``, whose BatchNorm updates its statistics when fine-tuned (issue 12 item 7).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.modelio.detect import detect_format
from app.modelio.load import load_model
from app.pruning.data import ArrayDataset
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from app.runs.export import write_run_files
from app.runs.results import registrable_export
from tests.conformance.conftest import ARCHS
from tests.conformance.file_sparsity import sparsity_in_file

pytestmark = pytest.mark.slow

RECIPE = {
    "kind": "prune",
    "name": "magnitude 50%, one epoch",
    "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5},
    "finetune": {"epochs": 1, "batch_size": 16},
}
# one model per upload format, each a different architecture
CASES = [
    ("resnet", "onnx_dynamic"),  # BatchNorm folded by the exporter, converted by onnx2torch
    ("vit", "torchscript"),
    ("cnn_small", "pt2"),  # BatchNorm in the program, trainable after train()
    ("bert", "onnx_dynamo_zip"),  # int64 token ids, weights in model.onnx.data
]


def _data(arch_name: str) -> ArrayDataset:
    arch = ARCHS[arch_name]
    rng = np.random.default_rng(0)
    if arch.dtype == "int64":
        x = rng.integers(0, 64, (48, *arch.sample)).astype(np.float32)
    else:
        x = rng.standard_normal((48, *arch.sample)).astype(np.float32)
    y = rng.integers(0, 4, 48)
    return ArrayDataset(arch_name, x, y, x[:16], y[:16], 4 if arch_name != "cnn_small" else 10)


@pytest.mark.parametrize(("arch_name", "fmt"), CASES)
def test_every_export_of_a_tiny_run_reloads_with_the_runs_sparsity(
    exported, tmp_path, arch_name, fmt
) -> None:
    path = exported(arch_name, fmt)
    arch = ARCHS[arch_name]
    loaded = load_model(path, detect_format(path), input_shape=arch.sample, input_dtype=arch.dtype)
    data = _data(arch_name)
    recipe = Recipe.from_dict(RECIPE)
    result = run_recipe(recipe, loaded.module, data, rebuildable=loaded.rebuildable, latency=False)
    rows, _ = write_run_files(tmp_path, recipe, result, data, None, loaded.input_dtype)
    by_name = {r["name"]: r for r in rows}

    sparsity = result.final["sparsity"]
    assert sparsity == pytest.approx(0.5, abs=0.02)
    files = ["pruned.pt", "pruned.onnx", "pruned.safetensors"] + (["pruned.pt2"] * (fmt == "pt2"))
    assert {r["name"] for r in rows if r["name"].startswith("pruned.")} == set(files)
    for name in files:
        row = by_name[name]
        assert (tmp_path / name).is_file(), row
        assert row["max_abs_diff"] is not None and row["max_abs_diff"] < 1e-3, row
        if name != "pruned.pt" or not row.get("error"):
            assert row["verified"] and not row.get("error"), row
        else:  # a trace that fixed the batch: kept for that batch, and the row says so
            assert "fixed the batch size" in row["error"], row
        measured = sparsity_in_file(tmp_path / name, result.model)
        assert measured == pytest.approx(sparsity, abs=1e-9), (name, measured, sparsity)
    found = registrable_export(rows, tmp_path, loaded.input_dtype)
    assert found is not None
    if fmt == "pt2":  # the result model stays a program, and its BatchNorm still trains
        assert found[1] == "pt2"
        _batchnorm_trains(load_model(found[0], "pt2").module, data)


def _batchnorm_trains(module: torch.nn.Module, data: ArrayDataset) -> None:
    x = torch.as_tensor(data.x_train[:8])
    stats = {k: v.clone() for k, v in module.named_buffers() if k.endswith("running_mean")}
    assert stats, "the program lost its BatchNorm statistics"
    module.train()
    module(x)
    moved = [k for k, v in module.named_buffers() if k in stats and not torch.equal(v, stats[k])]
    assert moved, "BatchNorm statistics did not update in train mode"
    module.eval()
    torch.testing.assert_close(module(x)[:1], module(x[:1]))  # eval: running statistics
