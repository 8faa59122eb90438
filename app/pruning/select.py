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

    def __init__(self, spec, layers, scores, previous) -> None:
        self.spec, self.layers, self.notes = spec, layers, [NEVER_EMPTY_NOTE]
        self.views = {n: unit_view(m.weight, spec.granularity, spec.nm, transposed=is_transposed(m))
                      for n, m in layers.items()}  # fmt: skip
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
        s = self.scores[n]
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
            ranks, n_forced = [], 0
            for n in names:  # previously pruned units: +inf here, then added back
                forced = self.forced.get(n)
                n_forced += 0 if forced is None else int(forced.sum())
                s = self.scores[n]
                ranks.append(s if forced is None else torch.where(forced, float("inf"), s))
            total = sum(r.numel() for r in ranks)
            pruned, cut = global_lowest(ranks, max(0, round(target * total) - n_forced))
            for n, p in zip(names, pruned, strict=True):
                self.pruned[n] = p | self.forced[n] if n in self.forced else p
            if self.spec.criterion in MAGNITUDE and self.spec.granularity == "element":
                self.thresholds.update(dict.fromkeys(names, cut))
            return
        ranks = torch.cat([self._ranking(n).flatten() for n in names])
        sizes = torch.cat([torch.full((self.scores[n].numel(),), self.views[n].unit_size,
                                      dtype=torch.float64) for n in names])  # fmt: skip
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
            keep = self.views[n].expand(invert(pruned))
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
        return MaskPlan(masks, self.requested, achieved, self.thresholds,
                        channels or None, extra, self.notes, self.spec.granularity)  # fmt: skip


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
    the entries below the bracket and gathers the few inside it; ``kthvalue`` on those
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
    total = sum(f.size for f in flat)
    if k <= 0:
        return [torch.zeros(s.shape, dtype=torch.bool) for s in scores], None
    stride = max(1, total // (1 << 18))
    sample = np.sort(np.concatenate([f[::stride] for f in flat]))
    q, n = min(k / total, 1.0), sample.size
    margin = 6.0 * (n * q * (1 - q)) ** 0.5 + 16
    lo_i, hi_i = int(q * n - margin), int(q * n + margin) + 1
    lo = float(sample[lo_i]) if lo_i >= 0 else -np.inf
    hi = float(sample[hi_i]) if hi_i < n else np.inf
    while True:
        below = sum(int(np.count_nonzero(f < lo)) for f in flat)
        need = k - below
        if need < 1:
            lo = -np.inf
            continue
        cand = np.concatenate([f[(f >= lo) & (f <= hi)] for f in flat])
        if need <= cand.size:
            break
        hi = np.inf
    cut = float(np.partition(cand, need - 1)[need - 1])
    out = [torch.from_numpy(f <= cut) for f in flat]
    surplus = below + int(np.count_nonzero(cand <= cut)) - k  # ties: un-select the last
    for f, sel in zip(reversed(flat), reversed(out), strict=True):
        if surplus <= 0:
            break
        eq = torch.from_numpy(np.flatnonzero(f == cut))
        drop = eq[max(0, eq.numel() - surplus) :]
        sel[drop] = False
        surplus -= drop.numel()
    return [o.reshape(s.shape) for o, s in zip(out, scores, strict=True)], cut


def invert(t: Tensor) -> Tensor:
    return torch.from_numpy(~t.numpy()) if t.device.type == "cpu" else ~t


def count_true(t: Tensor) -> int:
    """Non-zeros of a tensor (numpy's count is much faster on CPU)."""
    return int(np.count_nonzero(t.numpy())) if t.device.type == "cpu" else int(t.count_nonzero())
