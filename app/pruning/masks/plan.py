"""The outcome of one pruning step: :class:`MaskPlan` (built by
:func:`app.pruning.masks.compute.compute_masks`), and the coupled parameters a filter cut
zeroes too (:func:`filter_extras`).

Example:
    >>> import torch
    >>> plan = MaskPlan({"fc": torch.tensor([True, False])}, {"fc": 0.5}, {"fc": 0.5}, {"fc": None})
    >>> plan.granularity, plan.channels
    ('element', None)
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> sorted(filter_extras(model, {"0": torch.tensor([[True, True], [False, False]])}))
    ['0.bias', '1.bias', '1.weight']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from app.pruning.layers import is_transposed
from app.pruning.topology import following_bn

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
    and :class:`MaskKeeper` when given the plan. ``groups``: filter/channel levels: coupled
    layers ranked and cut as one, ``{leader: (leader, *followers)}``.
    """

    masks: dict[str, Tensor]
    requested: dict[str, float | None]
    achieved: dict[str, float]
    thresholds: dict[str, float | None]
    channels: dict[str, Tensor] | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    granularity: str = "element"
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)


def filter_extras(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Bias entries and the following BN's gamma/beta of every fully pruned filter."""
    modules, bns, extra = dict(model.named_modules()), following_bn(model), {}
    for n, keep in masks.items():
        layer = modules[n]
        rows = keep.transpose(0, 1) if is_transposed(layer) else keep
        alive = rows.flatten(1).any(dim=1)
        if bool(alive.all()):
            continue
        if getattr(layer, "bias", None) is not None:
            extra[f"{n}.bias"] = alive.clone()
        if n in bns:
            extra[f"{bns[n]}.weight"], extra[f"{bns[n]}.bias"] = alive.clone(), alive.clone()
    return extra
