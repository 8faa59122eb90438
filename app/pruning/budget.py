"""Prune to a budget: latency at a batch size, parameters or FLOPs instead of a sparsity.

1. A per-layer lookup table, measured once per model (and kept in a JSON file when given a
   path): for each prunable layer, what removing half of its units alone saves (latency at the
   budget's batch, timed interleaved with the original; parameters; MACs) and what it costs
   (test-accuracy drop, without fine-tuning). That is a one-point sensitivity analysis.
2. The allocation: each layer's sparsity is proportional to its efficiency (saving per point
   of accuracy lost, capped at ``MAX_SPARSITY``); layers that save nothing stay whole. A
   bisection on the common scale finds the least pruning whose physically pruned model meets
   the budget, measured (latency) or counted exactly (parameters, FLOPs).
3. The recipe is rewritten as per-layer ``overrides``; the run reports the budget, what was
   reached and the measured latency (:func:`budget_report`).

Example:
    >>> efficiency({"a": {"saved": 2.0, "acc_drop": 0.0}, "b": {"saved": 0.0, "acc_drop": 0.1}})
    {'a': 1.0, 'b': 0.0}
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

from torch import nn

from app.pruning.budget_spec import describe
from app.pruning.counts import count_flops
from app.pruning.data import ArrayDataset
from app.pruning.latency import time_models
from app.pruning.layers import prunable_layers
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.measure import batch_of, evaluate
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe
from app.pruning.structural.remove import physical_prune

MAX_SPARSITY = 0.9
PROBE = 0.5
TOLERANCE = 0.10
BISECT_STEPS = 9


def _kind(target: dict) -> str:
    return next(k for k in ("latency_ms", "params", "flops") if k in target)


def _allocated(spec: PruningSpec, overrides: dict[str, float]) -> PruningSpec:
    return replace(spec, target=None, sparsity=0.0, scope="layerwise", overrides=overrides)


def pruned_copy(
    model: nn.Module, spec: PruningSpec, overrides: dict[str, float], data: ArrayDataset
) -> nn.Module:
    """The physically pruned copy of ``model`` under per-layer ``overrides`` (model untouched)."""
    work = copy.deepcopy(model)
    plan = compute_masks(work, _allocated(spec, overrides), data=data)
    apply_masks(work, plan)
    example = data.sample_batch(8)
    return physical_prune(work, plan, example, granularity=spec.granularity).eval()


def metric(
    model: nn.Module,
    target: dict,
    data: ArrayDataset,
    *,
    dense: nn.Module,
    dense_ms: float | None = None,
) -> float:
    """The budget's quantity for ``model``: latency (ms), params or MACs per sample.

    Latency is timed interleaved with ``dense``; given ``dense_ms`` (the original's latency
    measured once), it is ``dense_ms x`` the measured ratio, which load drift hits far less.
    """
    kind = _kind(target)
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if kind == "flops":
        return float(count_flops(model, data.sample_batch(1))[1])
    x = batch_of(data, int(target.get("batch", 1)))
    t_dense, t_model = time_models([dense, model], x, budget_s=0.4)
    if dense_ms is None:
        return t_model.median_ms
    return dense_ms * t_model.median_ms / t_dense.median_ms


def layer_table(
    model: nn.Module, spec: PruningSpec, data: ArrayDataset, target: dict, cache: Path | None
) -> dict[str, dict]:
    """``{layer: {"saved", "acc_drop"}}`` for removing ``PROBE`` of each layer alone."""
    key = f"{_kind(target)}@{int(target.get('batch', 1))}:{spec.granularity}:{spec.criterion}"
    stored = json.loads(cache.read_text(encoding="utf-8")) if cache and cache.is_file() else {}
    if key in stored:
        return stored[key]
    model.eval()
    base_acc = evaluate(model, data)["accuracy"]
    base = metric(model, target, data, dense=model)
    table: dict[str, dict] = {"": {"saved": base, "acc_drop": 0.0}}  # "": the original
    for name in prunable_layers(model):
        if name in spec.exclude:
            continue
        small = pruned_copy(model, spec, {name: PROBE}, data)
        saved = base - metric(small, target, data, dense=model, dense_ms=base)
        drop = base_acc - evaluate(small, data)["accuracy"]
        table[name] = {"saved": max(0.0, saved), "acc_drop": max(0.0, drop)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**stored, key: table}), encoding="utf-8")
    return table


def efficiency(table: dict[str, dict]) -> dict[str, float]:
    """Saving per accuracy lost, scaled so the best layer is 1.0 (0.0: saves nothing)."""
    raw = {n: r["saved"] / (r["acc_drop"] + 0.01) for n, r in table.items() if n}
    top = max(raw.values(), default=0.0)
    return {n: (v / top if top > 0 else 0.0) for n, v in raw.items()}


def allocation(eff: dict[str, float], scale: float) -> dict[str, float]:
    return {n: round(min(MAX_SPARSITY, scale * e), 4) for n, e in eff.items()}


def solve(
    model: nn.Module, spec: PruningSpec, data: ArrayDataset, cache: Path | None = None
) -> tuple[dict[str, float], dict]:
    """The least pruning whose physically pruned model meets ``spec.target``, and the search.

    Raises ValueError when even the largest allowed pruning misses the budget.
    """
    target = dict(spec.target or {})
    kind = _kind(target)
    table = layer_table(model, spec, data, target, cache)
    eff, base = efficiency(table), table[""]["saved"]

    def reached(scale: float) -> float:
        small = pruned_copy(model, spec, allocation(eff, scale), data)
        return metric(small, target, data, dense=model, dense_ms=base)

    top_scale = MAX_SPARSITY / max(min((e for e in eff.values() if e > 0), default=1.0), 1e-3)
    smallest = reached(top_scale)
    if smallest > target[kind] * (1 + TOLERANCE):
        raise ValueError(
            f"pruning.target {describe(target)} cannot be reached: pruning every layer up to "
            f"{MAX_SPARSITY:.0%} gives {smallest:,.4g} (the original: {base:,.4g})."
        )
    lo, hi = 0.0, top_scale
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reached(mid) <= target[kind] else (mid, hi)
    alloc = allocation(eff, hi)
    return alloc, {"target": target, "scale": hi, "efficiency": eff}


def budget_recipe(recipe: Recipe, alloc: dict[str, float]) -> Recipe:
    """The recipe with its budget replaced by the found per-layer allocation."""
    return replace(recipe, pruning=_allocated(recipe.pruning, alloc))


def budget_report(
    target: dict, model: nn.Module, data: ArrayDataset, *, original: nn.Module
) -> dict:
    """``{"asked", "reached", "kind", "within_10pct", "latency_ms"}`` for the final model.

    A latency budget's ``reached`` is the pruned model's measured median, timed interleaved
    with the original (``latency_ms`` holds both timings and their spreads).
    """
    kind = _kind(target)
    model, original = model.cpu().eval(), original.cpu().eval()
    batch = int(target.get("batch", 1))
    timing = time_models([original, model], batch_of(data, batch), budget_s=1.0)
    reached = (
        timing[1].median_ms if kind == "latency_ms" else metric(model, target, data, dense=original)
    )
    return {
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
