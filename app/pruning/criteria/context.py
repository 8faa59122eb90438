"""What every criterion works with: the scoring context and the calibration passes.

:class:`ScoreContext` carries the model, the layers to score, the granularity and the
calibration budget; :func:`weight_grads` and :func:`forward_hooked` run the backward or
forward passes (in every model format, :mod:`~app.pruning.criteria.capture`) that data-driven criteria (:mod:`app.pruning.criteria.data`,
:mod:`app.pruning.criteria.reconstruction`) need, in eval mode and without touching ``.grad``.

Example:
    >>> import numpy as np
    >>> from app.pruning.data import ArrayDataset
    >>> x, y = np.zeros((10, 4), np.float32), np.arange(10) % 2
    >>> batches = calibration_batches(ArrayDataset("toy", x, y, x, y, 2), 2, batch_size=4)
    >>> [tuple(b[0].shape) for b in batches]
    [(4, 4), (4, 4)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.pruning.criteria.capture import run_hooked
from app.pruning.data import ArrayDataset
from app.pruning.granularity import UnitView, unit_view
from app.pruning.layers import is_transposed
from app.pruning.task import token_loss

Scores = dict[str, Tensor]
"""layer name -> one score per unit (higher = more important)."""
CalibrationData = ArrayDataset | Iterable[tuple[Tensor, Tensor] | list[Tensor] | Tensor]
"""An ``ArrayDataset`` (its shuffled train split) or an iterable of ``(x, y)`` / ``x`` batches."""


@dataclass
class ScoreContext:
    """One scoring call: what to score, at which granularity, with which calibration data."""

    model: nn.Module
    layers: dict[str, nn.Module]
    granularity: str
    data: CalibrationData | None
    device: torch.device
    nm: tuple[int, int]
    seed: int
    batches: int
    name: str = ""

    def view(self, layer: nn.Module) -> UnitView:
        return unit_view(layer.weight, self.granularity, self.nm, transposed=is_transposed(layer))

    def reduce(self, elem: dict[str, Tensor], how: str = "mean") -> Scores:
        return {
            n: self.view(m).reduce(elem[n].detach().float(), how) for n, m in self.layers.items()
        }


def calibration_batches(
    data: CalibrationData | None,
    n: int,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    seed: int = 0,
) -> list[tuple[Tensor, Tensor | None]]:
    """Up to ``n`` ``(x, y)`` batches from an ``ArrayDataset`` (shuffled with ``seed``) or an
    iterable of batches (``y`` may be None)."""
    if data is None:
        raise ValueError("the calibration data is empty.")
    source: Iterable = (
        data.loader("train", batch_size, shuffle=True, seed=seed)
        if isinstance(data, ArrayDataset)
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


def eval_mode(model: nn.Module) -> bool:
    was = model.training
    model.eval()
    return was


def weight_grads(ctx: ScoreContext, accumulate: Callable[[str, Tensor, Tensor], None]) -> None:
    """Backward passes on calibration batches; ``accumulate(name, w, grad)`` per layer.

    Runs in eval mode (BN statistics stay untouched) and leaves ``.grad`` alone.
    """
    was = eval_mode(ctx.model)
    try:
        names = list(ctx.layers)
        weights = [ctx.layers[n].weight for n in names]
        for x, y in calibration_batches(ctx.data, ctx.batches, device=ctx.device, seed=ctx.seed):
            if y is None:
                raise ValueError(
                    f"criterion '{ctx.name}' needs labelled batches (x, y) for gradients."
                )
            loss = token_loss(ctx.model(x), y)  # labels or next tokens (task.py)
            for n, w, g in zip(names, weights, torch.autograd.grad(loss, weights), strict=True):
                accumulate(n, w.detach(), g)
    finally:
        ctx.model.train(was)


def forward_hooked(ctx: ScoreContext, hooks: dict[nn.Module, Callable], pre: bool) -> None:
    """Forward passes on calibration batches with ``hooks`` (forward or pre-forward) seeing the
    layers, in every model format (:func:`~app.pruning.criteria.capture.run_hooked`)."""
    was = eval_mode(ctx.model)
    try:
        batches = calibration_batches(ctx.data, ctx.batches, device=ctx.device, seed=ctx.seed)
        run_hooked(ctx.model, hooks, pre, (x for x, _ in batches))
    finally:
        ctx.model.train(was)
