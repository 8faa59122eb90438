"""Criteria: score the units of each layer (PRUNING.md section 4). Higher = more important.

Policy only: :mod:`app.pruning.masks` turns scores into masks. Structured magnitude
scores are per-weight means (``l1``: mean |w|, ``l2``: RMS) so units of different
sizes and layers compare fairly in a global ranking; within a layer this is the
same order as the plain L1/L2 norm.

Data-driven criteria live in :mod:`app.pruning.criteria_data` and
:mod:`app.pruning.reconstruction`, the shared context and passes in :mod:`app.pruning.scoring`;
every public name stays importable from here.

Example:
    >>> scores = CRITERIA["l1"].score(model, prunable_layers(model), "filter")
    >>> scores["features.0"].shape   # one score per output channel
    torch.Size([16])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from app.pruning.criteria_data import apoz, snip, taylor, wanda
from app.pruning.granularity import canonical, check_layer, following_bn, is_transposed
from app.pruning.reconstruction import reconstruct_next_layer, reconstruction
from app.pruning.scoring import ScoreContext, Scores, calibration_batches
from app.pruning.spec import CRITERION_NAMES, VALID_PAIRS

__all__ = [
    "CRITERIA",
    "Criterion",
    "ScoreContext",
    "Scores",
    "bn_l1_penalty",
    "calibration_batches",
    "reconstruct_next_layer",
]


@dataclass(frozen=True)
class Criterion:
    """A named importance measure and the granularities it can score."""

    name: str
    granularities: frozenset[str]
    needs_bn: bool
    needs_data: bool
    fn: Callable[..., Scores]

    def score(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        granularity: str,
        *,
        data: Any = None,
        device: str | torch.device = "cpu",
        nm: tuple[int, int] = (2, 4),
        seed: int = 0,
        batches: int = 4,
    ) -> Scores:
        """Score every unit of every layer in ``layers``.

        Args:
            model: the whole model (BN lookup, forward passes).
            layers: name -> prunable layer to score.
            granularity: unit level, one of ``self.granularities``.
            data: an ``ArrayDataset`` or an iterable of ``(x, y)`` batches (data criteria).
            device: where forward/backward passes run.
            nm, seed, batches: N:M pattern, random seed, calibration batches.

        Returns:
            name -> float tensor of ``unit_view(...).unit_shape`` (layers a criterion cannot
            score, e.g. ``bn_gamma`` on a layer without a following BN, are left out).

        Raises:
            ValueError: unsupported granularity, missing BN or data, unsupported layer.
        """
        if granularity not in self.granularities:
            raise ValueError(
                f"criterion '{self.name}' does not support granularity '{granularity}'; "
                f"it supports: {', '.join(sorted(self.granularities))}."
            )
        if self.needs_data and data is None:
            raise ValueError(f"criterion '{self.name}' needs calibration data; pass a dataset.")
        for name, layer in layers.items():
            check_layer(name, layer, granularity)
        ctx = ScoreContext(
            model, layers, granularity, data, torch.device(device), nm, seed, batches, self.name
        )
        return self.fn(ctx)


def abs_float(w: Tensor) -> Tensor:
    """|w| as float32 on the CPU (numpy's abs is the faster of the two there)."""
    w = w.detach()
    if w.device.type == "cpu" and w.dtype == torch.float32:
        return torch.from_numpy(np.abs(w.numpy()))
    return w.abs().float()


def _magnitude(how: str) -> Callable[[ScoreContext], Scores]:
    def fn(ctx: ScoreContext) -> Scores:
        return ctx.reduce({n: abs_float(m.weight) for n, m in ctx.layers.items()}, how)

    return fn


def _random(ctx: ScoreContext) -> Scores:
    gen = torch.Generator().manual_seed(ctx.seed)
    return {n: torch.rand(ctx.view(m).unit_shape, generator=gen) for n, m in ctx.layers.items()}


def _bn_pairs(ctx: ScoreContext, criterion: str) -> dict[str, nn.Module]:
    pairs = following_bn(ctx.model)
    if not pairs:
        raise ValueError(
            f"criterion '{criterion}' needs BatchNorm layers after the pruned layers; "
            "this model has none (try l1 or fpgm)."
        )
    modules = dict(ctx.model.named_modules())
    return {n: modules[pairs[n]] for n in ctx.layers if n in pairs}


def _bn_gamma(ctx: ScoreContext) -> Scores:
    return {
        n: bn.weight.detach().abs().float().clone() for n, bn in _bn_pairs(ctx, "bn_gamma").items()
    }


def _synaptic(ctx: ScoreContext) -> Scores:
    out = {}
    for n, bn in _bn_pairs(ctx, "synaptic").items():
        norm = ctx.view(ctx.layers[n]).reduce(ctx.layers[n].weight.detach().float(), "rms")
        out[n] = bn.weight.detach().abs().float() * norm
    return out


def _fpgm(ctx: ScoreContext) -> Scores:
    out = {}
    for n, m in ctx.layers.items():
        filters = canonical(m.weight.detach().float(), is_transposed(m)).flatten(1)
        o, d = filters.shape
        dist = torch.cdist(filters, filters).sum(dim=1)
        out[n] = dist / (max(o - 1, 1) * math.sqrt(d))
    return out


def bn_l1_penalty(model: nn.Module, strength: float = 1.0) -> Tensor:
    """``strength * sum(|gamma|)`` over every affine BatchNorm: Network Slimming's sparsity
    training term, for the trainer to add to the loss.

    Returns a zero tensor when ``strength`` is 0 or the model has no BN.
    """
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    ]
    if strength == 0 or not bns:
        return torch.zeros(())
    return strength * sum(bn.weight.abs().sum() for bn in bns)


_FNS: dict[str, tuple[Callable[[ScoreContext], Scores], bool, bool]] = {
    "l1": (_magnitude("mean"), False, False),
    "l2": (_magnitude("rms"), False, False),
    "threshold": (_magnitude("mean"), False, False),
    "bn_gamma": (_bn_gamma, True, False),
    "synaptic": (_synaptic, True, False),
    "fpgm": (_fpgm, False, False),
    "reconstruction": (reconstruction, False, True),
    "taylor": (taylor, False, True),
    "snip": (snip, False, True),
    "apoz": (apoz, False, True),
    "wanda": (wanda, False, True),
    "random": (_random, False, False),
}
CRITERIA: dict[str, Criterion] = {
    name: Criterion(name, VALID_PAIRS[name], needs_bn, needs_data, fn)
    for name, (fn, needs_bn, needs_data) in _FNS.items()
}
assert tuple(CRITERIA) == CRITERION_NAMES
