"""BatchNorm re-insertion: fine-tune a network without BatchNorm as if its convolutions had it.

A BN-folded export (ONNX from eval mode) or a net built without BatchNorm is hard to recover
after a structured cut: its convolutions' output scales shift, and nothing re-normalises them
while fine-tuning. :func:`insert_batchnorm` gives each convolution that no BatchNorm follows a
temporary BatchNorm, initialised so the network computes the same function in eval mode
(running statistics = the output's measured per-channel mean and variance, affine = their
inverse: ``gamma = sqrt(var + eps)``, ``beta = mean``). It is attached as a child of the
convolution (``<conv>._reinserted_bn``) and applied by a forward hook, so it works on any
module tree, a ``torch.fx`` graph (onnx2torch) included; channels the conv no longer produces
(all-zero filters) stay exactly zero. :meth:`Inserted.fold` folds each one back into its conv
(``W *= gamma / sqrt(var + eps)``, ``b = (b - mean) * gamma / sqrt(var + eps) + beta``) and
removes it: the model has its original structure and state-dict keys again.

Example:
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
    >>> x = torch.randn(16, 1, 8, 8)
    >>> before, keys = model(x), list(model.state_dict())
    >>> inserted = insert_batchnorm(model, [x])
    >>> inserted.names, "_reinserted_bn.weight" in model[0].state_dict()
    (['0', '2'], True)
    >>> bool(torch.allclose(model.eval()(x), before, atol=1e-5))
    True
    >>> inserted.fold()
    >>> list(model.state_dict()) == keys, bool(torch.allclose(model(x), before, atol=1e-5))
    (True, True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from app.pruning.criteria.capture import run_hooked

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CHILD = "_reinserted_bn"
_BN = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def bn_free_convs(model: nn.Module, example: Tensor) -> list[str]:
    """Convolutions (with a bias) whose output no BatchNorm takes directly, in execution order.

    One forward pass on ``example`` follows which tensor each module received; a conv whose
    output tensor went straight into a BatchNorm already has one.

    Example:
        >>> from torch import nn
        >>> m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3))
        >>> bn_free_convs(m, torch.randn(1, 1, 8, 8))
        ['2']
    """
    outputs: dict[int, str] = {}
    order: list[str] = []
    followed: set[str] = set()

    def conv_hook(name: str):
        def hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            outputs[id(out)] = name
            order.append(name)

        return hook

    def bn_hook(_m: nn.Module, inp: tuple, _out: Tensor) -> None:
        if inp and id(inp[0]) in outputs:
            followed.add(outputs[id(inp[0])])

    hooks = {}
    for name, m in model.named_modules():
        if isinstance(m, CONVS) and m.bias is not None:
            hooks[m] = conv_hook(name)
        elif isinstance(m, _BatchNorm):
            hooks[m] = bn_hook
    was_training = model.training
    try:
        run_hooked(model.eval(), hooks, False, [example])
    finally:
        model.train(was_training)
    return [n for n in dict.fromkeys(order) if n not in followed]


def _reinserted(conv: nn.Module, _inp: tuple, out: Tensor) -> Tensor:
    bn = getattr(conv, CHILD)
    return bn(out) * bn.alive.view(1, -1, *([1] * (out.dim() - 2)))


@dataclass
class Inserted:
    """The temporary BatchNorms of one fine-tuning, by conv name; :meth:`fold` ends them."""

    model: nn.Module
    names: list[str]
    handles: list = field(default_factory=list)

    def bns(self) -> list[_BatchNorm]:
        modules = dict(self.model.named_modules())
        return [getattr(modules[n], CHILD) for n in self.names]

    @torch.no_grad()
    def reestimate(self, batches: Sequence[Tensor]) -> None:
        """Re-estimate the inserted BatchNorms' running statistics on ``batches`` (a plain
        average, everything else in eval mode): the statistics of the weights as they end
        fine-tuning, not a moving average over it, as the lab re-estimates a model's own."""
        bns = self.bns()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        self.model.eval()
        for bn in bns:
            bn.train()
        try:
            for x in batches:
                self.model(x)
        finally:
            for bn in bns:
                bn.momentum = 0.1
            self.model.eval()

    def fold(self) -> None:
        """Fold each BatchNorm (its running statistics) into its conv and remove it."""
        modules = dict(self.model.named_modules())
        for h in self.handles:
            h.remove()
        self.handles = []
        with torch.no_grad():
            for name in self.names:
                conv = modules[name]
                bn = getattr(conv, CHILD)
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) * bn.alive
                shift = (bn.bias - bn.running_mean * scale) * bn.alive
                conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
                conv.bias.copy_(conv.bias * scale + shift)
                delattr(conv, CHILD)


def _output_stats(model: nn.Module, convs: dict[str, nn.Module], batches: Sequence[Tensor]):
    sums: dict[str, list[Tensor]] = {n: [] for n in convs}

    def hook(name: str):
        def h(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            dims = [0, *range(2, out.dim())]
            sums[name].append(torch.stack([out.mean(dims), (out * out).mean(dims)]))

        return h

    run_hooked(model.eval(), {m: hook(n) for n, m in convs.items()}, False, batches)
    stats = {}
    for name, rows in sums.items():
        mean, sq = torch.stack(rows).mean(0)
        stats[name] = (mean, (sq - mean * mean).clamp_min(0.0))
    return stats


def insert_batchnorm(
    model: nn.Module, batches: Sequence[Tensor], names: Sequence[str] | None = None
) -> Inserted:
    """Give the BN-free convs (``names``, or :func:`bn_free_convs`) a temporary BatchNorm that
    leaves the eval-mode function unchanged; ``batches`` measure the outputs' statistics.

    Raises:
        ValueError: ``batches`` is empty.
    """
    if not batches:
        raise ValueError("BatchNorm re-insertion needs at least one calibration batch.")
    if names is None:
        names = bn_free_convs(model, batches[0][:2])
    inserted = Inserted(model, list(names))
    if not names:
        return inserted
    modules = dict(model.named_modules())
    convs = {n: modules[n] for n in names}
    stats = _output_stats(model, convs, batches)
    for name, conv in convs.items():
        mean, var = stats[name]
        w = conv.weight.detach()
        alive = w.reshape(w.shape[0], -1).ne(0).any(1).to(w.dtype)
        bn = _BN[type(conv)](w.shape[0]).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean)
        bn.register_buffer("alive", alive, persistent=False)
        conv.add_module(CHILD, bn)
        inserted.handles.append(conv.register_forward_hook(_reinserted))
    return inserted


@contextlib.contextmanager
def reinserted_batchnorm(model: nn.Module, batches: Sequence[Tensor]) -> Iterator[Inserted]:
    """:func:`insert_batchnorm` for the ``with`` block; at its end the statistics are
    re-estimated on ``batches`` (:meth:`Inserted.reestimate`) and folded back (on an error:
    folded back as they are).

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv1d(2, 3, 1), nn.ReLU())
        >>> with reinserted_batchnorm(model, [torch.randn(4, 2, 5)]) as inserted:
        ...     hasattr(model[0], CHILD)
        True
        >>> inserted.names, hasattr(model[0], CHILD)
        (['0'], False)
    """
    inserted = insert_batchnorm(model, batches)
    try:
        yield inserted
        if inserted.names:
            inserted.reestimate(batches)
    finally:
        inserted.fold()
