"""Training and fine-tuning: one loop for ``kind: "train"`` runs and for every schedule step.

The loop keeps pruned weights at zero through a :class:`~app.pruning.masks.keeper.MaskKeeper`
(``zero_grads()`` before the optimizer step, ``after_step()`` after it), checks
``should_stop()`` before every batch, reports one ``"metric"`` point per epoch and throttled
``"progress"`` events, and can stop early on test accuracy (restoring the best weights). One
call's state and its batch loop's settings are in :mod:`~app.pruning.train_state`, the epoch
loop in :mod:`~app.pruning.train_loop`; this module runs the epochs, evaluates each and stops
early.

Example:
    >>> import numpy as np
    >>> from app.pruning.data import ArrayDataset
    >>> from app.pruning.spec import FinetuneSpec
    >>> x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(40) % 2, x, np.arange(40) % 2, 2)
    >>> curve = fine_tune(nn.Linear(6, 2), data, FinetuneSpec(epochs=2, batch_size=16))
    >>> [(p["epoch"], p["step"]) for p in curve]
    [(1, 0), (2, 0)]
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from app.pruning.batch_size import resolve_batch_size
from app.pruning.data import ArrayDataset
from app.pruning.distill import Distiller
from app.pruning.lr_range import range_test
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.measure import evaluate
from app.pruning.optim import lr_factor, make_optimizer
from app.pruning.report import NEVER, NULL_REPORT, ProgressThrottle, Report, ShouldStop
from app.pruning.spec import FinetuneSpec
from app.pruning.task import TokenLoss
from app.pruning.train_loop import train_epoch
from app.pruning.train_state import BatchHook, EpochHook, Loop, TrainState


def _epoch_point(state: TrainState, data: ArrayDataset, loop: Loop, step: int, loss: float) -> dict:
    ev = evaluate(state.model, data, device=loop.device)
    point = {
        "epoch": int(state.epoch),
        "step": int(step),
        "loss": float(loss),
        "accuracy": float(ev["accuracy"]),
        "test_loss": float(ev["loss"]),
        "lr": float(state.optimizer.param_groups[0]["lr"]),
    }
    if data.has_val:  # early stopping chooses on it
        point["val_accuracy"] = float(
            evaluate(state.model, data, device=loop.device, split="val")["accuracy"]
        )
    return point


def _stop_early(state: TrainState, accuracy: float, patience: int | None) -> bool:
    """Keep the best weights; True when ``patience`` epochs in a row brought no improvement."""
    if patience is None:
        return False
    if state.best is None:  # a new keeper (AGP) makes older weights incomparable
        state.best_accuracy, state.bad_epochs = -1.0, 0
    if accuracy > state.best_accuracy:
        state.best_accuracy, state.bad_epochs = accuracy, 0
        state.best = copy.deepcopy(state.model.state_dict())
        return False
    state.bad_epochs += 1
    return state.bad_epochs >= int(patience)


def fine_tune(
    model: nn.Module,
    data: ArrayDataset,
    spec: FinetuneSpec,
    *,
    device: str = "cpu",
    keeper: MaskKeeper | None = None,
    report: Report = NULL_REPORT,
    should_stop: ShouldStop = NEVER,
    step: int = 0,
    bn_l1: float = 0.0,
    seed: int = 0,
    epochs: int | None = None,
    hook: BatchHook | None = None,
    span: tuple[float, float] = (0.0, 1.0),
    on_epoch: EpochHook | None = None,
    resume: dict | None = None,
    distill: Distiller | None = None,
) -> list[dict]:
    """Fine-tune (or train) ``model`` in place on ``data``'s train split.

    Args:
        model: the network; moved to ``device``.
        data: the dataset; test accuracy is measured after each epoch.
        spec: epochs, lr, optimizer, batch_size, momentum, weight_decay, lr_schedule, warmup,
            label_smoothing, early_stop_patience. ``lr="auto"`` runs the LR range test
            (``lr_range.py``) first; callers that record it resolve it themselves.
        device: torch device string.
        keeper: holds pruned weights at zero, or None for dense training.
        report: progress callback; one ``"metric"`` event per epoch.
        should_stop: polled before every batch.
        step: the schedule step, written into each curve point.
        bn_l1: strength of the L1 penalty on BN gammas (network-slimming sparsity training).
        seed: shuffling seed (combined with ``step``), so runs are repeatable on CPU.
        epochs: overrides ``spec.epochs`` (the at_init/retrain schedules train longer).
        hook: called before each batch with ``(iteration, total)``; may return a new keeper.
        span: the slice of the whole run's progress (0..1) this call covers.
        on_epoch: called after each epoch with ``(curve point, TrainState.training_state())``,
            e.g. to checkpoint (the state holds live tensors: save it before training goes on).
        resume: a training state given to ``on_epoch`` earlier: continue after its epoch, with
            its optimizer state, data order and iteration (the LR schedule goes on from there).
            The model must already hold that epoch's weights; early stopping starts afresh.
        distill: the distillation loss toward the dense teacher (``distill.py``), or None.

    Returns:
        Curve points ``[{"epoch", "step", "loss", "accuracy", "test_loss", "lr"}]`` of the
        epochs this call trained.

    Raises:
        Cancelled: ``should_stop()`` turned true.
        ValueError: an unknown optimizer or LR schedule, or a non-positive batch size.
    """
    n_epochs = int(spec.epochs if epochs is None else epochs)
    if n_epochs <= 0:
        return []
    spec = resolve_batch_size(spec, data.n_train)[0]  # callers that record it resolve it first
    batch_size = int(spec.batch_size)
    if batch_size <= 0:
        raise ValueError(f"finetune.batch_size must be positive; got {batch_size}")
    lr_factor(str(spec.lr_schedule), 0, 1)  # validate before any work
    model.to(device)
    lr = spec.lr
    if lr == "auto":
        lr = range_test(model, data, spec, device=device, keeper=keeper, seed=seed).lr
    loader = data.loader("train", batch_size, shuffle=True, seed=int(seed) * 1009 + int(step))
    state = TrainState(
        model,
        make_optimizer(model, spec, lr=float(lr)),
        float(lr),
        str(spec.lr_schedule),
        keeper,
        total=n_epochs * len(loader),
        warmup=float(spec.warmup),
    )
    if resume is not None:
        state.resume_from(resume, loader)
    loop = Loop(
        loader,
        TokenLoss(label_smoothing=float(spec.label_smoothing or 0.0)),  # by task: task.py
        device,
        should_stop,
        hook,
        float(bn_l1),
        ProgressThrottle(report),
        span,
        f"step {step}: training" if step else "training",
        distill,
    )
    for epoch in range(state.epoch + 1, n_epochs + 1):
        train_loss = train_epoch(state, loop)
        state.epoch = epoch
        point = _epoch_point(state, data, loop, step, train_loss)
        state.history.append(point)
        report("metric", dict(point))
        if on_epoch is not None:
            on_epoch(dict(point), state.training_state(loader))
        chosen_on = point.get("val_accuracy", point["accuracy"])
        if _stop_early(state, float(chosen_on), spec.early_stop_patience):
            break
    if spec.early_stop_patience is not None and state.best is not None:
        model.load_state_dict(state.best)
    return state.history


def train(
    model: nn.Module,
    data: ArrayDataset,
    spec: FinetuneSpec,
    *,
    device: str = "cpu",
    report: Report = NULL_REPORT,
    should_stop: ShouldStop = NEVER,
    bn_l1: float = 0.0,
    seed: int = 0,
    on_epoch: EpochHook | None = None,
) -> list[dict]:
    """Train a (usually fresh) model densely: the ``kind: "train"`` run.

    Args:
        model: the network, trained in place.
        data: the dataset.
        spec: its epochs/lr/optimizer/schedule drive the training.
        device, report, should_stop, bn_l1, seed, on_epoch: as in :func:`fine_tune`.

    Returns:
        The curve points, as :func:`fine_tune`.

    Raises:
        Cancelled: ``should_stop()`` turned true.
        ValueError: an invalid ``FinetuneSpec`` value.
    """
    torch.manual_seed(int(seed))
    return fine_tune(
        model,
        data,
        spec,
        device=device,
        report=report,
        should_stop=should_stop,
        step=0,
        bn_l1=bn_l1,
        seed=seed,
        on_epoch=on_epoch,
    )
