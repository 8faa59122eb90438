"""Criteria: score the units of each layer (PRUNING.md section 4). Higher = more important.

Policy only: :mod:`app.pruning.masks` turns scores into masks. Structured magnitude
scores are per-weight means (``l1``: mean |w|, ``l2``: RMS) so units of different
sizes and layers compare fairly in a global ranking; within a layer this is the
same order as the plain L1/L2 norm.

Example:
    >>> scores = CRITERIA["l1"].score(model, prunable_layers(model), "filter")
    >>> scores["features.0"].shape   # one score per output channel
    torch.Size([16])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.pruning.granularity import (
    canonical,
    check_layer,
    following_bn,
    is_transposed,
    unit_view,
)
from app.pruning.spec import CRITERION_NAMES, VALID_PAIRS

Scores = dict[str, Tensor]


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
        ctx = _Ctx(
            model, layers, granularity, data, torch.device(device), nm, seed, batches, self.name
        )
        return self.fn(ctx)


@dataclass
class _Ctx:
    model: nn.Module
    layers: dict[str, nn.Module]
    granularity: str
    data: Any
    device: torch.device
    nm: tuple[int, int]
    seed: int
    batches: int
    name: str = ""

    def view(self, layer: nn.Module):
        return unit_view(layer.weight, self.granularity, self.nm, transposed=is_transposed(layer))

    def reduce(self, elem: dict[str, Tensor], how: str = "mean") -> Scores:
        return {
            n: self.view(m).reduce(elem[n].detach().float(), how) for n, m in self.layers.items()
        }


def calibration_batches(
    data: Any, n: int, *, device: torch.device | str = "cpu", batch_size: int = 64, seed: int = 0
) -> list[tuple[Tensor, Tensor | None]]:
    """Up to ``n`` ``(x, y)`` batches from an ``ArrayDataset`` (shuffled with ``seed``) or an
    iterable of batches (``y`` may be None)."""
    source: Iterable = (
        data.loader("train", batch_size, shuffle=True, seed=seed)
        if hasattr(data, "loader")
        else data
    )
    out = []
    for batch in source:
        x, y = (batch[0], batch[1]) if isinstance(batch, list | tuple) else (batch, None)
        out.append((x.to(device), None if y is None else y.to(device)))
        if len(out) >= n:
            break
    if not out:
        raise ValueError("the calibration data is empty.")
    return out


def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    return was


def _weight_grads(ctx: _Ctx, accumulate: Callable[[str, Tensor, Tensor], None]) -> None:
    """Backward passes on calibration batches; ``accumulate(name, w, grad)`` per layer.

    Runs in eval mode (BN statistics stay untouched) and leaves ``.grad`` alone.
    """
    was = _eval_mode(ctx.model)
    try:
        names = list(ctx.layers)
        weights = [ctx.layers[n].weight for n in names]
        for x, y in calibration_batches(ctx.data, ctx.batches, device=ctx.device, seed=ctx.seed):
            if y is None:
                raise ValueError(
                    f"criterion '{ctx.name}' needs labelled batches (x, y) for gradients."
                )
            loss = F.cross_entropy(ctx.model(x), y)
            for n, w, g in zip(names, weights, torch.autograd.grad(loss, weights), strict=True):
                accumulate(n, w.detach(), g)
    finally:
        ctx.model.train(was)


def _abs(w: Tensor) -> Tensor:
    """|w| as float32 on the CPU (numpy's abs is the faster of the two there)."""
    w = w.detach()
    if w.device.type == "cpu" and w.dtype == torch.float32:
        return torch.from_numpy(np.abs(w.numpy()))
    return w.abs().float()


def _magnitude(how: str) -> Callable[[_Ctx], Scores]:
    def fn(ctx: _Ctx) -> Scores:
        return ctx.reduce({n: _abs(m.weight) for n, m in ctx.layers.items()}, how)

    return fn


def _random(ctx: _Ctx) -> Scores:
    gen = torch.Generator().manual_seed(ctx.seed)
    return {n: torch.rand(ctx.view(m).unit_shape, generator=gen) for n, m in ctx.layers.items()}


def _bn_pairs(ctx: _Ctx, criterion: str) -> dict[str, nn.Module]:
    pairs = following_bn(ctx.model)
    if not pairs:
        raise ValueError(
            f"criterion '{criterion}' needs BatchNorm layers after the pruned layers; "
            "this model has none (try l1 or fpgm)."
        )
    modules = dict(ctx.model.named_modules())
    return {n: modules[pairs[n]] for n in ctx.layers if n in pairs}


def _bn_gamma(ctx: _Ctx) -> Scores:
    return {
        n: bn.weight.detach().abs().float().clone() for n, bn in _bn_pairs(ctx, "bn_gamma").items()
    }


def _synaptic(ctx: _Ctx) -> Scores:
    out = {}
    for n, bn in _bn_pairs(ctx, "synaptic").items():
        norm = ctx.view(ctx.layers[n]).reduce(ctx.layers[n].weight.detach().float(), "rms")
        out[n] = bn.weight.detach().abs().float() * norm
    return out


def _fpgm(ctx: _Ctx) -> Scores:
    out = {}
    for n, m in ctx.layers.items():
        filters = canonical(m.weight.detach().float(), is_transposed(m)).flatten(1)
        o, d = filters.shape
        dist = torch.cdist(filters, filters).sum(dim=1)
        out[n] = dist / (max(o - 1, 1) * math.sqrt(d))
    return out


def _taylor(ctx: _Ctx) -> Scores:
    acc = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in ctx.layers.items()}
    _weight_grads(ctx, lambda n, w, g: acc[n].add_((w * g).abs().float()))
    return ctx.reduce(acc, "mean")


def _snip(ctx: _Ctx) -> Scores:
    acc = {n: torch.zeros_like(m.weight, dtype=torch.float32) for n, m in ctx.layers.items()}
    _weight_grads(ctx, lambda n, w, g: acc[n].add_(g.float()))
    sal = {n: (ctx.layers[n].weight.detach().float() * g).abs() for n, g in acc.items()}
    total = sum(float(s.sum()) for s in sal.values()) or 1.0
    return ctx.reduce({n: s / total for n, s in sal.items()}, "mean")


def _forward_hooked(ctx: _Ctx, hooks: dict[nn.Module, Callable], pre: bool) -> None:
    was = _eval_mode(ctx.model)
    handles = [
        m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h)
        for m, h in hooks.items()
    ]
    try:
        with torch.no_grad():
            for x, _ in calibration_batches(
                ctx.data, ctx.batches, device=ctx.device, seed=ctx.seed
            ):
                ctx.model(x)
    finally:
        for h in handles:
            h.remove()
        ctx.model.train(was)


def _apoz(ctx: _Ctx) -> Scores:
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
        hooks[target] = hook_for(n, -1 if isinstance(m, nn.Linear) else 1)
    _forward_hooked(ctx, hooks, pre=False)
    return {n: 1.0 - torch.stack(z).mean(0).cpu() for n, z in zeros.items()}


def _input_norms(ctx: _Ctx) -> dict[str, Tensor]:
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

    _forward_hooked(
        ctx, {m: hook_for(n, isinstance(m, nn.Linear)) for n, m in ctx.layers.items()}, pre=True
    )
    return {n: s.sqrt().cpu() for n, s in sq.items()}


def _wanda(ctx: _Ctx) -> Scores:
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


def _check_rows_layer(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Linear):
        return
    if type(layer) not in (nn.Conv1d, nn.Conv2d) or isinstance(layer.padding, str):
        raise ValueError(
            "criterion 'reconstruction' supports Linear, Conv1d and Conv2d with numeric padding; "
            f"layer '{name}' is {type(layer).__name__}."
        )


def _conv_rows(layer: nn.Module, x: Tensor, name: str) -> Tensor:
    """The layer's input as rows ``(N, in, k)`` such that ``out[n, o] = sum W[o, i, k] row[n, i, k]``."""
    _check_rows_layer(name, layer)
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, x.shape[-1], 1)
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kw = {"kernel_size": (1, *layer.kernel_size), "dilation": (1, *layer.dilation),
              "padding": (0, *layer.padding), "stride": (1, *layer.stride)}  # fmt: skip
    else:
        kw = {"kernel_size": layer.kernel_size, "dilation": layer.dilation,
              "padding": layer.padding, "stride": layer.stride}  # fmt: skip
    cols = F.unfold(x, **kw)  # (B, in*k, L)
    return cols.transpose(1, 2).reshape(-1, layer.in_channels, cols.shape[1] // layer.in_channels)


def _layer_rows(ctx: _Ctx, max_rows: int) -> dict[str, Tensor]:
    """Up to ``max_rows`` sampled input rows per layer over the calibration batches."""
    gen = torch.Generator().manual_seed(ctx.seed)
    rows: dict[str, list[Tensor]] = {n: [] for n in ctx.layers}
    per_batch = max(1, max_rows // ctx.batches)

    def hook_for(name: str, layer: nn.Module):
        def hook(_m, inp):
            r = _conv_rows(layer, inp[0].detach().float(), name).cpu()
            pick = torch.randperm(r.shape[0], generator=gen)[:per_batch]
            rows[name].append(r[pick])

        return hook

    for n, m in ctx.layers.items():
        _check_rows_layer(n, m)
    _forward_hooked(ctx, {m: hook_for(n, m) for n, m in ctx.layers.items()}, pre=True)
    return {n: torch.cat(r) for n, r in rows.items()}


def _greedy_removal_scores(gram: Tensor) -> Tensor:
    """ThiNet's greedy order: repeatedly remove the channel whose removal adds the least
    squared error to the output; score = running max of that error / output energy."""
    n = gram.shape[0]
    energy = float(gram.sum().clamp_min(1e-12))
    diag, acc = gram.diagonal().clone(), torch.zeros(n, dtype=gram.dtype)
    avail = torch.ones(n, dtype=torch.bool)
    scores, cost, worst = torch.empty(n), 0.0, 0.0
    for k in range(n):
        delta = torch.where(avail, diag + 2 * acc, torch.full_like(diag, math.inf))
        j = int(delta.argmin())
        cost += float(delta[j])
        worst = max(worst, cost)
        scores[j] = worst / energy + 1e-6 * k / n  # the rank breaks ties
        avail[j] = False
        acc += gram[:, j]
    return scores


def _reconstruction(ctx: _Ctx) -> Scores:
    rows = _layer_rows(ctx, max_rows=256)
    out = {}
    gen = torch.Generator().manual_seed(ctx.seed)
    for n, m in ctx.layers.items():
        w = m.weight.detach().float().cpu()
        w = w.reshape(w.shape[0], w.shape[1], -1)
        if w.shape[0] > 64:  # a random projection of the outputs keeps inner products (JL)
            proj = torch.randn(64, w.shape[0], generator=gen) / 8.0
            w = torch.einsum("ro,oik->rik", proj, w)
        gram = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64)
        for chunk in rows[n].split(32):
            c = torch.einsum("sik,oik->sio", chunk, w).double()
            gram += torch.einsum("sio,sjo->ij", c, c)
        out[n] = _greedy_removal_scores(gram)
    return out


def reconstruct_next_layer(
    model: nn.Module,
    layer_name: str,
    keep: Tensor,
    data: Any,
    *,
    batches: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    max_rows: int = 4096,
) -> float:
    """Re-fit a layer by least squares after some of its input channels were pruned.

    ThiNet/He et al. 2017: after the filters of one layer (= input channels of the next)
    are removed, the next layer's remaining weights are solved so that its output on
    calibration inputs stays as close as possible to its current output. Call it on the
    unpruned weights; the pruned input channels end up exactly zero.

    Args:
        model: the model holding the layer (inputs are taken from its forward pass).
        layer_name: the layer whose input channels are pruned (Linear, Conv1d, Conv2d).
        keep: bool ``(in_channels,)``, True for kept input channels.
        data: an ``ArrayDataset`` or iterable of batches.
        batches, device, seed, max_rows: calibration budget.

    Returns:
        The relative output error ``||X_keep W' - Y|| / ||Y||`` after the re-fit.

    Raises:
        ValueError: unknown layer, unsupported layer type, or ``keep`` of the wrong size.
    """
    layers = dict(model.named_modules())
    if layer_name not in layers or not hasattr(layers[layer_name], "weight"):
        raise ValueError(f"layer '{layer_name}' is not a prunable layer of this model.")
    layer = layers[layer_name]
    check_layer(layer_name, layer, "channel")
    w = layer.weight.detach().float()
    if keep.shape != (w.shape[1],):
        raise ValueError(
            f"keep for '{layer_name}' must have {w.shape[1]} entries, got {tuple(keep.shape)}."
        )
    ctx = _Ctx(
        model, {layer_name: layer}, "channel", data, torch.device(device), (2, 4), seed, batches
    )
    rows = _layer_rows(ctx, max_rows)[layer_name]  # (N, in, k)
    w3 = w.cpu().reshape(w.shape[0], w.shape[1], -1)
    target = rows.flatten(1) @ w3.flatten(1).T  # (N, out), current output without bias
    keep = keep.cpu().bool()
    x_keep = rows[:, keep].flatten(1).double()
    sol = torch.linalg.lstsq(x_keep, target.double(), driver="gelsd").solution  # (kept*k, out)
    new = torch.zeros_like(w3)
    new[:, keep] = sol.T.reshape(w3.shape[0], int(keep.sum()), w3.shape[2]).float()
    with torch.no_grad():
        layer.weight.copy_(new.reshape(layer.weight.shape).to(layer.weight))
    err = (x_keep @ sol).float() - target
    return float(err.norm() / target.norm().clamp_min(1e-12))


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


_FNS: dict[str, tuple[Callable[[_Ctx], Scores], bool, bool]] = {
    "l1": (_magnitude("mean"), False, False),
    "l2": (_magnitude("rms"), False, False),
    "threshold": (_magnitude("mean"), False, False),
    "bn_gamma": (_bn_gamma, True, False),
    "synaptic": (_synaptic, True, False),
    "fpgm": (_fpgm, False, False),
    "reconstruction": (_reconstruction, False, True),
    "taylor": (_taylor, False, True),
    "snip": (_snip, False, True),
    "apoz": (_apoz, False, True),
    "wanda": (_wanda, False, True),
    "random": (_random, False, False),
}
CRITERIA: dict[str, Criterion] = {
    name: Criterion(name, VALID_PAIRS[name], needs_bn, needs_data, fn)
    for name, (fn, needs_bn, needs_data) in _FNS.items()
}
assert tuple(CRITERIA) == CRITERION_NAMES
