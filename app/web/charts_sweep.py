"""Sweep and sensitivity figures: metric per grid cell, accuracy per layer sparsity.

Pure functions over plain dicts (no I/O), like :mod:`app.web.charts_runs`.
"""

from __future__ import annotations

from app.web.chart_style import (
    PALETTE,
    SYMBOLS,
    as_number,
    base_layout,
    empty_figure,
    quality_axis,
    quality_metric,
)
from app.web.latency_view import step_speedup


def _sweep_speedup(run: dict, base: dict, final: dict) -> float | None:
    """1.0 for masks-only runs; the interleaved speed-up when timed; else the batch-1 ratio."""
    if run.get("masks_only"):
        return 1.0
    if isinstance(final.get("speedup"), dict):
        rows = final["speedup"].get("rows") or []
        return as_number(rows[0].get("speedup")) if rows else None
    return step_speedup(final, base, "latency_ms")


def sweep_figure(runs: list[dict], *, axis: str) -> dict:
    """ShrinkBench-style: accuracy (a language model's perplexity) vs compression or vs
    speed-up, one line per criterion."""
    label = {"compression": "compression (x)", "speedup": "measured speed-up (x, batch 1)"}
    metric = quality_metric(runs)
    data = []
    for i, crit in enumerate(sorted({r.get("criterion") or "?" for r in runs})):
        group = []
        for r in runs:
            final, base = r.get("final") or {}, r.get("baseline") or {}
            if (r.get("criterion") or "?") != crit or as_number(final.get(metric)) is None:
                continue
            x = (
                as_number(final.get("compression"))
                if axis == "compression"
                else _sweep_speedup(r, base, final)
            )
            group.append((x, final[metric], r["id"]))
        group.sort(key=lambda p: (p[0] is None, p[0] or 0))
        dash = "dot" if crit == "random" else "solid"
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": crit,
                "x": [p[0] for p in group],
                "y": [p[1] for p in group],
                "customdata": [p[2] for p in group],
                "line": {"color": PALETTE[i % len(PALETTE)], "dash": dash},
            }
        )
    if not any(t["x"] for t in data):
        return empty_figure("Sweep", "No run of this sweep has finished yet.")
    layout = base_layout(
        f"{metric.capitalize()} vs {axis.replace('speedup', 'speed-up')}",
        label[axis],
        "",
        height=360,
    )
    quality_axis(layout, metric)
    if axis == "compression":
        layout["xaxis"] |= {"type": "log"}
    return {"data": data, "layout": layout}


def suggest_allocation(rows: list[dict], baseline: float | None, max_drop: float = 0.01) -> dict:
    """Per layer, the highest swept sparsity whose accuracy stays within ``max_drop``."""
    out: dict[str, float] = {}
    for r in rows:
        ok = baseline is None or baseline - r["accuracy"] <= max_drop + 1e-9
        if ok and r["sparsity"] >= out.get(r["layer"], 0.0):
            out[r["layer"]] = r["sparsity"]
        out.setdefault(r["layer"], 0.0)
    return out


def sensitivity_figure(rows: list[dict], *, baseline: dict | float | None) -> dict:
    """Accuracy vs sparsity with one line per layer (Han et al. 2015, Fig. 5); a language
    model's perplexity (rows that carry one) instead. ``baseline``: the dense metrics (or the
    dense accuracy), drawn as a dashed line."""
    if not rows:
        return empty_figure("Sensitivity", "No sensitivity rows yet.")
    metric = "perplexity" if all("perplexity" in r for r in rows) else "accuracy"
    if isinstance(baseline, dict):
        baseline = as_number(baseline.get(metric))
    data = []
    for i, layer in enumerate(dict.fromkeys(r["layer"] for r in rows)):
        pts = sorted((r["sparsity"], r[metric]) for r in rows if r["layer"] == layer)
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": layer,
                "x": [p[0] for p in pts],
                "y": [p[1] for p in pts],
                "line": {"color": PALETTE[i % len(PALETTE)]},
                "marker": {"symbol": SYMBOLS[(i // len(PALETTE)) % 8]},
            }
        )
    layout = base_layout(
        f"Sensitivity: {metric} when one layer is pruned",
        "sparsity of that layer",
        "",
        height=380,
    )
    layout["xaxis"] |= {"tickformat": ".0%"}
    quality_axis(layout, metric)
    if baseline is not None:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": baseline,
                "y1": baseline,
                "line": {"dash": "dash", "color": "#5b6577"},
            }
        ]
    return {"data": data, "layout": layout}
