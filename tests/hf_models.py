"""Wrapping ``transformers`` models the way people export them (kept out of
``tests/factories.py``: the web-process tests import that one and must not load torch)."""

from __future__ import annotations

from torch import Tensor, nn


class Logits(nn.Module):
    """A ``transformers`` model as people export it: a tensor in, the logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).logits
