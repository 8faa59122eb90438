"""Counting: multiply-accumulates (FLOPs), sizes of the dense and sparse serialisations, and the
per-layer table (``layer_stats``); definitions in :mod:`app.pruning.measure`.

Example:
    >>> from torch import nn
    >>> model = nn.Linear(4, 3)
    >>> count_flops(model, torch.zeros(1, 4))
    (12, 12)
    >>> with torch.no_grad():
    ...     _ = model.weight[0].zero_()
    >>> count_flops(model, torch.zeros(1, 4))
    (8, 12)
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from app.pruning.layers import exported_kinds, prunable_layers


def _hookable(model: nn.Module) -> bool:
    """Forward hooks fire on eager modules only: not in TorchScript (also wrapped, as a token-id
    model's ``IdsInput``), not in an exported graph (which calls the ops directly)."""
    scripted = any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())
    return not scripted and not exported_kinds(model)


def device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.inference_mode()
def _flops_by_layer(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """``{layer: (effective MACs, dense MACs)}`` per sample, from real output shapes."""
    result: dict[str, tuple[int, int]] = {}
    hooks = []
    if not _hookable(model):
        return result  # per-layer FLOPs unknown for code formats (count_flops still counts)

    def hook(name: str) -> Callable:
        def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            units = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            positions = output[0].numel() // units  # output positions (pixels, tokens) per unit
            w = module.weight
            eff, dense = int(torch.count_nonzero(w)) * positions, w.numel() * positions
            old = result.get(name, (0, 0))
            result[name] = (old[0] + eff, old[1] + dense)  # a reused layer counts every call

        return record

    for name, module in prunable_layers(model).items():
        hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(example[:1].to(device_of(model)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return result


def _scripted_flops(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """TorchScript and exported programs take no hooks: dense MACs from the dispatcher, scaled
    by weight density."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(example[:1].to(device_of(model)))
    dense = counter.get_total_flops() // 2  # the counter reports 2 FLOPs per MAC
    weights = [m.weight for m in prunable_layers(model).values()]
    total = sum(w.numel() for w in weights)
    density = sum(int(torch.count_nonzero(w)) for w in weights) / total if total else 1.0
    return round(dense * density), dense


def count_flops(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """``(effective, dense)`` multiply-accumulates of one sample through Conv/Linear layers.

    For TorchScript models (no forward hooks) the dense count comes from
    ``torch.utils.flop_counter`` and the effective one is scaled by the overall weight density.
    """
    if not _hookable(model):
        return _scripted_flops(model, example)
    per_layer = _flops_by_layer(model, example).values()
    return sum(e for e, _ in per_layer), sum(d for _, d in per_layer)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def dense_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict serialised with safetensors."""
    return len(safetensors_save(_cpu_state(model)))


def sparse_size_bytes(model: nn.Module) -> int:
    """Bytes of a zlib-compressed bitmask + non-zero-values encoding of the state dict."""
    header, chunks = [], []
    for name, t in _cpu_state(model).items():
        arr = t.numpy() if t.dtype != torch.bfloat16 else t.float().numpy()
        flat = arr.reshape(-1)
        nonzero = flat != 0
        header.append([name, list(arr.shape), str(arr.dtype)])
        chunks += [np.packbits(nonzero).tobytes(), flat[nonzero].tobytes()]
    blob = json.dumps(header).encode() + b"".join(chunks)
    return len(zlib.compress(blob, 6))


def layer_stats(
    model: nn.Module,
    *,
    thresholds: Mapping[str, float | None] | None = None,
    requested: Mapping[str, float] | None = None,
    input_shape: tuple[int, ...],
    input_dtype: str = "float32",
) -> list[dict]:
    """One row per prunable layer: shape, weight counts, sparsity, effective FLOPs, threshold.

    Args:
        model: the model.
        thresholds: the magnitude threshold used per layer, if any.
        requested: the requested sparsity per layer, if any.
        input_shape: one sample's shape (no batch dimension), for the FLOPs pass.
        input_dtype: ``"int64"`` feeds the FLOPs pass token ids (zeros), else floats.

    Returns:
        ``[{"layer", "kind", "shape", "n_params", "n_nonzero", "sparsity", "requested",
        "threshold", "flops", "flops_dense"}]``; counts are of the ``weight`` tensor.
    """
    device = device_of(model)
    dtype = torch.int64 if input_dtype == "int64" else torch.float32
    flops = _flops_by_layer(model, torch.zeros(1, *input_shape, device=device, dtype=dtype))
    from app.pruning.layers import layer_kinds

    kinds = layer_kinds(model)
    rows = []
    for name, m in prunable_layers(model).items():
        w = m.weight
        nnz = int(torch.count_nonzero(w))
        eff, dense = flops.get(name, (None, None))
        rows.append(
            {
                "layer": name,
                "kind": kinds.get(name, type(m).__name__),
                "shape": list(w.shape),
                "n_params": w.numel(),
                "n_nonzero": nnz,
                "sparsity": 1.0 - nnz / w.numel(),
                "requested": (requested or {}).get(name),
                "threshold": (thresholds or {}).get(name),
                "flops": eff,
                "flops_dense": dense,
            }
        )
    return rows
