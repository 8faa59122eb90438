"""The outcome of one pruning step: :class:`MaskPlan` (built by
:func:`app.pruning.masks.compute.compute_masks`).

Example:
    >>> import torch
    >>> plan = MaskPlan({"fc": torch.tensor([True, False])}, {"fc": 0.5}, {"fc": 0.5}, {"fc": None})
    >>> plan.granularity, plan.channels
    ('element', None)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

NEVER_EMPTY_NOTE = "no layer is emptied: at least one unit per layer is always kept"


@dataclass
class MaskPlan:
    """The outcome of one pruning step.

    ``masks``: layer -> bool keep-mask shaped like its weight. ``requested``/``achieved``:
    layer -> fraction of its weights pruned (``requested`` is None under a threshold target).
    ``thresholds``: layer -> the score cut (element-level magnitude only, else None).
    ``channels``: filter/channel levels: layer -> kept output filters / kept input channels.
    ``extra``: parameter name -> keep-mask for coupled parameters (bias of pruned filters, BN
    gamma/beta after them, everything inside a removed block); applied by :func:`apply_masks`
    and :class:`MaskKeeper` when given the plan.
    """

    masks: dict[str, Tensor]
    requested: dict[str, float | None]
    achieved: dict[str, float]
    thresholds: dict[str, float | None]
    channels: dict[str, Tensor] | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    granularity: str = "element"
