"""Data-driven criteria: gradients (taylor, snip) and activations (apoz, wanda).

Each takes a :class:`~app.pruning.criteria.context.ScoreContext` and returns layer -> unit
scores; :data:`app.pruning.criteria.CRITERIA` registers them.

Example:
    >>> import numpy as np
    >>> from torch import nn
    >>> from app.pruning.data import ArrayDataset
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> x = np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32)
    >>> y = np.arange(16) % 2
    >>> ctx = ScoreContext(model, {"0": model[0]}, "element", ArrayDataset("toy", x, y, x, y, 2),
    ...                    torch.device("cpu"), (2, 4), 0, 2)
    >>> taylor(ctx)["0"].shape
    torch.Size([4, 6])
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.pruning.criteria.context import ScoreContext, Scores, forward_hooked, weight_grads
from app.pruning.granularity import canonical
from app.pruning.layers import is_linear, is_transposed
from app.pruning.topology import following_bn


def taylor(ctx: ScoreContext) -> Scores:
    acc = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in ctx.layers.items()}
    weight_grads(ctx, lambda n, w, g: acc[n].add_((w * g).abs().float()))
    return ctx.reduce(acc, "mean")


def snip(ctx: ScoreContext) -> Scores:
    acc = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in ctx.layers.items()}
    weight_grads(ctx, lambda n, w, g: acc[n].add_(g.float()))
    sal = {n: (ctx.layers[n].weight.detach().float() * g).abs() for n, g in acc.items()}
    total = sum(float(s.sum()) for s in sal.values()) or 1.0
    return ctx.reduce({n: s / total for n, s in sal.items()}, "mean")


def apoz(ctx: ScoreContext) -> Scores:
    """1 - APoZ of ReLU applied to the layer's (BN-normalised) output, per output channel."""
    pairs = following_bn(ctx.model)
    modules = dict(ctx.model.named_modules())
    zeros: dict[str, list[Tensor]] = {n: [] for n in ctx.layers}

    def hook_for(name: str, channel_dim: int):
        def hook(_m, _inp, out):
            act = torch.relu(out).movedim(channel_dim, -1)
            zeros[name].append((act <= 0).float().reshape(-1, act.shape[-1]).mean(0))

        return hook

    hooks = {}
    for n, m in ctx.layers.items():
        target = modules[pairs[n]] if n in pairs else m
        hooks[target] = hook_for(n, -1 if is_linear(m) else 1)
    forward_hooked(ctx, hooks, pre=False)
    return {n: 1.0 - torch.stack(z).mean(0).cpu() for n, z in zeros.items()}


def _input_norms(ctx: ScoreContext) -> dict[str, Tensor]:
    """Per input feature/channel L2 norm of each layer's input over the calibration batches."""
    sq: dict[str, Tensor] = {}

    def hook_for(name: str, linear: bool):
        def hook(_m, inp):
            x = inp[0].detach().float()
            s = (
                x.reshape(-1, x.shape[-1]).pow(2).sum(0)
                if linear
                else x.transpose(0, 1).flatten(1).pow(2).sum(1)
            )
            sq[name] = sq[name] + s if name in sq else s

        return hook

    forward_hooked(ctx, {m: hook_for(n, is_linear(m)) for n, m in ctx.layers.items()}, pre=True)
    return {n: s.sqrt().cpu() for n, s in sq.items()}


def wanda(ctx: ScoreContext) -> Scores:
    norms = _input_norms(ctx)
    elem = {}
    for n, m in ctx.layers.items():
        w = canonical(m.weight.detach().float().abs(), is_transposed(m))
        o, i_per_group = w.shape[:2]
        groups = getattr(m, "groups", 1)
        channel = (torch.arange(o).unsqueeze(1) // (o // groups)) * i_per_group + torch.arange(
            i_per_group
        )
        x = norms[n][channel].reshape(o, i_per_group, *([1] * (w.dim() - 2)))
        elem[n] = canonical(w * x, is_transposed(m))
    return ctx.reduce(elem, "mean")
