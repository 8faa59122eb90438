"""Weights the lab cannot see: float tensors a converted model holds as buffers, not parameters.

Parameters are what the engine lists, prunes, fine-tunes and counts. A float buffer that is
not a normalisation statistic (``running_mean``/``running_var``) is a weight the converter kept
as a constant; the upload warns when these are 10% or more of the model's float weights.

Example:
    >>> net = torch.nn.Linear(4, 2)
    >>> net.register_buffer("table", torch.randn(100, 100))  # a weight held as a constant
    >>> hidden_weights(net)
    {'table': 10000}
    >>> seen_warning(10, hidden_weights(net))
    ['the lab sees 10 of 10,010 float weights (0%); ... largest first: table (10,000)']
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

SEEN_MIN_FRACTION = 0.9
_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def hidden_weights(model: nn.Module) -> dict[str, int]:
    """``{buffer name: size}`` of float buffers that are weights rather than statistics; equal
    copies (onnx2torch copies a shared initializer for each use) count once."""
    out: dict[str, int] = {}
    seen: set[tuple] = set()
    for name, buf in model.named_buffers():
        if not buf.is_floating_point() or buf.dim() < 1 or name.endswith(_STATISTICS):
            continue
        key = (tuple(buf.shape), digest(buf))
        if key not in seen:
            seen.add(key)
            out[name] = int(buf.numel())
    return out


def seen_warning(n_params: int, hidden: dict[str, int]) -> list[str]:
    """One warning naming the largest hidden weights when the lab sees under 90% of them."""
    total = n_params + sum(hidden.values())
    if not total or n_params >= SEEN_MIN_FRACTION * total:
        return []
    largest = sorted(hidden.items(), key=lambda kv: -kv[1])[:5]
    names = ", ".join(f"{name} ({size:,})" for name, size in largest)
    return [
        f"the lab sees {n_params:,} of {total:,} float weights ({n_params / total:.0%}); it "
        f"cannot list, prune or fine-tune the constants the file holds instead, largest first: "
        f"{names}"
    ]


def digest(tensor: torch.Tensor) -> str:
    """A hash of a tensor's bytes (any dtype), to find equal copies."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha1(raw.numpy().tobytes()).hexdigest()
