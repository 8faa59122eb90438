"""Output reconstruction (ThiNet / He et al. 2017): the ``reconstruction`` criterion and the
least-squares re-fit of the next layer after its input channels are pruned.

Example:
    >>> import numpy as np
    >>> from app.pruning.data import ArrayDataset
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(64) % 2, x, np.arange(64) % 2, 2)
    >>> keep = torch.ones(8, dtype=torch.bool)
    >>> keep[:2] = False
    >>> err = reconstruct_next_layer(model, "2", keep, data)
    >>> bool(model[2].weight[:, :2].eq(0).all()), 0.0 <= err < 1.0
    (True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.pruning.criteria.context import CalibrationData, ScoreContext, Scores, forward_hooked
from app.pruning.granularity import check_layer


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
        kw = {
            "kernel_size": (1, *layer.kernel_size),
            "dilation": (1, *layer.dilation),
            "padding": (0, *layer.padding),
            "stride": (1, *layer.stride),
        }
    else:
        kw = {
            "kernel_size": layer.kernel_size,
            "dilation": layer.dilation,
            "padding": layer.padding,
            "stride": layer.stride,
        }
    cols = F.unfold(x, **kw)  # (B, in*k, L)
    return cols.transpose(1, 2).reshape(-1, layer.in_channels, cols.shape[1] // layer.in_channels)


def _layer_rows(ctx: ScoreContext, max_rows: int) -> dict[str, Tensor]:
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
    forward_hooked(ctx, {m: hook_for(n, m) for n, m in ctx.layers.items()}, pre=True)
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


def reconstruction(ctx: ScoreContext) -> Scores:
    """ThiNet's greedy removal order of each layer's input channels (first removed = lowest)."""
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
    data: CalibrationData,
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
    ctx = ScoreContext(
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
