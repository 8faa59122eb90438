"""The state of one prune run: :class:`RunContext` (model, masks, keeper and the records so far).

The schedule (``schedule.py``) drives it step by step: ``prune`` computes and applies the masks
of a target, ``finetune`` trains with them kept, ``measure_after`` and ``record_step`` write the
step with the fixed metric names of ``measure.METRICS``. The model side of a prune step (the
ThiNet re-fit, zeroing removed units, bias correction, BN re-estimation) is ``prune_step.py``.
Checkpoints (``checkpoint.py``) save and restore its fields; ``result.py`` turns it into a
``RunResult``.

Example:
    >>> import numpy as np
    >>> from torch import nn
    >>> from app.pruning.data import ArrayDataset
    >>> from app.pruning.report import NEVER, NULL_REPORT
    >>> from app.pruning.spec import Recipe
    >>> x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(40) % 2, x, np.arange(40) % 2, 2)
    >>> recipe = Recipe.from_dict({"kind": "prune", "name": "toy",
    ...     "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5}})
    >>> ctx = RunContext(recipe, nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
    ...                  data, report=NULL_REPORT, should_stop=NEVER, latency=False)
    >>> ctx.record_baseline()
    >>> before = ctx.prune(0.5, step=1)
    >>> round(before["sparsity"], 1)
    0.5
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning import measure as measure_mod
from app.pruning.batch_size import resolve_batch_size
from app.pruning.best_step import BestStep, accept_step, remember_best
from app.pruning.counts import layer_stats
from app.pruning.data import ArrayDataset
from app.pruning.histograms import prunable_weights
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import MaskKeeper, apply_masks
from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import Note, add_notes
from app.pruning.prune_step import BiasCare, recalibrate, refit, settle_structure, zero_structure
from app.pruning.report import ProgressThrottle, Report, ShouldStop, check_cancelled
from app.pruning.spec import Recipe
from app.pruning.train import fine_tune
from app.pruning.train_state import BatchHook, EpochHook
from app.pruning.tuning import Tuning, resolve_distill, resolve_reinsert_bn
from app.zoo import reset_parameters

BN_NOTE_KEY = "accuracy_before_bn_recalibration"
REFIT_KEY = "reconstruction"  # a step's ThiNet re-fit: [{"layer", "error_before", "error_after"}]


@dataclass
class RunContext:
    """The state of one prune run: model, masks, keeper, and what has been recorded so far.

    ``initial_state``: the earlier weights ``retrain_init="rewind"`` goes back to (a train
    run's rewind point; ``rewind.py``), None for every other schedule.
    ``start_step``/``resume_training`` say where a resumed run goes on (set by
    ``checkpoint.load_checkpoint``).
    """

    recipe: Recipe
    model: nn.Module
    data: ArrayDataset
    report: Report
    should_stop: ShouldStop
    device: str = "cpu"
    latency: bool = True
    checkpoint_dir: Path | None = None
    initial_state: dict[str, Tensor] | None = None
    masks: dict[str, Tensor] | None = None
    plan: MaskPlan | None = None
    keeper: MaskKeeper | None = None
    baseline: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    hist_before: dict[str, Tensor] = field(default_factory=dict)
    hist_after_prune: dict[str, Tensor] | None = None
    best: BestStep | None = None
    start_step: int = 0
    resume_training: dict | None = None
    accuracy_before_bn: float | None = None  # models with BN: accuracy before recalibration
    refits: list[dict] = field(default_factory=list)  # the last prune's ThiNet re-fit errors

    def __post_init__(self) -> None:
        finetune, note = resolve_batch_size(self.recipe.finetune, self.data.n_train)
        self.recipe = replace(self.recipe, finetune=finetune)  # "auto" chosen once, here
        add_notes(self.notes, [note] if note is not None else [])
        finetune, note = resolve_distill(self.recipe)  # distill "auto": on for filter/channel
        self.recipe = replace(self.recipe, finetune=finetune)
        add_notes(self.notes, [note] if note is not None else [])
        finetune = resolve_reinsert_bn(self.recipe)  # "auto": channel levels, step-wise
        self.recipe = replace(self.recipe, finetune=finetune)
        self.model = self.model.to(self.device)
        self.tuning = Tuning.for_run(self.recipe.finetune, self.model)  # teacher: still dense
        self.example = self.data.sample_batch(32).to(self.device)
        self.structured = self.recipe.pruning.granularity in CHANNEL_LEVELS
        if self.initial_state is not None:
            self.initial_state = copy.deepcopy(self.initial_state)
        self.hist_before = prunable_weights(self.model)

    # -- measuring ---------------------------------------------------------------------------
    def measure(self) -> dict:
        was_training = self.model.training
        out = measure_mod.measure(
            self.model,
            self.data,
            device=self.device,
            baseline_nonzero=self.baseline.get("n_nonzero"),
            latency=self.latency,
        )
        self.model.train(was_training)
        return out

    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.data.n_train / int(self.recipe.finetune.batch_size)))

    def record_baseline(self) -> None:
        """Measure and record the baseline as step 0."""
        self.baseline = self.measure()
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
    def _refit_progress(self, step: int, span: tuple[float, float]):
        """``progress(done, total, layer)`` for a layer-by-layer refit: the message names the
        layer; the bar moves through ``span`` when no fine-tuning follows (else stays at its
        start, where fine-tuning takes over)."""
        throttle = ProgressThrottle(self.report)
        width = span[1] - span[0] if int(self.recipe.finetune.epochs) == 0 else 0.0

        def progress(done: int, total: int, layer: str) -> None:
            check_cancelled(self.should_stop)
            what = f"layer {done + 1} of {total} ({layer})" if layer else "done"
            fraction = span[0] + width * done / max(total, 1)
            throttle(fraction, f"step {step}: SparseGPT {what}")

        return progress

    def prune(self, target: float | None, *, step: int, span: tuple[float, float] = (0, 0)) -> dict:
        """Compute and apply the masks for ``target``; returns the metrics before fine-tuning.
        A layer-by-layer refit (SparseGPT) reports its progress within ``span`` of the run."""
        check_cancelled(self.should_stop)
        plan = compute_masks(
            self.model,
            self.recipe.pruning,
            sparsity=target,
            data=self.data,
            device=self.device,
            previous=self.masks,
            seed=int(self.recipe.seed),
            example=self.example,
        )
        add_notes(self.notes, plan.notes)
        self.plan, self.masks = plan, plan.masks
        care = BiasCare.start(self.model, self.data, self.recipe, step=step, device=self.device)
        self.refits = refit(
            self.model,
            plan,
            self.data,
            self.recipe,
            step=step,
            device=self.device,
            notes=self.notes,
            progress=self._refit_progress(step, span),
        )
        apply_masks(self.model, plan)  # the plan: its extras (bias, BN) too
        self.keeper = MaskKeeper(self.model, plan)
        zero_structure(self.model, plan, self.recipe, example=self.example)
        if care is not None:
            add_notes(self.notes, [care.finish(self.model, self.data, device=self.device)])
        self.accuracy_before_bn = recalibrate(
            self.model, self.data, self.recipe, device=self.device, notes=self.notes
        )
        self.hist_after_prune = prunable_weights(self.model)
        return self.measure()

    def _settle_structure(self) -> float | None:
        """Channel levels: zero what physical removal would delete, then re-estimate BN."""
        if not self.structured or self.plan is None:
            return None
        return settle_structure(
            self.model,
            self.plan,
            self.data,
            self.recipe,
            example=self.example,
            device=self.device,
            notes=self.notes,
        )

    def reinitialise(self, *, rewind: bool) -> None:
        """Rewind to the initial weights or re-draw them; the current masks are re-applied."""
        if rewind and self.initial_state is not None:
            self.model.load_state_dict(self.initial_state)
        else:
            torch.manual_seed(int(self.recipe.seed))
            reset_parameters(self.model)
        if self.plan is not None:
            apply_masks(self.model, self.plan)
            self.keeper = MaskKeeper(self.model, self.plan)
            self._settle_structure()

    def finetune(
        self,
        *,
        step: int,
        span: tuple[float, float],
        hook: BatchHook | None = None,
        epochs: int | None = None,
        on_epoch: EpochHook | None = None,
        resume: dict | None = None,
    ) -> list[dict]:
        """Fine-tune with the recipe's spec (its ``"auto"`` LR resolved, its distillation on,
        ``tuning.py``); each epoch's point joins ``self.curve`` as it ends."""

        def record(point: dict, training: dict) -> None:
            self.curve.append(point)
            if on_epoch is not None:
                on_epoch(point, training)

        at = {"device": self.device, "keeper": self.keeper, "seed": int(self.recipe.seed)}
        at |= {"epochs": epochs, "step": step, "resuming": resume is not None}
        care = self.tuning.batchnorm(  # before the LR test: its LR suits the model trained
            self.model, self.data, device=self.device, seed=at["seed"], step=step, notes=self.notes
        )
        with care:
            spec = self.tuning.spec_for(self.model, self.data, **at, notes=self.notes)
            start = time.perf_counter()
            curve = fine_tune(
                self.model,
                self.data,
                spec,
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
                distill=self.tuning.distiller,
            )
            self.tuning.timed(time.perf_counter() - start, self.notes)
        return curve

    def measure_after(self) -> dict:
        """The metrics after fine-tuning (BN re-estimated first for channel levels)."""
        self._settle_structure()  # BN shifts of removed channels drift during fine-tuning
        return self.measure()

    # -- recording --------------------------------------------------------------------------
    def _record_layers(self, step: int) -> None:
        plan = self.plan
        rows = layer_stats(
            self.model,
            thresholds=None if plan is None else plan.thresholds,
            requested=None if plan is None else plan.requested,
            input_shape=self.data.input_shape,
            input_dtype=self.data.input_dtype,
        )
        self.layers.extend({"step": step, **row} for row in rows)

    def record_step(self, k: int, target: float | None, before: dict, after: dict) -> None:
        """Record step ``k`` (metrics before and after fine-tuning) and report it."""
        item = {
            "step": k,
            "target_sparsity": after["sparsity"] if target is None else target,
            "before_finetune": before,
            "after_finetune": after,
        }
        if self.accuracy_before_bn is not None:
            item[BN_NOTE_KEY] = self.accuracy_before_bn
        if self.refits:
            item[REFIT_KEY] = self.refits
        self.steps.append(item)
        self._record_layers(k)
        self.report("step", item)

    def accept_step(self, k: int, after: dict) -> bool:
        """Keep step ``k`` when within ``max_accuracy_drop``; else restore the best and stop."""
        return accept_step(self, k, after)

    def remember_best(self, k: int) -> None:
        """Keep a copy of step ``k`` to fall back on (only with ``max_accuracy_drop``)."""
        remember_best(self, k)
