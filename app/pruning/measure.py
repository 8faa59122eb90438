"""The fixed metric vocabulary: quality, parameters, FLOPs, file sizes and measured latency.

Definitions (the same before and after pruning, so runs compare):

* ``sparsity``: fraction of exactly-zero weights over the prunable layers' weights
  (Conv/Linear ``weight`` tensors; biases and norm layers excluded).
* ``n_params`` / ``n_nonzero``: all parameters of the model / those that are not zero.
* ``flops``: effective multiply-accumulates per sample of the Conv/Linear layers, counting
  only non-zero weights (``nnz(W) * output positions``); a physically pruned model is simply
  smaller. ``flops_dense`` counts every weight. Norms, activations and pooling are not counted.
* ``size_bytes``: bytes of the dense safetensors serialisation of the state dict.
* ``sparse_size_bytes``: a real sparse encoding (per tensor: ``np.packbits`` of the non-zero
  bitmask + the non-zero values), zlib-compressed; the bytes of that blob.
* ``latency_ms``: median wall time of one forward pass at batch 1 under
  ``torch.inference_mode`` on the given device, after warm-up, repeats capped by a time budget;
  ``latency_ms_batch`` the same at batch ``batch`` (256 by default).
* ``compression``: baseline non-zero parameters / these non-zero parameters (1.0 without one).
"""

from __future__ import annotations

import json
import statistics
import time
import zlib
from collections.abc import Callable, Mapping

import numpy as np
import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from app.pruning.data import ArrayDataset

METRICS = (
    "accuracy",
    "loss",
    "sparsity",
    "n_params",
    "n_nonzero",
    "flops",
    "size_bytes",
    "sparse_size_bytes",
    "latency_ms",
    "compression",
)
MAX_BINS = 64


def prunable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every prunable layer's weight (for the before/after histograms)."""
    return {n: m.weight.detach().clone().cpu() for n, m in _prunable(model).items()}


def _prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Conv/Linear layers, TorchScript and torch.export ones included (one source of truth)."""
    from app.pruning.granularity import prunable_layers

    return prunable_layers(model)


def _hookable(model: nn.Module) -> bool:
    """Forward hooks fire on eager modules only: not in TorchScript, not in an exported graph
    (which calls the ops directly)."""
    from app.pruning.granularity import _exported_kinds

    return not isinstance(model, torch.jit.ScriptModule) and not _exported_kinds(model)


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.inference_mode()
def evaluate(
    model: nn.Module, data: ArrayDataset, *, device: str = "cpu", batch_size: int = 512
) -> dict[str, float]:
    """Accuracy and mean cross-entropy loss on the test split.

    Args:
        model: a classifier returning logits; put in eval mode for the pass, then restored.
        data: the dataset; its ``test`` split is used.
        device: where to run.
        batch_size: evaluation batch size.

    Returns:
        ``{"accuracy": float in [0, 1], "loss": float}``.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        for xb, yb in data.loader("test", batch_size, shuffle=False):
            xb, yb = xb.to(device), yb.to(device)
            logits = model(xb)
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
            n += int(yb.numel())
    finally:
        model.train(was_training)
    return {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1)}


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

    for name, module in _prunable(model).items():
        hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(example[:1].to(_device_of(model)))
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
        model(example[:1].to(_device_of(model)))
    dense = counter.get_total_flops() // 2  # the counter reports 2 FLOPs per MAC
    weights = [m.weight for m in _prunable(model).values()]
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


def measure_latency(
    model: nn.Module, x: torch.Tensor, *, device: str = "cpu", budget_s: float = 0.5
) -> float:
    """Median milliseconds of ``model(x)`` after warm-up; repeats stop at ``budget_s``."""
    dev = torch.device(device)
    x = x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            sync()
            deadline = time.perf_counter() + budget_s
            while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
                start = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(times)


def _batch_of(data: ArrayDataset, n: int) -> torch.Tensor:
    x = data.sample_batch(min(n, data.n_train))
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n]


def measure(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: str = "cpu",
    baseline_nonzero: int | None = None,
    latency: bool = True,
    large_batch: int = 256,
    latency_budget_s: float = 0.5,
) -> dict:
    """Every metric of ``METRICS`` plus ``flops_dense``, ``latency_ms_batch`` and ``batch``.

    Args:
        model: the model to measure (already on ``device``).
        data: the dataset (test split for quality, training inputs for FLOPs/latency).
        device: where to run.
        baseline_nonzero: the unpruned model's ``n_nonzero``, for ``compression``.
        latency: False skips the timing (``latency_ms`` and ``latency_ms_batch`` are None).
        large_batch: the batch size of ``latency_ms_batch``.
        latency_budget_s: wall-time cap per latency measurement.

    Returns:
        A flat dict of JSON numbers (see the module docstring for each definition).

    Example:
        >>> base = measure(model, data)
        >>> after = measure(pruned, data, baseline_nonzero=base["n_nonzero"])
    """
    weights = [m.weight for m in _prunable(model).values()]
    n_weights = sum(w.numel() for w in weights)
    zero_weights = sum(w.numel() - int(torch.count_nonzero(w)) for w in weights)
    params = list(model.parameters())
    n_nonzero = sum(int(torch.count_nonzero(p)) for p in params)
    flops, flops_dense = count_flops(model, data.sample_batch(1))
    result = {
        **evaluate(model, data, device=device),
        "sparsity": zero_weights / n_weights if n_weights else 0.0,
        "n_params": sum(p.numel() for p in params),
        "n_nonzero": n_nonzero,
        "flops": flops,
        "flops_dense": flops_dense,
        "size_bytes": dense_size_bytes(model),
        "sparse_size_bytes": sparse_size_bytes(model),
        "latency_ms": None,
        "latency_ms_batch": None,
        "batch": int(large_batch),
        "compression": baseline_nonzero / n_nonzero if baseline_nonzero and n_nonzero else 1.0,
    }
    if latency:
        result["latency_ms"] = measure_latency(
            model, data.sample_batch(1), device=device, budget_s=latency_budget_s
        )
        result["latency_ms_batch"] = measure_latency(
            model, _batch_of(data, large_batch), device=device, budget_s=latency_budget_s
        )
    return result


def layer_stats(
    model: nn.Module,
    *,
    thresholds: Mapping[str, float | None] | None = None,
    requested: Mapping[str, float] | None = None,
    input_shape: tuple[int, ...],
) -> list[dict]:
    """One row per prunable layer: shape, weight counts, sparsity, effective FLOPs, threshold.

    Args:
        model: the model.
        thresholds: the magnitude threshold used per layer, if any.
        requested: the requested sparsity per layer, if any.
        input_shape: one sample's shape (no batch dimension), for the FLOPs pass.

    Returns:
        ``[{"layer", "kind", "shape", "n_params", "n_nonzero", "sparsity", "requested",
        "threshold", "flops", "flops_dense"}]``; counts are of the ``weight`` tensor.
    """
    device = _device_of(model)
    flops = _flops_by_layer(model, torch.zeros(1, *input_shape, device=device))
    from app.pruning.granularity import layer_kinds

    kinds = layer_kinds(model)
    rows = []
    for name, m in _prunable(model).items():
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


def histograms(
    before: Mapping[str, torch.Tensor],
    after_prune: Mapping[str, torch.Tensor] | None,
    after_finetune: Mapping[str, torch.Tensor] | None,
    thresholds: Mapping[str, float | None] | None,
    bins: int = 60,
) -> list[dict]:
    """Weight histograms per layer and phase, on edges shared by the phases of a layer.

    Edges span the ``before`` weights' range; later values outside it are clipped into the end
    bins so every weight is counted. After pruning, exactly-zero (pruned) weights are left out
    of ``counts`` and reported as ``zeros``, which shows the gap around zero (Han et al. 2015).

    Args:
        before: ``{layer: weight}`` before pruning.
        after_prune: the same layers right after pruning (None to skip the phase).
        after_finetune: after fine-tuning (None to skip).
        thresholds: the magnitude threshold per layer, drawn on the chart.
        bins: number of bins (at most 64, so a layer's rows fit one DB row).

    Returns:
        ``[{"layer", "phase", "edges", "counts", "zeros", "threshold"}]``.
    """
    bins = max(1, min(int(bins), MAX_BINS))
    phases = (("before", before), ("after_prune", after_prune), ("after_finetune", after_finetune))
    rows = []
    for layer, w0 in before.items():
        values0 = w0.detach().float().cpu().numpy().ravel()
        lo, hi = (float(values0.min()), float(values0.max())) if values0.size else (0.0, 0.0)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        for phase, weights in phases:
            if weights is None or layer not in weights:
                continue
            values = weights[layer].detach().float().cpu().numpy().ravel()
            zeros = 0
            if phase != "before":
                zeros = int((values == 0).sum())
                values = values[values != 0]
            counts, _ = np.histogram(np.clip(values, lo, hi), bins=edges)
            rows.append(
                {
                    "layer": layer,
                    "phase": phase,
                    "edges": [float(e) for e in edges],
                    "counts": [int(c) for c in counts],
                    "zeros": zeros,
                    "threshold": (thresholds or {}).get(layer),
                }
            )
    return rows
