"""The closed-loop search of a budget: one scalar along the table's allocation path, measured.

The table's allocation (:func:`app.pruning.budget.allocate`) is a path: as the goal falls,
the greedy steps (the most saving per accuracy point first) are taken in one fixed order, so
every group's sparsity only grows along it and the sensitivity-guided shape is kept. ``share``
in [0, 1] is the part of the table's largest predicted saving taken (:func:`at_share`). The
measured value (parameters and MACs counted; latency ``base x`` the pruned/original ratio
timed side by side) falls as the share grows, so :func:`search` brackets the band
``[0.9 x budget, budget]`` on the share, aiming at its middle, ``0.95 x budget`` (until a
measurement is within 2.5% of the budget from it): the table's prediction first, then interpolation between the nearest measured points on either side (regula falsi,
kept off the bracket's ends so it always shrinks), extrapolation (secant) while every point
is too slow. Latency is step-like in the share (whole channels, ``round_to`` multiples): shares giving
the same widths are measured once, and when no width lies between the two sides of the
bracket, the candidate closest to the band is kept (:func:`choose`).

Example:
    >>> table = {"base": 10.0, "groups": {
    ...     "a": {"members": ["a"], "points": [[0.5, 4.0, 0.0], [0.9, 6.0, 0.5]]}}}
    >>> value = lambda alloc: 10.0 - 6.0 * alloc["a"]  # the truth: less than the table says
    >>> tried = search(table, 6.0, build=dict, key=lambda m: round(m["a"], 2), value=value)
    >>> [(r["share"], round(r["measured"], 2)) for r in tried]  # too slow, too fast, within
    [(0.7167, 6.64), (0.9172, 5.2), (0.8472, 5.7)]
    >>> choose(tried, 6.0)["alloc"]
    {'a': 0.7167}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

from app.pruning.budget_alloc import allocate

AIM = 0.95  # the middle of the band: room for the noise of a timing on either side
LOW = 0.9  # the band is [LOW x budget, budget]
TOLERANCE = 0.10  # "within 10% of the budget", either side
NEAR = 0.025  # a measurement this close to the aim ends the search (the band's middle half)
EDGE = 0.1  # a new share keeps this part of the bracket's width from either end


def at_share(table: dict, share: float) -> tuple[dict[str, float], float, float]:
    """``(allocation, predicted value, goal)`` where ``share`` of the table's largest
    predicted saving is taken: 0 is the original, 1 every group at the most it is probed."""
    base = table["base"]
    most = base - allocate(table, -math.inf)[1]
    goal = base - share * most
    alloc, predicted = allocate(table, goal)
    return alloc, predicted, goal


def _next_share(aim: float, lo: tuple, hi: tuple | None, prev: tuple) -> float | None:
    """The share to measure next from the bracket ``lo`` (slower than the aim) .. ``hi``
    (faster), each ``(share, value)``; None when the bracket has closed. While nothing is
    faster, the line through ``prev`` (the slow point before ``lo``, at first the original)
    and ``lo`` is extended to the aim."""
    if hi is None:
        if lo[0] >= 1.0:
            return None
        slope = (prev[1] - lo[1]) / (lo[0] - prev[0]) if lo[0] > prev[0] else 0.0
        share = lo[0] + (lo[1] - aim) / slope if slope > 0 else 2 * lo[0] + 0.1
        return min(1.0, max(share, lo[0] + EDGE * (1.0 - lo[0])))
    width = hi[0] - lo[0]
    if width < 1e-4:
        return None
    share = lo[0] + (lo[1] - aim) / (lo[1] - hi[1]) * width
    return min(hi[0] - EDGE * width, max(lo[0] + EDGE * width, share))


def search(
    table: dict,
    budget: float,
    *,
    build: Callable[[dict[str, float]], Any],
    key: Callable[[Any], Hashable],
    value: Callable[[Any], float],
    rounds: int = 8,
) -> list[dict]:
    """The measured candidates: ``{"share", "goal", "predicted", "measured", "alloc"}`` each.

    ``build(alloc)`` makes the pruned model, ``key(model)`` names its shapes (two allocations
    with one key are measured once) and ``value(model)`` measures it. Stops when a measurement
    lands within 2.5% of the budget from ``0.95 x budget`` (the middle half of the band, so
    a timing's noise keeps it inside), after ``rounds`` measurements, when the most pruning is
    still too slow, or when the bracket holds no other widths.
    """
    base, aim = table["base"], AIM * budget
    most = base - at_share(table, 1.0)[1]
    lo: tuple[float, float] = (0.0, base)
    prev = lo
    hi: tuple[float, float] | None = None
    share: float | None = min(1.0, max(0.0, (base - aim) / most)) if most > 0 else 1.0
    tried: list[dict] = []
    seen: dict[Hashable, float] = {}
    for _ in range(4 * rounds):  # steps onto already measured widths cost no timing
        if share is None or len(tried) >= rounds:
            break
        alloc, predicted, goal = at_share(table, share)
        model = build(alloc)
        k = key(model)
        if k not in seen:
            seen[k] = value(model)
            tried.append(
                {"share": round(share, 4), "goal": goal, "predicted": predicted}
                | {"measured": seen[k], "alloc": alloc}
            )
        measured = seen[k]
        if abs(measured - aim) <= NEAR * budget:
            break
        if measured > aim:
            prev, lo = lo, (share, measured)
        else:
            hi = (share, measured)
        share = _next_share(aim, lo, hi, prev)
    return tried


def distance(value: float, budget: float) -> float:
    """How far ``value`` lies outside the band ``[0.9 x budget, budget]``, over the budget."""
    return max(0.0, LOW * budget - value, value - budget) / budget


def choose(tried: list[dict], budget: float, field: str = "measured") -> dict:
    """The candidate in the band ``[0.9 x budget, budget]`` closest to ``0.95 x budget``;
    with none there, the nearest within 10% of the budget (over it); else the nearest under
    the budget; else the nearest over it."""

    def rank(r: dict) -> tuple:
        v = r[field]
        return (
            not LOW * budget <= v <= budget,
            abs(v / budget - 1) > TOLERANCE,
            v > budget,
            round(distance(v, budget), 6),
            abs(v - AIM * budget),
        )

    return min(tried, key=rank)
