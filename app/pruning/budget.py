"""Prune to a budget: latency at a batch size, parameters or FLOPs instead of a sparsity.

1. A lookup table, measured once per model (:mod:`app.pruning.budget_table`, kept in a JSON
   file when given a path): for each *coupled group* (the layers physical removal cuts
   together; a layer of its own otherwise) and each of several sparsities, what pruning that
   group alone saves (the whole model's latency at the budget's batch, timed interleaved with
   the original; parameters; MACs) and what it costs (test-accuracy drop, no fine-tuning).
2. The allocation (:func:`allocate`, :mod:`app.pruning.budget_alloc`): starting from the
   dense model, the group step with the most saving per accuracy point lost is taken until
   the table's *predicted* value meets the goal. The steps come in one fixed order, so the
   allocations form a path from the original to every group at its most (``share`` 0 to 1).
3. The check (:func:`solve`, :mod:`app.pruning.budget_search`): savings do not simply add
   up (two consecutive layers both at half width save three quarters of the second's MACs,
   not all of it), so the share is searched in closed loop: each candidate is physically
   pruned and *measured* (counted exactly for parameters and FLOPs; for latency the
   pruned/original ratio timed in pairs, in CPU time with one thread, times the original's
   latency) until one lands near ``0.95 x budget``, the middle of ``[0.9 x budget, budget]``.
   Rounded widths make the path step-like; when the slowest candidate meeting the budget
   still leaves slack (under ``0.925 x budget``), channels are given back to it one group at a
   time, the step the table values least first, while the budget holds
   (:func:`app.pruning.budget_search.fill`).
   A latency budget then times the best candidates again, all in one round-robin with the
   original (:func:`side_by_side`), and the one in (or closest to) the band wins.
4. The recipe is rewritten as per-layer ``overrides``; the run reports the budget, what was
   reached and the measured latency (:func:`budget_report`).

Example (the allocation itself is :mod:`app.pruning.budget_alloc`'s, re-exported here):
    >>> from app.pruning import budget_alloc
    >>> allocate is budget_alloc.allocate
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch import Tensor, nn

from app.pruning.budget_alloc import allocate
from app.pruning.budget_search import AIM, NEAR, TOLERANCE, choose, fill, rank, search
from app.pruning.budget_spec import describe
from app.pruning.budget_table import (
    PROBES,
    allocated,
    clock,
    kind_of,
    layer_table,
    metric,
    pruned_copy,
)
from app.pruning.data import ArrayDataset
from app.pruning.latency import model_ratios, time_models
from app.pruning.measure import batch_of
from app.pruning.notes import Note, warning
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe

__all__ = ["allocate", "budget_note", "budget_recipe", "budget_report", "pruned_copy", "solve"]

ROUNDS = {"latency_ms": 8, "params": 12, "flops": 12}  # measured candidates at most
RETIMED = 3  # latency candidates timed again side by side before one is chosen
Ratios = Callable[[list[nn.Module], Tensor], list[float]]


def paired_ratios(models: list[nn.Module], x: Tensor) -> list[float]:
    """Each model's latency over the first's: medians of ratios timed in pairs (in CPU time
    with one thread: the time other processes hold the core does not count)."""
    return [t.median_ms for t in model_ratios(models, x, budget_s=0.75 * len(models))]


def original_ms(model: nn.Module, x: Tensor) -> float:
    """The original's median latency, on :func:`clock`: with one thread, its CPU time is what
    it takes with a core to itself; the wall time on a shared machine is load (cnn_small's
    median at batch 256 read 3.0 to 8.6 ms, resnet20's 16 to 168 ms, within minutes)."""
    return time_models([model], x, budget_s=2.0, cpu=clock() == "cpu")[0].median_ms


def _shapes(model: nn.Module) -> tuple:
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


def solve(
    model: nn.Module,
    spec: PruningSpec,
    data: ArrayDataset,
    cache: Path | None = None,
    *,
    ratios: Ratios = paired_ratios,
) -> tuple[dict[str, float], dict]:
    """The allocation closest to ``[0.9 x budget, budget]`` for ``spec.target``, and the
    search (``{"target", "base", "rounds": [{"share", "goal", "predicted", "measured"}],
    "chosen", "groups"}``; a latency budget's rounds timed again add ``side_by_side``).

    ``ratios([original, *pruned], x)`` measures latency ratios (tests inject a timer).

    Raises ValueError when even the largest allowed pruning is more than 10% over the budget.

    Example:
        >>> from app.modelio.dataset_files import load_digits
        >>> from app.zoo import build
        >>> spec = PruningSpec.from_dict({"granularity": "filter", "physical": True,
        ...     "target": {"params": 15000}, "exclude": ["classifier"]})
        >>> alloc, found = solve(build("cnn_small"), spec, load_digits())
        >>> 13500 <= found["rounds"][found["chosen"]]["measured"] <= 15000
        True
    """
    target = dict(spec.target or {})
    kind = kind_of(target)
    budget = float(target[kind])
    table = layer_table(model, spec, data, target, cache)
    x = batch_of(data, int(target.get("batch", 1)))
    if kind == "latency_ms":  # the table may be older, or timed under other load: re-time now
        table = rescaled(table, original_ms(model, x))
    base = table["base"]
    found = {"target": target, "base": base, "groups": table["groups"]}
    if base <= budget:  # the original meets it: nothing to prune
        none = dict.fromkeys((n for e in table["groups"].values() for n in e["members"]), 0.0)
        return none, found | {"rounds": [], "chosen": None}

    def value(small: nn.Module) -> float:
        if kind == "latency_ms":
            return base * ratios([model, small], x)[0]
        return metric(small, target, data, dense=model)

    tried = search(
        table,
        budget,
        build=lambda alloc: pruned_copy(model, spec, alloc, data),
        key=_shapes,
        value=value,
        rounds=ROUNDS[kind],
    )
    under = [r for r in tried if r["measured"] <= budget]
    start = max(under, key=lambda r: r["measured"], default=None)
    if start is not None and start["measured"] < (AIM - NEAR) * budget:  # slack: give back
        tried += fill(
            table,
            start,
            budget,
            build=lambda alloc: pruned_copy(model, spec, alloc, data),
            key=_shapes,
            value=value,
        )
    pool, field = tried, "measured"
    if kind == "latency_ms" and len(tried) > 1:
        pool = sorted(tried, key=lambda r: rank(r, budget))[:RETIMED]
        again = side_by_side(model, spec, data, x, base, pool, ratios)
        for r, v in zip(pool, again, strict=True):
            r["side_by_side"] = v
        field = "side_by_side"
    chosen = choose(pool, budget, field)
    if chosen[field] > budget * (1 + TOLERANCE):
        least = min(r[field] for r in pool)
        raise ValueError(
            f"pruning.target {describe(target)} cannot be reached: the most pruning tried "
            f"(coupled groups up to {max(PROBES):.0%}) gives {least:,.4g} "
            f"(the original: {base:,.4g})."
        )
    rounds = [{k: v for k, v in r.items() if k != "alloc"} for r in tried]
    index = next(i for i, r in enumerate(tried) if r is chosen)
    return chosen["alloc"], found | {"rounds": rounds, "chosen": index}


def side_by_side(
    model: nn.Module,
    spec: PruningSpec,
    data: ArrayDataset,
    x: Tensor,
    base: float,
    tried: list[dict],
    ratios: Ratios = paired_ratios,
) -> list[float]:
    """Each tried allocation's latency again, all of them and the original in one round-robin
    (``base x`` each one's ratio to the original): rounds timed one after the other saw
    different loads, so the choice between them is made on one measurement."""
    smalls = [pruned_copy(model, spec, r["alloc"], data) for r in tried]
    return [base * r for r in ratios([model, *smalls], x)]


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
    ratios: Ratios = paired_ratios,
) -> dict:
    """``{"asked", "reached", "kind", "within_10pct", "latency_ms", ...}`` for the final model.

    A latency budget's ``reached`` is the pruned model's measured median, timed interleaved
    with the original (``latency_ms`` holds both timings and their spreads). With the
    ``search`` of :func:`solve`, the report adds its rounds (share, goal, predicted, measured,
    side by side), the ``chosen`` round, and ``reached_vs_original``: the pruned/original
    ratio timed in pairs (``ratio``, on the ``clock`` named) times the original's latency when
    the budget was solved (``original_ms``), which a change of load on a shared machine does
    not move.
    ``within_10pct`` is that value (or the count) within 10% of the budget, either side.
    """
    kind = kind_of(target)
    budget = float(target[kind])
    model, original = model.cpu().eval(), original.cpu().eval()
    batch = int(target.get("batch", 1))
    x = batch_of(data, batch)
    timing = time_models([original, model], x, budget_s=1.0)
    reached = (
        timing[1].median_ms if kind == "latency_ms" else metric(model, target, data, dense=original)
    )
    out = {
        "kind": kind,
        "asked": target,
        "described": describe(target),
        "reached": reached,
        "latency_ms": {
            "batch": batch,
            "original": timing[0].to_dict(),
            "pruned": timing[1].to_dict(),
        },
    }
    judged = reached
    if search is not None:
        out["rounds"], out["chosen"] = search["rounds"], search.get("chosen")
        if kind == "latency_ms":
            ratio = ratios([original, model], x)[0]
            judged = out["reached_vs_original"] = search["base"] * ratio
            out |= {"ratio": ratio, "clock": clock(), "original_ms": search["base"]}
    out["within_10pct"] = abs(judged / budget - 1) <= TOLERANCE
    return out


def budget_note(report: dict) -> Note | None:
    """A warning when the final model is not within 10% of the budget (None when it is).

    Example:
        >>> report = {"kind": "params", "asked": {"params": 1000}, "described": "params 1,000",
        ...     "reached": 700.0, "within_10pct": False}
        >>> budget_note(report)["text"].startswith("pruning.target params 1,000: reached 700 (-30%")
        True
    """
    if report.get("within_10pct", True):
        return None
    kind = report["kind"]
    budget = float(report["asked"][kind])
    reached = float(report.get("reached_vs_original", report["reached"]))
    shown = f"{reached:,.4g} ms" if kind == "latency_ms" else f"{reached:,.0f}"
    why = (
        "the machine's load moved between the search and this timing, or no kept widths "
        "lie between the candidates tried; run it again on a quieter machine, or give a "
        "params or flops budget (counted exactly)"
        if kind == "latency_ms"
        else "no kept widths lie closer to it with the rounding used (pruning.round_to)"
    )
    return warning(
        f"pruning.target {report.get('described', kind)}: reached {shown} "
        f"({reached / budget - 1:+.0%} of the budget), not within 10%: {why}."
    )
