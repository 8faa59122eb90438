"""Ranking coupled layers as one: group importance for filter/channel selection.

A :class:`Coupling` turns each coupled group (:func:`app.pruning.structural.coupling.
coupled_layers`) into one ranked layer, its *leader*: the leader's scores become the group's
(the mean of every member's score for that channel, Torch-Pruning's
``group_reduction="mean"``), a unit of the leader weighs the parameters of all its members,
and what the selection prunes in the leader is copied to the other members (*followers*).
So a coupled group keeps the same channels in every member, ``round_to`` rounds the group,
and physical removal cuts it.

Example:
    >>> from app.pruning.structural.coupling import Coupled
    >>> group = Coupled({"a": torch.tensor([0, 1, 2]), "b": torch.tensor([2, 1, 0])}, 3)
    >>> c = Coupling([group], {"a", "b"})
    >>> scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([5.0, 4.0, 3.0])}
    >>> c.merge(scores, {})
    >>> scores["a"].tolist(), "b" in scores
    ([2.0, 3.0, 4.0], False)
    >>> pruned = {"a": torch.tensor([True, False, False])}
    >>> c.spread(pruned, {"a": 0.3})
    >>> pruned["b"].tolist()
    [False, False, True]
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

from app.pruning.structural.coupling import Coupled


class Coupling:
    """Coupled groups restricted to the layers being ranked; see the module docstring."""

    def __init__(self, groups: list[Coupled], ranked: Collection[str]) -> None:
        self.groups: dict[str, Coupled] = {}  # leader -> its group
        for group in groups:
            members = {n: p for n, p in group.members.items() if n in ranked}
            if len(members) >= 2:
                self.groups[next(iter(members))] = Coupled(members, group.size)
        self.followers = {n for g in self.groups.values() for n in list(g.members)[1:]}

    def members(self) -> dict[str, tuple[str, ...]]:
        """Leader -> every member of its group (leader first)."""
        return {lead: tuple(g.members) for lead, g in self.groups.items()}

    def merge(self, scores: dict[str, Tensor], forced: dict[str, Tensor]) -> None:
        """In place: each leader gets the group scores (and units forced in any member);
        followers' scores are dropped."""
        for lead, group in self.groups.items():
            total = torch.zeros(group.size, dtype=torch.float32)
            gone = torch.zeros(group.size, dtype=torch.bool)
            for n, perm in group.members.items():
                total.index_add_(0, perm, scores.pop(n).float().flatten())
                if n in forced:
                    gone[perm] |= forced.pop(n).flatten()
            scores[lead] = (total / len(group.members))[group.members[lead]]
            if bool(gone.any()):
                forced[lead] = gone[group.members[lead]]

    def unit_size(self, name: str, sizes: dict[str, int]) -> int:
        """Parameters of one unit of ``name``: a leader's unit holds all its members'."""
        group = self.groups.get(name)
        return sizes[name] if group is None else sum(sizes[n] for n in group.members)

    def override(self, name: str, overrides: dict[str, float]) -> float | None:
        """The sparsity asked of ``name``'s group: the smallest override of its members (the
        most sensitive member decides), None when no member has one."""
        group = self.groups.get(name)
        asked = [overrides[n] for n in (group.members if group else (name,)) if n in overrides]
        return min(asked) if asked else None

    def spread(self, pruned: dict[str, Tensor], requested: dict[str, float | None]) -> None:
        """In place: every follower prunes the channels its leader prunes."""
        for lead, group in self.groups.items():
            channel_pruned = torch.empty(group.size, dtype=torch.bool)
            channel_pruned[group.members[lead]] = pruned[lead].flatten()
            for n, perm in list(group.members.items())[1:]:
                pruned[n] = channel_pruned[perm]
                requested[n] = requested.get(lead)
