"""What one input of a model looks like: its sample shape and dtype, from the file or the form.

``input_shape`` is one sample's shape without the batch dimension (``(1, 8, 8)``). A user may
also give the full shape with a leading batch of 1 (``1,1,8,8``); where the file says how many
dimensions its input has, that decides which was meant. ``input_dtype`` is ``float32`` or
``int64`` (token ids); the file's declared dtype wins over the default.

Example:
    >>> sample_shape((1, 1, 8, 8), rank=4)
    (1, 8, 8)
    >>> example_input((16,), "int64", batch=2).dtype
    torch.int64
"""

from __future__ import annotations

import torch
from torch import nn

from app.errors import Invalid

Shape = tuple[int, ...]
DTYPES = {"float32": torch.float32, "int64": torch.int64}
# ONNX TensorProto element types -> our names
_ONNX_DTYPES = {1: "float32", 10: "float32", 11: "float32", 16: "float32", 6: "int64", 7: "int64"}


def sample_shape(given: Shape | None, rank: int | None) -> Shape | None:
    """One sample's shape from what the user gave, using the file's input ``rank`` if known.

    A 4-D shape with a leading 1 is a full shape whatever the file says (images: ``1,1,8,8``).
    """
    if not given:
        return None
    shape = tuple(int(d) for d in given)
    full = (rank is not None and len(shape) == rank) or (rank is None and len(shape) == 4)
    if full and len(shape) > 1:
        if shape[0] != 1:
            raise Invalid(
                f"input_shape {list(shape)} looks like a full shape with a batch of {shape[0]}; "
                f"give one sample's shape ({list(shape[1:])}) or a leading batch of 1"
            )
        return shape[1:]
    return shape


def onnx_signature(model) -> tuple[Shape | None, int | None, str]:
    """``(sample shape, rank, dtype)`` of an ONNX model's first input (shape None if unknown)."""
    inits = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in inits:
            continue
        ttype = value.type.tensor_type
        sizes = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
        dtype = _ONNX_DTYPES.get(ttype.elem_type, "float32")
        rest = sizes[1:]
        known = bool(rest) and all(isinstance(s, int) and s > 0 for s in rest)
        return (tuple(int(s) for s in rest) if known else None), len(sizes) or None, dtype
    return None, None, "float32"


def pt2_signature(program) -> tuple[Shape | None, int | None, int | None, str]:
    """``(sample shape, rank, batch, dtype)`` of a ``.pt2`` program's first user input."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            if val is None or val.dim() < 1:
                return None, None, None, "float32"
            dtype = "float32" if val.is_floating_point() else "int64"
            try:
                sample = tuple(int(d) for d in val.shape[1:])
            except TypeError:  # symbolic sizes
                sample = None
            batch = val.shape[0]
            return sample, val.dim(), int(batch) if isinstance(batch, int) else None, dtype
    return None, None, None, "float32"


def example_input(shape: Shape, dtype: str, *, batch: int = 1) -> torch.Tensor:
    """A batch of inputs the model can take: zeros, or for ``batch >= 2`` distinct samples
    (token ids 0, 1, ... for ``int64``; seeded normal draws for ``float32``)."""
    if dtype == "int64":
        rows = [torch.full(tuple(shape), i % 2, dtype=torch.int64) for i in range(batch)]
        return torch.stack(rows)
    if batch == 1:
        return torch.zeros(1, *shape)
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, *shape, generator=gen)


class IdsInput(nn.Module):
    """A TorchScript module (which refuses hooks) behind a forward that rounds floats to ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ids(x))


def _ids(x: object) -> object:
    return x.round().long() if isinstance(x, torch.Tensor) and x.is_floating_point() else x


def cast_inputs(module: nn.Module, dtype: str) -> nn.Module:
    """``module``, made to accept float batches (datasets, FLOPs probes) for an ``int64`` input.

    A forward pre-hook rounds float tensors to int64 before anything else sees them (it runs
    before a ``.pt2`` program's own input checks); a TorchScript module, which refuses hooks,
    is wrapped in :class:`IdsInput` (its layers are then named ``model.<name>``). Nothing
    changes for ``float32``.
    """
    if dtype != "int64":
        return module
    if isinstance(module, torch.jit.ScriptModule):
        return IdsInput(module)
    module.register_forward_pre_hook(_round_to_ids, prepend=True)
    return module


def _round_to_ids(_module: nn.Module, args: tuple) -> tuple:
    return tuple(_ids(a) for a in args)


def rounds_to_ids(module: nn.Module) -> bool:
    """True when :func:`cast_inputs` made ``module`` take token ids."""
    hooks = getattr(module, "_forward_pre_hooks", {}).values()
    return isinstance(module, IdsInput) or any(h is _round_to_ids for h in hooks)
