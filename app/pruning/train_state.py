"""What one :func:`~app.pruning.train.fine_tune` call carries: its changing
:class:`TrainState` (counters, LR, curve, best weights, the state to resume from) and the fixed
settings of its batch loop, a :class:`Loop`.

Example:
    >>> from app.pruning.optim import make_optimizer
    >>> from app.pruning.spec import FinetuneSpec
    >>> model = nn.Linear(6, 2)
    >>> spec = FinetuneSpec(lr=0.1, lr_schedule="constant", warmup=0.0)
    >>> state = TrainState(model, make_optimizer(model, spec), 0.1, "constant", None, total=10)
    >>> state.it = 5
    >>> state.set_lr()
    >>> state.optimizer.param_groups[0]["lr"]
    0.1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from app.pruning.distill import Distiller
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.optim import lr_factor
from app.pruning.report import ProgressThrottle, ShouldStop

# A hook called before each batch with (iteration, total_iterations); it may return a new
# MaskKeeper (AGP recomputes masks during training) or None to keep the current one.
BatchHook = Callable[[int, int], MaskKeeper | None]
# Called after each epoch with (curve point, training state for ``fine_tune(resume=...)``).
EpochHook = Callable[[dict, dict], None]


@dataclass
class TrainState:
    """What one :func:`fine_tune` call changes as it goes.

    ``it``/``epoch``: iterations and epochs done (a resumed call starts from the saved ones);
    ``total``: iterations of the whole call, for the LR schedule; ``history``: the curve points;
    ``best``: the best weights so far under early stopping (reset when the keeper changes);
    ``warmup``: the share of ``total`` over which the LR ramps up first.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    base_lr: float
    lr_schedule: str
    keeper: MaskKeeper | None
    total: int
    it: int = 0
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict[str, Tensor] | None = None
    best_accuracy: float = -1.0
    bad_epochs: int = 0
    warmup: float = 0.0

    def set_lr(self) -> None:
        """The LR of the current iteration, in every parameter group."""
        lr = self.base_lr * lr_factor(self.lr_schedule, self.it, self.total, warmup=self.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def training_state(self, loader: DataLoader) -> dict:
        """What :func:`fine_tune` needs to continue after this epoch (its ``resume`` argument)."""
        return {
            "epoch": int(self.epoch),
            "it": int(self.it),
            "optimizer": self.optimizer.state_dict(),
            "generator": loader.generator.get_state(),
            "rng": torch.get_rng_state(),
        }

    def resume_from(self, resume: dict, loader: DataLoader) -> None:
        """Continue after a :meth:`training_state`: optimizer, data order, RNG and counters."""
        self.optimizer.load_state_dict(resume["optimizer"])
        loader.generator.set_state(resume["generator"].cpu())
        torch.set_rng_state(resume["rng"].cpu())
        self.it, self.epoch = int(resume["it"]), int(resume["epoch"])


@dataclass
class Loop:
    """The fixed settings of one :func:`fine_tune` call's batch loop."""

    loader: DataLoader
    loss_fn: nn.Module
    device: str
    should_stop: ShouldStop
    hook: BatchHook | None
    bn_l1: float
    tick: ProgressThrottle
    span: tuple[float, float]
    message: str
    distill: Distiller | None = None  # adds the loss toward the dense teacher

    def progress(self, state: TrainState) -> None:
        lo, hi = self.span
        self.tick(lo + (hi - lo) * state.it / state.total, self.message)
