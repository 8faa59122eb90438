"""The epoch loop of :func:`~app.pruning.train.fine_tune`: one optimizer step per batch with the
masks kept (``zero_grads()`` before the step, ``after_step()`` after it), ``should_stop()``
polled before every batch, throttled ``"progress"`` events; with a ``Loop.distill`` the loss
also pulls toward the dense teacher (``distill.py``).

Example:
    >>> import numpy as np
    >>> from torch import nn
    >>> from app.pruning.data import ArrayDataset
    >>> from app.pruning.optim import make_optimizer
    >>> from app.pruning.report import NEVER, NULL_REPORT, ProgressThrottle
    >>> from app.pruning.spec import FinetuneSpec
    >>> x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(40) % 2, x, np.arange(40) % 2, 2)
    >>> model, loader = nn.Linear(6, 2), data.loader("train", 16, shuffle=True, seed=0)
    >>> opt = make_optimizer(model, FinetuneSpec(lr=0.01))
    >>> state = TrainState(model, opt, 0.01, "constant", None, total=len(loader))
    >>> throttle = ProgressThrottle(NULL_REPORT)
    >>> loop = Loop(loader, nn.CrossEntropyLoss(), "cpu", NEVER, None, 0.0, throttle, (0, 1), "")
    >>> loss = train_epoch(state, loop)
    >>> state.it == len(loader), loss > 0
    (True, True)
"""

from __future__ import annotations

from torch import Tensor

from app.pruning.criteria.magnitude import bn_l1_penalty
from app.pruning.report import check_cancelled
from app.pruning.train_state import Loop, TrainState


def _batch(state: TrainState, loop: Loop, x: Tensor, y: Tensor) -> float:
    """One optimizer step on ``(x, y)`` with the masks kept; returns the summed batch loss."""
    model, opt = state.model, state.optimizer
    x, y = x.to(loop.device), y.to(loop.device)
    opt.zero_grad(set_to_none=True)
    out = model(x)
    loss = loop.loss_fn(out, y)
    if loop.distill is not None:
        loss = loop.distill.loss(out, x, loss)
    if loop.bn_l1 > 0:
        penalty = bn_l1_penalty(model, loop.bn_l1).to(next(model.parameters()).device)
        (loss + penalty).backward()
    else:
        loss.backward()
    if state.keeper is not None:
        state.keeper.zero_grads()
    opt.step()
    if state.keeper is not None:
        state.keeper.after_step(opt)
    return float(loss.detach()) * len(y)


def train_epoch(state: TrainState, loop: Loop) -> float:
    """One pass over the loader; returns the mean training loss."""
    state.model.train()
    total_loss, n_seen = 0.0, 0
    for x, y in loop.loader:
        check_cancelled(loop.should_stop)
        if loop.hook is not None:
            new_keeper = loop.hook(state.it, state.total)
            if new_keeper is not None:
                state.keeper, state.best = new_keeper, None
        state.set_lr()
        total_loss += _batch(state, loop, x, y)
        n_seen += len(y)
        state.it += 1
        loop.progress(state)
    return total_loss / max(n_seen, 1)
