"""The recipe kinds that prune nothing: ``train`` (dense training) and ``sensitivity`` (sweeps).

``pipeline.run_recipe`` dispatches here for ``kind: "train"`` and ``kind: "sensitivity"``;
``kind: "prune"`` runs a schedule on a ``context.RunContext``.

Example:
    >>> import numpy as np
    >>> from torch import nn
    >>> from app.pruning.data import ArrayDataset
    >>> from app.pruning.report import NEVER, NULL_REPORT
    >>> from app.pruning.spec import Recipe
    >>> x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(40) % 2, x, np.arange(40) % 2, 2)
    >>> recipe = Recipe.from_dict({"kind": "train", "name": "t", "finetune": {"epochs": 1}})
    >>> result = run_train_kind(recipe, nn.Linear(6, 2), data, device="cpu",
    ...                         report=NULL_REPORT, should_stop=NEVER, latency=False)
    >>> [s["step"] for s in result.steps], result.masks_only
    ([0], False)
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from app.pruning import measure as measure_mod
from app.pruning.batch_size import resolve_batch_size
from app.pruning.counts import layer_stats
from app.pruning.data import ArrayDataset
from app.pruning.lr_range import range_test
from app.pruning.notes import info
from app.pruning.report import Report, ShouldStop
from app.pruning.result import RunResult
from app.pruning.rewind import RewindRecorder
from app.pruning.sensitivity import run_sensitivity
from app.pruning.spec import Recipe, SensitivitySpec
from app.pruning.train import train


def run_train_kind(
    recipe: Recipe,
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: str,
    report: Report,
    should_stop: ShouldStop,
    latency: bool,
) -> RunResult:
    """Train ``model`` densely with ``recipe.finetune``; step 0 holds before and after.

    The weights before training and after the first epoch come back in ``rewind`` (what a
    later ``retrain`` run rewinds to). ``lr: "auto"`` is resolved by the LR range test first
    and ``batch_size: "auto"`` by the dataset's size (notes say what they chose);
    ``finetune.distill`` has no teacher here. ``device``, ``report``, ``should_stop``, ``latency``
    as in ``run_recipe``.
    """
    model.to(device)
    base = measure_mod.measure(model, data, device=device, latency=latency)
    recorder = RewindRecorder(model)
    spec, batch_note = resolve_batch_size(recipe.finetune, data.n_train)
    found = None
    if spec.lr == "auto":  # the range test restores the model and the random state
        found = range_test(model, data, spec, device=device, seed=recipe.seed)
        spec = replace(spec, lr=found.lr)
    curve = train(
        model,
        data,
        spec,
        device=device,
        report=report,
        should_stop=should_stop,
        bn_l1=recipe.pruning.bn_l1,
        seed=recipe.seed,
        on_epoch=recorder.on_epoch,
    )
    final = measure_mod.measure(
        model, data, device=device, latency=latency, baseline_nonzero=base["n_nonzero"]
    )
    layers = layer_stats(model, input_shape=data.input_shape, input_dtype=data.input_dtype)
    step0 = {"step": 0, "target_sparsity": 0.0, "before_finetune": base, "after_finetune": final}
    return RunResult(
        model,
        base,
        final,
        steps=[step0],
        layers=[{"step": 0, **r} for r in layers],
        curve=curve,
        rewind=recorder.points,
        task=data.task,
        notes=[n for n in (batch_note, None if found is None else found.note()) if n],
        batch_size=int(spec.batch_size),
    )


def run_sensitivity_kind(
    recipe: Recipe,
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: str,
    report: Report,
    should_stop: ShouldStop,
    latency: bool,
) -> RunResult:
    """Sweep every layer alone (``recipe.sensitivity``); the model comes back unchanged.

    ``device``, ``report``, ``should_stop``, ``latency`` as in ``run_recipe``.
    """
    model.to(device)
    base = measure_mod.measure(model, data, device=device, latency=latency)
    rows, allocation = run_sensitivity(
        model,
        data,
        recipe.sensitivity or SensitivitySpec(),
        pruning=recipe.pruning,
        device=device,
        report=report,
        should_stop=should_stop,
    )
    notes = [] if not allocation else [info(f"allocation for the target: {allocation}")]
    return RunResult(
        model,
        base,
        base,
        sensitivity=rows,
        notes=notes,
        allocation=allocation,
        task=data.task,
    )
