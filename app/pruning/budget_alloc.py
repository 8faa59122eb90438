"""The table's allocation: the group steps with the most saving per accuracy point, greedily.

Starting from the dense model, the group step (to its next probed sparsity) with the most
saving per accuracy point lost is taken until the table's *predicted* value meets the goal;
the last step is cut short so the prediction lands on the goal exactly. The steps are taken in
one fixed order whatever the goal, so a lower goal only adds to a higher one's allocation
(the path :mod:`app.pruning.budget_search` searches along).

Example:
    >>> table = {"base": 10.0, "groups": {
    ...     "a": {"members": ["a"], "points": [[0.5, 4.0, 0.0], [0.9, 5.0, 0.5]]},
    ...     "b": {"members": ["b", "c"], "points": [[0.5, 2.0, 0.25], [0.9, 3.0, 0.5]]}}}
    >>> alloc, predicted = allocate(table, 6.0)
    >>> alloc, predicted
    ({'a': 0.5, 'b': 0.0, 'c': 0.0}, 6.0)
"""

from __future__ import annotations

from app.pruning.budget_table import PROBES, at

SMOOTH = 0.02  # two accuracy points: a drop below the evaluation's noise ranks by the saving


def _best_step(table: dict, level: dict[str, float]) -> tuple[str, float, float, float] | None:
    """``(group, sparsity, saved gain, drop gain)`` of the most efficient next step, or None.

    A group's next step is its next probed sparsity that saves anything (one level at a
    time, so pruning spreads over the groups instead of one group jumping to the maximum).
    """
    best, best_eff = None, 0.0
    for lead, entry in table["groups"].items():
        saved0, drop0 = at(entry, level[lead])
        for s in (p for p in PROBES if p > level[lead]):
            saved, drop = at(entry, s)
            gain = saved - saved0
            if gain <= 0:
                continue
            eff = gain / (max(0.0, drop - drop0) + SMOOTH)
            if eff > best_eff:
                best, best_eff = (lead, s, gain, drop - drop0), eff
            break
    return best


def allocate(table: dict, goal: float) -> tuple[dict[str, float], float]:
    """Per-layer sparsities whose predicted value is ``goal`` (or the least reachable), and
    that prediction. Every member of a group gets the group's sparsity."""
    level = dict.fromkeys(table["groups"], 0.0)
    saved = 0.0
    need = table["base"] - goal
    while saved < need:
        step = _best_step(table, level)
        if step is None:
            break
        lead, s, gain, _ = step
        if saved + gain >= need:  # the last step stops where the prediction meets the goal
            start = at(table["groups"][lead], level[lead])[0]
            s = _sparsity_for(table["groups"][lead], level[lead], s, start + need - saved)
            level[lead] = s
            saved = need
            break
        level[lead] = s
        saved += gain
    alloc = {
        n: round(level[lead], 4)
        for lead, entry in table["groups"].items()
        for n in entry["members"]
    }
    return alloc, table["base"] - saved


def _sparsity_for(entry: dict, lo: float, hi: float, saved: float) -> float:
    """The sparsity in ``[lo, hi]`` where the group's interpolated saving is ``saved``."""
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(entry, mid)[0] < saved else (lo, mid)
    return hi
