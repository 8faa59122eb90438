"""One run's step figures: accuracy vs compression / FLOPs / speed-up, fine-tuning curves.

Pure functions over rows (no I/O); the shared look is :mod:`app.web.chart_style`, the layer
heatmaps and histograms are :mod:`app.web.charts_layers`.
"""

from __future__ import annotations

import math
from typing import Any

from app.web.chart_style import (
    PALETTE,
    QUALITY_AXES,
    as_number,
    base_layout,
    empty_figure,
    paper_note,
)
from app.web.latency_view import NO_SPEEDUP, final_speedup, step_speedup


def _ratio(num: Any, den: Any) -> float | None:
    a, b = as_number(num), as_number(den)
    return round(a / b, 4) if a is not None and b else None


TRADEOFF_AXES = {
    "compression": ("compression (x fewer non-zero parameters)", "compression"),
    "flops": ("FLOPs reduction (x, dense / effective)", "flops"),
    "speedup": ("measured speed-up (x, latency at batch {batch})", "latency_ms_batch"),
}


def _x_value(metrics: dict, base: dict, axis: str, masks_only: bool = False) -> float | None:
    if axis == "compression":
        return as_number(metrics.get("compression"))
    key = TRADEOFF_AXES[axis][1]
    if axis == "speedup" and masks_only:
        return 1.0  # the zeros are computed: no speed-up, whatever the timer saw
    if axis == "speedup" and (base.get(key) is None or metrics.get(key) is None):
        key = "latency_ms"  # older rows: batch-1 latency only
    if axis == "speedup":
        return step_speedup(metrics, base, key)
    return _ratio(base.get(key), metrics.get(key))


def tradeoff_figure(
    steps: list[dict],
    *,
    axis: str = "compression",
    masks_only: bool,
    final: dict | None = None,
    metric: str = "accuracy",
) -> dict:
    """Accuracy (or a language model's perplexity, ``metric``) vs compression / FLOPs
    reduction / measured speed-up over a run's steps.

    Speed-up uses the large-batch latency (batch-1 timings of small models are mostly
    overhead). ``final`` adds the model handed back when it differs from the last step's
    (a physically pruned one).
    """
    y_title, tick, hover = QUALITY_AXES[metric]
    batch = next(
        (m.get("batch") for s in steps for m in (s.get("after_finetune") or {},) if m.get("batch")),
        1,
    )
    x_title = TRADEOFF_AXES[axis][0].format(batch=batch)
    title = (
        f"{metric.capitalize()} vs {axis.replace('speedup', 'speed-up').replace('flops', 'FLOPs')}"
    )
    if not steps:
        return empty_figure(title, "No steps measured yet.")
    base = steps[0].get("after_finetune") or steps[0].get("before_finetune") or {}
    data = []
    for i, phase in enumerate(("before_finetune", "after_finetune")):
        pts = [(s["step"], s.get(phase) or {}) for s in steps]
        xs = [_x_value(m, base, axis, masks_only) for _, m in pts]
        ys = [as_number(m.get(metric)) for _, m in pts]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": xs,
                "y": ys,
                "name": phase.replace("_", " ").replace("finetune", "fine-tuning"),
                "customdata": [s for s, _ in pts],
                "marker": {"color": PALETTE[i], "size": 8},
                "hovertemplate": f"step %{{customdata}}<br>%{{x:.2f}}x · {hover}<extra></extra>",
            }
        )
    last = steps[-1].get("after_finetune") or {}
    final_x = _x_value(final or {}, base, axis, masks_only)
    verdict = ""
    if axis == "speedup" and isinstance((final or {}).get("speedup"), dict):
        final_x, verdict = final_speedup(final)  # timed against the original, interleaved
    if final and final.get("n_params") != last.get("n_params") and final_x is not None:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "handed back (physically smaller)",
                "x": [final_x],
                "y": [as_number(final.get(metric))],
                "marker": {"color": PALETTE[2], "size": 13, "symbol": "star"},
                "hovertemplate": f"final model<br>%{{x:.2f}}x · {hover}<extra></extra>",
            }
        )
    layout = base_layout(title, x_title, y_title, height=340)
    if tick:
        layout["yaxis"] |= {"tickformat": tick}
    if axis == "speedup" and masks_only:
        layout["annotations"] = [paper_note("masks only: no speed-up expected", y=1.08)]
    elif axis == "speedup" and verdict == NO_SPEEDUP:
        layout["annotations"] = [paper_note(f"final model: {NO_SPEEDUP}", y=1.08)]
    return {"data": data, "layout": layout}


NO_FINETUNE = (
    "No fine-tuning in this run (0 epochs): the metrics are measured straight after pruning."
)
NO_EPOCHS_YET = "No epochs yet: the curves fill in while the run trains."


def curve_perplexity(point: dict) -> float | None:
    """A curve point's held-out perplexity, ``exp(test_loss)`` (None for older points)."""
    loss = as_number(point.get("test_loss"))
    return math.exp(min(loss, 700.0)) if loss is not None else None


def curve_figure(
    curve: list[dict], *, metric: str = "accuracy", empty: str = NO_EPOCHS_YET
) -> dict:
    """Fine-tuning loss (left axis) and accuracy, or a language model's perplexity (``metric``),
    on the right axis, per epoch in run order; ``empty`` is what an empty curve says."""
    if not curve:
        return empty_figure("Fine-tuning", empty)
    xs = list(range(1, len(curve) + 1))
    steps = [int(p.get("step") or 0) for p in curve]
    lm = metric == "perplexity"
    quality = [curve_perplexity(p) if lm else as_number(p.get("accuracy")) for p in curve]
    hover = "perplexity %{y:.4g}" if lm else "accuracy %{y:.2%}"
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "training loss" if lm else "loss",
            "x": xs,
            "y": [as_number(p.get("loss")) for p in curve],
            "customdata": steps,
            "marker": {"color": PALETTE[3]},
            "hovertemplate": "epoch %{x} (step %{customdata})<br>loss %{y:.4f}<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": metric,
            "x": xs,
            "yaxis": "y2",
            "y": quality,
            "customdata": steps,
            "marker": {"color": PALETTE[0]},
            "hovertemplate": f"epoch %{{x}} (step %{{customdata}})<br>{hover}<extra></extra>",
        },
    ]
    layout = base_layout("Fine-tuning curves", "epoch (cumulative over steps)", "loss", height=320)
    layout["margin"] |= {"r": 72}
    layout["yaxis2"] = {
        "title": {"text": QUALITY_AXES[metric][0]},
        "overlaying": "y",
        "side": "right",
        "showgrid": False,
    }
    if not lm:
        layout["yaxis2"] |= {"tickformat": ".0%", "range": [0, 1.02]}
    return {"data": data, "layout": layout}
