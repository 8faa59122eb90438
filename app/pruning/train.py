"""Training and fine-tuning: one loop for ``kind: "train"`` runs and for every schedule step.

The loop keeps pruned weights at zero through a :class:`~app.pruning.masks.MaskKeeper`
(``zero_grads()`` before the optimizer step, ``after_step()`` after it), checks
``should_stop()`` before every batch, reports one ``"metric"`` point per epoch and throttled
``"progress"`` events, and can stop early on test accuracy (restoring the best weights).

Example:
    >>> curve = fine_tune(model, load_digits(), FinetuneSpec(epochs=3, lr=0.05))  # doctest: +SKIP
    >>> curve[-1]["accuracy"] > 0.9  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from app.pruning.data import ArrayDataset
from app.pruning.report import (
    NEVER,
    NULL_REPORT,
    ProgressThrottle,
    Report,
    ShouldStop,
    check_cancelled,
)

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "constant", "step")

# A hook called before each batch with (iteration, total_iterations); it may return a new
# MaskKeeper (AGP recomputes masks during training) or None to keep the current one.
BatchHook = Callable[[int, int], Any]
# Called after each epoch with (curve point, training state for ``fine_tune(resume=...)``).
EpochHook = Callable[[dict, dict], None]


def make_optimizer(model: nn.Module, spec: Any) -> torch.optim.Optimizer:
    """The optimizer a FinetuneSpec names (``sgd`` with momentum, ``adam``, ``adamw``).

    Raises:
        ValueError: an unknown optimizer name or a non-positive learning rate.
    """
    name, lr = str(spec.optimizer), float(spec.lr)
    if lr <= 0:
        raise ValueError(f"finetune.lr must be positive; got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    wd = float(getattr(spec, "weight_decay", 0.0) or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(spec.momentum), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ValueError(f"finetune.optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def lr_factor(kind: str, it: int, total: int) -> float:
    """Multiplier of the base LR at iteration ``it`` of ``total`` (per batch, not per epoch).

    ``cosine`` decays from 1 to 0 over the run; ``step`` divides by 10 at 50% and 75%.
    """
    if kind == "constant":
        return 1.0
    t = it / max(total, 1)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "step":
        return 1.0 if t < 0.5 else (0.1 if t < 0.75 else 0.01)
    raise ValueError(f"finetune.lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {kind!r}")


def _bn_penalty(model: nn.Module, strength: float) -> torch.Tensor | None:
    if strength <= 0:
        return None
    from app.pruning.criteria.magnitude import bn_l1_penalty

    return bn_l1_penalty(model, strength).to(next(model.parameters()).device)


def _evaluate(model: nn.Module, data: ArrayDataset, device: str) -> dict:
    from app.pruning.measure import evaluate

    return evaluate(model, data, device=device)


def _train_epoch(
    model: nn.Module,
    loader: Any,
    state: dict,
    *,
    loss_fn: nn.Module,
    device: str,
    should_stop: ShouldStop,
    hook: BatchHook | None,
) -> float:
    """One pass over ``loader``; returns the mean training loss. ``state`` carries the keeper."""
    model.train()
    opt: torch.optim.Optimizer = state["optimizer"]
    total_loss, n_seen = 0.0, 0
    for x, y in loader:
        check_cancelled(should_stop)
        if hook is not None:
            new_keeper = hook(state["it"], state["total"])
            if new_keeper is not None:
                state["keeper"], state["best"] = new_keeper, None
        for group in opt.param_groups:
            group["lr"] = state["base_lr"] * lr_factor(
                state["lr_schedule"], state["it"], state["total"]
            )
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        penalty = _bn_penalty(model, state["bn_l1"])
        (loss if penalty is None else loss + penalty).backward()
        keeper = state["keeper"]
        if keeper is not None:
            keeper.zero_grads()
        opt.step()
        if keeper is not None:
            keeper.after_step(opt)
        total_loss += float(loss.detach()) * len(y)
        n_seen += len(y)
        state["it"] += 1
        state["tick"](
            state["span"][0] + (state["span"][1] - state["span"][0]) * state["it"] / state["total"],
            state["message"],
        )
    return total_loss / max(n_seen, 1)


def _start_state(model: nn.Module, spec: Any, loader: Any, resume: dict | None, **kw: Any) -> dict:
    """The loop's state: optimizer, keeper, iteration counters; restored from ``resume``."""
    state = {
        "optimizer": make_optimizer(model, spec),
        "it": 0,
        "epoch": 0,
        "base_lr": float(spec.lr),
        "lr_schedule": str(spec.lr_schedule),
        "best": None,
        **kw,
    }
    if resume is not None:
        state["optimizer"].load_state_dict(resume["optimizer"])
        loader.generator.set_state(resume["generator"].cpu())
        torch.set_rng_state(resume["rng"].cpu())
        state["it"], state["epoch"] = int(resume["it"]), int(resume["epoch"])
    return state


def training_state(state: dict, loader: Any) -> dict:
    """What :func:`fine_tune` needs to continue after this epoch (its ``resume`` argument)."""
    return {
        "epoch": int(state["epoch"]),
        "it": int(state["it"]),
        "optimizer": state["optimizer"].state_dict(),
        "generator": loader.generator.get_state(),
        "rng": torch.get_rng_state(),
    }


def fine_tune(
    model: nn.Module,
    data: ArrayDataset,
    spec: Any,
    *,
    device: str = "cpu",
    keeper: Any = None,
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
) -> list[dict]:
    """Fine-tune (or train) ``model`` in place on ``data``'s train split.

    Args:
        model: the network; moved to ``device``.
        data: the dataset; test accuracy is measured after each epoch.
        spec: a ``FinetuneSpec`` (epochs, lr, optimizer, batch_size, momentum, weight_decay,
            lr_schedule, label_smoothing, early_stop_patience).
        device: torch device string.
        keeper: a ``MaskKeeper`` holding pruned weights at zero, or None for dense training.
        report: progress callback; one ``"metric"`` event per epoch.
        should_stop: polled before every batch.
        step: the schedule step, written into each curve point.
        bn_l1: strength of the L1 penalty on BN gammas (network-slimming sparsity training).
        seed: shuffling seed (combined with ``step``), so runs are repeatable on CPU.
        epochs: overrides ``spec.epochs`` (the at_init/retrain schedules train longer).
        hook: called before each batch with ``(iteration, total)``; may return a new keeper.
        span: the slice of the whole run's progress (0..1) this call covers.
        on_epoch: called after each epoch with ``(curve point, training_state(...))``, e.g. to
            checkpoint (the state holds live tensors: save it before training goes on).
        resume: a training state given to ``on_epoch`` earlier: continue after its epoch, with
            its optimizer state, data order and iteration (the LR schedule goes on from there).
            The model must already hold that epoch's weights; early stopping starts afresh.

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
    batch_size = int(spec.batch_size)
    if batch_size <= 0:
        raise ValueError(f"finetune.batch_size must be positive; got {batch_size}")
    lr_factor(str(spec.lr_schedule), 0, 1)  # validate before any work
    model.to(device)
    loader = data.loader("train", batch_size, shuffle=True, seed=int(seed) * 1009 + int(step))
    state = _start_state(
        model,
        spec,
        loader,
        resume,
        keeper=keeper,
        total=n_epochs * len(loader),
        bn_l1=float(bn_l1),
        tick=ProgressThrottle(report),
        span=span,
        message=f"step {step}: training" if step else "training",
    )
    loss_fn = nn.CrossEntropyLoss(
        label_smoothing=float(getattr(spec, "label_smoothing", 0.0) or 0.0)
    )
    patience = getattr(spec, "early_stop_patience", None)
    curve: list[dict] = []
    best_acc, bad_epochs = -1.0, 0
    for epoch in range(state["epoch"] + 1, n_epochs + 1):
        train_loss = _train_epoch(
            model, loader, state, loss_fn=loss_fn, device=device, should_stop=should_stop, hook=hook
        )
        state["epoch"] = epoch
        point = _epoch_point(model, data, device, state, epoch=epoch, step=step, loss=train_loss)
        curve.append(point)
        report("metric", dict(point))
        if on_epoch is not None:
            on_epoch(dict(point), training_state(state, loader))
        if patience is None:
            continue
        if state["best"] is None:  # a new keeper (AGP) makes older weights incomparable
            best_acc, bad_epochs = -1.0, 0
        if point["accuracy"] > best_acc:
            best_acc, bad_epochs = float(point["accuracy"]), 0
            state["best"] = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= int(patience):
                break
    if patience is not None and state["best"] is not None:
        model.load_state_dict(state["best"])
    return curve


def _epoch_point(model: nn.Module, data: ArrayDataset, device: str, state: dict, **kw: Any) -> dict:
    ev = _evaluate(model, data, device)
    return {
        "epoch": int(kw["epoch"]),
        "step": int(kw["step"]),
        "loss": float(kw["loss"]),
        "accuracy": float(ev["accuracy"]),
        "test_loss": float(ev["loss"]),
        "lr": float(state["optimizer"].param_groups[0]["lr"]),
    }


def train(
    model: nn.Module,
    data: ArrayDataset,
    spec: Any,
    *,
    device: str = "cpu",
    report: Report = NULL_REPORT,
    should_stop: ShouldStop = NEVER,
    bn_l1: float = 0.0,
    seed: int = 0,
) -> list[dict]:
    """Train a (usually fresh) model densely: the ``kind: "train"`` run.

    Args:
        model: the network, trained in place.
        data: the dataset.
        spec: a ``FinetuneSpec``; its epochs/lr/optimizer/schedule drive the training.
        device, report, should_stop, bn_l1, seed: as in :func:`fine_tune`.

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
    )
