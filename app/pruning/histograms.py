"""Weight histograms per layer before pruning, after pruning and after fine-tuning.

Example:
    >>> from torch import nn
    >>> before = prunable_weights(nn.Sequential(nn.Linear(4, 3)))
    >>> rows = histograms(before, before, before, {}, bins=8)
    >>> [r["phase"] for r in rows]
    ['before', 'after_prune', 'after_finetune']
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from app.pruning.granularity import prunable_layers

MAX_BINS = 64


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every prunable layer's weight (for the before/after histograms)."""
    return {n: m.weight.detach().clone().cpu() for n, m in prunable_layers(model).items()}


def histograms(
    before: Mapping[str, torch.Tensor],
    after_prune: Mapping[str, torch.Tensor] | None,
    after_finetune: Mapping[str, torch.Tensor] | None,
    thresholds: Mapping[str, float | None] | None,
    bins: int = 60,
) -> list[dict]:
    """Weight histograms per layer and phase, on edges shared by the phases of a layer.

    Edges span the ``before`` weights' range; later values outside it are clipped into the end
    bins so every weight is counted. After pruning, exactly-zero (pruned) weights are left out
    of ``counts`` and reported as ``zeros``, which shows the gap around zero (Han et al. 2015).

    Args:
        before: ``{layer: weight}`` before pruning.
        after_prune: the same layers right after pruning (None to skip the phase).
        after_finetune: after fine-tuning (None to skip).
        thresholds: the magnitude threshold per layer, drawn on the chart.
        bins: number of bins (at most 64, so a layer's rows fit one DB row).

    Returns:
        ``[{"layer", "phase", "edges", "counts", "zeros", "threshold"}]``.
    """
    bins = max(1, min(int(bins), MAX_BINS))
    phases = (("before", before), ("after_prune", after_prune), ("after_finetune", after_finetune))
    rows = []
    for layer, w0 in before.items():
        values0 = w0.detach().float().cpu().numpy().ravel()
        lo, hi = (float(values0.min()), float(values0.max())) if values0.size else (0.0, 0.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        for phase, weights in phases:
            if weights is None or layer not in weights:
                continue
            values = weights[layer].detach().float().cpu().numpy().ravel()
            zeros = 0
            if phase != "before":
                zeros = int((values == 0).sum())
                values = values[values != 0]
            counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
            rows.append(
                {
                    "layer": layer,
                    "phase": phase,
                    "edges": [float(e) for e in edges],
                    "counts": [int(c) for c in counts],
                    "zeros": zeros,
                    "threshold": (thresholds or {}).get(layer),
                }
            )
    return rows
