"""Budget-aware ``round_to``: kept filter/channel counts rounded up *or down* to their multiple
so the share removed lands as close as it can to the one asked.

Rounding every kept count up (the lab's rule until 2026-12-01) under-cut the target with a
coarse multiple: 30% global filter pruning of resnet20 at ``round_to`` 16 removed 21% of its
parameters. :func:`balanced_keep` starts every layer (or coupled group, ranked as its leader)
at its count rounded up, then cuts *blocks* (the next multiple down: the lowest-ranked units
the layer keeps) in the order of their mean score, lowest first, while a cut brings the
removed parameters (units weighted by their size, as the global ranking weighs them) nearer
the target. A layer's blocks are cut in turn (each ranks above the one before it); one whose
next block would overshoot is closed. No layer goes below its ``floor`` (one multiple, and what ``max_layer_sparsity`` keeps).
Over one layer it is rounding to the nearest multiple (ties up).

Example:
    >>> import torch
    >>> ranks = {"a": torch.arange(16.0), "b": torch.arange(64.0) + 0.5}
    >>> layers = {n: Rounded(r, 16, 1, 16) for n, r in ranks.items()}
    >>> kept = {"a": 6, "b": 26}  # a 60% cut: 'a' (one block) stays whole, 'b' gives a block
    >>> balanced_keep(layers, kept, 0.6)
    {'a': 16, 'b': 16}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rounded:
    """One ranked layer: ``ranking`` (its units' scores, higher kept first), its ``multiple``,
    ``size`` (parameters per unit) and ``floor`` (the fewest units it may keep)."""

    ranking: Tensor
    multiple: int
    size: int
    floor: int

    @property
    def units(self) -> int:
        return self.ranking.numel()

    def up(self, kept: int) -> int:
        """``kept`` rounded up to the multiple (or the whole layer), at least the floor."""
        r = self.multiple
        return min(self.units, -(-max(kept, self.floor) // r) * r)

    def blocks(self, kept: int) -> list[tuple[float, int, int]]:
        """From ``up(kept)`` down to the floor: (mean score of the block cut, units cut,
        kept count after it), in order."""
        ordered = torch.sort(self.ranking.flatten().double(), descending=True).values
        lowest = self.up(self.floor)
        out, top = [], self.up(kept)
        while top > lowest:
            low = max(lowest, (top - 1) // self.multiple * self.multiple)
            out.append((float(ordered[low:top].mean()), top - low, low))
            top = low
        return out


def balanced_keep(
    layers: dict[str, Rounded], kept: dict[str, int], target: float
) -> dict[str, int]:
    """Kept counts, each a multiple of its layer's (or the whole layer), whose removed share
    (weighted by unit size) is nearest ``target`` that a lowest-score-first cut reaches.

    Args:
        layers: the layers ranked together (one for a layer-wise cut).
        kept: the count each kept after the selection.
        target: the share of their parameters to remove.

    Returns:
        The kept count per layer.
    """
    out = {n: spec.up(kept[n]) for n, spec in layers.items()}
    total = sum(spec.size * spec.units for spec in layers.values())
    removed = sum(spec.size * (spec.units - out[n]) for n, spec in layers.items())
    deficit = target * total - removed
    blocks = sorted(
        (score, i, n, cut, low)
        for i, (n, spec) in enumerate(layers.items())
        for score, cut, low in spec.blocks(kept[n])
    )
    closed: set[str] = set()
    for _, _, n, cut, low in blocks:
        if n in closed:
            continue
        weight = layers[n].size * cut
        if 0 < weight < 2 * deficit:  # strictly nearer the target
            out[n], deficit = low, deficit - weight
        else:
            closed.add(n)
    return out
