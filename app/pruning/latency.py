"""Measured latency the way ``torch.utils.benchmark`` does it: warm-up, fixed threads, spread.

A :class:`Timing` is the median of repeated blocked measurements (each block runs the model
enough times to last about a millisecond, so timer resolution does not matter) with its
interquartile range and the thread count it ran with. :func:`time_interleaved` times several
callables round-robin in one process, so load on a shared machine hits them alike; that is
how a dense and a pruned model are compared (``speedup.py``). :func:`speedup` gives no number
when the two interquartile intervals overlap: the difference is not measurable.

Example:
    >>> from torch import nn
    >>> ms = measure_latency(nn.Linear(4, 2), torch.zeros(1, 4), device="cpu", budget_s=0.05)
    >>> ms > 0
    True
    >>> speedup(Timing(10.0, 9.0, 11.0, 9, 1), Timing(5.0, 4.5, 5.5, 9, 1))
    2.0
    >>> speedup(Timing(10.0, 9.0, 11.0, 9, 1), Timing(9.5, 9.0, 10.5, 9, 1)) is None
    True
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

BLOCK_S = 0.001  # one measurement lasts at least this long (timer noise << 1%)
MIN_REPEATS = 7
MAX_REPEATS = 200


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, first and third quartile, repeats, threads used."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    threads: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "iqr_ms": self.iqr_ms}


def speedup(dense: Timing, pruned: Timing) -> float | None:
    """``dense / pruned`` medians, or None when their interquartile intervals overlap."""
    if dense.q1_ms <= pruned.q3_ms and pruned.q1_ms <= dense.q3_ms:
        return None
    return round(dense.median_ms / pruned.median_ms, 4)


@contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (the current count when None), then restore."""
    before = torch.get_num_threads()
    n = before if threads is None else max(1, int(threads))
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def _summary(samples: list[float], threads: int) -> Timing:
    if len(samples) < 4:
        med = statistics.median(samples)
        return Timing(med, min(samples), max(samples), len(samples), threads)
    q1, med, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(med, q1, q3, len(samples), threads)


def time_interleaved(
    fns: list[Callable[[], object]],
    *,
    budget_s: float = 0.5,
    threads: int | None = None,
    sync: Callable[[], None] = lambda: None,
    min_repeats: int = MIN_REPEATS,
) -> list[Timing]:
    """One :class:`Timing` per callable, timed round-robin after two warm-up calls each.

    Each round times one block of every callable (the order rotates every round); rounds go
    on until ``budget_s`` is spent (at least ``min_repeats``, at most ``MAX_REPEATS``).
    """
    with fixed_threads(threads) as n_threads:
        numbers = []
        for fn in fns:
            fn(), fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            one = time.perf_counter() - start
            numbers.append(max(1, min(1000, math.ceil(BLOCK_S / max(one, 1e-7)))))
        samples: list[list[float]] = [[] for _ in fns]
        deadline = time.perf_counter() + budget_s
        rounds = 0
        while rounds < min_repeats or (time.perf_counter() < deadline and rounds < MAX_REPEATS):
            order = list(range(len(fns)))
            order = order[rounds % len(fns) :] + order[: rounds % len(fns)]
            for i in order:
                start = time.perf_counter()
                for _ in range(numbers[i]):
                    fns[i]()
                sync()
                samples[i].append((time.perf_counter() - start) * 1000.0 / numbers[i])
            rounds += 1
    return [_summary(s, n_threads) for s in samples]


def time_models(
    models: list[nn.Module],
    x: torch.Tensor,
    *,
    device: str = "cpu",
    budget_s: float = 0.5,
    threads: int | None = None,
) -> list[Timing]:
    """Interleaved :class:`Timing` of ``model(x)`` for each model, in eval and inference mode."""
    dev = torch.device(device)
    x = x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.inference_mode():
            fns = [(lambda m=m: m(x)) for m in models]
            return time_interleaved(fns, budget_s=budget_s, threads=threads, sync=sync)
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def latency_stats(
    model: nn.Module, x: torch.Tensor, *, device: str = "cpu", budget_s: float = 0.5
) -> Timing:
    """The :class:`Timing` of one model."""
    return time_models([model], x, device=device, budget_s=budget_s)[0]


def measure_latency(
    model: nn.Module, x: torch.Tensor, *, device: str = "cpu", budget_s: float = 0.5
) -> float:
    """Median milliseconds of ``model(x)`` after warm-up; repeats stop at ``budget_s``."""
    return latency_stats(model, x, device=device, budget_s=budget_s).median_ms
