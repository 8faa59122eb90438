"""``torch.export`` programs (``.pt2``) as modules the engine can evaluate and fine-tune.

``program.module()`` refuses ``train()``/``eval()``, and its graph holds ``aten.batch_norm`` /
``aten.dropout`` calls with the ``training`` flag of the moment it was exported.
:func:`make_trainable` gives the module a ``train(mode)`` that rewrites those flags, so BatchNorm
updates its running statistics while fine-tuning and uses them when evaluating, like the
original module. A pruned program is exported back as ``pruned.pt2`` (:func:`export_program`,
dynamic batch) so the result model of a run stays a program whose BatchNorm trains.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    >>> program = torch.export.export(net, (torch.randn(2, 4),))
    >>> module = make_trainable(program.module())
    >>> module.train().training  # BatchNorm now uses batch statistics and updates its own
    True
    >>> module.eval().training
    False
"""

from __future__ import annotations

import types

import torch
from torch import fx

# op -> position of its ``training`` argument
_MODE_ARGS = {torch.ops.aten.batch_norm.default: 5, torch.ops.aten.dropout.default: 2}
_PROGRAM = "prunelab_pt2"


def set_mode(module: fx.GraphModule, mode: bool = True) -> fx.GraphModule:
    """Set the ``training`` flag of every BatchNorm/Dropout call in the graph and recompile."""
    changed = False
    for node in module.graph.nodes:
        pos = _MODE_ARGS.get(node.target)
        if pos is not None and len(node.args) > pos and node.args[pos] != mode:
            args = list(node.args)
            args[pos] = mode
            node.args = tuple(args)
            changed = True
    if changed:
        module.recompile()
    object.__setattr__(module, "training", mode)
    for sub in module.modules():
        object.__setattr__(sub, "training", mode)
    return module


def has_mode_ops(module: fx.GraphModule) -> bool:
    return any(node.target in _MODE_ARGS for node in module.graph.nodes)


def make_trainable(module: fx.GraphModule) -> fx.GraphModule:
    """Give ``program.module()`` a ``train(mode)``/``eval()`` that set its BatchNorm/Dropout flags."""
    module.train = types.MethodType(set_mode, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: set_mode(self, False), module)  # type: ignore[method-assign]
    module.meta[_PROGRAM] = True  # ``meta`` survives deepcopy; the methods above do not
    return module


def is_program(module: object) -> bool:
    """True for a module :func:`make_trainable` made from a ``.pt2`` program (or a copy)."""
    return bool(getattr(module, "meta", {}).get(_PROGRAM))


def export_program(module: fx.GraphModule, x: torch.Tensor):  # noqa: ANN201 - ExportedProgram
    """``module`` (in its current BatchNorm mode) as a program with a dynamic batch axis
    (``x`` a batch of 2 or more), or fixed at ``x``'s batch where the batch cannot be dynamic."""
    if x.shape[0] > 1:
        try:
            batch = torch.export.Dim("batch", min=1, max=1024)
            return torch.export.export(module, (x,), dynamic_shapes=({0: batch},))
        except Exception:  # noqa: BLE001, S110 - a fixed batch is the fallback
            pass
    return torch.export.export(module, (x,))


def load_program(path: str) -> fx.GraphModule:
    """A saved program as a module whose ``train()``/``eval()`` set BatchNorm's mode."""
    return make_trainable(torch.export.load(path).module())
