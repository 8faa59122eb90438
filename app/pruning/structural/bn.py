"""Re-estimating BatchNorm statistics after removal or heavy masking.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    >>> recalibrate_bn(model, [(torch.randn(8, 3), None)] * 5, batches=3)
    3
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int = 20) -> int:
    """Reset BatchNorm running statistics and re-estimate them on ``batches`` batches.

    Uses a cumulative average (``momentum=None``) with the BatchNorm layers in train mode and
    everything else in eval mode (no dropout: the statistics describe the inputs BatchNorm sees
    when evaluating), without gradients and without touching a weight; then leaves the model in
    eval mode. Use it after every prune step, when the old statistics no longer describe the
    layers' inputs.

    Args:
        model: the model, changed in place.
        loader: yields ``(x, y)`` pairs or bare input tensors.
        batches: the most batches to read.

    Returns:
        The number of batches used (0 when the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    device = next(model.parameters()).device
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    used = 0
    try:
        for batch in loader:
            if used >= batches:
                break
            x = batch[0] if isinstance(batch, list | tuple) else batch
            model(x.to(device))
            used += 1
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return used
