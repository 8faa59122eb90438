"""``run_recipe``: baseline, schedule steps (prune, measure, fine-tune, measure), removal, results.

A ``context.RunContext`` holds the run's model, masks and records; ``schedule.run_schedule``
drives it. Every step is measured with the fixed metric names of ``measure.METRICS``, written
to ``report("step", ...)`` and checkpointed atomically (``checkpoint.py``), so an interrupted
run resumes at the next step. Channel levels (filter, channel) are physically removed at the
end when the model can be rebuilt; everything else stays masked, and the result says so
(``result.py``). The ``train`` and ``sensitivity`` kinds are in ``kinds.py``.

Example:
    >>> import numpy as np
    >>> from torch import nn
    >>> from app.pruning.data import ArrayDataset
    >>> from app.pruning.spec import Recipe
    >>> x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(40) % 2, x, np.arange(40) % 2, 2)
    >>> recipe = Recipe.from_dict({"kind": "prune", "name": "toy", "finetune": {"epochs": 1},
    ...     "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5}})
    >>> model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> result = run_recipe(recipe, model, data, latency=False)
    >>> [s["step"] for s in result.steps], result.masks_only, round(result.final["sparsity"], 1)
    ([0, 1], True, 0.5)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from app.pruning.budget import budget_note, budget_recipe, budget_report, solve
from app.pruning.budget_spec import describe
from app.pruning.checkpoint import load_checkpoint
from app.pruning.context import RunContext
from app.pruning.data import ArrayDataset
from app.pruning.kinds import run_sensitivity_kind, run_train_kind
from app.pruning.masks.compute import validate
from app.pruning.notes import add_notes, info
from app.pruning.report import NEVER, NULL_REPORT, Report, ShouldStop
from app.pruning.result import RunResult, finish_run
from app.pruning.schedule import run_schedule
from app.pruning.shapes import with_default_round_to
from app.pruning.spec import Recipe
from app.pruning.targets import NO_REWIND, needs_rewind
from app.pruning.validation import carve_validation, needs_validation, validation_note


def run_recipe(
    recipe: Recipe,
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: str = "cpu",
    report: Report = NULL_REPORT,
    should_stop: ShouldStop = NEVER,
    checkpoint_dir: str | Path | None = None,
    rebuildable: bool = True,
    resume: bool = True,
    latency: bool = True,
    initial_state: dict[str, Tensor] | None = None,
    shape_cache: Path | None = None,
    budget_cache: Path | None = None,
    shape_timers: Mapping[str, Callable[..., list[float]]] | None = None,
) -> RunResult:
    """Run one recipe (prune, sensitivity or train) on ``model`` in place.

    Args:
        recipe: the recipe.
        model: the trained model (untrained for ``kind: "train"``); changed in place.
        data: the dataset (train split for fine-tuning and calibration, test for metrics). A
            recipe that chooses from accuracy carves a validation split off its train split
            and chooses on it (``validation.py``; a note says so).
        device: torch device string.
        report: progress callback (``progress``, ``metric``, ``step``, ``status`` events).
        should_stop: polled between batches; the run raises ``Cancelled`` when it is true.
        checkpoint_dir: where ``checkpoint.pt`` is written after each completed step.
        rebuildable: False for formats that cannot be rebuilt (TorchScript, .pt2): masks only.
        resume: continue after the last completed step found in ``checkpoint_dir``.
        latency: measure latency (tests switch it off for speed).
        initial_state: the weights ``retrain_init="rewind"`` goes back to (a train run's
            ``rewind`` point, ``rewind.py``); required by that schedule.
        shape_cache: where the measured channel-multiple table is kept; with it, a physical
            channel-level recipe without ``round_to`` gets this machine's preferred multiple,
            capped per layer (``round_to_cap`` "layer").
        budget_cache: the JSON file that keeps this model's per-layer lookup table for
            ``pruning.target`` budgets (measured on first use).
        shape_timers: runtimes whose channel widths are measured next to PyTorch's for that
            default (``app.modelio.ort_channels.runtime_timers()``: ONNX Runtime).

    Returns:
        A :class:`~app.pruning.result.RunResult`; ``steps[0]`` is the baseline.

    Raises:
        ValueError: an invalid recipe for this model (unknown layer names, bad pairs), or
            ``retrain_init="rewind"`` without ``initial_state``.
        Cancelled: ``should_stop()`` turned true.
    """
    torch.manual_seed(int(recipe.seed))
    report("status", {"status": "running"})
    note = None
    if needs_validation(recipe) and not data.has_val:
        data = carve_validation(data, seed=int(recipe.seed))
        note = validation_note(data, seed=int(recipe.seed))
    if recipe.kind in ("train", "sensitivity"):
        run_kind = run_train_kind if recipe.kind == "train" else run_sensitivity_kind
        result = run_kind(
            recipe,
            model,
            data,
            device=device,
            report=report,
            should_stop=should_stop,
            latency=latency,
        )
    else:
        recipe, round_note = with_default_round_to(recipe, shape_cache, shape_timers)
        target, alloc, original, search = recipe.pruning.target, None, None, None
        if target is not None:
            original = copy.deepcopy(model).eval()
            alloc, search = solve(model, recipe.pruning, data, budget_cache)
            recipe = budget_recipe(recipe, alloc)
        validate(recipe.pruning, model)
        if needs_rewind(recipe.schedule) and initial_state is None:
            raise ValueError(NO_REWIND)
        ctx = RunContext(
            recipe,
            model,
            data,
            report,
            should_stop,
            device=device,
            latency=latency,
            checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
            initial_state=initial_state,
        )
        if not (resume and load_checkpoint(ctx)):
            ctx.record_baseline()
        if round_note is not None:
            add_notes(ctx.notes, [round_note])  # a resumed run already has it
        run_schedule(ctx)
        result = finish_run(ctx, rebuildable)
        if target is not None and original is not None:
            result.final["budget"] = budget_report(
                target, result.model, data, original=original, search=search
            )
            result.allocation = alloc
            ctx.notes.append(
                info(f"pruning.target {describe(target)}: per-layer allocation {alloc}")
            )
            missed = budget_note(result.final["budget"])
            if missed is not None:
                ctx.notes.append(missed)
    if note is not None:
        result.notes.insert(0, note)
    return result
