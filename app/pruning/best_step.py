"""A ``max_accuracy_drop`` run's fall-back: the best step so far (:class:`BestStep`), kept
while steps stay within the drop and restored when one goes over.

Example:
    >>> from app.pruning.targets import within_drop
    >>> within_drop(0.98, 0.975, 0.01), within_drop(0.98, 0.95, 0.01)
    (True, False)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import warning
from app.pruning.targets import within_drop


@dataclass
class BestStep:
    """The step a ``max_accuracy_drop`` run falls back on: its weights, masks and histograms."""

    step: int
    state: dict[str, Tensor]
    masks: dict[str, Tensor] | None
    plan: MaskPlan | None
    after_prune: dict[str, Tensor] | None


def accept_step(ctx: Any, k: int, after: dict) -> bool:
    """Keep step ``k`` of ``ctx`` (a ``context.RunContext``) when within ``max_accuracy_drop``;
    else restore the best and stop."""
    max_drop = ctx.recipe.schedule.max_accuracy_drop
    key = "val_accuracy" if "val_accuracy" in after else "accuracy"  # choose on validation
    lost = float(ctx.baseline[key]) - float(after[key])
    if within_drop(float(ctx.baseline[key]), float(after[key]), max_drop):
        remember_best(ctx, k)
        return True
    best = ctx.best
    split = "validation" if key == "val_accuracy" else "test"
    ctx.notes.append(
        warning(
            f"step {k} lost {lost:.4f} {split} accuracy, more than max_accuracy_drop "
            f"{max_drop}; kept step {0 if best is None else best.step}"
        )
    )
    if best is not None:
        ctx.model.load_state_dict(best.state)
        ctx.masks, ctx.plan = best.masks, best.plan
        ctx.hist_after_prune = best.after_prune
    return False


def remember_best(ctx: Any, k: int) -> None:
    """Keep a copy of step ``k`` to fall back on (only with ``max_accuracy_drop``)."""
    if ctx.recipe.schedule.max_accuracy_drop is None:
        return
    state = copy.deepcopy(ctx.model.state_dict())
    ctx.best = BestStep(k, state, ctx.masks, ctx.plan, ctx.hist_after_prune)
