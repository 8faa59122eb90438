"""The optimizer and the learning-rate schedule a ``FinetuneSpec`` names.

The LR of iteration ``it`` is the base LR times :func:`lr_factor`: a linear warm-up over the
first ``warmup`` share of the iterations, then the schedule over the rest.

Example:
    >>> lr_factor("cosine", 0, 10), lr_factor("cosine", 10, 10), lr_factor("step", 6, 10)
    (1.0, 0.0, 0.1)
    >>> [round(lr_factor("cosine", i, 20, warmup=0.1), 3) for i in (0, 1, 2, 11, 20)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from app.catalogue import LR_SCHEDULES, OPTIMIZERS
from app.pruning.spec import FinetuneSpec


def make_optimizer(
    model: nn.Module, spec: FinetuneSpec, lr: float | None = None
) -> torch.optim.Optimizer:
    """The optimizer a FinetuneSpec names (``sgd`` with momentum, ``adam``, ``adamw``).

    ``lr`` overrides ``spec.lr`` (what an ``"auto"`` LR resolved to).

    Raises:
        ValueError: an unknown optimizer name, a non-positive or unresolved learning rate.

    Example:
        >>> type(make_optimizer(nn.Linear(2, 2), FinetuneSpec(lr=1e-3))).__name__
        'AdamW'
    """
    name, lr = str(spec.optimizer), spec.lr if lr is None else lr
    if not isinstance(lr, int | float) or lr <= 0:
        raise ValueError(f"finetune.lr must be a positive number here; got {lr!r}")
    lr = float(lr)
    params = [p for p in model.parameters() if p.requires_grad]
    wd = float(spec.weight_decay or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec.momentum), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"finetune.optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def warmup_iterations(warmup: float, total: int) -> int:
    """How many of ``total`` iterations a ``warmup`` share ramps over (at least 1 when > 0)."""
    return 0 if warmup <= 0 else max(1, min(total, math.ceil(warmup * total)))


def lr_factor(kind: str, it: int, total: int, *, warmup: float = 0.0) -> float:
    """Multiplier of the base LR at iteration ``it`` of ``total`` (per batch, not per epoch).

    The first ``warmup`` share of the iterations ramps linearly up to 1 (``(it + 1) / w``);
    then ``cosine`` decays from 1 to 0 over the rest; ``step`` divides by 10 at 50% and 75%.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(
            f"finetune.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {kind!r}"
        )
    w = warmup_iterations(warmup, total)
    if it < w:
        return (it + 1) / w
    if kind == "constant":
        return 1.0
    t = (it - w) / max(total - w, 1)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
