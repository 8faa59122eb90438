"""Bias correction: give the layers that lost input channels back their dense output mean.

When filters (or input channels) go and no BatchNorm follows to re-centre the next layer, that
layer loses the mean contribution of the removed channels: for a consumer with weight ``W`` and
a removed input channel ``c`` whose mean activation is ``E[a_c]``, every output shifts by
``W[:, c] . E[a_c]`` on average (for a convolution, the spatial sum of the kernel times the
channel's mean). Its kept inputs shift too when the layers before it lost units. So each
consumer is corrected by what its output mean lost, measured on calibration batches:
``b += E_dense[out] - E_pruned[out]`` per output channel, layer after layer in execution order
(each one measured after the layers before it were corrected). On a plain chain this is the
removed channels' contribution plus the drift of the kept ones; it is exact for the output
mean (zero-padded borders included) on the calibration data.

:func:`capture_means` runs before the prune step (every consumer's output mean and which of its
input columns are alive); :func:`correct_biases` runs after the step zeroed the removed units
and corrects the consumers whose input columns went from non-zero to all zero (the ones the
dependency graph's cut reached: ``zero_removed_units``, or channel masks). Removed output rows
stay zero. Only plain Conv1d/2d/3d and Linear consumers (``groups == 1``) are corrected; a
consumer without a bias is listed in ``no_bias`` and left alone (adding a parameter would
change the model's state-dict keys and its export).

Example:
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> x = torch.randn(64, 4)
    >>> before = capture_means(model, [x])
    >>> dense = model(x).mean(0)
    >>> with torch.no_grad():
    ...     model[0].weight[:3] = 0.0
    ...     model[0].bias[:3] = 0.0
    ...     model[2].weight[:, :3] = 0.0
    >>> correct_biases(model, before, [x]).layers
    ['2']
    >>> bool(torch.allclose(model(x).mean(0), dense, atol=1e-5))
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

CONSUMERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Before:
    """Consumers before the step, in execution order: output mean per channel, live columns."""

    means: dict[str, Tensor]
    alive: dict[str, Tensor]


@dataclass
class Correction:
    """What :func:`correct_biases` changed: the corrected layers, and consumers left alone."""

    layers: list[str] = field(default_factory=list)
    no_bias: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Raised by a hook once the layer it watches has run: the rest of the pass is not needed."""


def _consumers(model: nn.Module) -> dict[str, nn.Module]:
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, CONSUMERS) and getattr(m, "groups", 1) == 1
    }


def _live_columns(module: nn.Module) -> Tensor:
    w = module.weight.detach()
    return w.transpose(0, 1).flatten(1).ne(0).any(dim=1)


def _live_rows(module: nn.Module) -> Tensor:
    return module.weight.detach().flatten(1).ne(0).any(dim=1)


def _channel_sum(module: nn.Module, out: Tensor) -> tuple[Tensor, int]:
    """Per output channel: the sum over the batch (and positions), and how many values."""
    out = out.detach().double()
    if isinstance(module, nn.Linear):
        flat = out.reshape(-1, out.shape[-1])
        return flat.sum(0), flat.shape[0]
    flat = out.transpose(0, 1).flatten(1)
    return flat.sum(1), flat.shape[1]


def _output_means(
    model: nn.Module,
    modules: dict[str, nn.Module],
    batches: Sequence[Tensor],
    stop_after: str | None = None,
) -> dict[str, Tensor]:
    """Output means of ``modules`` over ``batches`` (eval mode), in the order they ran."""
    sums: dict[str, list] = {}

    def hook(name: str) -> Callable:
        def record(module: nn.Module, _args: tuple, out: Tensor) -> None:
            total, count = _channel_sum(module, out)
            acc = sums.setdefault(name, [0, 0])
            acc[0], acc[1] = acc[0] + total, acc[1] + count
            if name == stop_after:
                raise _Stop

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                with contextlib.suppress(_Stop):
                    model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: total / count for n, (total, count) in sums.items()}


def capture_means(model: nn.Module, batches: Sequence[Tensor]) -> Before:
    """Every consumer's output mean on ``batches`` and its live input columns (before a step).

    Args:
        model: an eager module; its mode is restored.
        batches: input tensors (already on the model's device).
    """
    consumers = _consumers(model)
    means = _output_means(model, consumers, batches)
    return Before(means, {n: _live_columns(consumers[n]) for n in means})


def correct_biases(model: nn.Module, before: Before, batches: Sequence[Tensor]) -> Correction:
    """Give each consumer whose input columns went to zero its output mean back via its bias.

    Args:
        model: the model after the step zeroed the removed units (changed in place).
        before: :func:`capture_means` of the same model before the step.
        batches: the same calibration batches.

    Returns:
        The layers corrected, and the consumers that lost channels but have no bias.
    """
    modules = dict(model.named_modules())
    result = Correction()
    for name, dense in before.means.items():  # execution order
        module = modules.get(name)
        if module is None or not bool((before.alive[name] & ~_live_columns(module)).any()):
            continue
        if module.bias is None:
            result.no_bias.append(name)
            continue
        pruned = _output_means(model, {name: module}, batches, stop_after=name)[name]
        shift = (dense - pruned) * _live_rows(module)  # removed rows stay exactly zero
        with torch.no_grad():
            module.bias.add_(shift.to(module.bias.dtype))
        result.layers.append(name)
    return result
