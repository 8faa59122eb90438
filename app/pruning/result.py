"""What a run hands back: :class:`RunResult`, with the final model physically smaller or masked.

Structured levels (filter, channel) are physically removed at the end when asked
(``pruning.physical``) and the model can be rebuilt; everything else stays masked, and the
notes say so (``MASKS_ONLY_NOTE``) so that nobody expects a speed-up that cannot come.

Example:
    >>> result = finish_run(ctx, rebuildable=True)  # doctest: +SKIP
    >>> result.physical  # doctest: +SKIP
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from app.pruning import measure as measure_mod
from app.pruning import structural

if TYPE_CHECKING:
    from app.pruning.pipeline import RunContext

MASKS_ONLY_NOTE = "masks only: no speed-up expected"


@dataclass
class RunResult:
    """Everything a run produced; JSON-able except ``model`` and ``masks``."""

    model: nn.Module
    baseline: dict
    final: dict
    steps: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    histograms: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    physical: bool = False
    masks: dict[str, torch.Tensor] | None = None
    allocation: dict[str, float] | None = None


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every prunable layer's weight (for the before/after histograms)."""
    from app.pruning.granularity import prunable_layers

    return {n: m.weight.detach().clone().cpu() for n, m in prunable_layers(model).items()}


def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """The largest absolute difference of two models' outputs on ``x`` (both in eval mode)."""
    modes = (a.training, b.training)
    a.eval(), b.eval()
    with torch.no_grad():
        diff = float((a(x) - b(x)).abs().max())
    a.train(modes[0]), b.train(modes[1])
    return diff


def final_model(ctx: RunContext, rebuildable: bool) -> tuple[nn.Module, bool]:
    """The model to hand back: physically smaller when asked and possible, else the masked one."""
    spec = ctx.recipe.pruning
    if ctx.masks is None:
        return ctx.model, False
    if not ctx.structured:
        ctx.notes.append(MASKS_ONLY_NOTE)
        return ctx.model, False
    if not spec.physical:
        ctx.notes.append(f"{MASKS_ONLY_NOTE} (pruning.physical is false)")
        return ctx.model, False
    blockers = [] if rebuildable else ["this model format cannot be rebuilt (TorchScript, .pt2)"]
    blockers = blockers or structural.removal_blockers(ctx.model, ctx.example)
    if blockers:
        ctx.notes.append(f"{MASKS_ONLY_NOTE}: physical removal is not possible, {blockers[0]}")
        return ctx.model, False
    small = structural.physical_prune(
        ctx.model, ctx.plan, ctx.example, granularity=spec.granularity
    )
    diff = max_abs_diff(ctx.model, small, ctx.example)
    ctx.notes.append(f"physically removed {spec.granularity}s: max output difference {diff:.2e}")
    return small, True


def finish_run(ctx: RunContext, rebuildable: bool) -> RunResult:
    """Histograms, the final model and its measurements, as a :class:`RunResult`."""
    after_finetune = prunable_weights(ctx.model)
    thresholds = {} if ctx.plan is None else dict(ctx.plan.thresholds)
    hists = measure_mod.histograms(
        ctx.hist_before, ctx.hist_after_prune or after_finetune, after_finetune, thresholds
    )
    model, physical = final_model(ctx, rebuildable)
    ctx.model = model
    final = ctx.measure()
    ctx.report("progress", {"fraction": 1.0, "message": "done"})
    return RunResult(
        model=model,
        baseline=ctx.baseline,
        final=final,
        steps=ctx.steps,
        layers=ctx.layers,
        histograms=hists,
        curve=ctx.curve,
        notes=ctx.notes,
        physical=physical,
        masks=ctx.masks,
    )
