"""Figures across runs: overview scatter with the Pareto front, compare page figures.

Pure functions over plain dicts (no I/O), like :mod:`app.web.charts`. A run summary is
``{"id", "name", "criterion", "granularity", "final": {metrics}, "baseline": {metrics}}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from app.web.chart_style import (
    PALETTE,
    PHASE_LABELS,
    QUALITY_AXES,
    SYMBOLS,
    as_number,
    base_layout,
    empty_figure,
    is_language_model,
    quality_axis,
    quality_metric,
)
from app.web.charts import curve_perplexity
from app.web.charts_layers import rebin
from app.web.latency_view import final_speedup

# (metric, label, higher is better); a language model's perplexity (PERPLEXITY_COLUMN) goes first
PERPLEXITY_COLUMN = ("perplexity", "perplexity (lower is better)", False)
FINAL_COLUMNS = (
    ("accuracy", "accuracy", True),
    ("loss", "loss", False),
    ("compression", "compression (x)", True),
    ("sparsity", "sparsity", True),
    ("flops", "FLOPs", False),
    ("sparse_size_bytes", "sparse size (bytes)", False),
    ("latency_ms", "latency (ms, batch 1, at the run's load)", False),
)
# a run's own speed-up: pruned vs its original timed side by side in the same run (the load
# cancels); raw latencies of runs timed at different times do not compare
SPEEDUP_COLUMNS = {
    "speedup": ("measured_speedup", "speed-up (PyTorch, vs its original)", True),
    "speedup_onnx": ("measured_speedup_onnx", "speed-up (ONNX Runtime, vs its original)", True),
}


def columns_for(runs: list[dict]) -> tuple[tuple[str, str, bool], ...]:
    """The compare table's columns: perplexity first when any run is a language model (whose
    accuracy is next-token accuracy)."""
    timed = tuple(
        col
        for block, col in SPEEDUP_COLUMNS.items()
        if any(block in r.get("final", {}) for r in runs)
    )
    if not any(is_language_model(r) for r in runs):
        return FINAL_COLUMNS + timed
    label = "next-token accuracy" if all(is_language_model(r) for r in runs) else "accuracy"
    rest = tuple((k, label if k == "accuracy" else lab, h) for k, lab, h in FINAL_COLUMNS)
    return (PERPLEXITY_COLUMN, *rest, *timed)


def with_speedups(final: dict) -> dict:
    """``final`` plus the large-batch speed-up of each runtime that timed the run
    (``measured_speedup``, ``measured_speedup_onnx``): a number, or the verdict when the
    intervals overlapped ("no measurable speed-up").

    >>> rows = [{"batch": 256, "speedup": None, "verdict": "no measurable speed-up"}]
    >>> with_speedups({"speedup": {"rows": rows}})["measured_speedup"]
    'no measurable speed-up'
    """
    out = dict(final)
    for block, (key, _, _) in SPEEDUP_COLUMNS.items():
        number, verdict = final_speedup(final, block)
        if number is not None or verdict:
            out[key] = number if number is not None else verdict
    return out


def pareto_front(
    points: Iterable[tuple[float, float]], *, higher: bool = True
) -> list[tuple[float, float]]:
    """Points not beaten on both compression (x) and quality (y: accuracy, or with
    ``higher=False`` a perplexity), by increasing x."""
    sign = 1.0 if higher else -1.0
    best: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -sign * p[1])):
        if not best or sign * y > sign * best[-1][1]:
            best.append((x, y))
    return sorted(best)


def overview_scatter(runs: list[dict]) -> dict:
    """Accuracy (perplexity when every run is a language model) vs compression of all runs:
    colour = criterion, marker = granularity. With a mix, the language models are left out
    and a note says how many (their perplexity is on another scale)."""
    pts = [r for r in runs if as_number((r.get("final") or {}).get("compression")) is not None]
    if not pts:
        return empty_figure(
            "Accuracy vs compression", "No finished prune runs yet: start one from “New run”."
        )
    metric = quality_metric(pts)
    left_out = 0
    if metric == "accuracy":
        left_out = sum(is_language_model(r) for r in pts)
        pts = [r for r in pts if not is_language_model(r)]
    fig = _overview_points(pts, metric)
    if left_out:  # under the marker key, above the plot (the top margin grows to fit)
        note = fig["layout"]["annotations"][0]
        note["text"] += (
            f"<br>{left_out} language-model run{'s' if left_out > 1 else ''} not shown "
            "(perplexity): filter by their dataset to plot them"
        )
        note |= {"y": 1.02, "yanchor": "bottom", "align": "left"}
        fig["layout"]["margin"] = fig["layout"]["margin"] | {"t": 84}
    return fig


def _log_range(xs: list[float]) -> list[float]:
    """The log10 range of a compression axis: from 1x (dense) to past the largest, at least
    to 2x, so one point or a tight cluster does not stretch the axis to odd fractions.

    Example:
        >>> [round(v, 3) for v in _log_range([1.61, 1.94])]
        [-0.02, 0.402]
    """
    lo = min([1.0, *(x for x in xs if x > 0)])
    hi = max([2.0, *(x * 1.3 for x in xs)])
    return [math.log10(lo) - 0.02, math.log10(hi)]


def _overview_points(pts: list[dict], metric: str) -> dict:
    grans = sorted({r.get("granularity") or "?" for r in pts})
    data = []
    for i, crit in enumerate(sorted({r.get("criterion") or "?" for r in pts})):
        group = [r for r in pts if (r.get("criterion") or "?") == crit]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": crit,
                "x": [r["final"]["compression"] for r in group],
                "y": [as_number(r["final"].get(metric)) for r in group],
                "customdata": [r["id"] for r in group],
                "text": [f"#{r['id']} {r['name']} ({r.get('granularity')})" for r in group],
                "marker": {
                    "color": PALETTE[i % len(PALETTE)],
                    "size": 11,
                    "line": {"width": 1},
                    "symbol": [
                        SYMBOLS[grans.index(r.get("granularity") or "?") % 8] for r in group
                    ],
                },
                "hovertemplate": f"%{{text}}<br>%{{x:.2f}}x · {QUALITY_AXES[metric][2]}"
                "<br>click to open<extra>%{fullData.name}</extra>",
            }
        )
    front = pareto_front(
        (
            (r["final"]["compression"], r["final"][metric])
            for r in pts
            if as_number(r["final"].get(metric)) is not None
        ),
        higher=metric == "accuracy",
    )
    data.append(
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Pareto front",
            "x": [p[0] for p in front],
            "y": [p[1] for p in front],
            "hoverinfo": "skip",
            "line": {"color": "#5b6577", "dash": "dot", "shape": "hv"},
        }
    )
    layout = base_layout(
        f"{metric.capitalize()} vs compression (all runs)",
        "compression (x fewer non-zero parameters)",
        "",
        height=420,
    )
    quality_axis(layout, metric)
    layout["xaxis"] |= {
        "type": "log",
        "range": _log_range([r["final"]["compression"] for r in pts]),
    }
    legend = ", ".join(f"{SYMBOLS[i % 8]} = {g}" for i, g in enumerate(grans))
    layout["annotations"] = [
        {
            "text": f"marker: {legend}",
            "xref": "paper",
            "yref": "paper",
            "x": 0,
            "y": 1.08,
            "showarrow": False,
            "font": {"size": 11, "color": "#5b6577"},
        }
    ]
    return {"data": data, "layout": layout}


def compare_tradeoff(runs: list[dict]) -> dict:
    """Each run's accuracy (language models: perplexity) vs compression over its steps
    (after fine-tuning), overlaid."""
    metric = quality_metric(runs)
    data = []
    for i, r in enumerate(runs):
        steps = r.get("steps") or []
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": f"#{r['id']} {r['name']}",
                "x": [as_number((s.get("after_finetune") or {}).get("compression")) for s in steps],
                "y": [as_number((s.get("after_finetune") or {}).get(metric)) for s in steps],
                "marker": {"color": PALETTE[i % len(PALETTE)], "symbol": SYMBOLS[i % 8], "size": 8},
            }
        )
    layout = base_layout(
        f"{metric.capitalize()} vs compression per step", "compression (x)", "", height=360
    )
    return {"data": data, "layout": quality_axis(layout, metric)}


NO_FINETUNE_RUNS = (
    "No fine-tuning in these runs: they were measured straight after pruning (0 epochs)."
)


def compare_curves(runs: list[dict]) -> dict:
    """Fine-tuning accuracy (language models: perplexity) per cumulative epoch, one line per
    run; a sentence instead of empty axes when none of the runs fine-tuned."""
    metric = quality_metric(runs)
    title = f"Fine-tuning {metric}"
    if not any(r.get("curve") for r in runs):
        return empty_figure(title, NO_FINETUNE_RUNS)

    def ys(curve: list[dict]) -> list[float | None]:
        if metric == "perplexity":
            return [curve_perplexity(p) for p in curve]
        return [as_number(p.get("accuracy")) for p in curve]

    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": f"#{r['id']} {r['name']}",
            "x": list(range(1, len(r.get("curve") or []) + 1)),
            "y": ys(r.get("curve") or []),
            "line": {"color": PALETTE[i % len(PALETTE)]},
        }
        for i, r in enumerate(runs)
    ]
    layout = base_layout(title, "epoch (cumulative)", "", height=320)
    return {"data": data, "layout": quality_axis(layout, metric)}


def compare_layer_sparsity(runs: list[dict]) -> dict:
    """Final per-layer sparsity of each run, side by side (grouped bars)."""
    data = []
    for i, r in enumerate(runs):
        layers = r.get("layers") or []
        last = max((int(x["step"]) for x in layers), default=0)
        final = [x for x in layers if int(x["step"]) == last]
        data.append(
            {
                "type": "bar",
                "name": f"#{r['id']} {r['name']}",
                "x": [x["layer"] for x in final],
                "y": [x["sparsity"] for x in final],
                "marker": {"color": PALETTE[i % len(PALETTE)]},
                "hovertemplate": "%{x}: %{y:.1%}<extra>%{fullData.name}</extra>",
            }
        )
    layout = base_layout(
        "Final sparsity per layer", "layer", "sparsity", barmode="group", height=340
    )
    layout["yaxis"] |= {"tickformat": ".0%", "range": [0, 1]}
    layout["xaxis"] |= {"automargin": True, "tickangle": -35}  # long transformer layer names
    return {"data": data, "layout": layout}


def compare_histograms(runs: list[dict], *, layer: str, phase: str = "after_finetune") -> dict:
    """The same layer's weight histogram across runs (each run on its own bins), in ``phase``;
    a run without that phase (no fine-tuning epoch) shows its last, named in its legend."""
    data = []
    for i, r in enumerate(runs):
        rows = [h for h in r.get("histograms") or [] if h["layer"] == layer and h.get("edges")]
        row = next((h for h in rows if h["phase"] == phase), rows[-1] if rows else None)
        if row is None:
            continue
        edges, counts = rebin(row["edges"], row["counts"])
        data.append(
            {
                "type": "bar",
                "name": f"#{r['id']} {r['name']}"
                + ("" if row["phase"] == phase else f" ({PHASE_LABELS.get(row['phase'])})"),
                "opacity": 0.55,
                "x": [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)],
                "width": [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)],
                "y": counts,
                "marker": {"color": PALETTE[i % len(PALETTE)]},
            }
        )
    if not data:
        return empty_figure(
            f"Weights of {layer}", "None of these runs has histograms for this layer."
        )
    title = f"Weights of {layer} across runs ({PHASE_LABELS.get(phase, phase)})"
    layout = base_layout(
        title, "weight value", "weights per bin (count)", barmode="overlay", bargap=0, height=340
    )
    return {"data": data, "layout": layout}


def best_cells(runs: list[dict]) -> dict[str, int]:
    """For each final-metric column, the id of the run with the best value."""
    best: dict[str, int] = {}
    for key, _, higher in columns_for(runs):
        vals = [
            (v, r["id"])
            for r in runs
            if (v := as_number((r.get("final") or {}).get(key))) is not None
        ]
        if len(vals) > 1 and len({v for v, _ in vals}) > 1:  # a column of equals has no best
            best[key] = (max(vals) if higher else min(vals))[1]
    return best
