"""Choosing which units to prune from their scores: global or layer-wise, sparsity, threshold, N:M.

:class:`Selection` holds one step's working state (scores, units forced by earlier masks, the
chosen units) and builds the :class:`MaskPlan`; :func:`global_lowest` is the exact, low-memory
k-lowest selection across layers that a global ranking needs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from app.pruning.granularity import following_bn, is_transposed, nm_mask, unit_view
from app.pruning.plan import NEVER_EMPTY_NOTE, MaskPlan

MAGNITUDE = ("l1", "l2", "threshold")


class Selection:
    """Per-step working state: scores, forced (previously pruned) units, chosen units."""

    def __init__(self, spec, layers, scores, previous, *, absolute: bool = False) -> None:
        """``absolute``: ``scores`` are float32 CPU weights and the score is their ``|w|``
        (element magnitude criteria; never materialised for a whole model)."""
        self.spec, self.layers, self.notes = spec, layers, [NEVER_EMPTY_NOTE]
        self.absolute = absolute
        self.views = {
            n: unit_view(m.weight, spec.granularity, spec.nm, transposed=is_transposed(m))
            for n, m in layers.items()
        }
        self.scores = {n: s.float().cpu() for n, s in scores.items()}
        self.forced: dict[str, Tensor] = {}
        for n, prev in previous.items():
            if n in layers:
                pruned = (~prev.bool().cpu()).float()
                self.forced[n] = self.views[n].reduce(pruned, "min") > 0.5
        self.pruned: dict[str, Tensor] = {}
        self.requested: dict[str, float | None] = {}
        self.thresholds: dict[str, float | None] = {n: None for n in layers}
        self.previous = previous

    def _ranking(self, n: str) -> Tensor:
        s = self.scores[n].abs() if self.absolute else self.scores[n]
        return torch.where(self.forced[n], float("-inf"), s) if n in self.forced else s

    def select_nm(self) -> None:
        n_keep, m = self.spec.nm
        for n, layer in self.layers.items():
            keep = nm_mask(self._ranking(n), n_keep, m, transposed=is_transposed(layer))
            self.pruned[n] = ~keep
            self.requested[n] = 1.0 - n_keep / m

    def select_threshold(self, t: float) -> None:
        for n in self.layers:
            self.pruned[n] = self._ranking(n) < t
            self.requested[n] = None
            if self.spec.criterion in MAGNITUDE and self.spec.granularity == "element":
                self.thresholds[n] = t
        self._never_empty()

    def select_sparsity(self, target: float, overrides: dict[str, float]) -> None:
        local = {n: overrides.get(n, target) for n in self.layers}
        pool = [n for n in self.layers if n not in overrides] if self.spec.scope == "global" else []
        for n in self.layers:
            self.requested[n] = local[n]
            if n not in pool:
                self._select_global([n], local[n])
        if pool:
            self._select_global(pool, target)
        self._never_empty()
        self._round_to()

    def _select_global(self, names: list[str], target: float) -> None:
        if len({self.views[n].unit_size for n in names}) == 1:  # equal units: exact fast path
            forced = [self.forced.get(n) for n in names]
            n_forced = sum(0 if f is None else count_true(f) for f in forced)
            total = sum(self.scores[n].numel() for n in names)
            k = max(0, round(target * total) - n_forced)
            if self.absolute:  # previously pruned units: +inf in the ranking, then added back
                pruned, cut = global_lowest_abs([self.scores[n] for n in names], forced, k)
            else:
                ranks = [
                    self.scores[n] if f is None else torch.where(f, float("inf"), self.scores[n])
                    for n, f in zip(names, forced, strict=True)
                ]
                pruned, cut = global_lowest(ranks, k)
            for n, p in zip(names, pruned, strict=True):
                self.pruned[n] = p | self.forced[n] if n in self.forced else p
            if self.spec.criterion in MAGNITUDE and self.spec.granularity == "element":
                self.thresholds.update(dict.fromkeys(names, cut))
            return
        ranks = torch.cat([self._ranking(n).flatten() for n in names])
        sizes = torch.cat(
            [
                torch.full((self.scores[n].numel(),), self.views[n].unit_size, dtype=torch.float64)
                for n in names
            ]
        )
        order = torch.argsort(ranks, stable=True)
        cum = torch.cat([torch.zeros(1, dtype=torch.float64), sizes[order].cumsum(0)])
        count = int((cum - target * float(sizes.sum())).abs().argmin())
        flat = torch.zeros(ranks.numel(), dtype=torch.bool)
        flat[order[:count]] = True
        for n, part in zip(names, flat.split([self.scores[n].numel() for n in names]), strict=True):
            self.pruned[n] = part.reshape(self.scores[n].shape)

    def _min_keep(self) -> int:
        return self.spec.round_to or 1

    def _keep_best(self, n: str, k: int) -> None:
        rank = self._ranking(n).flatten()
        pruned = torch.ones(rank.numel(), dtype=torch.bool)
        pruned[rank.topk(min(k, rank.numel())).indices] = False
        self.pruned[n] = pruned.reshape(self.pruned[n].shape)

    def _never_empty(self) -> None:
        for n, pruned in self.pruned.items():
            kept = pruned.numel() - count_true(pruned)
            need = min(self._min_keep(), pruned.numel())
            if kept < need:
                self._keep_best(n, need)
                self.notes.append(f"'{n}' would have been emptied; its best {need} unit(s) kept")

    def _round_to(self) -> None:
        r = self.spec.round_to
        if not r:
            return
        for n, pruned in self.pruned.items():
            units, kept = pruned.numel(), pruned.numel() - count_true(pruned)
            rounded = min(units, -(-kept // r) * r)
            if rounded != kept:
                self._keep_best(n, rounded)
        self.notes.append(f"kept filter/channel counts rounded up to a multiple of {r}")

    def plan(self, model: nn.Module, layers: dict[str, nn.Module]) -> MaskPlan:
        masks, achieved, channels = {}, {}, {}
        self.scores.clear()  # free the scores before the masks are built (peak memory)
        for n in list(self.pruned):
            pruned = self.pruned.pop(n)
            keep = self.views[n].expand(invert(pruned, inplace=self.absolute))
            if n in self.previous:
                keep &= self.previous[n].bool().cpu()
            masks[n] = keep
            if self.spec.granularity in ("filter", "channel"):
                channels[n] = ~pruned.flatten()
        for n in layers:
            if n not in masks and n in self.previous:
                masks[n] = self.previous[n].bool().cpu()
            kept = count_true(masks[n]) if n in masks else 0
            achieved[n] = 1.0 - kept / masks[n].numel() if n in masks else 0.0
            self.requested.setdefault(n, 0.0)
            self.thresholds.setdefault(n, None)
        extra = filter_extras(model, masks) if self.spec.granularity == "filter" else {}
        return MaskPlan(
            masks,
            self.requested,
            achieved,
            self.thresholds,
            channels or None,
            extra,
            self.notes,
            self.spec.granularity,
        )


def filter_extras(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
    """Bias entries and the following BN's gamma/beta of every fully pruned filter."""
    modules, bns, extra = dict(model.named_modules()), following_bn(model), {}
    for n, keep in masks.items():
        layer = modules[n]
        rows = keep.transpose(0, 1) if is_transposed(layer) else keep
        alive = rows.flatten(1).any(dim=1)
        if bool(alive.all()):
            continue
        if getattr(layer, "bias", None) is not None:
            extra[f"{n}.bias"] = alive.clone()
        if n in bns:
            extra[f"{bns[n]}.weight"], extra[f"{bns[n]}.bias"] = alive.clone(), alive.clone()
    return extra


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

    def __init__(self, flat: list[np.ndarray], forced: list, *, absolute: bool) -> None:
        self.flat, self.forced, self.absolute = flat, forced, absolute
        self.total = sum(f.size for f in flat)
        size = min(CHUNK, max(f.size for f in flat)) if absolute else 0
        self.buf, self.tmp = np.empty(size, np.float32), np.empty(size, bool)

    def rank(self, i: int, a: int, b: int, step: int = 1, out: np.ndarray | None = None):
        w = self.flat[i][a:b:step]
        if not self.absolute:
            return w
        r = np.abs(w, out=out) if out is not None else np.abs(w)
        if self.forced[i] is not None:
            np.copyto(r, np.inf, where=self.forced[i][a:b:step])
        return r

    def chunks(self):
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

    def split(self, lo: float, hi: float, out: list[np.ndarray]):
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


def _lowest(ranked: _Ranked, k: int, shapes: list) -> tuple[list[Tensor], float]:
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


def invert(t: Tensor, *, inplace: bool = False) -> Tensor:
    """``~t``; with ``inplace`` (a CPU tensor nothing else reads) without a new allocation."""
    if t.device.type != "cpu":
        return ~t
    arr = t.numpy()
    return torch.from_numpy(np.logical_not(arr, out=arr) if inplace else ~arr)


def count_true(t: Tensor) -> int:
    """Non-zeros of a tensor (numpy's count is much faster on CPU)."""
    return int(np.count_nonzero(t.numpy())) if t.device.type == "cpu" else int(t.count_nonzero())
