"""Masks in place: :func:`apply_masks` zeroes pruned weights, :class:`MaskKeeper` keeps them zero.

No hooks and no ``weight_orig`` (unlike ``torch.nn.utils.prune``): the forward pass is the
dense one, and the keeper spends about one pass over the pruned tensors per training step.

Example:
    >>> model = nn.Linear(4, 2)
    >>> keep = torch.tensor([[True, False, True, False], [False, True, True, True]])
    >>> apply_masks(model, {"": keep})
    >>> int((model.weight == 0).sum())
    3
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import Tensor, nn

from app.pruning.masks.plan import MaskPlan

# Below this fraction of pruned entries, writing zeros at their indices beats a full multiply
# (random masks, CPU: 0.2 ms vs 8 ms at 1%, about even at 5%; benchmarks/masked_step.py).
INDEX_MAX_PRUNED = 1 / 32
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)
# Optimizers whose update of an entry reads only that entry's weight, gradient and state: with
# the pruned gradients masked, zero weights and zero state stay exactly zero after step().
_ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def mask_pairs(
    model: nn.Module, masks: MaskPlan | dict[str, Tensor]
) -> list[tuple[Tensor, Tensor]]:
    """(parameter, keep-mask) pairs: each layer's weight, plus the plan's coupled extras.

    Raises:
        ValueError: a mask names no layer with weights, or its shape differs from the weight's.
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    plan_masks = masks.masks if isinstance(masks, MaskPlan) else masks
    pairs = []
    for name, mask in plan_masks.items():
        if name not in modules or not isinstance(getattr(modules[name], "weight", None), Tensor):
            raise ValueError(
                f"mask names '{name}', which is not a layer with weights in this model."
            )
        pairs.append((modules[name].weight, mask))
    for name, mask in (masks.extra if isinstance(masks, MaskPlan) else {}).items():
        pairs.append((params[name], mask))
    for p, mask in pairs:
        if tuple(mask.shape) != tuple(p.shape):
            raise ValueError(
                f"a mask of shape {tuple(mask.shape)} does not fit a weight of shape {tuple(p.shape)}."
            )
    return pairs


def apply_masks(model: nn.Module, masks: MaskPlan | dict[str, Tensor]) -> None:
    """Zero the pruned weights in place (no hooks, no ``weight_orig``).

    Args:
        model: the model to modify.
        masks: layer -> keep-mask, or a :class:`MaskPlan` (then its ``extra`` too: biases and
            BN entries of pruned filters, whole removed blocks).

    Raises:
        ValueError: a mask names no layer of the model or has the wrong shape.
    """
    with torch.no_grad():
        for p, mask in mask_pairs(model, masks):
            mask = mask.to(device=p.device, dtype=torch.bool)
            if p.device.type == "cpu" and p.is_contiguous() and mask.is_contiguous():
                arr = p.detach().numpy()
                np.multiply(arr, mask.numpy(), out=arr)  # in place, no temporaries
            else:
                p.masked_fill_(~mask, 0.0)


def _numpy(t: Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor numpy can write through, else None."""
    ok = t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES and t.is_contiguous()
    return t.detach().numpy() if ok else None


class PrunedEntries:
    """Zeroes the pruned entries of tensors shaped like the masks, the cheapest way per tensor.

    Chosen once per mask (``modes``): ``"rows"`` when whole output rows are pruned (filter
    masks; zeros are written to those rows only), ``"index"`` when at most
    :data:`INDEX_MAX_PRUNED` of the entries are pruned (zeros written at precomputed flat
    indices), else ``"mul"`` (one multiply by a float mask built once on the right device;
    numpy on contiguous CPU tensors, one ``torch._foreach_mul_`` over the rest), or ``None``
    when nothing is pruned.
    """

    def __init__(self, keeps: list[Tensor], like: list[Tensor]) -> None:
        self.modes: list[str | None] = []
        self._data: list[Tensor | None] = []
        for keep, t in zip(keeps, like, strict=True):
            keep = keep.to(device=t.device, dtype=torch.bool).contiguous()
            n_pruned = keep.numel() - int(keep.count_nonzero())
            rows = keep.flatten(1) if keep.dim() >= 2 else None
            if n_pruned == 0:
                mode, data = None, None
            elif rows is not None and bool((rows.all(1) | ~rows.any(1)).all()):
                mode, data = "rows", (~rows.any(1)).nonzero().flatten()
            elif n_pruned <= keep.numel() * INDEX_MAX_PRUNED:
                mode, data = "index", (~keep).flatten().nonzero().flatten()
            else:
                mode, data = "mul", keep.to(t.dtype)
            self.modes.append(mode)
            self._data.append(data)

    def zero(self, tensors: list[Tensor | None]) -> None:
        """Zero the pruned entries of each tensor in place (None entries are skipped)."""
        muls: tuple[list[Tensor], list[Tensor]] = ([], [])
        with torch.no_grad():
            for t, mode, data in zip(tensors, self.modes, self._data, strict=True):
                if t is None or mode is None or data is None:
                    continue
                arr = _numpy(t)
                if mode == "mul":
                    if arr is not None and t.dtype == data.dtype:
                        np.multiply(arr, data.numpy(), out=arr)
                    else:
                        muls[0].append(t)
                        muls[1].append(data)
                elif mode == "rows":
                    if arr is not None:
                        arr[data.numpy()] = 0
                    else:
                        t.index_fill_(0, data, 0)
                elif arr is not None:
                    arr.reshape(-1)[data.numpy()] = 0  # contiguous: reshape is a view
                else:
                    t.masked_fill_(_flat_to_mask(data, t), 0)
            if muls[0]:
                torch._foreach_mul_(muls[0], muls[1])


def _flat_to_mask(index: Tensor, like: Tensor) -> Tensor:
    mask = torch.zeros(like.numel(), dtype=torch.bool, device=like.device)
    mask[index] = True
    return mask.reshape(like.shape)


class MaskKeeper:
    """Keeps pruned weights (and their optimizer state) at exactly zero during training.

    In a training loop that calls ``zero_grads()`` and ``after_step(opt)`` around each step,
    a masked step costs one pass over the masked gradients: SGD, Adam and AdamW update each
    entry from its own weight, gradient and state only, so once the weights and state are
    zero (the first ``after_step`` zeroes them) and the pruned gradients are zeroed, the step
    leaves them zero and ``after_step`` has nothing to do. Otherwise (no ``zero_grads`` this
    step, another optimizer, a new optimizer) ``after_step`` re-zeroes the weights and the
    momentum / Adam moments; the weights are the same either way. Call :meth:`apply` after
    changing the weights outside the optimizer (e.g. loading a checkpoint).

    Example:
        >>> model = nn.Linear(4, 2)
        >>> keep = torch.tensor([[True, False, True, False], [False, True, True, True]])
        >>> apply_masks(model, {"": keep})
        >>> keeper, opt = MaskKeeper(model, {"": keep}), torch.optim.SGD(model.parameters(), 0.1)
        >>> model(torch.randn(8, 4)).sum().backward()
        >>> keeper.zero_grads(); opt.step(); keeper.after_step(opt)
        >>> int((model.weight == 0).sum())
        3
    """

    _STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, model: nn.Module, masks: MaskPlan | dict[str, Tensor]) -> None:
        pairs = mask_pairs(model, masks)
        self.params = [p for p, _ in pairs]
        self.entries = PrunedEntries([m for _, m in pairs], self.params)
        self._grads_masked = False
        self._clean: weakref.ref | None = None  # the optimizer whose state is known zeroed

    def zero_grads(self) -> None:
        """Zero the gradients of pruned weights (call after the last ``backward`` before
        ``step``)."""
        self.entries.zero([p.grad for p in self.params])
        self._grads_masked = True

    def after_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-zero pruned weights and their momentum / Adam moments after ``optimizer.step()``."""
        masked, self._grads_masked = self._grads_masked, False
        if (
            masked
            and optimizer is not None
            and self._clean is not None
            and self._clean() is optimizer
        ):
            return  # zero weights, state and gradients: the elementwise step kept them zero
        self.apply()
        self._clean = None
        if optimizer is None:
            return
        for key in self._STATE_KEYS:
            bufs = []
            for p in self.params:
                buf = optimizer.state.get(p, {}).get(key)
                ok = isinstance(buf, Tensor) and buf.shape == p.shape
                bufs.append(buf if ok else None)
            self.entries.zero(bufs)
        if type(optimizer) in _ELEMENTWISE:
            self._clean = weakref.ref(optimizer)

    def apply(self) -> None:
        """Re-zero the pruned weights (e.g. after loading a checkpoint)."""
        self.entries.zero(list(self.params))
