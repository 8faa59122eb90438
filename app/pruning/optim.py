"""The optimizer and the learning-rate schedule a ``FinetuneSpec`` names.

Example:
    >>> lr_factor("cosine", 0, 10), lr_factor("cosine", 10, 10), lr_factor("step", 6, 10)
    (1.0, 0.0, 0.1)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from app.catalogue import LR_SCHEDULES, OPTIMIZERS
from app.pruning.spec import FinetuneSpec


def make_optimizer(model: nn.Module, spec: FinetuneSpec) -> torch.optim.Optimizer:
    """The optimizer a FinetuneSpec names (``sgd`` with momentum, ``adam``, ``adamw``).

    Raises:
        ValueError: an unknown optimizer name or a non-positive learning rate.

    Example:
        >>> type(make_optimizer(nn.Linear(2, 2), FinetuneSpec(optimizer="adamw"))).__name__
        'AdamW'
    """
    name, lr = str(spec.optimizer), float(spec.lr)
    if lr <= 0:
        raise ValueError(f"finetune.lr must be positive; got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    wd = float(spec.weight_decay or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec.momentum), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"finetune.optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def lr_factor(kind: str, it: int, total: int) -> float:
    """Multiplier of the base LR at iteration ``it`` of ``total`` (per batch, not per epoch).

    ``cosine`` decays from 1 to 0 over the run; ``step`` divides by 10 at 50% and 75%.
    """
    if kind == "constant":
        return 1.0
    t = it / max(total, 1)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "step":
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
    raise ValueError(f"finetune.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {kind!r}")
