"""``finetune.lr: "auto"``: an LR range test (Smith 2017) picks the fine-tuning learning rate.

Before the first fine-tuning, the model trains for :data:`SWEEP_BATCHES` batches with the
recipe's optimizer while the LR grows exponentially from ``lo`` to ``hi``; the training loss is
smoothed (an exponential moving average with bias correction) and the sweep stops once it
doubles over its best value: where training starts to fail. The chosen LR is a tenth of that
LR (:data:`SHARE`; the end of the sweep when the loss never doubled), clamped to a sane range
for the optimizer (:data:`RANGES`). Not a tenth of the LR at the lowest smoothed loss (Smith's
rule): after a light prune of a trained model the loss is flat and its lowest point is noise
(1e-6 instead of ~1e-3 on the digits MLP at 47%). Not a thirtieth either (the rule before,
``benchmarks/quality_vs_anchors.py``): on a transformers ResNet at 50% element in two steps the
loss still fell at a thirtieth (1.3e-3; lowest at 8.4e-3, doubled at 4.0e-2), and fine-tuning
there ended 1.9 points under dense and under ``torch.nn.utils.prune`` with SGD; a tenth gains
1.5 points there (mean of seeds 0-3) and 1.4 and 2.9 at 70% and 90% (seeds 0-1). The warm-up
and cosine that follow average about half the chosen peak.

"Doubled" counts from the best loss or from :data:`LEAST_LOSS` times a uniform guess's loss
(``ln(n_classes)``), the larger: a trained model's loss of ~0.01 "doubles" on noise, long before
training fails (a ResNet-20 at 50% element in two steps: at 1.6e-3, so fine-tuning ran at
1.6e-4 and ended 0.6 points under ``torch.nn.utils.prune`` with SGD; from 0.115 on digits it
ends at 4.2e-3 and the run matches the anchor, seeds 0-1). A probe of :data:`PROBE_BATCHES`
batches at the choice, from the start, must then lower the loss below where the sweep started
and below a uniform guess, else the choice backs off by a half-decade (:data:`BACK_OFF`, at
most :data:`RETREATS` times).

Half-decades, not tenfold (``benchmarks/quality_vs_anchors.py``): a transformers ViT pruned
to 90% in two steps collapses to a uniform guess at 3e-2, and its 12-batch probe cannot tell
that from the slow start of 3e-3 or 1e-2, where it recovers; two tenfold back-offs jumped over
them to 3e-4 (seed 0: 39%), two half-decades end at 3e-3 (53%).

It sweeps with the fine-tuning's batch size (``finetune.batch_size``, ``"auto"`` resolved);
a batch under :data:`REFERENCE_BATCH` sweeps and probes over as many samples as 128 would
(:func:`samples_scale`), so one noisy small batch neither sets the best loss nor "doubles" it.

The model, its masks and the random state are restored afterwards; the sweep draws its batches
from its own seeded order, so it is deterministic given the seed and leaves the training that
follows unchanged.

Example:
    >>> import numpy as np
    >>> from torch import nn
    >>> from app.pruning.data import ArrayDataset
    >>> from app.pruning.spec import FinetuneSpec
    >>> x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    >>> data = ArrayDataset("toy", x, (x[:, 0] > 0).astype(np.int64), x, np.arange(64) % 2, 2)
    >>> model = nn.Linear(6, 2)
    >>> before = model.weight.clone()
    >>> found = range_test(model, data, FinetuneSpec(batch_size=16))
    >>> 1e-5 <= found.lr <= 3e-2, bool((model.weight == before).all())
    (True, True)
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from app.pruning.batch_size import resolve_batch_size
from app.pruning.data import ArrayDataset
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.notes import Note, info
from app.pruning.optim import make_optimizer
from app.pruning.spec import FinetuneSpec
from app.pruning.task import TokenLoss

SWEEP_BATCHES = 40
PROBE_BATCHES = 12  # batches at the chosen LR that must lower the loss
RETREATS = 2  # at most this many steps back from the sweep's choice
BACK_OFF = 10**0.5  # each step back divides the LR by this (a half-decade)
DIVERGE = 2.0  # the smoothed loss this many times its best ends the sweep
LEAST_LOSS = 0.05  # ... over its best or this share of a uniform guess's loss, the larger
SHARE = 10  # the choice is the LR where the loss doubled (or the sweep's end) over this
SMOOTH = 0.7  # EMA factor of the training loss at REFERENCE_BATCH
REFERENCE_BATCH = 128  # smaller batches sweep and probe over as many samples as 40 and 12 of it
# optimizer -> (sweep start, sweep end, lowest and highest LR it may choose)
RANGES = {
    "sgd": (1e-5, 10.0, 1e-4, 0.3),
    "adam": (1e-6, 1.0, 1e-5, 3e-2),
    "adamw": (1e-6, 1.0, 1e-5, 3e-2),
}
NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


@dataclass
class LrChoice:
    """What the range test found: the chosen ``lr``, the LR at the lowest smoothed loss, the LR
    where the loss doubled over its best (None when it never did) and the sweep's curve."""

    lr: float
    optimizer: str
    at_min: float
    diverged_at: float | None
    lrs: list[float]
    losses: list[float]
    seconds: float = 0.0
    retreated: list[float] = field(default_factory=list)  # choices a probe refused, in order
    probe_batches: int = PROBE_BATCHES  # more for batches under REFERENCE_BATCH

    def note(self, prefix: str = "") -> Note:
        """The run note: the chosen LR and why (``prefix``: e.g. ``"step 2: "``)."""
        end = self.lrs[-1] if self.diverged_at is None else self.diverged_at
        first = self.retreated[0] if self.retreated else self.lr
        where = "where the smoothed loss doubled" if self.diverged_at else "the sweep's end"
        if math.isclose(first, end / SHARE):
            why = f"a tenth of {end:.1e}, {where} (lowest at {self.at_min:.1e})"
        else:
            why = f"clamped (lowest loss at {self.at_min:.1e}, {where} {end:.1e})"
        if self.retreated:
            tried = ", ".join(f"{lr:.1e}" for lr in self.retreated)
            why += (
                f"; {self.probe_batches} batches at {tried} did not lower the loss, "
                f"so {BACK_OFF:.2g} times lower each time"
            )
        return info(
            f"lr auto: {prefix}range test chose {self.lr:.1e} ({NAMES[self.optimizer]}), {why}; "
            f"{len(self.lrs)} batches from {self.lrs[0]:.0e} upwards, {self.seconds:.2f} s"
        )


def _sweep(
    model,
    data,
    spec,
    *,
    device,
    keeper,
    seed,
    batches,
    lr_at,
    smooth,
    warm=1,
    stop_on_rise=True,
    least=0.0,
):
    """Train ``batches`` batches at ``lr_at(i)``; the LRs, raw and smoothed (EMA factor
    ``smooth``) losses, and the LR where the loss stopped being finite (or, with
    ``stop_on_rise``, doubled over its best or over ``least`` if larger, the first
    ``warm - 1`` batches not counted)."""
    loss_fn = TokenLoss(label_smoothing=float(spec.label_smoothing or 0.0))  # by task
    opt = make_optimizer(model, spec, lr=lr_at(0))
    loader = data.loader("train", int(spec.batch_size), shuffle=True, seed=int(seed) * 7919 + 17)
    batch_iter = iter(loader)
    lrs, raw, losses, avg, best, diverged = [], [], [], 0.0, math.inf, None
    for i in range(batches):
        lr = lr_at(i)
        for group in opt.param_groups:
            group["lr"] = lr
        try:
            x, y = next(batch_iter)
        except StopIteration:
            batch_iter = iter(loader)
            x, y = next(batch_iter)
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            diverged = lr
            break
        loss.backward()
        if keeper is not None:
            keeper.zero_grads()
        opt.step()
        if keeper is not None:
            keeper.after_step(opt)
        avg = smooth * avg + (1 - smooth) * value
        smoothed = avg / (1 - smooth ** (i + 1))
        lrs.append(lr)
        raw.append(value)
        losses.append(smoothed)
        if i + 1 < warm:
            continue  # fewer samples than one REFERENCE_BATCH: too noisy to be a best
        if stop_on_rise and smoothed > DIVERGE * max(best, least):
            diverged = lr
            break
        best = min(best, smoothed)
    return lrs, raw, losses, diverged


def samples_scale(batch_size: int) -> int:
    """How many times :data:`SWEEP_BATCHES` and :data:`PROBE_BATCHES` a sweep at ``batch_size``
    runs, so that it sees as many samples as at :data:`REFERENCE_BATCH` (its EMA spans as many
    samples too): one batch of 16 is too noisy a loss to tell a valley or a doubling from.

    >>> samples_scale(16), samples_scale(128), samples_scale(512)
    (8, 1, 1)
    """
    return max(1, round(REFERENCE_BATCH / max(int(batch_size), 1)))


def _holds(start: float, probe: list[float], diverged: float | None, n_classes: int) -> bool:
    """Whether a probe at the chosen LR kept training: finite, and its last third's mean loss
    below where the sweep started and below a uniform guess's ``ln(n_classes)`` (a model
    knocked back to guessing also "lowers" the loss of a confidently wrong one), with a
    tolerance for the noise of an already low, flat loss."""
    k = max(len(probe) // 3, 1)
    if diverged is not None or len(probe) < k:
        return False
    bound = min(start, math.log(max(n_classes, 2)))
    return sum(probe[-k:]) / k <= 0.98 * bound + 0.02


def range_test(
    model: nn.Module,
    data: ArrayDataset,
    spec: FinetuneSpec,
    *,
    device: str = "cpu",
    keeper: MaskKeeper | None = None,
    seed: int = 0,
    batches: int = SWEEP_BATCHES,
) -> LrChoice:
    """Run the LR range test on ``model`` (restored afterwards) and choose the LR.

    Args:
        model: the network as fine-tuning will start from it.
        data: its train split feeds the sweep.
        spec: the optimizer, batch size, momentum and weight decay to sweep with.
        device: torch device string.
        keeper: keeps the pruned weights at zero during the sweep, as in training.
        seed: the sweep's batch order and random state.
        batches: the length of the sweep.

    Returns:
        An :class:`LrChoice`.
    """
    spec = resolve_batch_size(spec, data.n_train)[0]  # the batches fine-tuning will use
    scale = samples_scale(int(spec.batch_size))
    name = str(spec.optimizer)
    lo, hi, low, high = RANGES[name]
    start = time.perf_counter()
    state = copy.deepcopy(model.state_dict())
    rng, was_training = torch.get_rng_state(), model.training
    torch.manual_seed(int(seed))
    model.to(device).train()
    try:
        run = {"device": device, "keeper": keeper, "seed": seed, "smooth": SMOOTH ** (1 / scale)}
        run["warm"] = scale
        least = LEAST_LOSS * math.log(max(data.n_classes, 2))
        batches *= scale
        lrs, raw, losses, diverged = _sweep(
            model,
            data,
            spec,
            **run,
            batches=batches,
            lr_at=lambda i: lo * (hi / lo) ** (i / max(batches - 1, 1)),
            least=least,
        )
        if not lrs:  # the very first batch failed
            return LrChoice(low, name, lo, diverged, [lo], [math.inf], time.perf_counter() - start)
        counted = range(min(scale, len(losses)) - 1, len(losses))  # as in _sweep
        at_min = lrs[min(counted, key=losses.__getitem__)]
        end = lrs[-1] if diverged is None else diverged
        chosen = min(max(end / SHARE, low), high)
        # A sweep's loss keeps falling on what earlier batches learnt, which can flatter a high
        # LR: train a few batches at the choice from the start and back off while it fails.
        first = raw[: 3 * scale]
        start_loss, retreated = sum(first) / len(first), []
        for _ in range(RETREATS):
            model.load_state_dict(state)
            _, probe, _, broke = _sweep(
                model,
                data,
                spec,
                **run,
                batches=PROBE_BATCHES * scale,
                lr_at=lambda i, lr=chosen: lr,
                stop_on_rise=False,
            )
            if _holds(start_loss, probe, broke, data.n_classes) or chosen / BACK_OFF < low:
                break
            retreated.append(chosen)
            chosen /= BACK_OFF
    finally:
        model.load_state_dict(state)
        model.train(was_training)
        torch.set_rng_state(rng)
    seconds = time.perf_counter() - start
    found = LrChoice(chosen, name, at_min, diverged, lrs, losses, seconds, retreated)
    found.probe_batches = PROBE_BATCHES * scale
    return found
