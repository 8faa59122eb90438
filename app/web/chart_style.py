"""The shared look of every Plotly figure: palette, layout, empty-state and notes, numbers.

Every figure is ``{"data": [...], "layout": {...}}`` ready for ``Plotly.react``.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "hexagon")
PHASE_LABELS = {
    "before": "before pruning",
    "after_prune": "after thresholding",
    "after_finetune": "after fine-tuning",
}
SEQ_SCALE = [[0.0, "#f7fbff"], [0.5, "#6baed6"], [1.0, "#08306b"]]


def base_layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict:
    """The shared look: white plot, light grid, labelled axes."""
    layout = {
        "title": {"text": title, "font": {"size": 15}},
        "xaxis": {"title": {"text": x_title}, "gridcolor": "#e6e9ef", "zeroline": False},
        "yaxis": {"title": {"text": y_title}, "gridcolor": "#e6e9ef", "zeroline": False},
        "margin": {"l": 64, "r": 24, "t": 48, "b": 96},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, sans-serif", "size": 12, "color": "#1d2330"},
        "legend": {"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0, "x": 0},
        "hovermode": "closest",
    }
    layout.update(extra)
    return layout


def empty_figure(title: str, message: str) -> dict:
    """A figure that says what to do instead of drawing empty axes."""
    layout = base_layout(title, "", "")
    layout["xaxis"] |= {"visible": False}
    layout["yaxis"] |= {"visible": False}
    wrapped = "<br>".join(textwrap.wrap(message, 48))  # Plotly annotations do not wrap
    layout["annotations"] = [paper_note(wrapped, y=0.5, x=0.5, size=14)]
    return {"data": [], "layout": layout}


def paper_note(text: str, *, x: float = 0.0, y: float = 1.08, size: int = 12) -> dict:
    return {
        "text": text,
        "xref": "paper",
        "yref": "paper",
        "x": x,
        "y": y,
        "showarrow": False,
        "font": {"size": size, "color": "#5b6577"},
    }


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt_metric(key: str, value: Any) -> str:
    """A metric value as the tables show it (a speed-up's verdict as its words).

    >>> fmt_metric("measured_speedup", 3.214), fmt_metric("measured_speedup", "no measurable speed-up")
    ('3.21x', 'no measurable speed-up')
    """
    if key.startswith("measured_speedup") and isinstance(value, str) and value:
        return value
    v = as_number(value)
    if v is None:
        return "—"
    if key in ("accuracy", "val_accuracy", "sparsity"):
        return f"{v:.2%}"
    if key == "compression" or key.startswith("measured_speedup"):
        return f"{v:.2f}x"
    if key in ("loss", "latency_ms", "perplexity", "val_perplexity"):
        return f"{v:.4g}"
    return f"{v:,.0f}"


# the quality axis by metric: (axis title, tick format, hover format); perplexity: lower is better
QUALITY_AXES = {
    "accuracy": ("test accuracy", ".0%", "accuracy %{y:.2%}"),
    "perplexity": ("test perplexity (lower is better)", None, "perplexity %{y:.4g}"),
}


def is_language_model(run: dict) -> bool:
    """A run summary (or a metrics holder) that measured a perplexity: a language model."""
    measured = {**(run.get("baseline") or {}), **(run.get("final") or {})}
    return "perplexity" in measured


def quality_metric(runs: list[dict]) -> str:
    """``"perplexity"`` when every run is a language model, else ``"accuracy"``.

    >>> quality_metric([{"final": {"perplexity": 3.1}}, {"baseline": {"perplexity": 2.9}}])
    'perplexity'
    >>> quality_metric([{"final": {"perplexity": 3.1}}, {"final": {"accuracy": 0.9}}])
    'accuracy'
    """
    return "perplexity" if runs and all(is_language_model(r) for r in runs) else "accuracy"


def quality_axis(layout: dict, metric: str, axis: str = "yaxis") -> dict:
    """Title ``layout[axis]`` for ``metric``; accuracy as a percentage capped near 100%."""
    layout[axis]["title"] = {"text": QUALITY_AXES[metric][0]}
    if metric == "accuracy":
        limits = {"minallowed": -0.02, "maxallowed": 1.02}  # one point drew -50%..100%
        layout[axis] |= {"tickformat": ".0%", "autorangeoptions": limits}
    return layout


def fmt_quality(metrics: dict | None) -> str:
    """A run's headline quality for lists: a language model's perplexity, else its accuracy.

    >>> fmt_quality({"accuracy": 0.5, "perplexity": 2.8931}), fmt_quality({"accuracy": 0.5})
    ('ppl 2.893', '50.00%')
    """
    metrics = metrics or {}
    if "perplexity" in metrics:
        return "ppl " + fmt_metric("perplexity", metrics["perplexity"])
    return fmt_metric("accuracy", metrics.get("accuracy"))
