"""``torch.export`` programs (``.pt2``) as modules the engine can evaluate and fine-tune.

``program.module()`` refuses ``train()``/``eval()``, and its graph holds ``aten.batch_norm`` /
``aten.dropout`` calls with the ``training`` flag of the moment it was exported. :func:`load_pt2`
gives the module a ``train(mode)`` that rewrites those flags, so BatchNorm updates its running
statistics while fine-tuning and uses them when evaluating, like the original module.

Example:
    >>> loaded = load_pt2(Path("m.pt2"), None, None)
    >>> loaded.module.train()  # BatchNorm now uses batch statistics
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import fx

from app.errors import UnsupportedMedia
from app.modelio.signature import Shape, pt2_signature, sample_shape

# op -> position of its ``training`` argument
_MODE_ARGS = {torch.ops.aten.batch_norm.default: 5, torch.ops.aten.dropout.default: 2}


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


def load_pt2(path: Path, given: Shape | None, dtype: str | None):
    """A :class:`~app.modelio.load.LoadedModel` of a ``.pt2`` file (masks only, trainable BN).

    Raises:
        UnsupportedMedia: the program cannot be loaded.
    """
    from app.modelio.load import MASKS_ONLY_NOTE, LoadedModel, short

    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:
        raise UnsupportedMedia(f"the .pt2 program could not be loaded: {short(exc)}") from exc
    module.train = types.MethodType(set_mode, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(lambda self: set_mode(self, False), module)  # type: ignore[method-assign]
    found, rank, batch, file_dtype = pt2_signature(program)
    notes = [MASKS_ONLY_NOTE.format(fmt="pt2")]
    return LoadedModel(
        module,
        "pt2",
        sample_shape(given, rank) or found,
        False,
        notes=notes,
        example_batch=batch or 1,
        input_dtype=file_dtype if file_dtype != "float32" else (dtype or file_dtype),
    )
