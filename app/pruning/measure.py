"""The fixed metric vocabulary: quality, parameters, FLOPs, file sizes and measured latency.

Definitions (the same before and after pruning, so runs compare):

* ``accuracy`` / ``loss``: test accuracy and mean cross-entropy; on a language-modelling
  dataset next-token accuracy and mean next-token NLL, with ``perplexity = exp(loss)`` (lower
  is better; only language-modelling runs have it, see ``task.py``).
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
  ``latency_ms_batch`` the same at batch ``batch`` (256 by default). ``latency_ms_iqr`` and
  ``latency_ms_batch_iqr`` are their interquartile ranges, ``latency_threads`` the intra-op
  thread count they ran with (``latency.py``).
* ``compression``: baseline non-zero parameters / these non-zero parameters (1.0 without one).
"""

from __future__ import annotations

import torch
from torch import nn

from app.pruning.counts import count_flops, dense_size_bytes, sparse_size_bytes
from app.pruning.data import ArrayDataset
from app.pruning.latency import latency_stats
from app.pruning.layers import prunable_layers
from app.pruning.task import n_correct, perplexity, token_loss

METRICS = (  # every run's; a language-modelling run adds "perplexity" (and "val_perplexity")
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


def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: str = "cpu",
    batch_size: int = 512,
    split: str = "test",
) -> dict[str, float]:
    """Accuracy and mean cross-entropy loss on the test split (or ``split``); ``perplexity``
    too on a language-modelling dataset (next-token accuracy and loss, ``task.py``).

    Args:
        model: a classifier returning logits (or a causal language model returning
            ``[batch, length, vocab]`` logits); put in eval mode for the pass (without
            gradients), then restored.
        data: the dataset; its ``test`` split is used unless ``split`` says ``"val"``.
        device: where to run.
        batch_size: evaluation batch size.
        split: ``"test"`` or ``"val"``.

    Returns:
        ``{"accuracy": float in [0, 1], "loss": float}``, plus ``"perplexity"`` (``exp(loss)``)
        for a language-modelling dataset.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    try:
        with torch.no_grad():  # no graph: less memory, and no scalar-of-a-grad-tensor warning
            for xb, yb in data.loader(split, batch_size, shuffle=False):
                xb, yb = xb.to(device), yb.to(device)
                out = model(xb)
                loss_sum += float(token_loss(out, yb, reduction="sum"))
                correct += n_correct(out, yb)
                n += int(yb.numel())
    finally:
        model.train(was_training)
    result = {"accuracy": correct / max(n, 1), "loss": loss_sum / max(n, 1)}
    if data.task == "language_model":
        result["perplexity"] = perplexity(result["loss"])
    return result


def batch_of(data: ArrayDataset, n: int) -> torch.Tensor:
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
    """Every metric of ``METRICS`` plus ``flops_dense``, ``latency_ms_batch``, ``batch`` and spreads.

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
        >>> import numpy as np
        >>> from app.pruning.data import ArrayDataset
        >>> x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
        >>> data = ArrayDataset("toy", x, np.arange(20) % 2, x, np.arange(20) % 2, 2)
        >>> model = nn.Linear(6, 2)
        >>> base = measure(model, data, latency=False)
        >>> with torch.no_grad():
        ...     _ = model.weight[:, :3].zero_()
        >>> after = measure(model, data, baseline_nonzero=base["n_nonzero"], latency=False)
        >>> after["sparsity"], round(after["compression"], 2), after["latency_ms"] is None
        (0.5, 1.75, True)
    """
    weights = [m.weight for m in prunable_layers(model).values()]
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
        "latency_ms_iqr": None,
        "latency_ms_batch_iqr": None,
        "latency_threads": None,
        "batch": int(large_batch),
        "compression": baseline_nonzero / n_nonzero if baseline_nonzero and n_nonzero else 1.0,
    }
    if data.has_val:  # the run chooses on these (``validation.py``); test is only reported
        val = evaluate(model, data, device=device, split="val")
        result["val_accuracy"], result["val_loss"] = val["accuracy"], val["loss"]
        if "perplexity" in val:
            result["val_perplexity"] = val["perplexity"]
    if latency:
        one = latency_stats(model, data.sample_batch(1), device=device, budget_s=latency_budget_s)
        big = latency_stats(
            model, batch_of(data, large_batch), device=device, budget_s=latency_budget_s
        )
        result |= {
            "latency_ms": one.median_ms,
            "latency_ms_iqr": one.iqr_ms,
            "latency_ms_batch": big.median_ms,
            "latency_ms_batch_iqr": big.iqr_ms,
            "latency_threads": one.threads,
        }
    return result
