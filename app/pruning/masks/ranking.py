"""Exact, low-memory selection of the k lowest scores across layers (a global ranking).

Example:
    >>> import torch
    >>> chosen, cut = global_lowest([torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.5, 9.0])], 2)
    >>> [c.tolist() for c in chosen], cut
    ([[False, True], [False, True, False]], 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor


def global_lowest(scores: list[Tensor], k: int) -> tuple[list[Tensor], float | None]:
    """Exactly the ``k`` lowest entries across several tensors of scores.

    A sample of about 2^18 entries brackets the k-th value; one pass per tensor counts
    the entries below the bracket and gathers the few inside it; ``np.partition`` on those
    gives the exact cut. Only per-tensor temporaries are allocated (no concatenation of
    all scores, no full sort), unlike ``torch.quantile`` (refuses more than 2^24 entries)
    or ``torch.topk`` with a huge ``k``. Ties at the cut are broken by position (earlier
    tensors and lower flat indices are selected first).

    Args:
        scores: float tensors without NaN.
        k: how many entries to select, 0 <= k <= total.

    Returns:
        (bool tensors shaped like ``scores``, True = among the k lowest; the k-th value or None).
    """
    # numpy on CPU views (no copies): its compare/count/select loops are several times
    # faster than torch's for these one-pass reductions.
    flat = [s.detach().float().cpu().reshape(-1).numpy() for s in scores]
    if k <= 0:
        return [torch.zeros(s.shape, dtype=torch.bool) for s in scores], None
    ranked = _Ranked(flat, [None] * len(flat), absolute=False)
    return _lowest(ranked, k, [s.shape for s in scores])


def global_lowest_abs(
    weights: list[Tensor], forced: list[Tensor | None], k: int
) -> tuple[list[Tensor], float | None]:
    """:func:`global_lowest` of ``|w|`` (``+inf`` where ``forced``), never materialising ``|w|``.

    The weights are read in chunks of ``CHUNK`` entries through one reused float buffer:
    one pass counts and gathers around a sampled bracket, one pass writes the selection
    straight into preallocated bool arrays. Same selection, ties and cut as
    ``global_lowest([torch.where(f, inf, w.abs()) ...], k)``.

    Args:
        weights: float32 CPU tensors without NaN.
        forced: per tensor, None or a bool tensor of its shape (entries ranked last).
        k: how many entries to select, 0 <= k <= total.
    """
    flat = [w.detach().reshape(-1).numpy() for w in weights]
    if k <= 0:
        return [torch.zeros(w.shape, dtype=torch.bool) for w in weights], None
    masks = [None if f is None else f.reshape(-1).numpy() for f in forced]
    return _lowest(_Ranked(flat, masks, absolute=True), k, [w.shape for w in weights])


CHUNK = 1 << 20  # entries per chunk (4 MiB of float32: stays in cache between the steps)


class _Ranked:
    """Read-only ranks of several flat arrays: the values, or |values| with +inf where forced,
    produced chunk by chunk into one reused buffer."""

    def __init__(
        self, flat: list[np.ndarray], forced: list[np.ndarray | None], *, absolute: bool
    ) -> None:
        self.flat, self.forced, self.absolute = flat, forced, absolute
        self.total = sum(f.size for f in flat)
        size = min(CHUNK, max(f.size for f in flat)) if absolute else 0
        self.buf, self.tmp = np.empty(size, np.float32), np.empty(size, bool)

    def rank(
        self, i: int, a: int, b: int, step: int = 1, out: np.ndarray | None = None
    ) -> np.ndarray:
        w = self.flat[i][a:b:step]
        if not self.absolute:
            return w
        r = np.abs(w, out=out) if out is not None else np.abs(w)
        if self.forced[i] is not None:
            np.copyto(r, np.inf, where=self.forced[i][a:b:step])
        return r

    def chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(tensor index, start, ranks of the chunk) for every chunk, in order."""
        for i, f in enumerate(self.flat):
            step = CHUNK if self.absolute else max(f.size, 1)
            for a in range(0, f.size, step):
                b = min(a + step, f.size)
                yield i, a, self.rank(i, a, b, out=self.buf[: b - a] if self.absolute else None)

    def bracket(self, k: int) -> tuple[float, float]:
        stride = max(1, self.total // (1 << 18))
        parts = [self.rank(i, 0, f.size, stride) for i, f in enumerate(self.flat)]
        sample = np.sort(np.concatenate(parts))
        q, n = min(k / self.total, 1.0), sample.size
        margin = 6.0 * (n * q * (1 - q)) ** 0.5 + 16
        lo_i, hi_i = int(q * n - margin), int(q * n + margin) + 1
        return (
            float(sample[lo_i]) if lo_i >= 0 else -np.inf,
            float(sample[hi_i]) if hi_i < n else np.inf,
        )

    def split(
        self, lo: float, hi: float, out: list[np.ndarray]
    ) -> tuple[int, np.ndarray, list[tuple[int, np.ndarray]]]:
        """One pass: ``out`` = rank < lo; returns that count and the values and (tensor,
        index) of the entries in [lo, hi], in positional order."""
        below, vals, where = 0, [], []
        for i, a, r in self.chunks():
            sure = np.less(r, lo, out=out[i][a : a + r.size])
            below += int(np.count_nonzero(sure))
            inside = np.less_equal(r, hi, out=self.tmp[: r.size] if self.absolute else None)
            idx = np.flatnonzero(np.logical_xor(inside, sure, out=inside))  # lo <= r <= hi
            vals.append(r[idx])
            where.append((i, idx + a))
        return below, np.concatenate(vals), where


def _lowest(ranked: _Ranked, k: int, shapes: list[torch.Size]) -> tuple[list[Tensor], float]:
    """Select below the sampled bracket in one pass, then decide the few entries inside it."""
    lo, hi = ranked.bracket(k)
    out = [np.empty(f.size, bool) for f in ranked.flat]
    while True:
        below, cand, where = ranked.split(lo, hi, out)
        need = k - below
        if need < 1:
            lo = -np.inf
            continue
        if need <= cand.size:
            break
        hi = np.inf
    cut = float(np.partition(cand, need - 1)[need - 1])
    chosen = cand <= cut
    ties = np.flatnonzero(cand == cut)  # positional order: un-select the last ones
    surplus = below + int(np.count_nonzero(chosen)) - k
    if surplus > 0:
        chosen[ties[ties.size - surplus :]] = False
    start = 0
    for i, idx in where:
        out[i][idx] = chosen[start : start + idx.size]
        start += idx.size
    return [torch.from_numpy(o).reshape(s) for o, s in zip(out, shapes, strict=True)], cut


def mean_normalized(scores: Tensor, forced: Tensor | None = None) -> Tensor:
    """``scores`` divided by the mean score of the units not ``forced`` (Torch-Pruning's
    ``normalizer="mean"``): a global ranking then compares each unit with its own layer's
    typical unit, not layers of different weight scales with each other. Scores whose mean is
    not positive are returned as they are.

    Example:
        >>> mean_normalized(torch.tensor([1.0, 3.0])).tolist()
        [0.5, 1.5]
        >>> mean_normalized(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([True, False, False]))
        tensor([0.0000, 0.5000, 1.5000])
    """
    alive = scores if forced is None else scores[~forced]
    mean = float(alive.double().mean()) if alive.numel() else 0.0
    return scores / mean if math.isfinite(mean) and mean > 0 else scores


def invert(t: Tensor, *, inplace: bool = False) -> Tensor:
    """``~t``; with ``inplace`` (a CPU tensor nothing else reads) without a new allocation."""
    if t.device.type != "cpu":
        return ~t
    arr = t.numpy()
    return torch.from_numpy(np.logical_not(arr, out=arr) if inplace else ~arr)


def count_true(t: Tensor) -> int:
    """Non-zeros of a tensor (numpy's count is much faster on CPU)."""
    return int(np.count_nonzero(t.numpy())) if t.device.type == "cpu" else int(t.count_nonzero())
