"""``run_recipe``: baseline, schedule steps (prune, measure, fine-tune, measure), removal, results.

One :class:`RunContext` holds the run's model, masks and records; ``schedule.run_schedule``
drives it. Every step is measured with the fixed metric names of ``measure.METRICS``, written
to ``report("step", ...)`` and checkpointed atomically, so an interrupted run resumes at the
next step (an ``agp`` run also after each training epoch: ``checkpoint.py``). Structured levels
(filter, channel) are physically removed at the end when the model can be rebuilt; everything
else stays masked, and the notes say so (``result.py``). The ``train`` and ``sensitivity``
kinds are in ``kinds.py``; their names stay importable from here.

Example:
    >>> result = run_recipe(Recipe.from_dict(body), model, load_digits())  # doctest: +SKIP
    >>> result.final["compression"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.pruning import measure as measure_mod
from app.pruning import structural
from app.pruning.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from app.pruning.data import ArrayDataset
from app.pruning.kinds import run_sensitivity_kind, run_train_kind
from app.pruning.masks.compute import compute_masks, validate
from app.pruning.masks.keeper import MaskKeeper, apply_masks
from app.pruning.report import NEVER, NULL_REPORT, Report, ShouldStop, check_cancelled
from app.pruning.result import MASKS_ONLY_NOTE, RunResult, finish_run, prunable_weights
from app.pruning.schedule import run_schedule, within_drop
from app.pruning.train import fine_tune

__all__ = [
    "CHECKPOINT",
    "MASKS_ONLY_NOTE",
    "STRUCTURED",
    "RunContext",
    "RunResult",
    "reset_parameters",
    "run_recipe",
]

logger = logging.getLogger(__name__)

STRUCTURED = ("filter", "channel")


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def reset_parameters(model: nn.Module) -> None:
    """Re-initialise in place with each module's own ``reset_parameters`` (children first)."""
    for module in reversed(list(model.modules())):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


class RunContext:
    """The state of one prune run: model, masks, keeper, and what has been recorded so far."""

    def __init__(self, recipe: Any, model: nn.Module, data: ArrayDataset, **kw: Any) -> None:
        self.recipe, self.data = recipe, data
        self.device: str = kw["device"]
        self.report: Report = kw["report"]
        self.should_stop: ShouldStop = kw["should_stop"]
        self.latency: bool = kw["latency"]
        self.checkpoint_dir = Path(kw["checkpoint_dir"]) if kw["checkpoint_dir"] else None
        self.model = model.to(self.device)
        self.example = data.sample_batch(32).to(self.device)
        self.structured = recipe.pruning.granularity in STRUCTURED
        self.initial_state = copy.deepcopy(kw["initial_state"] or model.state_dict())
        self.masks: dict[str, torch.Tensor] | None = None
        self.plan: Any = None
        self.keeper: Any = None
        self.steps: list[dict] = []
        self.layers: list[dict] = []
        self.curve: list[dict] = []
        self.notes: list[str] = []
        self.hist_before = prunable_weights(model)
        self.hist_after_prune: dict[str, torch.Tensor] | None = None
        self.best: dict | None = None
        self.start_step = 0
        self.resume_training: dict | None = None  # AGP: the epoch to continue from
        self._extra: dict = {}
        self.baseline: dict = {}

    # -- measuring ---------------------------------------------------------------------------
    def measure(self) -> dict:
        was_training = self.model.training
        nonzero = self.baseline.get("n_nonzero")
        out = measure_mod.measure(
            self.model,
            self.data,
            device=self.device,
            baseline_nonzero=nonzero,
            latency=self.latency,
        )
        self.model.train(was_training)
        return out

    def evaluate(self) -> dict:
        was_training = self.model.training
        out = measure_mod.evaluate(self.model, self.data, device=self.device)
        self.model.train(was_training)
        return out

    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.data.n_train / int(self.recipe.finetune.batch_size)))

    def start(self) -> None:
        """Measure and record the baseline as step 0 (or reload the last checkpoint)."""
        if self.checkpoint_dir is not None and load_checkpoint(self):
            return
        self.baseline = self.measure()
        self.baseline_accuracy = float(self.baseline["accuracy"])
        step0 = {
            "step": 0,
            "target_sparsity": 0.0,
            "before_finetune": self.baseline,
            "after_finetune": self.baseline,
        }
        self.steps.append(step0)
        self._record_layers(0)
        self.report("step", step0)
        self.remember_best(0)

    # -- pruning ----------------------------------------------------------------------------
    def prune(self, target: float | None, *, step: int) -> dict:
        """Compute and apply the masks for ``target``; returns the metrics before fine-tuning."""
        check_cancelled(self.should_stop)
        spec = self.recipe.pruning
        plan = compute_masks(
            self.model,
            spec,
            sparsity=target,
            data=self.data,
            device=self.device,
            previous=self.masks,
            seed=int(self.recipe.seed),
        )
        self.plan, self.masks = plan, plan.masks
        apply_masks(self.model, plan)  # the plan: its extras (bias, BN) too
        self.keeper = MaskKeeper(self.model, plan)
        self._extra = self._settle_structure()
        self.hist_after_prune = prunable_weights(self.model)
        return self.measure()

    def _settle_structure(self) -> dict:
        """Structured levels: zero what physical removal would delete, then re-estimate BN."""
        if not self.structured:
            return {}
        gran = self.recipe.pruning.granularity
        if not structural.removal_blockers(self.model, self.example):
            structural.zero_removed_units(self.model, self.plan, self.example, granularity=gran)
        if not _has_bn(self.model):
            return {}
        acc_before = float(self.evaluate()["accuracy"])
        was_training = self.model.training
        loader = self.data.loader(
            "train", int(self.recipe.finetune.batch_size), seed=self.recipe.seed
        )
        structural.recalibrate_bn(self.model, loader, batches=20)
        self.model.train(was_training)
        return {"accuracy_before_bn_recalibration": acc_before}

    def reinitialise(self, *, rewind: bool) -> None:
        """Rewind to the initial weights or re-draw them; the current masks are re-applied."""
        if rewind:
            self.model.load_state_dict(self.initial_state)
        else:
            torch.manual_seed(int(self.recipe.seed))
            reset_parameters(self.model)
        if self.plan is not None:
            apply_masks(self.model, self.plan)
            self.keeper = MaskKeeper(self.model, self.plan)
            if self.structured:
                self._settle_structure()

    def measure_before(self, *, step: int, extra: dict | None = None) -> dict:
        return self.measure()

    def finetune(
        self,
        *,
        step: int,
        span: tuple[float, float],
        hook: Any = None,
        epochs: int | None = None,
        on_epoch: Any = None,
        resume: dict | None = None,
    ) -> list[dict]:
        """Fine-tune with the recipe's spec; each epoch's point joins ``self.curve`` as it ends."""

        def record(point: dict, training: dict) -> None:
            self.curve.append(point)
            if on_epoch is not None:
                on_epoch(point, training)

        return fine_tune(
            self.model,
            self.data,
            self.recipe.finetune,
            device=self.device,
            keeper=self.keeper,
            report=self.report,
            should_stop=self.should_stop,
            step=step,
            seed=self.recipe.seed,
            hook=hook,
            epochs=epochs,
            span=span,
            on_epoch=record,
            resume=resume,
        )

    def measure_after(self, *, step: int) -> dict:
        if self.structured and self.plan is not None:
            extra = self._extra
            self._settle_structure()  # BN shifts of removed channels drift during fine-tuning
            self._extra = extra
        return self.measure()

    # -- recording --------------------------------------------------------------------------
    def _record_layers(self, step: int) -> None:
        plan = self.plan
        rows = measure_mod.layer_stats(
            self.model,
            thresholds=None if plan is None else plan.thresholds,
            requested=None if plan is None else plan.requested,
            input_shape=self.data.input_shape,
        )
        self.layers.extend({"step": step, **row} for row in rows)

    def record_step(
        self,
        k: int,
        target: float | None,
        before: dict,
        after: dict,
        curve: list[dict],
        *,
        checkpoint: bool = True,
    ) -> None:
        item = {
            "step": k,
            "target_sparsity": after["sparsity"] if target is None else target,
            "before_finetune": before,
            "after_finetune": after,
            **self._extra,
        }
        self.steps.append(item)
        self._record_layers(k)
        self.report("step", item)
        if checkpoint:
            self.checkpoint(k)

    def accept_step(self, k: int, after: dict) -> bool:
        """Keep step ``k`` when within ``max_accuracy_drop``; else restore the best and stop."""
        max_drop = self.recipe.schedule.max_accuracy_drop
        if within_drop(self.baseline_accuracy, float(after["accuracy"]), max_drop):
            self.remember_best(k)
            return True
        best = self.best or {}
        self.notes.append(
            f"step {k} lost {self.baseline_accuracy - after['accuracy']:.4f} accuracy, more than "
            f"max_accuracy_drop {max_drop}; kept step {best.get('step', 0)}"
        )
        self.model.load_state_dict(best["state"])
        self.masks, self.plan = best["masks"], best["plan"]
        self.hist_after_prune = best["after_prune"]
        return False

    def remember_best(self, k: int) -> None:
        """Keep a copy of step ``k`` to fall back on (only with ``max_accuracy_drop``)."""
        if self.recipe.schedule.max_accuracy_drop is None:
            return
        self.best = {
            "step": k,
            "state": copy.deepcopy(self.model.state_dict()),
            "masks": self.masks,
            "plan": self.plan,
            "after_prune": self.hist_after_prune,
        }

    def checkpoint(self, k: int, *, training: dict | None = None) -> None:
        """Write the checkpoint after step ``k`` (``training``: AGP's mid-training state)."""
        save_checkpoint(self, k, training=training)


def run_recipe(
    recipe: Any,
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
    initial_state: dict | None = None,
) -> RunResult:
    """Run one recipe (prune, sensitivity or train) on ``model`` in place.

    Args:
        recipe: a ``spec.Recipe``.
        model: the trained model (untrained for ``kind: "train"``); changed in place.
        data: the dataset (train split for fine-tuning and calibration, test for metrics).
        device: torch device string.
        report: progress callback (``progress``, ``metric``, ``step``, ``status`` events).
        should_stop: polled between batches; the run raises ``Cancelled`` when it is true.
        checkpoint_dir: where ``checkpoint.pt`` is written after each completed step.
        rebuildable: False for formats that cannot be rebuilt (TorchScript, .pt2): masks only.
        resume: continue after the last completed step found in ``checkpoint_dir``.
        latency: measure latency (tests switch it off for speed).
        initial_state: the weights ``retrain_init="rewind"`` goes back to (default: the
            weights at the start of the run).

    Returns:
        A :class:`RunResult`; ``steps[0]`` is the baseline.

    Raises:
        ValueError: an invalid recipe for this model (unknown layer names, bad pairs).
        Cancelled: ``should_stop()`` turned true.
    """
    torch.manual_seed(int(recipe.seed))
    report("status", {"status": "running"})
    kw = {"device": device, "report": report, "should_stop": should_stop, "latency": latency}
    if recipe.kind == "train":
        return run_train_kind(recipe, model, data, **kw)
    if recipe.kind == "sensitivity":
        return run_sensitivity_kind(recipe, model, data, **kw)
    validate(recipe.pruning, model)
    ctx = RunContext(
        recipe,
        model,
        data,
        checkpoint_dir=checkpoint_dir if resume else None,
        initial_state=initial_state,
        **kw,
    )
    ctx.start()
    ctx.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
    run_schedule(ctx)
    return finish_run(ctx, rebuildable)
