"""Measured latency the way ``torch.utils.benchmark`` does it: warm-up, fixed threads, spread.

A :class:`Timing` is the median of repeated blocked measurements (each block runs the model
enough times to last about a millisecond, so timer resolution does not matter) with its
interquartile range, the relative half-width of a 95% confidence interval of the median
(distribution-free, from order statistics: :func:`median_ci_rel`) and the thread count it ran
with. Blocks repeat until every median's interval is within ``TARGET_CI`` (5%) or the time cap
``budget_s`` is spent: a quiet machine stops early, a noisy one uses the whole cap. :func:`time_interleaved` times several
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
MAX_REPEATS = 1000
TARGET_CI = 0.05  # stop once every median's 95% CI half-width is within 5% of it
MIN_CI_REPEATS = 12  # fewer samples give an interval as wide as their range
RATIO_CI = 0.02  # a paired ratio's 95% CI half-width: a budget's band is 10% wide


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, first and third quartile, repeats, threads used."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    threads: int
    ci_rel: float | None = None

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


def median_ci_rel(samples: list[float]) -> float:
    """Half the width of a 95% confidence interval of the median, over the median.

    The interval runs between the order statistics ``n/2 -/+ 0.98 sqrt(n)`` (the normal
    approximation of the binomial, rounded outwards), so it holds whatever the distribution.

    Example:
        >>> median_ci_rel([10.0] * 20)
        0.0
        >>> round(median_ci_rel([float(v) for v in range(90, 111)]), 3)
        0.05
    """
    s = sorted(samples)
    n = len(s)
    med = statistics.median(s)
    if n < 2 or med <= 0:
        return math.inf
    lo = max(1, math.floor(n / 2 - 0.98 * math.sqrt(n)))
    hi = min(n, math.ceil(n / 2 + 1 + 0.98 * math.sqrt(n)))
    return (s[hi - 1] - s[lo - 1]) / (2 * med)


def _summary(samples: list[float], threads: int) -> Timing:
    ci = round(median_ci_rel(samples), 4) if len(samples) >= MIN_CI_REPEATS else None
    if len(samples) < 4:
        med = statistics.median(samples)
        return Timing(med, min(samples), max(samples), len(samples), threads, ci)
    q1, med, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return Timing(med, q1, q3, len(samples), threads, ci)


def _stable(samples: list[list[float]], target_ci: float) -> bool:
    """Every median's 95% interval within ``target_ci`` of it (enough samples for one)."""
    return all(len(s) >= MIN_CI_REPEATS and median_ci_rel(s) <= target_ci for s in samples)


def _round_robin(
    fns: list[Callable[[], object]],
    *,
    budget_s: float,
    threads: int | None,
    sync: Callable[[], None],
    min_repeats: int,
    done: Callable[[list[list[float]]], bool],
    cpu: bool = False,
) -> tuple[list[list[float]], int]:
    """Milliseconds per call of each callable, one block of each per round (the order rotates
    every round), until ``done(samples)``, ``budget_s`` or ``MAX_REPEATS`` (at least
    ``min_repeats`` rounds); and the thread count used. ``cpu``: the blocks are timed in the
    calling thread's CPU time (the time limit stays wall-clock)."""
    with fixed_threads(threads) as n_threads:
        clock = time.thread_time if cpu else time.perf_counter
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
        while rounds < min_repeats or (
            time.perf_counter() < deadline and rounds < MAX_REPEATS and not done(samples)
        ):
            order = list(range(len(fns)))
            order = order[rounds % len(fns) :] + order[: rounds % len(fns)]
            for i in order:
                start = clock()
                for _ in range(numbers[i]):
                    fns[i]()
                sync()
                samples[i].append((clock() - start) * 1000.0 / numbers[i])
            rounds += 1
    return samples, n_threads


def time_interleaved(
    fns: list[Callable[[], object]],
    *,
    budget_s: float = 0.5,
    threads: int | None = None,
    sync: Callable[[], None] = lambda: None,
    min_repeats: int = MIN_REPEATS,
    target_ci: float = TARGET_CI,
    cpu: bool = False,
) -> list[Timing]:
    """One :class:`Timing` per callable, timed round-robin after two warm-up calls each.

    Each round times one block of every callable (the order rotates every round); rounds go
    on until every median's 95% interval is within ``target_ci`` of it or ``budget_s`` is
    spent (at least ``min_repeats`` rounds, at most ``MAX_REPEATS``). ``target_ci=0`` times
    for the whole ``budget_s``. ``cpu``: in the calling thread's CPU time (see
    :func:`time_ratios`).
    """
    samples, n_threads = _round_robin(
        fns,
        budget_s=budget_s,
        threads=threads,
        sync=sync,
        min_repeats=min_repeats,
        done=lambda s: target_ci > 0 and _stable(s, target_ci),
        cpu=cpu,
    )
    return [_summary(s, n_threads) for s in samples]


def _paired(samples: list[list[float]]) -> list[list[float]]:
    """Each callable after the first: its time over the first's in the same round."""
    return [[t / d for t, d in zip(s, samples[0], strict=False)] for s in samples[1:]]


def time_ratios(
    fns: list[Callable[[], object]],
    *,
    budget_s: float = 1.0,
    threads: int | None = None,
    sync: Callable[[], None] = lambda: None,
    target_ci: float = RATIO_CI,
    cpu: bool | None = None,
) -> list[Timing]:
    """For each callable after the first, the median over rounds of its time divided by the
    first's time in the same round (a :class:`Timing` of ratios, not milliseconds).

    With one thread (``cpu=None``) or ``cpu=True``, each call is timed in the calling
    thread's CPU time: on a machine shared with other processes, the time they hold the cores
    counts in wall time and not in CPU time. On this 2-core machine under load 4-6, the
    pruned/original ratio of the same pair spread by 25-30% over six 1-second wall-clock
    timings (ratio of medians or median of paired ratios alike) and by 3-6% in CPU time.
    With more threads the workers' time is not the calling thread's, so wall time is used;
    pairs timed a few milliseconds apart still see much the same load.
    Rounds go on until every ratio's 95% interval is within ``target_ci`` or ``budget_s``.

    Example:
        >>> r = time_ratios([lambda: sum(range(2000)), lambda: sum(range(1000))], budget_s=0.1)
        >>> 0.2 < r[0].median_ms < 1.5
        True
    """
    samples, n_threads = _round_robin(
        fns,
        budget_s=budget_s,
        threads=threads,
        sync=sync,
        min_repeats=MIN_CI_REPEATS,
        done=lambda s: _stable(_paired(s), target_ci),
        cpu=cpu if cpu is not None else int(threads or torch.get_num_threads()) == 1,
    )
    return [_summary(r, n_threads) for r in _paired(samples)]


@contextmanager
def _calls(models: list[nn.Module], x: torch.Tensor, device: str) -> Iterator[tuple]:
    """``(callables running model(x) in inference mode, sync)``; training modes restored."""
    dev = torch.device(device)
    x = x.to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.inference_mode():
            yield [(lambda m=m: m(x)) for m in models], sync
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def time_models(
    models: list[nn.Module],
    x: torch.Tensor,
    *,
    device: str = "cpu",
    budget_s: float = 0.5,
    threads: int | None = None,
    cpu: bool = False,
) -> list[Timing]:
    """Interleaved :class:`Timing` of ``model(x)`` for each model, in eval and inference mode
    (``cpu``: in the calling thread's CPU time)."""
    with _calls(models, x, device) as (fns, sync):
        return time_interleaved(fns, budget_s=budget_s, threads=threads, sync=sync, cpu=cpu)


def model_ratios(
    models: list[nn.Module],
    x: torch.Tensor,
    *,
    device: str = "cpu",
    budget_s: float = 1.0,
    threads: int | None = None,
) -> list[Timing]:
    """:func:`time_ratios` of ``model(x)``: each model after the first over the first (in CPU
    time with one thread on the CPU, else wall time)."""
    cpu = None if torch.device(device).type == "cpu" else False
    with _calls(models, x, device) as (fns, sync):
        return time_ratios(fns, budget_s=budget_s, threads=threads, sync=sync, cpu=cpu)


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
