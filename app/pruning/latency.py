"""Measured latency: the median forward time under a time budget.

Example:
    >>> from torch import nn
    >>> ms = measure_latency(nn.Linear(4, 2), torch.zeros(1, 4), device="cpu", budget_s=0.05)
    >>> ms > 0
    True
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


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
