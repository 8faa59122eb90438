"""Which layers PruneLab prunes, and what kind each module is (also inside TorchScript and
``torch.export`` graphs).

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    >>> list(prunable_layers(model)), layer_kinds(model)["0"]
    (['0', '3'], 'Conv2d')
    >>> is_transposed(nn.ConvTranspose2d(4, 8, 3))
    True
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PRUNABLE_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
)

PRUNABLE_NAMES = frozenset(t.__name__ for t in PRUNABLE_TYPES)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv1d/2d/3d, ConvTranspose1d/2d and Linear layers by qualified name, in module order.

    Embedding, LayerNorm, attention in-projections and other weights are not pruned. Layers of
    TorchScript archives (``original_name``) and of ``torch.export`` programs (the module stack
    recorded in the graph) count too: they are pruned as masks, in place.
    """
    kinds = layer_kinds(model)
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if kinds.get(name) in PRUNABLE_NAMES and isinstance(weight, Tensor) and weight.dim() >= 2:
            found[name] = module
    return found


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Module path -> its class name (``Conv2d``), also inside TorchScript and exported graphs."""
    exported = exported_kinds(model)
    kinds = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.jit.ScriptModule):
            kind = getattr(module, "original_name", kind)
        elif name in exported:
            kind = exported[name]
        kinds[name] = kind
    return kinds


def exported_kinds(model: nn.Module) -> dict[str, str]:
    """Module path -> class name, from a ``torch.export`` graph's ``nn_module_stack``."""
    graph = getattr(model, "graph", None)
    if graph is None or isinstance(model, torch.jit.ScriptModule):
        return {}
    kinds: dict[str, str] = {}
    for node in graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            kinds[str(path)] = str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1]
    return kinds


def is_transposed(layer: nn.Module) -> bool:
    return isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d)


def is_linear(layer: nn.Module) -> bool:
    """A Linear layer, also inside TorchScript and exported graphs (a 2-D weight)."""
    weight = getattr(layer, "weight", None)
    return isinstance(layer, nn.Linear) or (isinstance(weight, Tensor) and weight.dim() == 2)
