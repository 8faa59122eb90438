"""Weight-only criteria: l1, l2, threshold, bn_gamma, synaptic, fpgm and random, plus the
BN L1 penalty of Network Slimming's sparsity training.

Structured magnitude scores are per-weight means (``l1``: mean |w|, ``l2``: RMS) so units of
different sizes and layers compare fairly in a global ranking; within a layer this is the same
order as the plain L1/L2 norm.

Example:
    >>> from torch import nn
    >>> layer = nn.Linear(3, 2)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[1.0, -1.0, 1.0], [0.0, 0.5, 0.0]]))
    >>> ctx = ScoreContext(layer, {"": layer}, "filter", None, torch.device("cpu"), (2, 4), 0, 1)
    >>> l1(ctx)[""]
    tensor([1.0000, 0.1667])
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from app.pruning.criteria.context import ScoreContext, Scores
from app.pruning.granularity import canonical, following_bn, is_transposed


def no_bn_error(criterion: str) -> ValueError:
    """The error for a BN criterion on a model without BatchNorm after its pruned layers."""
    return ValueError(
        f"criterion '{criterion}' needs BatchNorm layers after the pruned layers; "
        "this model has none (try l1 or fpgm)."
    )


def abs_float(w: Tensor) -> Tensor:
    """|w| as float32 on the CPU (numpy's abs is the faster of the two there)."""
    w = w.detach()
    if w.device.type == "cpu" and w.dtype == torch.float32:
        return torch.from_numpy(np.abs(w.numpy()))
    return w.abs().float()


def l1(ctx: ScoreContext) -> Scores:
    """Mean |w| of each unit (also the ``threshold`` criterion's score)."""
    return ctx.reduce({n: abs_float(m.weight) for n, m in ctx.layers.items()}, "mean")


def l2(ctx: ScoreContext) -> Scores:
    """Root mean square of each unit."""
    return ctx.reduce({n: abs_float(m.weight) for n, m in ctx.layers.items()}, "rms")


def random(ctx: ScoreContext) -> Scores:
    """Uniform random scores drawn with ``ctx.seed`` (a baseline)."""
    gen = torch.Generator().manual_seed(ctx.seed)
    return {n: torch.rand(ctx.view(m).unit_shape, generator=gen) for n, m in ctx.layers.items()}


def _bn_pairs(ctx: ScoreContext, criterion: str) -> dict[str, nn.Module]:
    pairs = following_bn(ctx.model)
    if not pairs:
        raise no_bn_error(criterion)
    modules = dict(ctx.model.named_modules())
    return {n: modules[pairs[n]] for n in ctx.layers if n in pairs}


def bn_gamma(ctx: ScoreContext) -> Scores:
    """|gamma| of the BatchNorm after each layer (layers without one are left out)."""
    return {
        n: bn.weight.detach().abs().float().clone() for n, bn in _bn_pairs(ctx, "bn_gamma").items()
    }


def synaptic(ctx: ScoreContext) -> Scores:
    """Filter RMS times the following BN's |gamma|."""
    out = {}
    for n, bn in _bn_pairs(ctx, "synaptic").items():
        norm = ctx.view(ctx.layers[n]).reduce(ctx.layers[n].weight.detach().float(), "rms")
        out[n] = bn.weight.detach().abs().float() * norm
    return out


def fpgm(ctx: ScoreContext) -> Scores:
    """Each filter's summed distance to the others (low = near the geometric median)."""
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

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> float(bn_l1_penalty(model, 0.5))  # gamma starts at 1: 0.5 * (1 + 1)
        1.0
    """
    bns = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    ]
    if strength == 0 or not bns:
        return torch.zeros(())
    return strength * sum(bn.weight.abs().sum() for bn in bns)
