"""Chart functions: rows in, Plotly figure dicts out (no I/O), bounded payloads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.web import charts, charts_layers, charts_runs, charts_sweep


def _layers(n_layers: int, n_steps: int) -> list[dict]:
    return [
        {
            "step": s,
            "layer": f"l{i}",
            "sparsity": s / (n_steps + 1),
            "requested": s / n_steps,
            "n_nonzero": 100 - s,
        }
        for s in range(n_steps + 1)
        for i in range(n_layers)
    ]


def test_sparsity_heatmap_is_layers_by_steps_with_requested_on_hover() -> None:
    fig = charts_layers.sparsity_heatmap(_layers(3, 2))
    trace = fig["data"][0]
    assert trace["type"] == "heatmap"
    assert trace["y"] == ["l0", "l1", "l2"]
    assert trace["x"] == ["step 1", "step 2"]  # step 0 (baseline, dense) is left out
    assert trace["z"][0][1] == pytest.approx(2 / 3, abs=1e-4)
    assert trace["customdata"][0][1][0] == pytest.approx(1.0)  # requested at step 2
    assert "requested" in trace["hovertemplate"]


def test_empty_inputs_give_a_message_not_empty_axes() -> None:
    fig = charts_layers.sparsity_heatmap([])
    assert fig["data"] == []
    assert "first pruning step" in fig["layout"]["annotations"][0]["text"]
    assert charts_runs.overview_scatter([])["layout"]["annotations"][0]["text"].startswith("No")


def test_downsample_matrix_bounds_cells_and_keeps_the_mean() -> None:
    z = np.random.default_rng(0).random((1000, 700))
    small, fr, fc = charts_layers.downsample_matrix(z, max_cells=128 * 128)
    assert small.size <= 128 * 128
    assert fr > 1 and fc > 1
    assert small.mean() == pytest.approx(z.mean(), abs=0.01)
    same, fr1, fc1 = charts_layers.downsample_matrix(np.ones((4, 5)))
    assert same.shape == (4, 5) and (fr1, fc1) == (1, 1)


def test_mask_of_conv_is_filters_by_input_channels_for_filter_level() -> None:
    mask = np.ones((6, 4, 3, 3), dtype=bool)
    mask[2] = False  # filter 2 pruned
    fig = charts_layers.mask_heatmap(mask, layer="conv1", granularity="filter")
    z = np.array(fig["data"][0]["z"])
    assert z.shape == (6, 4)
    assert z[2].sum() == 0 and z[0].sum() == 4
    assert fig["layout"]["xaxis"]["title"]["text"] == "input channel"
    assert "83.3% of weights kept" in fig["layout"]["title"]["text"]


def test_mask_of_kernel_level_shows_kernel_positions_as_tiles() -> None:
    mask = np.ones((2, 3, 3, 3), dtype=bool)
    mask[1, 2, 0, :] = False  # one row (vector) of one kernel
    grid, x_title, _ = charts_layers.mask_matrix(mask, "vector")
    assert grid.shape == (2 * 3, 3 * 3)
    assert grid[3, 6:9].sum() == 0 and grid.sum() == mask.sum()
    assert "kernel column" in x_title


def test_large_mask_is_downsampled_under_the_payload_bound() -> None:
    mask = np.random.default_rng(1).random((512, 512, 3, 3)) > 0.5
    fig = charts_layers.mask_heatmap(mask, layer="big", granularity="element")
    assert np.array(fig["data"][0]["z"]).size <= charts_layers.MAX_CELLS
    assert "each cell averages" in fig["layout"]["title"]["text"]
    assert len(json.dumps(fig)) < 300_000


def _hist(phase: str, counts: list[int], threshold=None, zeros=0) -> dict:
    return {
        "layer": "fc",
        "phase": phase,
        "edges": [-1, -0.5, 0, 0.5, 1],
        "counts": counts,
        "threshold": threshold,
        "zeros": zeros,
    }


def test_histogram_overlays_phases_on_shared_bins_with_thresholds_and_log_toggle() -> None:
    rows = [
        _hist("after_finetune", [2, 1, 1, 2], 0.3, zeros=4),
        _hist("before", [3, 4, 4, 3]),
        _hist("after_prune", [3, 0, 0, 3], 0.3, zeros=8),
    ]
    fig = charts_layers.histogram_figure(rows, layer="fc")
    names = [t["name"] for t in fig["data"]]
    assert names == ["before pruning", "after thresholding", "after fine-tuning"]
    assert all(t["type"] == "bar" and t["x"] == [-0.75, -0.25, 0.25, 0.75] for t in fig["data"])
    assert sorted(s["x0"] for s in fig["layout"]["shapes"]) == [-0.3, 0.3]
    labels = [b["label"] for b in fig["layout"]["updatemenus"][0]["buttons"]]
    assert labels == ["linear", "log"]
    assert fig["layout"]["barmode"] == "overlay"


def test_rebin_merges_bins_and_keeps_the_total() -> None:
    edges = list(np.linspace(0, 1, 201))
    counts = list(range(200))
    e2, c2 = charts_layers.rebin(edges, counts, max_bins=64)
    assert len(c2) <= 64 and len(e2) == len(c2) + 1
    assert sum(c2) == sum(counts) and e2[0] == 0 and e2[-1] == 1


def _steps() -> list[dict]:
    def m(acc: float, comp: float, flops: float, lat: float) -> dict:
        return {"accuracy": acc, "compression": comp, "flops": flops, "latency_ms": lat}

    return [
        {"step": 0, "before_finetune": m(0.9, 1, 100, 2), "after_finetune": m(0.9, 1, 100, 2)},
        {"step": 1, "before_finetune": m(0.7, 4, 25, 1), "after_finetune": m(0.88, 4, 25, 1)},
    ]


def test_tradeoff_axes_compute_flops_reduction_and_speedup_from_the_baseline() -> None:
    flops = charts.tradeoff_figure(_steps(), axis="flops", masks_only=False)
    assert flops["data"][1]["x"] == [1.0, 4.0]
    speed = charts.tradeoff_figure(_steps(), axis="speedup", masks_only=False)
    assert speed["data"][1]["x"] == [1.0, 2.0]
    assert "annotations" not in speed["layout"]


def test_language_model_tradeoff_plots_perplexity_on_a_plain_axis() -> None:
    steps = _steps()
    for step, ppl in zip(steps, (3.7, 4.1), strict=True):
        step["before_finetune"]["perplexity"] = step["after_finetune"]["perplexity"] = ppl
    fig = charts.tradeoff_figure(steps, masks_only=True, metric="perplexity")
    assert fig["data"][1]["y"] == [3.7, 4.1]
    assert fig["layout"]["title"]["text"] == "Perplexity vs compression"
    assert fig["layout"]["yaxis"]["title"]["text"] == "test perplexity (lower is better)"
    assert "tickformat" not in fig["layout"]["yaxis"]  # not a percentage


def test_masks_only_runs_say_no_speedup_expected() -> None:
    fig = charts.tradeoff_figure(_steps(), axis="speedup", masks_only=True)
    assert fig["layout"]["annotations"][0]["text"] == "masks only: no speed-up expected"


def test_curve_has_loss_and_accuracy_on_two_axes() -> None:
    pts = [
        {"epoch": 0, "step": 1, "loss": 1.0, "accuracy": 0.5},
        {"epoch": 1, "step": 1, "loss": 0.5, "accuracy": 0.8},
    ]
    fig = charts.curve_figure(pts)
    assert [t["name"] for t in fig["data"]] == ["loss", "accuracy"]
    assert fig["data"][1]["yaxis"] == "y2" and fig["data"][1]["y"] == [0.5, 0.8]


def test_pareto_front_keeps_only_undominated_points() -> None:
    pts = [(1, 0.9), (2, 0.85), (2, 0.8), (4, 0.86), (8, 0.5), (3, 0.7)]
    assert charts_runs.pareto_front(pts) == [(1, 0.9), (4, 0.86), (8, 0.5)]


def test_overview_colours_by_criterion_and_marks_granularity_and_run_ids() -> None:
    runs = [
        {
            "id": 1,
            "name": "a",
            "criterion": "l1",
            "granularity": "element",
            "final": {"compression": 5, "accuracy": 0.9},
        },
        {
            "id": 2,
            "name": "b",
            "criterion": "random",
            "granularity": "filter",
            "final": {"compression": 5, "accuracy": 0.6},
        },
        {
            "id": 3,
            "name": "c",
            "criterion": "l1",
            "granularity": "filter",
            "final": {"compression": 2, "accuracy": 0.95},
        },
    ]
    fig = charts_runs.overview_scatter(runs)
    l1, rnd, front = fig["data"]
    assert (l1["name"], rnd["name"], front["name"]) == ("l1", "random", "Pareto front")
    assert l1["customdata"] == [1, 3]
    assert l1["marker"]["symbol"][0] != l1["marker"]["symbol"][1]
    assert front["x"] == [2, 5] and front["y"] == [0.95, 0.9]
    lo, hi = fig["layout"]["xaxis"]["range"]  # log10: from just under 1x to past the largest
    assert lo < 0 < math.log10(5) < hi


def test_one_run_does_not_stretch_the_overview_axis_below_dense() -> None:
    run = {"id": 1, "name": "a", "criterion": "l1", "granularity": "element"}
    fig = charts_runs.overview_scatter([run | {"final": {"compression": 1.61, "accuracy": 0.7}}])
    lo, hi = fig["layout"]["xaxis"]["range"]
    assert -0.1 < lo < 0 and math.log10(2) <= hi < 0.5  # 1x to 2x, not 0.2x to 10x


def test_best_cells_pick_highest_accuracy_and_lowest_latency() -> None:
    runs = [
        {"id": 1, "final": {"accuracy": 0.9, "latency_ms": 3.0}},
        {"id": 2, "final": {"accuracy": 0.8, "latency_ms": 1.0}},
    ]
    best = charts_runs.best_cells(runs)
    assert best["accuracy"] == 1 and best["latency_ms"] == 2
    assert "loss" not in best  # nobody has it


def test_sweep_plots_method_against_random_baseline_dotted() -> None:
    runs = [
        {
            "id": i,
            "criterion": c,
            "final": {"compression": x, "accuracy": a, "latency_ms": 1},
            "baseline": {"latency_ms": 1},
        }
        for i, (c, x, a) in enumerate([("l1", 2, 0.9), ("l1", 4, 0.85), ("random", 2, 0.6)])
    ]
    fig = charts_sweep.sweep_figure(runs, axis="compression")
    by_name = {t["name"]: t for t in fig["data"]}
    assert by_name["l1"]["x"] == [2, 4] and by_name["random"]["line"]["dash"] == "dot"
    speed = charts_sweep.sweep_figure(runs, axis="speedup")
    assert speed["data"][0]["x"] == [1.0, 1.0]


def test_sensitivity_allocation_takes_the_highest_sparsity_within_the_drop() -> None:
    rows = [
        {"layer": "a", "sparsity": s, "accuracy": acc}
        for s, acc in [(0.5, 0.95), (0.75, 0.945), (0.9, 0.90)]
    ]
    rows += [{"layer": "b", "sparsity": 0.5, "accuracy": 0.5}]
    assert charts_sweep.suggest_allocation(rows, 0.95) == {"a": 0.75, "b": 0.0}
    fig = charts_sweep.sensitivity_figure(rows, baseline=0.95)
    assert [t["name"] for t in fig["data"]] == ["a", "b"]


def test_figures_are_plain_json() -> None:
    fig = charts_layers.sparsity_heatmap(_layers(2, 2))
    assert json.loads(json.dumps(fig)) == fig


def test_compare_histograms_name_a_run_shown_in_another_phase() -> None:
    """A run without fine-tuning has no "after fine-tuning" histogram: it shows its weights
    after pruning, and its legend entry says so."""
    row = {"layer": "fc", "edges": [0.0, 0.5, 1.0], "counts": [3, 4]}
    runs = [
        {"id": 1, "name": "tuned", "histograms": [{**row, "phase": "after_finetune"}]},
        {"id": 2, "name": "one-shot", "histograms": [{**row, "phase": "after_prune"}]},
    ]
    fig = charts_runs.compare_histograms(runs, layer="fc")
    assert [t["name"] for t in fig["data"]] == ["#1 tuned", "#2 one-shot (after thresholding)"]
