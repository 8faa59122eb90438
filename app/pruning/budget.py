"""Prune to a budget: latency at a batch size, parameters or FLOPs instead of a sparsity.

1. A lookup table, measured once per model (:mod:`app.pruning.budget_table`, kept in a JSON
   file when given a path): for each *coupled group* (the layers physical removal cuts
   together; a layer of its own otherwise) and each of several sparsities, what pruning that
   group alone saves (the whole model's latency at the budget's batch, timed interleaved with
   the original; parameters; MACs) and what it costs (test-accuracy drop, no fine-tuning).
2. The allocation (:func:`allocate`): starting from the dense model, the group step with the
   most saving per accuracy point lost is taken until the table's *predicted* value meets the
   goal; the last step is cut short so the prediction lands on the goal exactly.
3. The check (:func:`solve`): the allocation is physically pruned and *measured* (counted
   exactly for parameters and FLOPs). Savings do not simply add up (two consecutive layers
   both at half width save three quarters of the second's MACs, not all of it), so when the
   measurement misses the budget the goal is moved by the measured share of the predicted
   saving and the groups are allocated again, for a few rounds. A latency budget then times
   every tried allocation again, all in one round-robin with the original
   (:func:`side_by_side`); the least pruning measured within the budget wins.
4. The recipe is rewritten as per-layer ``overrides``; the run reports the budget, what was
   reached and the measured latency (:func:`budget_report`).

Example:
    >>> table = {"base": 10.0, "groups": {
    ...     "a": {"members": ["a"], "points": [[0.5, 4.0, 0.0], [0.9, 5.0, 0.5]]},
    ...     "b": {"members": ["b", "c"], "points": [[0.5, 2.0, 0.25], [0.9, 3.0, 0.5]]}}}
    >>> alloc, predicted = allocate(table, 6.0)
    >>> alloc, predicted
    ({'a': 0.5, 'b': 0.0, 'c': 0.0}, 6.0)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from app.pruning.budget_spec import describe
from app.pruning.budget_table import (
    PROBES,
    allocated,
    at,
    kind_of,
    layer_table,
    metric,
    pruned_copy,
)
from app.pruning.data import ArrayDataset
from app.pruning.latency import time_models
from app.pruning.measure import batch_of
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe

__all__ = ["allocate", "budget_recipe", "budget_report", "pruned_copy", "solve"]

TOLERANCE = 0.10
ROUNDS = {"latency_ms": 4, "params": 8, "flops": 8}  # measured allocations at most
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


def solve(
    model: nn.Module, spec: PruningSpec, data: ArrayDataset, cache: Path | None = None
) -> tuple[dict[str, float], dict]:
    """The least pruning whose physically pruned model meets ``spec.target``, and the search
    (``{"target", "base", "rounds": [{"goal", "predicted", "measured"}], "groups"}``).

    Raises ValueError when even the largest allowed pruning misses the budget.
    """
    target = dict(spec.target or {})
    kind = kind_of(target)
    budget = float(target[kind])
    table = layer_table(model, spec, data, target, cache)
    if kind == "latency_ms":  # the table may be older, or timed under other load: re-time now
        table = rescaled(table, metric(model, target, data, dense=model, budget_s=1.0))
    base = table["base"]
    rounds: list[dict] = []
    tried: list[tuple[float, dict[str, float]]] = []
    goal = budget
    for _ in range(ROUNDS[kind]):
        alloc, predicted = allocate(table, goal)
        if any(alloc == seen for _, seen in tried):
            break  # the table can give no other allocation: measuring it again tells nothing
        small = pruned_copy(model, spec, alloc, data)
        measured = metric(small, target, data, dense=model, dense_value=base, budget_s=1.0)
        rounds.append({"goal": goal, "predicted": predicted, "measured": measured})
        tried.append((measured, alloc))
        if budget * (1 - TOLERANCE) <= measured <= budget or (
            measured <= budget and not any(alloc.values())  # the original meets it
        ):
            break
        if predicted > goal and measured > budget:  # the table's every step is taken
            break
        goal = _next_goal(base, budget, goal, predicted, measured)
    if kind == "latency_ms" and len(tried) > 1:
        tried = side_by_side(model, spec, data, target, base, tried)
        for r, (again, _) in zip(rounds, tried, strict=True):
            r["side_by_side"] = again
    search = {"target": target, "base": base, "rounds": rounds, "groups": table["groups"]}
    within = [t for t in tried if t[0] <= budget]
    if not within:
        within = [t for t in tried if t[0] <= budget * (1 + TOLERANCE)]
    if not within:
        least = min(t[0] for t in tried)
        raise ValueError(
            f"pruning.target {describe(target)} cannot be reached: the most pruning tried "
            f"(coupled groups up to {max(PROBES):.0%}) gives {least:,.4g} "
            f"(the original: {base:,.4g})."
        )
    return max(within, key=lambda t: t[0])[1], search


def side_by_side(
    model: nn.Module,
    spec: PruningSpec,
    data: ArrayDataset,
    target: dict,
    base: float,
    tried: list[tuple[float, dict[str, float]]],
) -> list[tuple[float, dict[str, float]]]:
    """Every tried allocation's latency again, all of them and the original in one round-robin
    (``base x`` each one's ratio to the original): rounds timed one after the other saw
    different loads, so the choice between them is made on one measurement."""
    smalls = [pruned_copy(model, spec, alloc, data) for _, alloc in tried]
    x = batch_of(data, int(target.get("batch", 1)))
    t_dense, *timings = time_models([model, *smalls], x, budget_s=0.5 * (len(smalls) + 1))
    return [
        (base * t.median_ms / t_dense.median_ms, alloc)
        for t, (_, alloc) in zip(timings, tried, strict=True)
    ]


def rescaled(table: dict, base: float) -> dict:
    """The latency table with the original timed at ``base`` ms: each saving is a share of
    the original's latency, so every saving scales with it.

    Example:
        >>> t = {"base": 10.0, "groups": {"a": {"members": ["a"], "points": [[0.5, 4.0, 0.1]]}}}
        >>> rescaled(t, 5.0)["groups"]["a"]["points"]
        [[0.5, 2.0, 0.1]]
    """
    f = base / table["base"] if table["base"] > 0 else 1.0
    groups = {
        lead: {**e, "points": [[s, saved * f, drop] for s, saved, drop in e["points"]]}
        for lead, e in table["groups"].items()
    }
    return {**table, "base": base, "groups": groups}


def _next_goal(base: float, budget: float, goal: float, predicted: float, measured: float) -> float:
    """The prediction to aim at next: the budget's saving divided by the share of the
    predicted saving the measurement showed (clamped, so one noisy round cannot run away)."""
    predicted_saving = base - predicted
    if predicted_saving <= 0:
        return goal - (measured - budget)
    share = min(4.0, max(0.5, (base - measured) / predicted_saving))
    return base - (base - budget) / share


def budget_recipe(recipe: Recipe, alloc: dict[str, float]) -> Recipe:
    """The recipe with its budget replaced by the found per-layer allocation."""
    return replace(recipe, pruning=allocated(recipe.pruning, alloc))


def budget_report(
    target: dict,
    model: nn.Module,
    data: ArrayDataset,
    *,
    original: nn.Module,
    search: dict | None = None,
) -> dict:
    """``{"asked", "reached", "kind", "within_10pct", "latency_ms", ...}`` for the final model.

    A latency budget's ``reached`` is the pruned model's measured median, timed interleaved
    with the original (``latency_ms`` holds both timings and their spreads). With the
    ``search`` of :func:`solve`, the report adds its rounds (goal, predicted, measured) and
    ``reached_vs_original``: the measured ratio times the original's latency when the budget
    was solved, which a change of load on a shared machine does not move.
    """
    kind = kind_of(target)
    model, original = model.cpu().eval(), original.cpu().eval()
    batch = int(target.get("batch", 1))
    timing = time_models([original, model], batch_of(data, batch), budget_s=1.0)
    reached = (
        timing[1].median_ms if kind == "latency_ms" else metric(model, target, data, dense=original)
    )
    out = {
        "kind": kind,
        "asked": target,
        "described": describe(target),
        "reached": reached,
        "within_10pct": reached <= float(target[kind]) * (1 + TOLERANCE),
        "latency_ms": {
            "batch": batch,
            "original": timing[0].to_dict(),
            "pruned": timing[1].to_dict(),
        },
    }
    if search is not None:
        out["rounds"] = search["rounds"]
        if kind == "latency_ms":
            ratio = timing[1].median_ms / timing[0].median_ms
            out["reached_vs_original"] = search["base"] * ratio
    return out
