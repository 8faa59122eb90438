"""Checkpoints of a prune run: written atomically after each step (and each AGP epoch).

``checkpoint.pt`` in the run's checkpoint folder holds plain containers of tensors and numbers
(loadable with ``torch.load(weights_only=True)``): the model, the masks and their plan, and
everything recorded so far. Step-wise schedules resume at the next step. An ``agp`` run also
writes one after every training epoch, with the optimizer state, the data order, the iteration
and the mask updates done, so an interrupted AGP run resumes mid-training at the next epoch
instead of starting over.

Example:
    >>> save_checkpoint(ctx, 2)  # doctest: +SKIP
    >>> load_checkpoint(ctx)  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from app.pruning.masks.keeper import MaskKeeper
from app.pruning.masks.plan import MaskPlan

if TYPE_CHECKING:
    from app.pruning.pipeline import RunContext

CHECKPOINT = "checkpoint.pt"
_RECORDS = ("steps", "layers", "curve", "notes", "hist_before", "hist_after_prune", "initial_state")
_PLAN_KEYS = (
    "masks",
    "requested",
    "achieved",
    "thresholds",
    "channels",
    "extra",
    "notes",
    "granularity",
)


def plan_state(plan: Any) -> dict:
    """A MaskPlan as plain containers of tensors and numbers (loadable with weights_only)."""
    return {k: getattr(plan, k) for k in _PLAN_KEYS}


def _best_state(best: dict | None) -> dict | None:
    if best is None:
        return None
    plan = best["plan"]
    return {**best, "plan": None if plan is None else plan_state(plan)}


def _load_best(best: dict) -> dict:
    plan = best["plan"]
    return {**best, "plan": None if plan is None else MaskPlan(**plan)}


def save_checkpoint(ctx: RunContext, step: int, *, training: dict | None = None) -> None:
    """Write ``checkpoint.pt`` for ``ctx`` after completed step ``step`` (no-op without a folder).

    Args:
        ctx: the run.
        step: the last completed (recorded) step.
        training: for a run interrupted inside one long training (AGP): ``{"epoch", "it",
            "optimizer", "generator", "curve", "k", "before"}`` as :func:`train.fine_tune`'s
            ``on_epoch`` and the AGP schedule give them.
    """
    if ctx.checkpoint_dir is None:
        return
    state = {
        "step": step,
        "model": ctx.model.state_dict(),
        "masks": ctx.masks,
        "baseline": ctx.baseline,
        "plan": None if ctx.plan is None else plan_state(ctx.plan),
        "training": training,
        **{key: getattr(ctx, key) for key in _RECORDS},
        # mid-training, the step to fall back on (max_accuracy_drop) is not the model saved here
        "best": None if training is None else _best_state(ctx.best),
        "extra": ctx._extra,  # what the step records add for structured levels
    }
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = ctx.checkpoint_dir / f"{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ctx.checkpoint_dir / CHECKPOINT)


def load_checkpoint(ctx: RunContext) -> bool:
    """Restore ``ctx`` from ``checkpoint.pt``; False when there is none.

    Sets ``ctx.start_step`` (the last completed step) and ``ctx.resume_training`` (the AGP
    training state, or None), rebuilds the plan and its ``MaskKeeper`` and adds the note
    ``"resumed after step N"`` (``"... , epoch E"`` for AGP).
    """
    path = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
    if path is None or not path.exists():
        return False
    state = torch.load(path, map_location=ctx.device, weights_only=True)
    ctx.model.load_state_dict(state["model"])
    ctx.masks, ctx.baseline = state["masks"], state["baseline"]
    ctx.baseline_accuracy = float(ctx.baseline["accuracy"])
    for key in _RECORDS:
        setattr(ctx, key, state[key])
    if state["plan"] is not None:
        ctx.plan = MaskPlan(**state["plan"])
        ctx.keeper = MaskKeeper(ctx.model, ctx.plan)
    ctx.start_step, ctx._extra = int(state["step"]), state.get("extra") or {}
    ctx.resume_training = state.get("training")
    if state.get("best") is not None:
        ctx.best = _load_best(state["best"])
    elif ctx.resume_training is None:
        ctx.remember_best(ctx.start_step)
    where = f"step {ctx.start_step}"
    if ctx.resume_training is not None:
        where += f", epoch {int(ctx.resume_training['epoch'])}"
    ctx.notes.append(f"resumed after {where}")
    return True
