"""The layers whose outputs are the model's outputs, found on the traced (autograd) graph.

Pruning a filter of such a layer removes a class (or an output feature) for good: its logit
becomes a constant. So the engine never removes or masks their output units. They are found
the same way for every format (plain modules, onnx2torch graphs, TorchScript, ``.pt2``
programs): one forward pass records the autograd graph; walking it back from the outputs, the
first operation that reads the weight of a prunable layer marks that layer as an output layer
(element-wise ops, reshapes, pooling and adds on the way are crossed; another layer's
operation stops the walk, so a classifier behind a hidden layer hides the hidden layer).

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Softmax(dim=1))
    >>> sorted(output_layers(model, torch.randn(2, 4)))
    ['2']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from app.pruning.criteria.context import CalibrationData
from app.pruning.data import ArrayDataset
from app.pruning.granularity import prunable_layers

# Autograd nodes that only reshape or cast a weight before the layer's operation reads it.
_WEIGHT_VIEWS = frozenset(
    [
        "T",
        "Transpose",
        "Permute",
        "View",
        "Reshape",
        "ReshapeAlias",
        "UnsafeView",
        "ToCopy",
        "Expand",
        "Unsqueeze",
        "Squeeze",
        "Clone",
        "Contiguous",
    ]
)


def _kind(fn: object) -> str:
    return type(fn).__name__.rstrip("0123456789").removesuffix("Backward")


def _weight_owner(fn: object, owners: dict[int, str], depth: int = 3) -> str | None:
    """The layer whose weight ``fn`` reads directly (through at most ``depth`` views)."""
    for child, _ in getattr(fn, "next_functions", ()):
        if child is None:
            continue
        variable = getattr(child, "variable", None)
        if variable is not None and variable.data_ptr() in owners:
            return owners[variable.data_ptr()]
        if depth and _kind(child) in _WEIGHT_VIEWS:
            found = _weight_owner(child, owners, depth - 1)
            if found is not None:
                return found
    return None


def _tensors(out: object) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, list | tuple):
        return [t for item in out for t in _tensors(item)]
    return []


@contextlib.contextmanager
def _tracking(weights: list[Tensor]) -> Iterator[None]:
    """Weights require grad inside the block (their flags restored after)."""
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        yield
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)


def output_layers(model: nn.Module, example: Tensor) -> set[str]:
    """Names of the prunable layers whose output units are the model's output units.

    Args:
        model: any loaded model (its mode and ``requires_grad`` flags are restored).
        example: a real input batch.

    Returns:
        Layer names as in :func:`~app.pruning.granularity.prunable_layers`; empty when the
        forward pass records no graph.
    """
    layers = prunable_layers(model)
    owners = {m.weight.data_ptr(): n for n, m in layers.items()}
    weights = [m.weight for m in layers.values() if m.weight.is_leaf]
    modes = {m: m.training for m in model.modules()}
    with contextlib.suppress(Exception):  # some exported programs refuse eval(); run as traced
        model.eval()
    try:
        with _tracking(weights), torch.enable_grad():
            device = next(iter(layers.values())).weight.device if layers else example.device
            outs = _tensors(model(example[:2].to(device)))
    finally:
        for m, training in modes.items():
            m.training = training
    found: set[str] = set()
    stack, seen = [t.grad_fn for t in outs], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        owner = _weight_owner(fn, owners)
        if owner is not None:
            found.add(owner)
            continue
        stack.extend(child for child, _ in getattr(fn, "next_functions", ()))
    return found


def example_input(data: CalibrationData | None, model: nn.Module) -> Tensor | None:
    """Two input samples for :func:`output_layers`: from the data, or for a model whose first
    layer is a Linear, random features of its width; None when neither is known."""
    if isinstance(data, ArrayDataset):
        return data.sample_batch(2)
    if isinstance(data, list | tuple) and data:
        first = data[0]
        x = first if isinstance(first, Tensor) else first[0]
        return x[:2]
    layers = list(prunable_layers(model).values())
    if layers and layers[0].weight.dim() == 2:  # a Linear (also inside TorchScript, .pt2)
        weight = layers[0].weight
        return torch.randn(2, weight.shape[1], device=weight.device, dtype=weight.dtype)
    return None
