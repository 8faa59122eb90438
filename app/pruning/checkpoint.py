"""Checkpoints of a prune run: written atomically after each step (and each AGP epoch).

``checkpoint.pt`` in the run's checkpoint folder is a plain state dict: tensors, numbers,
strings, None and lists/dicts of them (loadable with ``torch.load(weights_only=True)``, no
pickled objects): the model, the masks and their plan, and everything recorded so far.
Step-wise schedules resume at the next step. ``agp``, ``at_init`` and ``retrain`` runs also
write one after every training epoch, with the optimizer state, the data order, the iteration
and the mask updates done, so an interrupted run resumes mid-training at the next epoch.

Example:
    >>> import torch
    >>> from app.pruning.masks.plan import MaskPlan
    >>> plan = MaskPlan({"fc": torch.ones(2, dtype=torch.bool)}, {"fc": 0.0}, {"fc": 0.0}, {})
    >>> plan_from_state(plan_state(plan)) == plan
    True
"""

from __future__ import annotations

import dataclasses
import os

import torch

from app.pruning.best_step import BestStep
from app.pruning.context import RunContext
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import as_note, info

CHECKPOINT = "checkpoint.pt"
_RECORDS = ("steps", "layers", "curve", "notes", "hist_before", "hist_after_prune", "initial_state")


def plan_state(plan: MaskPlan) -> dict:
    """A MaskPlan as a plain dict of tensors, numbers and strings."""
    return {f.name: getattr(plan, f.name) for f in dataclasses.fields(MaskPlan)}


def plan_from_state(state: dict) -> MaskPlan:
    """The MaskPlan :func:`plan_state` wrote."""
    return MaskPlan(**state)


def _best_state(best: BestStep | None) -> dict | None:
    if best is None:
        return None
    return {
        "step": best.step,
        "state": best.state,
        "masks": best.masks,
        "plan": None if best.plan is None else plan_state(best.plan),
        "after_prune": best.after_prune,
    }


def _load_best(state: dict) -> BestStep:
    plan = None if state["plan"] is None else plan_from_state(state["plan"])
    return BestStep(int(state["step"]), state["state"], state["masks"], plan, state["after_prune"])


def save_checkpoint(ctx: RunContext, step: int, *, training: dict | None = None) -> None:
    """Write ``checkpoint.pt`` for ``ctx`` after completed step ``step`` (no-op without a folder).

    Args:
        ctx: the run.
        step: the last completed (recorded) step.
        training: for a run interrupted inside one long training: ``{"epoch", "it",
            "optimizer", "generator", "rng", "before"}`` (+ AGP's ``"k"``) as
            :func:`train.fine_tune`'s ``on_epoch`` and the schedule give them.
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
        "accuracy_before_bn": ctx.accuracy_before_bn,
        "finetune_lr": ctx.tuning.lr,  # what lr "auto" resolved to: a resumed training keeps it
    }
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = ctx.checkpoint_dir / f"{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, ctx.checkpoint_dir / CHECKPOINT)


def load_checkpoint(ctx: RunContext) -> bool:
    """Restore ``ctx`` from ``checkpoint.pt``; False when there is none.

    Sets ``ctx.start_step`` (the last completed step) and ``ctx.resume_training`` (the
    mid-training state, or None), rebuilds the plan and its ``MaskKeeper`` and adds the note
    ``"resumed after step N"`` (``"... , epoch E"`` mid-training).
    """
    path = ctx.checkpoint_dir / CHECKPOINT if ctx.checkpoint_dir is not None else None
    if path is None or not path.exists():
        return False
    state = torch.load(path, map_location=ctx.device, weights_only=True)
    ctx.model.load_state_dict(state["model"])
    ctx.masks, ctx.baseline = state["masks"], state["baseline"]
    for key in _RECORDS:
        setattr(ctx, key, state[key])
    ctx.notes = [as_note(n) for n in ctx.notes]  # checkpoints of older versions hold sentences
    if state["plan"] is not None:
        ctx.plan = plan_from_state(state["plan"])
        ctx.keeper = MaskKeeper(ctx.model, ctx.plan)
    ctx.start_step, ctx.accuracy_before_bn = int(state["step"]), state["accuracy_before_bn"]
    ctx.resume_training = state["training"]
    ctx.tuning.lr = state.get("finetune_lr")
    if state["best"] is not None:
        ctx.best = _load_best(state["best"])
    elif ctx.resume_training is None:
        ctx.remember_best(ctx.start_step)
    where = f"step {ctx.start_step}"
    if ctx.resume_training is not None:
        where += f", epoch {int(ctx.resume_training['epoch'])}"
    ctx.notes.append(info(f"resumed after {where}"))
    return True
