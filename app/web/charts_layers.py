"""Per-layer figures: sparsity and mask heatmaps, weight histograms (large data downsampled).

Pure functions (no I/O). Payload bounds: heatmaps at most ``MAX_CELLS`` cells, histograms at
most ``MAX_BINS`` bins per trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from app.web.chart_style import (
    PALETTE,
    PHASE_LABELS,
    SEQ_SCALE,
    as_number,
    base_layout,
    empty_figure,
    paper_note,
)

MAX_CELLS = 128 * 128
MAX_BINS = 64


def downsample_matrix(z: np.ndarray, max_cells: int = MAX_CELLS) -> tuple[np.ndarray, int, int]:
    """Block-average a 2-D array so it has at most ``max_cells`` cells.

    Returns the array and the row/column block sizes (1 when nothing was merged).
    """
    z = np.asarray(z, dtype=float)
    rows, cols = z.shape
    if rows * cols <= max_cells:
        return z, 1, 1
    side = math.sqrt(max_cells)
    fr = max(1, math.ceil(rows / side)) if rows > side else 1
    fc = max(1, math.ceil(cols * rows / fr / max_cells))
    while math.ceil(rows / fr) * math.ceil(cols / fc) > max_cells:
        fr, fc = fr + (rows >= cols), fc + (cols > rows)
    pr, pc = (-rows) % fr, (-cols) % fc
    padded = np.pad(z, ((0, pr), (0, pc)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // fr, fr, padded.shape[1] // fc, fc)
    return np.nanmean(blocks, axis=(1, 3)), fr, fc


def rebin(edges: Sequence[float], counts: Sequence[int], max_bins: int = MAX_BINS) -> tuple:
    """Merge neighbouring bins so at most ``max_bins`` remain (counts are summed)."""
    n = len(counts)
    if n <= max_bins:
        return list(edges), list(counts)
    factor = math.ceil(n / max_bins)
    new_counts = [int(sum(counts[i : i + factor])) for i in range(0, n, factor)]
    new_edges = [edges[i] for i in range(0, n, factor)] + [edges[-1]]
    return new_edges, new_counts


def sparsity_heatmap(layers: Iterable[dict]) -> dict:
    """Layers x pruning steps, coloured by achieved sparsity; hover shows requested vs achieved."""
    rows = [r for r in layers if r.get("step", 0) > 0] or list(layers)
    if not rows:
        return empty_figure(
            "Sparsity per layer",
            "No layer statistics yet: they appear after the first pruning step.",
        )
    steps = sorted({int(r["step"]) for r in rows})
    names = list(dict.fromkeys(r["layer"] for r in rows))
    col = {s: i for i, s in enumerate(steps)}
    row = {n: i for i, n in enumerate(names)}
    z = [[None] * len(steps) for _ in names]
    custom = [[[None, None] for _ in steps] for _ in names]
    for r in rows:
        i, j = row[r["layer"]], col[int(r["step"])]
        z[i][j] = round(float(r["sparsity"]), 4)
        custom[i][j] = [as_number(r.get("requested")), int(r.get("n_nonzero") or 0)]
    trace = {
        "type": "heatmap",
        "z": z,
        "x": [f"step {s}" for s in steps],
        "y": names,
        "customdata": custom,
        "zmin": 0,
        "zmax": 1,
        "colorscale": SEQ_SCALE,
        "colorbar": {"title": {"text": "sparsity"}, "tickformat": ".0%"},
        "hovertemplate": "%{y} · %{x}<br>achieved %{z:.1%}<br>requested %{customdata[0]:.1%}"
        "<br>non-zero %{customdata[1]:,}<extra></extra>",
    }
    height = max(260, min(1600, 70 + 18 * len(names)))
    layout = base_layout("Sparsity per layer (achieved)", "pruning step", "layer", height=height)
    layout["yaxis"] |= {"autorange": "reversed", "automargin": True}
    return {"data": [trace], "layout": layout}


def mask_matrix(mask: np.ndarray, granularity: str) -> tuple[np.ndarray, str, str]:
    """A weight mask as a 2-D kept-fraction grid, with axis titles.

    Conv/linear at filter/channel/element level: filters x input channels (a conv cell is the
    kept fraction of that kernel). Vector/kernel/group levels: the kernel positions laid out
    as tiles, rows ``filter*kh``, columns ``in_channel*kw``.
    """
    m = np.asarray(mask, dtype=float)
    if m.ndim == 1:
        return m[None, :], "unit", ""
    if m.ndim == 2:
        return m, "input feature", "output neuron (filter)"
    if m.ndim == 3:
        m = m[..., None]
    out, inp, kh, kw = m.shape[:4]
    if granularity in ("vector", "kernel", "group") and kh * kw > 1:
        tiles = m.transpose(0, 2, 1, 3).reshape(out * kh, inp * kw)
        return (
            tiles,
            f"input channel x kernel column ({kw} per channel)",
            (f"filter x kernel row ({kh} per filter)"),
        )
    return m.reshape(out, inp, -1).mean(axis=2), "input channel", "filter (output channel)"


def mask_heatmap(mask: np.ndarray, *, layer: str, granularity: str) -> dict:
    """The mask of one layer as a heatmap (1 = kept), downsampled when large."""
    grid, x_title, y_title = mask_matrix(mask, granularity)
    small, fr, fc = downsample_matrix(grid)
    kept = float(np.asarray(mask, dtype=float).mean()) if np.size(mask) else 0.0
    title = f"Mask of {layer}: {kept:.1%} of weights kept"
    if fr > 1 or fc > 1:
        title += f" (each cell averages {fr}x{fc})"
    trace = {
        "type": "heatmap",
        "z": np.round(small, 3).tolist(),
        "zmin": 0,
        "zmax": 1,
        "colorscale": [[0, "#ffffff"], [1, "#0072B2"]],
        "xgap": 0,
        "ygap": 0,
        "colorbar": {"title": {"text": "kept"}, "tickformat": ".0%"},
        "hovertemplate": "row %{y} · col %{x}<br>kept %{z:.0%}<extra></extra>",
    }
    layout = base_layout(title, x_title, y_title, height=420)
    layout["yaxis"] |= {"autorange": "reversed"}
    return {"data": [trace], "layout": layout}


def _thresholds(value: Any) -> list[float]:
    items = value if isinstance(value, list | tuple) else [value]
    return sorted({abs(v) for v in (as_number(x) for x in items) if v is not None})


def histogram_figure(rows: Iterable[dict], *, layer: str) -> dict:
    """Weight histograms of one layer per phase, overlaid on shared bins, thresholds drawn."""
    rows = [r for r in rows if r.get("layer") == layer and r.get("edges")]
    if not rows:
        return empty_figure(
            f"Weights of {layer}",
            "No histograms for this layer yet: they are written when the run finishes.",
        )
    order = list(PHASE_LABELS)
    rows.sort(key=lambda r: order.index(r["phase"]) if r["phase"] in order else 9)
    data, cuts, zeros = [], set(), []
    for i, r in enumerate(rows):
        edges, counts = rebin(r["edges"], r["counts"])
        centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
        widths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        data.append(
            {
                "type": "bar",
                "x": centers,
                "y": counts,
                "width": widths,
                "name": PHASE_LABELS.get(r["phase"], r["phase"]),
                "opacity": 0.55,
                "marker": {"color": PALETTE[i % len(PALETTE)]},
                "hovertemplate": "weight %{x:.3g}<br>%{y:,} weights<extra>%{fullData.name}</extra>",
            }
        )
        cuts.update(_thresholds(r.get("threshold")))
        if r.get("zeros"):
            zeros.append(f"{PHASE_LABELS.get(r['phase'], r['phase'])}: {r['zeros']:,}")
    shapes = [
        {
            "type": "line",
            "x0": s * t,
            "x1": s * t,
            "yref": "paper",
            "y0": 0,
            "y1": 1,
            "line": {"color": "#b3261e", "dash": "dash", "width": 1.5},
        }
        for t in cuts
        for s in (-1, 1)
    ]
    layout = base_layout(
        f"Weights of {layer}",
        "weight value",
        "weights per bin (count)",
        barmode="overlay",
        bargap=0,
        shapes=shapes,
        height=360,
    )
    layout["updatemenus"] = [
        {
            "type": "buttons",
            "direction": "right",
            "x": 1,
            "xanchor": "right",
            "y": 1.18,
            "buttons": [
                {"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]},
            ],
        }
    ]
    notes = []
    if cuts:
        notes.append("threshold ±" + ", ±".join(f"{t:.3g}" for t in cuts) + " (dashed)")
    if zeros:
        notes.append("pruned (exactly zero) weights not drawn: " + "; ".join(zeros))
    if notes:
        layout["annotations"] = [paper_note(" · ".join(notes), y=1.1)]
    return {"data": data, "layout": layout}
