"""Sensitivity analysis: prune each layer alone over a sweep, and allocate a global budget.

``run_sensitivity`` prunes one prunable layer at a time (no fine-tuning) at each sparsity of
the sweep and records test accuracy (Han et al. 2015, Fig. 5; Distiller). With a
``target`` it also returns a per-layer allocation meeting that fraction of the prunable weights:
a greedy walk that spends sparsity, in small increments, where the (linearly interpolated)
curves say accuracy hurts least per weight removed. The allocation is usable as
``PruningSpec.overrides``.

Example:
    >>> rows, alloc = run_sensitivity(model, data, SensitivitySpec(target=0.8))  # doctest: +SKIP
    >>> recipe.pruning = replace(recipe.pruning, scope="layerwise", overrides=alloc)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
from torch import nn

from app.pruning.criteria.sparsegpt import sparsegpt_update
from app.pruning.data import ArrayDataset
from app.pruning.layers import prunable_layers
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.measure import evaluate
from app.pruning.pruning_spec import PruningSpec
from app.pruning.report import NEVER, NULL_REPORT, Report, ShouldStop, check_cancelled
from app.pruning.spec import SensitivitySpec

ALLOCATION_STEP = 0.01  # sparsity increment of the greedy allocation


def _default_pruning() -> PruningSpec:
    return PruningSpec(granularity="element", criterion="l1", scope="layerwise", sparsity=0.5)


def _evaluate(model: nn.Module, data: ArrayDataset, device: str) -> dict[str, float]:
    """``{"accuracy"}``, plus ``"perplexity"`` on a language-modelling dataset."""
    split = "val" if data.has_val else "test"  # the sweep chooses: on validation data
    ev = evaluate(model, data, device=device, split=split)
    return {k: float(ev[k]) for k in ("accuracy", "perplexity") if k in ev}


def _prune_one(
    model: nn.Module,
    pruning: PruningSpec,
    others: list[str],
    s: float,
    *,
    data: ArrayDataset,
    device: str,
) -> None:
    """Masks for the one layer not in ``others`` at sparsity ``s``, applied in place."""
    spec = dataclasses.replace(
        pruning,
        scope="layerwise",
        sparsity=float(s),
        threshold=None,
        exclude=tuple(others),
        overrides={},
    )
    plan = compute_masks(model, spec, sparsity=float(s), data=data, device=device)
    if spec.criterion == "sparsegpt":  # its weight update is part of the method
        nm = spec.nm if spec.granularity == "nm" else None
        sparsegpt_update(
            model, plan.masks, data, nm=nm, batches=spec.calibration_batches, device=device
        )
    apply_masks(model, plan.masks)


def run_sensitivity(
    model: nn.Module,
    data: ArrayDataset,
    spec: SensitivitySpec,
    *,
    pruning: PruningSpec | None = None,
    device: str = "cpu",
    report: Report = NULL_REPORT,
    should_stop: ShouldStop = NEVER,
) -> tuple[list[dict], dict[str, float]]:
    """Sweep every prunable layer alone; optionally allocate ``spec.target`` across layers.

    Args:
        model: a trained model; left unchanged (every layer is restored after its sweep).
        data: the dataset; accuracy is measured on its test split.
        spec: a ``SensitivitySpec`` (``sparsities``, optional ``target``).
        pruning: the ``PruningSpec`` giving granularity, criterion and ``exclude``
            (default: element-wise L1).
        device: torch device string.
        report: receives throttled ``"progress"`` events.
        should_stop: polled before each evaluation.

    Returns:
        ``(rows, allocation)``: rows ``[{"layer", "sparsity", "accuracy"}]`` (and
        ``"perplexity"`` for a language model) including each
        layer at sparsity 0, and ``{layer: sparsity}`` meeting ``spec.target`` (empty without
        a target).

    Raises:
        ValueError: no prunable layer left after ``exclude``, or an unreachable target.
        Cancelled: ``should_stop()`` turned true.
    """
    pruning = pruning or _default_pruning()
    model.to(device)
    layers = [n for n in prunable_layers(model) if n not in set(pruning.exclude)]
    if not layers:
        raise ValueError("sensitivity analysis needs at least one prunable layer outside exclude")
    original = copy.deepcopy(model.state_dict())
    sweep = sorted({float(s) for s in spec.sparsities if float(s) > 0})
    base = _evaluate(model, data, device)
    rows: list[dict] = []
    total = len(layers) * len(sweep)
    for i, layer in enumerate(layers):
        rows.append({"layer": layer, "sparsity": 0.0, **base})
        others = [n for n in prunable_layers(model) if n != layer]
        for j, s in enumerate(sweep):
            check_cancelled(should_stop)
            _prune_one(model, pruning, others, s, data=data, device=device)
            rows.append({"layer": layer, "sparsity": s, **_evaluate(model, data, device)})
            model.load_state_dict(original)
            done = i * len(sweep) + j + 1
            report("progress", {"fraction": done / total, "message": f"sensitivity of {layer}"})
    allocation: dict[str, float] = {}
    if getattr(spec, "target", None) is not None:
        sizes = {n: int(m.weight.numel()) for n, m in prunable_layers(model).items() if n in layers}
        allocation = allocate(rows, sizes, float(spec.target))
    return rows, allocation


def _curves(rows: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    by_layer: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).append((float(r["sparsity"]), float(r["accuracy"])))
    out = {}
    for layer, pts in by_layer.items():
        pts = sorted(dict(pts).items())
        out[layer] = (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
    return out


def allocate(rows: list[dict], sizes: dict[str, int], target: float) -> dict[str, float]:
    """Per-layer sparsities whose weighted mean over ``sizes`` meets ``target``.

    Greedy: repeatedly raise by ``ALLOCATION_STEP`` the layer whose interpolated accuracy falls
    least per weight removed, never beyond the largest swept sparsity of that layer; the last
    increment is trimmed so the total meets the target exactly.

    Args:
        rows: sensitivity rows ``{"layer", "sparsity", "accuracy"}``.
        sizes: prunable weights per layer (the layers to allocate over).
        target: fraction of all those weights to remove.

    Returns:
        ``{layer: sparsity}`` rounded to 4 decimals.

    Raises:
        ValueError: the target cannot be met within the swept sparsities.
    """
    curves = _curves(rows)
    total = sum(sizes.values())
    need = target * total
    caps = {n: float(curves[n][0].max()) if n in curves else 0.0 for n in sizes}
    if sum(caps[n] * sizes[n] for n in sizes) < need - 1e-9:
        reach = sum(caps[n] * sizes[n] for n in sizes) / max(total, 1)
        raise ValueError(
            f"sensitivity.target {target} cannot be met within the swept sparsities (at most "
            f"{reach:.3f}); add higher values to sensitivity.sparsities"
        )
    alloc = {n: 0.0 for n in sizes}
    removed = 0.0
    while removed < need - 1e-9:
        best, best_cost = None, float("inf")
        for n in sizes:
            if alloc[n] >= caps[n] - 1e-12:
                continue
            s_next = min(alloc[n] + ALLOCATION_STEP, caps[n])
            xs, ys = curves[n]
            loss = float(np.interp(alloc[n], xs, ys) - np.interp(s_next, xs, ys))
            cost = loss / ((s_next - alloc[n]) * sizes[n])
            if cost < best_cost:
                best, best_cost = n, cost
        assert best is not None  # the reachability check above guarantees a candidate
        step = min(ALLOCATION_STEP, caps[best] - alloc[best], (need - removed) / sizes[best])
        alloc[best] += step
        removed += step * sizes[best]
    return {n: round(s, 4) for n, s in alloc.items()}
