"""Choosing which units to prune from their scores: global or layer-wise, sparsity, threshold, N:M.

:class:`Selection` holds one step's working state (scores, units forced by earlier masks, the
chosen units) and builds the :class:`~app.pruning.masks.plan.MaskPlan`;
:mod:`~app.pruning.masks.ranking` does the exact k-lowest selection a global ranking needs.

Example:
    >>> from torch import nn
    >>> from app.pruning.spec import PruningSpec
    >>> layer = nn.Linear(4, 3)
    >>> scores = {"": torch.tensor([0.3, 0.1, 0.2])}
    >>> sel = Selection(PruningSpec("filter", "l1", sparsity=0.34), {"": layer}, scores, {})
    >>> sel.select_sparsity(0.34, {})
    >>> sel.plan(layer, {"": layer}).channels[""].tolist()
    [True, False, True]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.granularity import (
    canonical,
    following_bn,
    is_transposed,
    nm_dense_reason,
    nm_mask,
    unit_view,
)
from app.pruning.masks.plan import NEVER_EMPTY_NOTE, MaskPlan
from app.pruning.masks.ranking import count_true, global_lowest, global_lowest_abs, invert
from app.pruning.notes import Note, info, warning
from app.pruning.spec import PruningSpec

MAGNITUDE = ("l1", "l2", "threshold")
_ROW_UNITS = ("element", "vector", "kernel")  # levels whose units lie inside one output row


class Selection:
    """Per-step working state: scores, forced (previously pruned) units, chosen units."""

    def __init__(
        self,
        spec: PruningSpec,
        layers: dict[str, nn.Module],
        scores: dict[str, Tensor],
        previous: dict[str, Tensor],
        *,
        absolute: bool = False,
        outputs: frozenset[str] = frozenset(),
    ) -> None:
        """``absolute``: ``scores`` are float32 CPU weights and the score is their ``|w|``
        (element magnitude criteria; never materialised for a whole model). ``outputs``: the
        model's output layers; each of their output rows keeps at least one unit."""
        self.spec, self.layers = spec, layers
        self.notes: list[Note] = [info(NEVER_EMPTY_NOTE)]
        self.outputs = outputs
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
        """N:M along the reduction dimension; layers it cannot cut stay dense, with a note."""
        n_keep, m = self.spec.nm
        for n, layer in self.layers.items():
            reason = nm_dense_reason(layer, m)
            if reason is not None:
                self.pruned[n] = torch.zeros(self.scores[n].shape, dtype=torch.bool)
                self.requested[n] = 0.0
                self.notes.append(f"'{n}' left dense by {n_keep}:{m} sparsity: {reason}")
                continue
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
        if self._per_row():
            self._select_rows(local)
            return
        pool = [n for n in self.layers if n not in overrides] if self.spec.scope == "global" else []
        for n in self.layers:
            self.requested[n] = local[n]
            if n not in pool:
                self._select_global([n], local[n])
        if pool:
            self._select_global(pool, target)
        self._never_empty()
        self._round_to()

    def _per_row(self) -> bool:
        spec = self.spec
        return (spec.criterion, spec.granularity, spec.wanda_group) == ("wanda", "element", "row")

    def _select_rows(self, local: dict[str, float]) -> None:
        """Wanda as published: prune the lowest ``round(s * row length)`` scores of every output
        row (each layer at its own target ``s``); earlier masks stay pruned."""
        for n, layer in self.layers.items():
            self.requested[n] = local[n]
            rank = canonical(self._ranking(n), is_transposed(layer))
            rows = rank.reshape(rank.shape[0], -1)
            k = round(local[n] * rows.shape[1])
            pruned = torch.zeros(rows.shape, dtype=torch.bool)
            pruned.scatter_(1, rows.sort(dim=1, stable=True).indices[:, :k], True)
            pruned = canonical(pruned.reshape(rank.shape), is_transposed(layer)).contiguous()
            self.pruned[n] = pruned | self.forced[n] if n in self.forced else pruned
        glob = self.spec.scope == "global"
        scope = "; scope 'global' ranks nothing across layers here" if glob else ""
        self.notes.append(
            "wanda compared weights within each output row (pruning.wanda_group 'row', as "
            f"published): every row of a layer keeps the same share{scope}; "
            "wanda_group 'layer' ranks each layer as a whole"
        )
        self._never_empty()

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
                text = f"'{n}' would have been emptied; its best {need} unit(s) kept"
                self.notes.append(self._emptied_note(n, text))
            if n in self.outputs and self.spec.granularity in _ROW_UNITS:
                self._keep_rows(n)

    def _emptied_note(self, n: str, text: str) -> Note:
        if self.spec.threshold is not None:
            text += (
                "; the threshold is too high for this layer: give it its own sparsity "
                "(pruning.overrides), exclude it, or prune by sparsity instead"
            )
        return warning(text, layer=n)

    def _keep_rows(self, n: str) -> None:
        """Every output row of an output layer keeps its best unit (no class is cut off)."""
        flip = self.spec.granularity == "element" and is_transposed(self.layers[n])
        pruned = canonical(self.pruned[n], flip).contiguous()
        rows = pruned.reshape(pruned.shape[0], -1)
        dead = rows.all(dim=1)
        if not bool(dead.any()):
            return
        best = canonical(self._ranking(n), flip).reshape(rows.shape).argmax(dim=1)
        idx = dead.nonzero().flatten()
        rows[idx, best[idx]] = False
        self.pruned[n] = canonical(pruned, flip).contiguous()
        text = (
            f"{len(idx)} output unit(s) of '{n}' would have been emptied; their best weight "
            "kept (the model's outputs are never cut)"
        )
        self.notes.append(self._emptied_note(n, text))

    def _round_to(self) -> None:
        r = self.spec.round_to
        if not r:
            return
        for n, pruned in self.pruned.items():
            units, kept = pruned.numel(), pruned.numel() - count_true(pruned)
            rounded = min(units, -(-kept // r) * r)
            if rounded != kept:
                self._keep_best(n, rounded)
        self.notes.append(info(f"kept filter/channel counts rounded up to a multiple of {r}"))

    def plan(self, model: nn.Module, layers: dict[str, nn.Module]) -> MaskPlan:
        masks, achieved, channels = {}, {}, {}
        self.scores.clear()  # free the scores before the masks are built (peak memory)
        for n in list(self.pruned):
            pruned = self.pruned.pop(n)
            keep = self.views[n].expand(invert(pruned, inplace=self.absolute))
            if n in self.previous:
                keep &= self.previous[n].bool().cpu()
            masks[n] = keep
            if self.spec.granularity in CHANNEL_LEVELS:
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
