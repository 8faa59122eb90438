"""Refuse, at upload, a model that runs on one sample but not on a batch.

Runs feed batches (evaluation, calibration, fine-tuning), so a file whose batch size is fixed
at export passes a batch-1 check and then fails every run. The preflight therefore also runs
a batch of two different samples; a model that cannot take it is refused with the export call
that makes the batch dynamic. (ONNX files fixed at batch 1 are first rewritten where that is
safe, see ``onnx_batch``.)

Example:
    >>> class FixedBatch(nn.Module):
    ...     def forward(self, x):
    ...         return x.view(1, -1)  # traced code that fixes the batch
    >>> loaded = LoadedModel(FixedBatch(), "torchscript", (4,), False)
    >>> check_batch_of_two(loaded.module, loaded)
    Traceback (most recent call last):
    ...
    app.errors.Invalid: the model returns an output of shape [1, 8] for a batch of 2: ...
"""

from __future__ import annotations

import torch
from torch import nn

from app.errors import Invalid
from app.modelio.load import LoadedModel
from app.modelio.signature import example_input

EXPORT_HINTS = {
    "onnx": (
        'export it with a dynamic batch: torch.onnx.export(model, (example,), "model.onnx", '
        'input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}, '
        '"output": {0: "batch"}}, dynamo=False, opset_version=17), or with the default '
        "dynamo exporter from an example batch of 2: "
        'dynamic_shapes=({0: torch.export.Dim("batch")},)'
    ),
    "pt2": (
        "export it with a dynamic batch from an example batch of 2 or more: "
        'torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))'
    ),
    "torchscript": (
        "save it with torch.jit.script(model), or trace code that does not fix the batch "
        "(x.flatten(1) rather than x.view(1, -1))"
    ),
}


def hint(fmt: str) -> str:
    return EXPORT_HINTS.get(fmt, "check input_shape")


def check_fixed_batch(loaded: LoadedModel) -> None:
    """Refuse a ``.pt2`` program exported for one batch size larger than 1."""
    if loaded.example_batch > 1:
        raise Invalid(
            f"the {loaded.format} program was exported for a batch of exactly "
            f"{loaded.example_batch}, but runs feed batches of every size; {hint(loaded.format)}"
        )


def check_batch_of_two(model: nn.Module, loaded: LoadedModel) -> None:
    """Run two different samples as one batch; refuse the model if that fails."""
    assert loaded.input_shape is not None
    x = example_input(loaded.input_shape, loaded.input_dtype, batch=2)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise Invalid(
            f"the model runs on one sample but fails on a batch of 2 ({type(exc).__name__}: "
            f"{text}); runs feed batches, so {hint(loaded.format)}"
        ) from exc
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if isinstance(out, torch.Tensor) and (out.dim() == 0 or out.shape[0] != 2):
        raise Invalid(
            f"the model returns an output of shape {list(out.shape)} for a batch of 2: its "
            f"batch size is fixed; {hint(loaded.format)}"
        )
