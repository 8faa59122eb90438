"""The exported pruned.onnx timed against the original in ONNX Runtime, with spreads."""

from __future__ import annotations

import torch
from torch import nn

from app.modelio.ort_latency import SPINNING, export_onnx, onnx_latency, session
from app.pruning.speedup import MASKS_ONLY_VERDICT, NO_SPEEDUP


def _mlp(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))


def test_both_runtimes_rows_at_batch_one_and_the_large_batch(tmp_path) -> None:
    x = torch.randn(4, 64)
    pruned = export_onnx(_mlp(32), x, tmp_path / "pruned.onnx")
    out = onnx_latency(_mlp(512), pruned, x, tmp_path, large_batch=32, budget_s=0.05)
    assert out["runtime"] == "onnxruntime" and out["threads"] >= 1
    assert [r["batch"] for r in out["rows"]] == [1, 32]
    for row in out["rows"]:
        assert row["dense"]["repeats"] >= 7 and row["pruned"]["median_ms"] > 0
        assert row["dense"]["q1_ms"] <= row["dense"]["median_ms"] <= row["dense"]["q3_ms"]
        assert row["speedup"] is None or row["speedup"] > 0
        assert row["verdict"] == NO_SPEEDUP or row["verdict"].endswith(("faster", "slower"))
    assert not (tmp_path / "original.onnx").exists()  # the original's export is temporary


def test_a_masks_only_export_is_one_x_whatever_the_timer_saw(tmp_path) -> None:
    x = torch.randn(4, 64)
    pruned = export_onnx(_mlp(128), x, tmp_path / "pruned.onnx")
    out = onnx_latency(
        _mlp(128), pruned, x, tmp_path, large_batch=8, masks_only=True, budget_s=0.02
    )
    assert [r["speedup"] for r in out["rows"]] == [1.0, 1.0]
    assert {r["verdict"] for r in out["rows"]} == {MASKS_ONLY_VERDICT}


class _Tokens(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(32, width)
        self.head = nn.Linear(width, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def test_token_id_files_are_timed_on_int64_ids(tmp_path) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, 32, (2, 6))
    pruned = export_onnx(_Tokens(8), ids, tmp_path / "pruned.onnx")
    out = onnx_latency(_Tokens(64), pruned, ids[:1], tmp_path, large_batch=4, budget_s=0.02)
    assert [r["batch"] for r in out["rows"]] == [1, 4]
    assert all(r["pruned"]["median_ms"] > 0 for r in out["rows"])


def test_the_sessions_timed_in_turn_do_not_spin_between_runs(tmp_path) -> None:
    path = export_onnx(_mlp(16), torch.randn(2, 64), tmp_path / "m.onnx")
    opts = session(path, 2).get_session_options()
    assert opts.intra_op_num_threads == 2  # the fixed thread count both models get
    assert opts.get_session_config_entry(SPINNING) == "0"  # an idle pool steals no core
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"  # as deployed (NCHWc)
