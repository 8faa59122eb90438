"""Helpers the built-in architectures share: sizes found from the input shape."""

from __future__ import annotations

import torch
from torch import nn

Shape = tuple[int, ...]


def flat_size(module: nn.Module, input_shape: Shape) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_shape)).flatten(1).shape[1])


def image_shape(input_shape: Shape, arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"architecture {arch!r} needs an image input shape C,H,W; got {list(input_shape)}"
        )
    c, h, w = (int(d) for d in input_shape)
    return c, h, w
