"""When to prune: oneshot, iterative, agp, at_init and retrain, plus the stop-at-accuracy rule.

The run's state and records are a ``context.RunContext``; this module decides the per-step
targets (``targets.schedule_targets``), the order of prune / (re)initialise / train for each
schedule kind, and when a checkpoint is written.

* ``oneshot``: prune to the target once, fine-tune ``finetune.epochs``.
* ``iterative`` (Han et al. 2015): ``steps`` rounds of prune + fine-tune. Per-step targets are
  **geometric in the kept fraction**: ``kept_k = (1 - s_f) ** (k / n)``, so every round removes
  the same share of the weights still alive (the last round hits ``s_f`` exactly).
* ``agp`` (Zhu & Gupta 2017): one continuous training of ``finetune.epochs`` epochs; masks are
  recomputed ``steps`` times, evenly spread over the first 75% of the iterations, following
  ``s_k = s_f + (s_i - s_f) * (1 - k / n) ** 3`` with ``s_i = 0``; the last quarter trains at
  ``s_f``. Each mask update is recorded as one step. Checkpointed after every epoch (an
  interrupted run resumes at the next epoch). ``steps == epochs`` (a mask update every epoch)
  with SGD and a cosine LR is the strongest schedule on the digits MLP at 20x-33x
  (``recipes/mlp_agp_best_*.json``, ``benchmarks/quality_digits.py``).
* ``at_init`` (SNIP, Lee et al. 2019): re-initialise the weights with the model's own init,
  score and prune once on sampled batches, then train from scratch with the mask fixed.
* ``retrain``: prune the trained model once, then train the pruned structure from scratch:
  ``retrain_init="rewind"`` restores the earlier weights given to ``run_recipe`` (a train
  run's initial or early-epoch weights, ``rewind.py``; lottery-ticket rewinding),
  ``"reinit"`` re-draws them; the masks are kept.
  ``at_init`` and ``retrain`` are checkpointed after every epoch, like ``agp``.

``max_accuracy_drop`` (absolute, 0.01 = one point): the schedule stops at the first step whose
accuracy after fine-tuning falls more than that below the baseline, and the run returns the
deepest step that was within the drop (or the dense model when none was).

Example:
    >>> agp_update_iterations(4, 100)  # AGP's mask updates over the first 75 iterations
    [0, 18, 37, 56]
"""

from __future__ import annotations

from dataclasses import dataclass

from app.catalogue import SCHEDULE_KINDS
from app.pruning.checkpoint import save_checkpoint
from app.pruning.context import RunContext
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.targets import schedule_targets

AGP_RAMP = 0.75  # share of the training iterations over which AGP ramps up


def agp_update_iterations(n: int, total_iterations: int, ramp: float | None = None) -> list[int]:
    """The training iterations at which AGP's ``n`` mask updates happen (the first at 0)."""
    window = max(int(total_iterations * (AGP_RAMP if ramp is None else ramp)), n)
    return [min(k * window // n, max(total_iterations - 1, 0)) for k in range(n)]


def run_schedule(ctx: RunContext) -> None:
    """Run the recipe's schedule kind on ``ctx`` (which records every step)."""
    kind = ctx.recipe.schedule.kind
    if kind in ("oneshot", "iterative"):
        _run_stepwise(ctx)
    elif kind == "agp":
        _run_agp(ctx)
    elif kind == "at_init":
        _run_from_scratch(ctx, prune_first=False)
    elif kind == "retrain":
        _run_from_scratch(ctx, prune_first=True)
    else:
        raise ValueError(f"schedule.kind must be one of {', '.join(SCHEDULE_KINDS)}; got {kind!r}")


def _final_sparsity(ctx: RunContext) -> float | None:
    """The recipe's target; None when pruning by threshold or N:M (one fixed step)."""
    p = ctx.recipe.pruning
    return None if p.sparsity is None or p.granularity == "nm" else float(p.sparsity)


def _step_targets(ctx: RunContext) -> list[float | None]:
    final = _final_sparsity(ctx)
    if final is None:
        return [None]
    return list(schedule_targets(ctx.recipe.schedule, final))


def _run_stepwise(ctx: RunContext) -> None:
    """oneshot / iterative: prune, fine-tune, record; stop when the accuracy rule is broken."""
    plan_targets = _step_targets(ctx)
    n = len(plan_targets)
    for k in range(ctx.start_step + 1, n + 1):
        target = plan_targets[k - 1]
        span = ((k - 1) / n, k / n)
        before = ctx.prune(target, step=k, span=span)
        ctx.finetune(step=k, span=span)
        after = ctx.measure_after()
        ctx.record_step(k, target, before, after)
        save_checkpoint(ctx, k)
        if not ctx.accept_step(k, after):
            return


@dataclass
class _AgpProgress:
    """The mask updates done so far and the metrics measured right after the last one."""

    k: int
    before: dict


def _run_agp(ctx: RunContext) -> None:
    """agp: masks follow the cubic ramp while one fine-tuning run trains the model.

    Mask updates are recorded as steps without a checkpoint of their own; the checkpoint is
    written after every epoch instead (model, masks, optimizer, data order, updates done), and
    a resumed run continues at the next epoch (``ctx.resume_training``).
    """
    plan_targets = _step_targets(ctx)
    n = len(plan_targets)
    epochs = max(int(ctx.recipe.finetune.epochs), 1)
    total = epochs * ctx.batches_per_epoch()
    updates = agp_update_iterations(n, total)
    resume = ctx.resume_training
    if ctx.start_step >= n and resume is None:
        return
    pending = _AgpProgress(0, {})
    if resume is not None:
        pending = _AgpProgress(int(resume["k"]), resume["before"])

    def hook(it: int, _total: int) -> MaskKeeper | None:
        k = pending.k
        if k >= n or it < updates[k]:
            return None
        if k > 0:
            after = ctx.measure_after()
            ctx.record_step(k, plan_targets[k - 1], pending.before, after)
        pending.k = k + 1
        pending.before = ctx.prune(plan_targets[k], step=k + 1)
        return ctx.keeper

    def on_epoch(_point: dict, training: dict) -> None:
        state = {**training, "k": pending.k, "before": pending.before}
        save_checkpoint(ctx, ctx.steps[-1]["step"], training=state)

    ctx.finetune(
        step=1, hook=hook, epochs=epochs, span=(0.0, 1.0), on_epoch=on_epoch, resume=resume
    )
    while pending.k < n:  # fewer iterations than updates: finish the ramp now
        hook(updates[pending.k], total)
    ctx.resume_training = None
    after = ctx.measure_after()
    ctx.record_step(n, plan_targets[-1], pending.before, after)
    save_checkpoint(ctx, n)
    ctx.accept_step(n, ctx.steps[-1]["after_finetune"])


def _run_from_scratch(ctx: RunContext, *, prune_first: bool) -> None:
    """at_init (init -> prune -> train) and retrain (prune -> rewind/reinit -> train).

    Checkpointed after every training epoch; a resumed run goes on at the next epoch.
    """
    if ctx.start_step >= 1:
        return
    target = _step_targets(ctx)[-1]
    resume = ctx.resume_training
    if resume is not None:  # model and masks come from the checkpoint
        before = resume["before"]
    elif prune_first:
        ctx.prune(target, step=1)
        ctx.reinitialise(rewind=ctx.recipe.schedule.retrain_init == "rewind")
        before = ctx.measure()
    else:
        ctx.reinitialise(rewind=False)
        before = ctx.prune(target, step=1)

    def on_epoch(_point: dict, training: dict) -> None:
        save_checkpoint(ctx, 0, training={**training, "before": before})

    ctx.finetune(step=1, span=(0.0, 1.0), on_epoch=on_epoch, resume=resume)
    ctx.resume_training = None
    after = ctx.measure_after()
    ctx.record_step(1, target, before, after)
    save_checkpoint(ctx, 1)
    ctx.accept_step(1, after)
