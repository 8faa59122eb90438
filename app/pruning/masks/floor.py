"""The layer floor of a global element ranking (``pruning.layer_floor``).

A global magnitude ranking compares weights across layers of very different scales and sizes,
and can leave a small layer that everything flows through almost empty: on a transformers
ResNet at 70% in two steps (``lr: 0.01``, seed 0), the 7x7 stem (784 weights) kept 11 and
the model fell to 12% before the second fine-tuning, 49% after (with the floor and the
default recipe: 65%, 95.2%). So every layer keeps at least ``floor`` times the share a
uniform cut would keep (``floor * (1 - target)``: at 70% and the default 0.5, 15% of its
weights); the layers held at the floor keep their best weights and the rest of the cut is
ranked again over the other layers, so the total still meets the target.

Example:
    >>> floor_counts({"stem": 64, "body": 960}, {"stem": 2, "body": 254}, 0.75, 0.5)
    {'stem': 8}
"""

from __future__ import annotations

import math
from typing import Any

from app.pruning.masks.ranking import count_true
from app.pruning.masks.select_notes import floor_note
from app.pruning.notes import info


def floor_counts(
    sizes: dict[str, int], kept: dict[str, int], target: float, floor: float
) -> dict[str, int]:
    """The layers below the floor and the number of units each must keep.

    Args:
        sizes: units per layer.
        kept: units each layer keeps under the plain global ranking.
        target: the share of all units removed.
        floor: the share of a uniform cut's keep that every layer keeps at least.

    Returns:
        ``{layer: units to keep}`` for the layers the floor lifts (empty when none).
    """
    share = floor * (1.0 - target)
    if share <= 0:
        return {}
    return {
        n: math.ceil(share * size) for n, size in sizes.items() if kept[n] < math.ceil(share * size)
    }


def rest_target(sizes: dict[str, int], fixed: dict[str, int], target: float) -> float:
    """The share to cut from the layers not held at the floor so the total meets ``target``.

    Example:
        >>> rest_target({"stem": 100, "body": 900}, {"stem": 15}, 0.7)
        0.6833333333333333
    """
    total = sum(sizes.values())
    cut_fixed = sum(sizes[n] - k for n, k in fixed.items())
    size = sum(v for n, v in sizes.items() if n not in fixed)
    return min(max((target * total - cut_fixed) / max(size, 1), 0.0), 1.0)


def hold_floor(sel: Any, pool: list[str], target: float) -> None:
    """At element level, lift the layers of ``pool`` that a :class:`~.select.Selection`'s
    global ranking cut below ``sel.spec.layer_floor`` to it (their best units) and rank the
    rest of the cut again over the others, until none is below; a note names them."""
    floor = float(sel.spec.layer_floor)
    if sel.spec.granularity != "element" or len(pool) < 2:
        return
    sizes = {n: sel.scores[n].numel() for n in pool}
    fixed: dict[str, int] = {}
    for _ in pool:  # each round holds at least one more layer at the floor
        kept = {n: sizes[n] - count_true(sel.pruned[n]) for n in pool if n not in fixed}
        low = floor_counts({n: sizes[n] for n in kept}, kept, target, floor)
        if not low:
            break
        for n, k in low.items():
            fixed[n] = k
            sel._keep_best(n, k)
        rest = [n for n in pool if n not in fixed]
        if not rest:
            break
        sel._select_global(rest, rest_target(sizes, fixed, target))
    if fixed:
        sel.notes.append(info(floor_note(list(fixed), floor)))
