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

from app.pruning.budget_alloc import SMOOTH, allocate
from app.pruning.budget_table import at

AIM = 0.95  # the middle of the band: room for the noise of a timing on either side
LOW = 0.9  # the band is [LOW x budget, budget]
TOLERANCE = 0.10  # "within 10% of the budget", either side
NEAR = 0.025  # a measurement this close to the aim ends the search (the band's middle half)
EDGE = 0.1  # a new share keeps this part of the bracket's width from either end
FILL_STEP = 0.125  # filling slack: a group's sparsity falls by this much per try
FILL_ROUNDS = 4  # measured fills at most


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


def _give_back(
    table: dict, alloc: dict[str, float], blocked: set[str]
) -> list[tuple[float, str, float, float]]:
    """``(cost per regained point, group, lower sparsity, cost)`` for each pruned group not in
    ``blocked``, its sparsity lowered by ``FILL_STEP``, cheapest first: the step the allocation
    valued least (least saving per accuracy point, the same measure and floor) is undone
    first."""
    options = []
    for lead, entry in table["groups"].items():
        level = alloc.get(entry["members"][0], 0.0)
        if level <= 0 or lead in blocked:
            continue
        lower = max(0.0, round(level - FILL_STEP, 4))
        (saved, drop), (saved_lo, drop_lo) = at(entry, level), at(entry, lower)
        cost = max(0.0, saved - saved_lo)
        options.append((cost / (max(0.0, drop - drop_lo) + SMOOTH), lead, lower, cost))
    return sorted(options)


def fill(
    table: dict,
    start: dict,
    budget: float,
    *,
    build: Callable[[dict[str, float]], Any],
    key: Callable[[Any], Hashable],
    value: Callable[[Any], float],
    rounds: int = FILL_ROUNDS,
) -> list[dict]:
    """Channels given back while a candidate is faster than the band's middle half (NetAdapt's
    last step, Yang et al. 2018: the budget's slack buys accuracy).

    The search moves along one path, and rounded widths make it step-like: the nearest
    candidate under the budget can sit near the band's low edge, where a later timing's noise
    puts it out of the band, with room for more channels. From ``start`` (a measured
    candidate, ``{"alloc", "measured", ...}``) one group at a time gets ``FILL_STEP`` less
    sparsity, the step the table values least first, skipping steps the table predicts over
    the budget; a new width is measured and kept when it meets the budget (a group that
    overshoots is not tried again). Returns the measured candidates (``"filled"`` names the
    group), at most ``rounds``.

    Example:
        >>> table = {"base": 10.0, "groups": {
        ...     "a": {"members": ["a"], "points": [[0.5, 4.0, 0.1], [0.9, 6.0, 0.5]]},
        ...     "b": {"members": ["b"], "points": [[0.5, 1.0, 0.3], [0.9, 2.0, 0.6]]}}}
        >>> value = lambda alloc: 10.0 - 6.0 * alloc["a"] - 2.0 * alloc["b"]
        >>> start = {"share": 1.0, "alloc": {"a": 0.9, "b": 0.5}, "measured": 3.6}
        >>> filled = fill(table, start, 5.0, build=dict, key=lambda m: tuple(m.values()),
        ...     value=value, rounds=2)  # b's steps cost least per point regained
        >>> [(r["filled"], r["alloc"], round(r["measured"], 2)) for r in filled]
        [('b', {'a': 0.9, 'b': 0.375}, 3.85), ('b', {'a': 0.9, 'b': 0.25}, 4.1)]
    """
    floor = (AIM - NEAR) * budget
    current, out, blocked = start, [], set()
    current_key = key(build(start["alloc"]))
    seen = {current_key: start["measured"]}
    for _ in range(40):  # lowering a group by less than one rounding step changes nothing
        if len(out) >= rounds or current["measured"] >= floor:
            break
        options = [
            o
            for o in _give_back(table, current["alloc"], blocked)
            if current["measured"] + o[3] <= budget
        ]
        if not options:
            break
        _, lead, lower, _ = options[0]
        alloc = {**current["alloc"], **dict.fromkeys(table["groups"][lead]["members"], lower)}
        model = build(alloc)
        k = key(model)
        if k == current_key:  # the same widths: lower the same group again
            current = {**current, "alloc": alloc}
            continue
        if k not in seen:
            seen[k] = value(model)
            out.append({**start, "alloc": alloc, "measured": seen[k], "filled": lead})
        if seen[k] <= budget:
            current, current_key = {**current, "alloc": alloc, "measured": seen[k]}, k
        else:
            blocked.add(lead)
    return out


def distance(value: float, budget: float) -> float:
    """How far ``value`` lies outside the band ``[0.9 x budget, budget]``, over the budget."""
    return max(0.0, LOW * budget - value, value - budget) / budget


def rank(r: dict, budget: float, field: str = "measured") -> tuple:
    """How :func:`choose` orders candidates: in the band ``[0.9 x budget, budget]`` first, the
    slowest there (the most channels kept, and the farthest from the band's low edge, where a
    later timing's noise would take it out of "within 10%"), then within 10% of the budget,
    then meeting it, then the nearest."""
    v = r[field]
    inside = LOW * budget <= v <= budget
    return (
        not inside,
        abs(v / budget - 1) > TOLERANCE,
        v > budget,
        round(distance(v, budget), 6),
        -v if inside else abs(v - AIM * budget),
    )


def choose(tried: list[dict], budget: float, field: str = "measured") -> dict:
    """The slowest candidate in the band ``[0.9 x budget, budget]``; with none there, the
    nearest within 10% of the budget (over it); else the nearest under the budget; else the
    nearest over it."""
    return min(tried, key=lambda r: rank(r, budget, field))
