"""Coupled layers: the Conv/Linear layers whose filters (or input channels) must go together.

In a residual network every block output of one stage is added to the same stream, so the
last convs of its blocks and the stage's first conv (or shortcut) produce the same channels:
channel ``c`` can only be removed from all of them at once. Torch-Pruning's dependency graph
(``tp.DependencyGraph``) finds these groups; :func:`coupled_layers` lists, for each group with
at least two layers in scope, which unit of each layer is which channel of the group. The
mask selection ranks such a group as one layer (group importance: the mean of its members'
unit scores), so every member keeps the same channels and physical removal cuts them.

Only members whose units map one-to-one onto the group's channels are coupled (residual adds,
BN chains); a layer that takes part of a ``torch.cat`` or a flatten -> Linear consumer keeps
its own ranking, and physical removal reports the channels it could not cut.

Example:
    >>> from torch import nn
    >>> class Res(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
    ...     def forward(self, x):
    ...         y = self.a(x)
    ...         return self.head(y + self.b(y))
    >>> [sorted(g.members) for g in coupled_layers(Res(), torch.randn(2, 4), "filter", {"a", "b"})]
    [['a', 'b']]
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from app.pruning.structural.graph import WEIGHTED, build_graph
from app.pruning.structural.remove import removal_blockers


@dataclass(frozen=True)
class Coupled:
    """One coupled group: ``members[name][i]`` is the group channel of unit ``i`` of the layer
    (every member has ``size`` units, one per channel of the group)."""

    members: dict[str, Tensor]
    size: int


def _units(module: nn.Module, out: bool) -> int:
    transposed = bool(getattr(module, "transposed", False))
    return module.weight.shape[(1 if transposed else 0) if out else (0 if transposed else 1)]


def _member(module: nn.Module, item: tp.GroupItem, out: bool, size: int) -> Tensor | None:
    """Unit -> group channel of one group member, or None when it is not one-to-one."""
    idxs, roots = list(item.idxs), list(item.root_idxs)
    units = _units(module, out)
    if units != size or sorted(idxs) != list(range(units)) or len(set(roots)) != units:
        return None
    perm = torch.empty(units, dtype=torch.long)
    perm[torch.as_tensor(idxs)] = torch.as_tensor(roots)
    return perm


def coupled_layers(
    model: nn.Module, example: Tensor, granularity: str, names: Collection[str]
) -> list[Coupled]:
    """The coupled groups of ``model`` with at least two layers among ``names``.

    Args:
        model: the model (not modified).
        example: a real input batch (traced by Torch-Pruning).
        granularity: ``"filter"`` (producers coupled by their outputs) or ``"channel"``
            (consumers coupled by their inputs).
        names: the layers in scope (excluded and protected layers are left out).

    Returns:
        The groups; an empty list when the model cannot be traced for physical removal.
    """
    if removal_blockers(model, example):
        return []
    dg = build_graph(model, example[:2])
    want_out = granularity == "filter"
    modules = {m: n for n, m in model.named_modules()}
    out: list[Coupled] = []
    for group in dg.get_all_groups(root_module_types=WEIGHTED):
        size, members = len(group[0].idxs), {}
        for item in group:
            module = item.dep.target.module
            name = modules.get(module)
            if name not in names or not isinstance(module, WEIGHTED):
                continue
            if dg.is_out_channel_pruning_fn(item.dep.handler) != want_out or name in members:
                continue
            if not want_out and getattr(module, "groups", 1) != 1:
                continue  # depthwise consumers follow their producer
            perm = _member(module, item, want_out, size)
            if perm is not None:
                members[name] = perm
        if len(members) >= 2:
            out.append(Coupled(members, size))
    return out
