"""Which channel widths ONNX Runtime runs fast on this machine: the deployment half of the table.

``app.pruning.shapes`` measures PyTorch's convolutions itself; it takes other runtimes as
timers (the engine imports no ONNX Runtime). :func:`ort_conv_timer` is that timer: for every
width ``c`` it exports two 3x3 convolutions ``c -> c`` (with a ReLU between, as a pruned
block runs them), loads each file into a CPU session as deployed (``ort_latency.session``:
every graph optimisation, NCHWc layout included, no spinning threads) and times them all
interleaved. ONNX Runtime's NCHWc kernels only take channel counts that are a multiple of
their block (8 with AVX2, 16 with AVX-512); other widths fall back to plain convolutions and
reorders, which the table then shows as a higher cost per MAC.

Example:
    >>> ms = ort_conv_timer((8, 9), threads=1, budget_s=0.05, batch=2, spatial=4)
    >>> len(ms), all(v > 0 for v in ms)
    (2, True)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.modelio.ort_latency import export_onnx, session
from app.pruning.latency import time_interleaved


def _block(c: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c, c, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, bias=False),
    ).eval()


def ort_conv_timer(
    widths: tuple[int, ...],
    *,
    threads: int,
    budget_s: float,
    batch: int = 16,
    spatial: int = 8,
) -> list[float]:
    """Median milliseconds of the two-convolution block at each width, in ONNX Runtime."""
    with tempfile.TemporaryDirectory(prefix="prunelab-ort-widths-") as tmp:
        fns: list[Callable[[], object]] = []
        for c in widths:
            x = torch.zeros(1, c, spatial, spatial)
            path = export_onnx(_block(c), x, Path(tmp) / f"c{c}.onnx")
            sess = session(path, threads)
            feed = {"input": np.random.default_rng(c).normal(size=(batch, c, spatial, spatial))}
            feed["input"] = feed["input"].astype(np.float32)
            fns.append(lambda s=sess, f=feed: s.run(None, f))
        timings = time_interleaved(fns, budget_s=budget_s, threads=threads)
    return [t.median_ms for t in timings]


def runtime_timers() -> dict[str, Callable[..., list[float]]]:
    """The deployment runtimes to measure next to PyTorch (none when ONNX Runtime is missing)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return {}
    return {"onnxruntime": ort_conv_timer}
