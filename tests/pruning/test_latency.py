"""Honest latency: spread and threads recorded, interleaved comparison, no speed-up from masks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from app.modelio.dataset_files import load_digits
from app.pruning import latency
from app.pruning.data import ArrayDataset
from app.pruning.latency import Timing, median_ci_rel, speedup, time_interleaved, time_models
from app.pruning.measure import measure
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from app.pruning.speedup import NO_SPEEDUP, latency_row, short_note, slower_note
from app.zoo import build

FAST = {"epochs": 1, "lr": 0.003, "optimizer": "adam", "batch_size": 64}


def _recipe(pruning: dict) -> Recipe:
    return Recipe.from_dict({"kind": "prune", "name": "t", "pruning": pruning, "finetune": FAST})


def test_timing_records_median_quartiles_repeats_and_the_fixed_thread_count() -> None:
    calls = [0, 0]

    def a() -> None:
        calls[0] += 1

    def b() -> None:
        calls[1] += 1

    before = torch.get_num_threads()
    t_a, t_b = time_interleaved([a, b], budget_s=0.02, threads=1)
    assert torch.get_num_threads() == before  # restored
    for t in (t_a, t_b):
        assert t.threads == 1 and t.repeats >= 7
        assert t.q1_ms <= t.median_ms <= t.q3_ms and t.iqr_ms >= 0
    assert calls[0] > 2 and calls[1] > 2  # both were timed (warm-up + blocks)


def test_overlapping_intervals_give_no_speed_up_number() -> None:
    dense = Timing(10.0, 9.0, 11.0, 20, 1)
    assert speedup(dense, Timing(9.5, 8.5, 10.5, 20, 1)) is None
    row = latency_row(256, dense, Timing(9.5, 8.5, 10.5, 20, 1))
    assert row["speedup"] is None and row["verdict"] == NO_SPEEDUP
    faster = latency_row(256, dense, Timing(4.0, 3.8, 4.2, 20, 1))
    assert faster["speedup"] == 2.5 and faster["verdict"] == "2.50x faster"
    slower = latency_row(256, dense, Timing(20.0, 19.0, 21.0, 20, 1))
    assert slower["verdict"] == "2.00x slower"
    note = slower_note({"rows": [faster, slower]})
    assert note is not None and note["level"] == "warning"
    assert "slower than the original" in note["text"]
    assert slower_note({"rows": [faster, row]}) is None


def test_a_speed_up_far_under_the_mac_reduction_is_flagged_at_the_large_batch() -> None:
    dense = Timing(10.0, 9.8, 10.2, 20, 1)
    one = latency_row(1, dense, Timing(2.5, 2.4, 2.6, 20, 1))  # 4x at batch 1
    large = latency_row(256, dense, Timing(7.0, 6.8, 7.2, 20, 1))  # 1.43x at batch 256
    note = short_note({"rows": [one, large]}, 4.0, "ONNX Runtime", "; try X")
    assert note is not None and note["level"] == "warning"
    assert note["text"].startswith("ONNX Runtime ran the pruned model 1.43x faster at batch 256")
    assert "4.00x fewer multiply-accumulates (0.36 of the reduction)" in note["text"]
    assert note["text"].endswith("; try X")
    assert short_note({"rows": [one, large]}, 2.5) is None  # 0.57 of it: not flagged
    assert short_note({"rows": [one, large]}, 1.2) is None  # hardly anything removed
    unmeasured = latency_row(256, dense, Timing(9.9, 9.7, 10.1, 20, 1))
    assert short_note({"rows": [unmeasured]}, 4.0) is None


def test_measure_stores_the_spread_and_threads_of_both_latencies() -> None:
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    data = ArrayDataset("toy", x, np.arange(20) % 2, x, np.arange(20) % 2, 2)
    m = measure(nn.Linear(6, 2), data, large_batch=16, latency_budget_s=0.02)
    assert m["latency_ms_iqr"] >= 0 and m["latency_ms_batch_iqr"] >= 0
    assert m["latency_threads"] == torch.get_num_threads()
    off = measure(nn.Linear(6, 2), data, latency=False)
    assert off["latency_ms_iqr"] is None and off["latency_ms_batch_iqr"] is None


def test_time_models_keeps_each_models_training_mode() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4).eval()
    time_models([a, b], torch.zeros(2, 4), budget_s=0.01)
    assert a.training and not b.training


def test_a_masks_only_run_shows_exactly_one_x_at_every_batch() -> None:
    torch.manual_seed(0)
    result = run_recipe(
        _recipe({"granularity": "element", "criterion": "l1", "sparsity": 0.9}),
        build("mlp"),
        load_digits(),
    )
    rows = result.final["speedup"]["rows"]
    assert result.masks_only and [r["speedup"] for r in rows] == [1.0, 1.0]
    assert all("masks only" in r["verdict"] for r in rows)


def test_a_physical_run_times_original_and_pruned_interleaved_with_spreads() -> None:
    torch.manual_seed(0)
    pruning = {
        "granularity": "filter",
        "criterion": "l1",
        "sparsity": 0.5,
        "physical": True,
        "exclude": ["classifier"],
    }
    result = run_recipe(_recipe(pruning), build("cnn_small"), load_digits())
    comparison = result.final["speedup"]
    assert result.physical and comparison["runtime"] == "pytorch"
    assert [r["batch"] for r in comparison["rows"]] == [1, result.final["batch"]]
    for row in comparison["rows"]:
        assert row["dense"]["repeats"] >= 7 and row["pruned"]["iqr_ms"] >= 0
        assert row["dense"]["threads"] == comparison["threads"]
        if row["speedup"] is None:
            assert row["verdict"] == NO_SPEEDUP
        else:
            assert row["verdict"].endswith(("faster", "slower"))


class _Clock:
    """A fake ``time.perf_counter``: every call advances it by the next of ``steps`` seconds."""

    def __init__(self, steps: list[float]) -> None:
        self.now, self.steps, self.i = 0.0, steps, 0

    def __call__(self) -> float:
        self.now += self.steps[self.i % len(self.steps)]
        self.i += 1
        return self.now


def test_the_median_confidence_interval_comes_from_order_statistics() -> None:
    assert median_ci_rel([5.0] * 30) == 0.0
    assert round(median_ci_rel([float(v) for v in range(90, 111)]), 4) == 0.05
    wide = median_ci_rel([1.0, 10.0] * 15)  # half the samples 10x the other half
    assert wide > 0.5  # (10 - 1) / (2 x 5.5): the interval spans both halves


def test_repeats_stop_once_the_median_is_stable(monkeypatch) -> None:
    monkeypatch.setattr(latency.time, "perf_counter", _Clock([0.001]))  # every block alike
    (t,) = time_interleaved([lambda: None], budget_s=1e6, threads=1)
    assert t.repeats == latency.MIN_CI_REPEATS and t.ci_rel == 0.0  # stopped early


def test_a_noisy_timer_repeats_until_the_time_cap(monkeypatch) -> None:
    monkeypatch.setattr(latency.time, "perf_counter", _Clock([0.001, 0.003, 0.001, 0.009]))
    (t,) = time_interleaved([lambda: None], budget_s=0.5, threads=1)
    assert latency.MIN_CI_REPEATS < t.repeats < latency.MAX_REPEATS  # the cap ended it
    assert t.ci_rel is not None and t.ci_rel > latency.TARGET_CI
    (whole,) = time_interleaved([lambda: None], budget_s=0.5, threads=1, target_ci=0)
    assert whole.repeats >= t.repeats  # target_ci=0: the whole budget, as before
    assert "ci_rel" in t.to_dict()


class _Loaded:
    """Fake clocks: callables that advance wall time by their cost x the round's load and CPU
    time by their cost alone (the other processes hold the core the rest of the time)."""

    def __init__(self, loads: list[float], hits: str = "both") -> None:
        self.wall = self.cpu = 0.0
        self.calls, self.loads, self.hits = 0, loads, hits

    def fn(self, ms: float, name: str) -> Callable[[], None]:
        def run() -> None:
            k = max(0, self.calls - 6) // 2  # after three warm-up calls each: the round
            load = self.loads[k % len(self.loads)] if self.hits in ("both", name) else 1.0
            self.wall += ms / 1000 * load
            self.cpu += ms / 1000
            self.calls += 1

        return run


def test_a_paired_ratio_cancels_a_load_that_hits_both_calls_of_a_pair(monkeypatch) -> None:
    clock = _Loaded([1.0, 4.0, 1.5, 3.0, 6.0])
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock.wall)
    fns = [clock.fn(2.0, "original"), clock.fn(1.0, "pruned")]
    (r,) = latency.time_ratios(fns, budget_s=1.0, threads=2, cpu=False)
    assert r.median_ms == 0.5 and r.ci_rel == 0.0 and r.repeats == latency.MIN_CI_REPEATS


def test_with_one_thread_ratios_are_timed_in_cpu_time(monkeypatch) -> None:
    clock = _Loaded([1.0, 4.0, 1.0, 6.0], hits="pruned")  # other processes cut into one of each
    monkeypatch.setattr(latency.time, "perf_counter", lambda: clock.wall)
    monkeypatch.setattr(latency.time, "thread_time", lambda: clock.cpu)
    fns = [clock.fn(2.0, "original"), clock.fn(1.0, "pruned")]
    (cpu,) = latency.time_ratios(fns, budget_s=1.0, threads=1)
    assert cpu.median_ms == 0.5  # what either model costs when it runs
    clock.calls = 0
    (wall,) = latency.time_ratios(fns, budget_s=1.0, threads=2)
    assert wall.median_ms > 0.5  # more threads: wall time, and the load shows


def test_the_slow_per_mac_hint_names_what_to_change_for_the_run_s_rounding() -> None:
    from app.pruning.pruning_spec import PruningSpec
    from app.pruning.result import pytorch_hint

    def hint(**fields: object) -> str:
        return pytorch_hint(PruningSpec("filter", physical=True, **fields))

    assert "set pruning.round_to 16 for that multiple on every layer" in hint(
        round_to=16, round_to_cap="layer"
    )  # the measured default, capped per layer: uncap it
    assert "multiples of 8" in hint(round_to=8) and "prune less" in hint(round_to=8)
    assert "CPU kernels like (8 or 16)" in hint()  # no rounding at all: try one
    assert "shaped for ONNX Runtime" in hint(deploy_runtime="onnxruntime")
