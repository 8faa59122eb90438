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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.pruning.criteria.capture import geometry
from app.pruning.criteria.context import CalibrationData, ScoreContext, Scores, forward_hooked
from app.pruning.granularity import check_layer
from app.pruning.layers import PRUNABLE_TYPES, is_linear


def _check_rows_layer(name: str, layer: nn.Module) -> None:
    if is_linear(layer):
        return
    if not isinstance(layer, PRUNABLE_TYPES):  # a conv in a graph: checked once it is seen
        return
    if type(layer) not in (nn.Conv1d, nn.Conv2d) or isinstance(layer.padding, str):
        raise ValueError(
            "criterion 'reconstruction' supports Linear, Conv1d and Conv2d with numeric padding; "
            f"layer '{name}' is {type(layer).__name__}."
        )


def _conv_rows(layer: nn.Module, x: Tensor, name: str) -> Tensor:
    """The layer's input as rows ``(N, in, k)`` such that ``out[n, o] = sum W[o, i, k] row[n, i, k]``."""
    layer = geometry(layer)
    if not isinstance(layer, PRUNABLE_TYPES) and not is_linear(layer):
        raise ValueError(
            f"criterion 'reconstruction' cannot read the geometry of conv layer '{name}' inside "
            "a TorchScript or .pt2 model; upload the model as ONNX or weights, or exclude it."
        )
    _check_rows_layer(name, layer)
    if is_linear(layer):
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


@dataclass(frozen=True)
class RefitError:
    """One layer's relative output error on calibration data, ``||Y' - Y|| / ||Y||``: with its
    pruned input channels only zeroed (``before``) and after the least-squares re-fit."""

    layer: str
    before: float
    after: float

    def as_dict(self) -> dict[str, str | float]:
        return {"layer": self.layer, "error_before": self.before, "error_after": self.after}


def refit_note(step: int, errors: list[RefitError]) -> str:
    """The run's note for one step's re-fits."""
    return (
        f"step {step}: ThiNet re-fit by least squares, relative output error on calibration "
        "data with the channels zeroed -> re-fit: "
        + ", ".join(f"'{e.layer}' {e.before:.3f} -> {e.after:.3f}" for e in errors)
    )


def _refit(layer: nn.Module, rows: Tensor, keep: Tensor) -> tuple[float, float]:
    """Least-squares re-fit of ``layer``'s kept input channels on input ``rows`` ``(N, in, k)``.

    Solves for the change of the kept weights that best restores the current output (min-norm
    and damped by 1% of the mean diagonal, as SparseGPT does, so few rows cannot blow the
    weights up); the pruned input channels end up exactly zero. Returns (error before, after).
    """
    shape = layer.weight.shape
    w = layer.weight.detach().double().cpu().reshape(shape[0], -1).T  # (in*k, out)
    x = rows.flatten(1).double()  # (N, in*k), the same (in, k) order as the weight
    cols = keep.cpu().bool().repeat_interleave(rows.shape[2])
    target = x @ w
    x_keep = x[:, cols]
    resid = target - x_keep @ w[cols]  # the output the pruned channels carried
    gram = x_keep.T @ x_keep
    damp = 0.01 * float(gram.diagonal().mean().clamp_min(1e-12))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    delta = torch.linalg.solve(gram + damp * eye, x_keep.T @ resid)
    new = torch.zeros_like(w)
    new[cols] = w[cols] + delta
    with torch.no_grad():
        layer.weight.copy_(new.T.reshape(shape).to(layer.weight))
    norm = target.norm().clamp_min(1e-12)
    after = (x_keep @ new[cols] - target).norm() / norm
    return float(resid.norm() / norm), float(after)


MAX_REFIT_ROWS = 4096  # calibration input rows a re-fit solves on


def _rows_of(
    model: nn.Module,
    name: str,
    layer: nn.Module,
    data: CalibrationData,
    *,
    batches: int,
    device: str | torch.device,
    seed: int,
) -> Tensor:
    """Up to ``MAX_REFIT_ROWS`` input rows ``(N, in, k)`` of one layer on calibration data."""
    ctx = ScoreContext(
        model, {name: layer}, "channel", data, torch.device(device), (2, 4), seed, batches
    )
    return _layer_rows(ctx, MAX_REFIT_ROWS)[name]


def reconstruct_next_layer(
    model: nn.Module,
    layer_name: str,
    keep: Tensor,
    data: CalibrationData,
    *,
    batches: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
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
        batches, device, seed: calibration budget (at most ``MAX_REFIT_ROWS`` input rows).

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
    _check_rows_layer(layer_name, layer)
    if keep.shape != (layer.weight.shape[1],):
        raise ValueError(
            f"keep for '{layer_name}' must have {layer.weight.shape[1]} entries, "
            f"got {tuple(keep.shape)}."
        )
    rows = _rows_of(model, layer_name, layer, data, batches=batches, device=device, seed=seed)
    return _refit(layer, rows, keep)[1]


def refit_layers(
    model: nn.Module,
    keeps: dict[str, Tensor],
    data: CalibrationData,
    *,
    batches: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[RefitError]:
    """ThiNet's second half for a whole pruning step: re-fit every layer that loses input
    channels, in model order, each on the inputs the earlier re-fits produce.

    Call it before the masks are applied (the target is each layer's current output).

    Args:
        keeps: layer -> bool ``(in_channels,)`` of kept input channels (``MaskPlan.channels``
            of a ``channel`` plan); layers that keep all their inputs are left alone.

    Returns:
        One :class:`RefitError` per re-fit layer.
    """
    done = []
    for name, layer in model.named_modules():
        keep = keeps.get(name)
        if keep is None or bool(keep.all()):
            continue
        _check_rows_layer(name, layer)
        rows = _rows_of(model, name, layer, data, batches=batches, device=device, seed=seed)
        done.append(RefitError(name, *_refit(layer, rows, keep)))
    return done
