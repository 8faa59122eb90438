"""Metrics: every name present, FLOPs equal to hand counts, sizes, latency, histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from app import zoo
from app.pruning.counts import count_flops, layer_stats, sparse_size_bytes
from app.pruning.data import ArrayDataset
from app.pruning.histograms import histograms
from app.pruning.latency import measure_latency
from app.pruning.measure import (
    METRICS,
    evaluate,
    measure,
)
from app.pruning.structural.remove import physical_prune

torch.set_num_threads(1)


def _data(n: int = 40, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return ArrayDataset("tiny", x, y, x[:20], y[:20], n_classes=10)


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)  # 8x8 out: 64 positions x 36 weights
        self.fc = nn.Linear(4 * 8 * 8, 10)  # 2560 weights, one position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_flops_equal_hand_computed_macs() -> None:
    model = ConvLinear()
    x = torch.zeros(1, 1, 8, 8)
    assert count_flops(model, x) == (64 * 36 + 2560, 64 * 36 + 2560)
    with torch.no_grad():
        model.conv.weight[:2] = 0  # half the filters: 18 of 36 weights
        model.fc.weight[:, :100] = 0
    assert count_flops(model, x) == (64 * 18 + 2560 - 1000, 64 * 36 + 2560)


def test_strided_conv_and_token_linear_flops() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 16x16 -> 8x8
    assert count_flops(conv, torch.zeros(1, 3, 16, 16))[1] == 8 * 8 * (8 * 3 * 9)
    lin = nn.Linear(16, 32)  # 5 tokens
    assert count_flops(lin, torch.zeros(1, 5, 16))[1] == 5 * 16 * 32


def test_measure_gives_every_metric_and_compression() -> None:
    torch.manual_seed(0)
    data = _data()
    model = zoo.build("cnn_small", input_shape=(1, 8, 8))
    base = measure(model, data, latency=False)
    assert set(METRICS) <= set(base)
    assert {"flops_dense", "latency_ms_batch", "batch"} <= set(base)
    assert base["compression"] == 1.0
    assert base["sparsity"] == 0.0
    assert base["flops"] == base["flops_dense"] > 0
    assert base["latency_ms"] is None
    assert 0.0 <= base["accuracy"] <= 1.0 and math.isfinite(base["loss"])

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    after = measure(model, data, baseline_nonzero=base["n_nonzero"], latency=False)
    assert after["compression"] > 1.5
    assert 0.45 < after["sparsity"] < 0.55
    assert after["flops"] < 0.6 * after["flops_dense"]
    assert after["n_params"] == base["n_params"]
    assert after["size_bytes"] == base["size_bytes"]


def test_physically_pruned_model_has_dense_flops_of_smaller_model() -> None:
    data = _data()
    model = zoo.build("cnn_small", input_shape=(1, 8, 8)).eval()
    keep = torch.ones(32, dtype=torch.bool)
    keep[:16] = False
    masks = {"features.4": keep.view(-1, 1, 1, 1).expand(32, 16, 3, 3).clone()}
    small = physical_prune(model, masks, data.sample_batch(4), granularity="filter")
    m_small = measure(small, data, latency=False)
    m_big = measure(model, data, latency=False)
    assert m_small["flops"] == m_small["flops_dense"] < m_big["flops_dense"]
    assert m_small["size_bytes"] < m_big["size_bytes"]


def test_sparse_encoding_is_smaller_for_90_percent_sparse_weights() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    data = _data(shape=(256,))
    dense = measure(model, data, latency=False)
    assert dense["sparse_size_bytes"] > 0.8 * dense["size_bytes"]  # random floats barely compress
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight[torch.rand_like(m.weight) < 0.9] = 0
    sparse = measure(model, data, latency=False)
    assert sparse["size_bytes"] == dense["size_bytes"]
    assert sparse["sparse_size_bytes"] < 0.2 * sparse["size_bytes"]
    assert sparse_size_bytes(model) == sparse["sparse_size_bytes"]


def test_latency_is_measured_at_batch_one_and_large_batch_within_budget() -> None:
    data = _data()
    model = zoo.build("mlp", input_shape=(1, 8, 8))
    m = measure(model, data, large_batch=64, latency_budget_s=0.05)
    assert m["batch"] == 64
    assert 0 < m["latency_ms"] < m["latency_ms_batch"] * 10
    assert m["latency_ms_batch"] > 0
    assert model.training  # restored


def test_latency_budget_caps_wall_time() -> None:
    import time

    start = time.perf_counter()
    measure_latency(nn.Linear(8, 8), torch.zeros(1, 8), budget_s=0.1)
    assert time.perf_counter() - start < 1.0


def test_evaluate_counts_correct_predictions() -> None:
    data = _data()

    class Oracle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros(1))
            self.labels = torch.as_tensor(data.y_test)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.one_hot(self.labels[: x.shape[0]], 10).float() * 100

    result = evaluate(Oracle(), data, device="cpu", batch_size=512)
    assert result["accuracy"] == 1.0
    assert result["loss"] < 1e-6


def test_layer_stats_rows_per_prunable_layer() -> None:
    model = ConvLinear()
    with torch.no_grad():
        model.conv.weight[:1] = 0
    rows = layer_stats(
        model, thresholds={"conv": 0.1}, requested={"conv": 0.25}, input_shape=(1, 8, 8)
    )
    conv = rows[0]
    assert [r["layer"] for r in rows] == ["conv", "fc"]
    assert conv["shape"] == [4, 1, 3, 3] and conv["kind"] == "Conv2d"
    assert conv["n_params"] == 36 and conv["n_nonzero"] == 27
    assert conv["sparsity"] == pytest.approx(0.25)
    assert conv["threshold"] == 0.1 and conv["requested"] == 0.25
    assert conv["flops"] == 27 * 64 and conv["flops_dense"] == 36 * 64
    assert rows[1]["threshold"] is None


def test_histograms_share_edges_and_count_every_weight() -> None:
    torch.manual_seed(0)
    w = torch.randn(50, 20)
    pruned = torch.where(w.abs() < 0.5, torch.zeros_like(w), w)
    tuned = pruned * 1.5  # spreads beyond the original range
    rows = histograms({"fc": w}, {"fc": pruned}, {"fc": tuned}, {"fc": 0.5}, bins=200)
    assert [r["phase"] for r in rows] == ["before", "after_prune", "after_finetune"]
    assert len(rows[0]["edges"]) == 65  # capped at 64 bins
    assert rows[0]["edges"] == rows[1]["edges"] == rows[2]["edges"]
    assert sum(rows[0]["counts"]) == 1000
    for row in rows[1:]:
        assert sum(row["counts"]) + row["zeros"] == 1000
        assert row["threshold"] == 0.5
    assert rows[1]["zeros"] == int((w.abs() < 0.5).sum())
    assert all(isinstance(c, int) for c in rows[2]["counts"])
    assert histograms({"fc": w}, None, None, None)[0]["threshold"] is None


def test_torchscript_model_is_measured_too() -> None:
    data = _data()
    model = zoo.build("cnn_small", input_shape=(1, 8, 8)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    eager = measure(model, data, latency=False)
    scripted = measure(torch.jit.trace(model, data.sample_batch(2)), data, latency=False)
    assert scripted["flops_dense"] == eager["flops_dense"]
    assert scripted["sparsity"] == eager["sparsity"] > 0.4
    assert scripted["flops"] == pytest.approx(eager["flops"], rel=0.1)
    assert scripted["accuracy"] == eager["accuracy"]
