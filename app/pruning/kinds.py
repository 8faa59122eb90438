"""The recipe kinds that prune nothing: ``train`` (dense training) and ``sensitivity`` (sweeps).

``pipeline.run_recipe`` dispatches here for ``kind: "train"`` and ``kind: "sensitivity"``;
``kind: "prune"`` runs a schedule on a ``pipeline.RunContext``.

Example:
    >>> result = run_train_kind(recipe, model, load_digits(), device="cpu",
    ...                         report=NULL_REPORT, should_stop=NEVER, latency=False)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from torch import nn

from app.pruning import measure as measure_mod
from app.pruning.data import ArrayDataset
from app.pruning.result import RunResult
from app.pruning.train import train


def run_train_kind(recipe: Any, model: nn.Module, data: ArrayDataset, **kw: Any) -> RunResult:
    """Train ``model`` densely with ``recipe.finetune``; step 0 holds before and after.

    ``kw``: ``device``, ``report``, ``should_stop``, ``latency`` as in ``run_recipe``.
    """
    model.to(kw["device"])
    base = measure_mod.measure(model, data, device=kw["device"], latency=kw["latency"])
    curve = train(
        model,
        data,
        recipe.finetune,
        device=kw["device"],
        report=kw["report"],
        should_stop=kw["should_stop"],
        bn_l1=recipe.pruning.bn_l1,
        seed=recipe.seed,
    )
    final = measure_mod.measure(
        model, data, device=kw["device"], latency=kw["latency"], baseline_nonzero=base["n_nonzero"]
    )
    layers = measure_mod.layer_stats(model, input_shape=data.input_shape)
    step0 = {"step": 0, "target_sparsity": 0.0, "before_finetune": base, "after_finetune": final}
    return RunResult(
        model, base, final, steps=[step0], layers=[{"step": 0, **r} for r in layers], curve=curve
    )


def run_sensitivity_kind(recipe: Any, model: nn.Module, data: ArrayDataset, **kw: Any) -> RunResult:
    """Sweep every layer alone (``recipe.sensitivity``); the model comes back unchanged.

    ``kw``: ``device``, ``report``, ``should_stop``, ``latency`` as in ``run_recipe``.
    """
    from app.pruning.sensitivity import run_sensitivity

    model.to(kw["device"])
    base = measure_mod.measure(model, data, device=kw["device"], latency=kw["latency"])
    rows, allocation = run_sensitivity(
        model,
        data,
        recipe.sensitivity,
        pruning=recipe.pruning,
        device=kw["device"],
        report=kw["report"],
        should_stop=kw["should_stop"],
    )
    notes = [] if not allocation else [f"allocation for the target: {allocation}"]
    return RunResult(model, base, base, sensitivity=rows, notes=notes, allocation=allocation)
