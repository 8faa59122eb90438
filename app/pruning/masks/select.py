"""Choosing which units to prune from their scores: global or layer-wise, sparsity, threshold, N:M.

:class:`Selection` holds one step's working state (scores, units forced by earlier masks, the
chosen units) and builds the :class:`~app.pruning.masks.plan.MaskPlan`;
:mod:`~app.pruning.masks.ranking` does the exact k-lowest selection a global ranking needs;
:mod:`~app.pruning.masks.rows` the cuts inside each output row (N:M, Wanda per row).

Example:
    >>> from torch import nn
    >>> from app.pruning.pruning_spec import PruningSpec
    >>> layer = nn.Linear(4, 3)
    >>> scores = {"": torch.tensor([0.3, 0.1, 0.2])}
    >>> sel = Selection(PruningSpec("filter", "l1", sparsity=0.34), {"": layer}, scores, {})
    >>> sel.select_sparsity(0.34, {})
    >>> sel.plan(layer, {"": layer}).channels[""].tolist()
    [True, False, True]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.granularity import canonical, unit_view
from app.pruning.layers import is_transposed
from app.pruning.masks.coupled import Coupling
from app.pruning.masks.floor import hold_floor
from app.pruning.masks.plan import NEVER_EMPTY_NOTE, MaskPlan, filter_extras
from app.pruning.masks.ranking import (
    count_true,
    global_lowest,
    global_lowest_abs,
    invert,
    mean_normalized,
)
from app.pruning.masks.rounding import Rounded, balanced_keep
from app.pruning.masks.rows import nm_pruned, row_note, row_pruned
from app.pruning.masks.select_notes import (
    NORMALIZED_NOTE,
    SPARSEGPT_LAYERWISE_NOTE,
    emptied_note,
    kept_note,
    rounded_note,
)
from app.pruning.notes import Note, info, warning
from app.pruning.pruning_spec import PruningSpec
from app.pruning.structural.coupling import Coupled

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
        coupled: list[Coupled] | None = None,
    ) -> None:
        """``absolute``: ``scores`` are float32 CPU weights and the score is their ``|w|``
        (element magnitude criteria; never materialised for a whole model). ``outputs``: the
        model's output layers; each of their output rows keeps at least one unit.
        ``coupled``: filter/channel groups ranked and cut as one (:mod:`.coupled`)."""
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
        self.coupling = Coupling(coupled or [], self.scores)
        self.coupling.merge(self.scores, self.forced)
        self.ranked = [n for n in layers if n not in self.coupling.followers]
        if self.coupling.groups:
            groups = "; ".join("+".join(g) for g in self.coupling.members().values())
            self.notes.append(
                info(
                    f"coupled layers ranked and cut together ({len(self.coupling.groups)} "
                    f"groups, group importance = mean of the members' scores): {groups}"
                )
            )

    def _ranking(self, n: str) -> Tensor:
        s = self.scores[n].abs() if self.absolute else self.scores[n]
        return torch.where(self.forced[n], float("-inf"), s) if n in self.forced else s

    def select_nm(self) -> None:
        """N:M along the reduction dimension; layers it cannot cut stay dense, with a note."""
        for n, layer in self.layers.items():
            self.pruned[n], self.requested[n], dense = nm_pruned(
                n, layer, self._ranking(n), self.spec.nm
            )
            if dense is not None:
                self.notes.append(dense)

    def select_threshold(self, t: float) -> None:
        for n in self.ranked:
            self.pruned[n] = self._ranking(n) < t
            self.requested[n] = None
            if self.spec.criterion in MAGNITUDE and self.spec.granularity == "element":
                self.thresholds[n] = t
        self._never_empty()
        self.coupling.spread(self.pruned, self.requested)

    def select_sparsity(self, target: float, overrides: dict[str, float]) -> None:
        if self._per_row():
            self._select_rows({n: overrides.get(n, target) for n in self.layers})
            return
        own = {n: self.coupling.override(n, overrides) for n in self.ranked}
        local = {n: target if own[n] is None else own[n] for n in self.ranked}
        glob = self.spec.scope == "global"
        if glob and self.spec.criterion == "sparsegpt":  # as published: each layer at its target
            glob = False
            self.notes.append(info(SPARSEGPT_LAYERWISE_NOTE))
        pool = [n for n in self.ranked if own[n] is None] if glob else []
        if self.spec.granularity in CHANNEL_LEVELS and self.spec.normalize == "mean" and pool:
            for n in pool:
                self.scores[n] = mean_normalized(self.scores[n], self.forced.get(n))
            self.notes.append(info(NORMALIZED_NOTE))
        for n in self.ranked:
            self.requested[n] = local[n]
            if n not in pool:
                self._select_global([n], local[n])
        if pool:
            self._select_global(pool, target)
            hold_floor(self, pool, target)  # element level: pruning.layer_floor
            self._cap(pool)
        self._never_empty()
        self._round_to(pool, target, local)
        self.coupling.spread(self.pruned, self.requested)

    def _cap(self, pool: list[str]) -> None:
        """Global scope on filter/channel: no layer or coupled group loses more than
        ``pruning.max_layer_sparsity`` of its units (and none is emptied)."""
        cap = self.spec.max_layer_sparsity
        for n in pool if self.spec.granularity in CHANNEL_LEVELS else ():
            units, kept = (
                self.pruned[n].numel(),
                self.pruned[n].numel() - count_true(self.pruned[n]),
            )
            need = max(math.ceil(round((1.0 - cap) * units, 6)), min(self._min_keep(n), units))
            if kept >= need:
                continue
            self._keep_best(n, need)
            what = f"the coupled group of '{n}'" if n in self.coupling.groups else f"'{n}'"
            if need >= units and self._min_keep(n) >= units:  # one round_to block is all of it
                text = f"{what} kept whole: one block of pruning.round_to is its least"
                self.notes.append(info(f"{text} ({units} units)", layer=n))
                continue
            cut = "would have been emptied" if kept == 0 else f"lost over {100 * cap:.0f}%"
            text = f"{what} {cut} by the global ranking; its best {need} of {units} units kept"
            self.notes.append(warning(f"{text} (pruning.max_layer_sparsity {cap:g})", layer=n))

    def _per_row(self) -> bool:
        spec = self.spec
        return (spec.criterion, spec.granularity, spec.wanda_group) == ("wanda", "element", "row")

    def _select_rows(self, local: dict[str, float]) -> None:
        """Wanda as published: every output row loses its lowest share (each layer at its own
        target); earlier masks stay pruned."""
        for n, layer in self.layers.items():
            self.requested[n] = local[n]
            pruned = row_pruned(self._ranking(n), local[n], transposed=is_transposed(layer))
            self.pruned[n] = pruned | self.forced[n] if n in self.forced else pruned
        self.notes.append(row_note(self.spec.scope == "global"))
        self._never_empty()

    def _select_global(self, names: list[str], target: float) -> None:
        if len({self._unit_size(n) for n in names}) == 1:  # equal units: exact fast path
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
                torch.full((self.scores[n].numel(),), self._unit_size(n), dtype=torch.float64)
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

    def _unit_size(self, n: str) -> int:
        return self.coupling.unit_size(n, {m: v.unit_size for m, v in self.views.items()})

    def _min_keep(self, n: str) -> int:
        """The multiple layer ``n`` (or the coupled group it leads) keeps: ``round_to``, capped
        for its width with ``round_to_cap`` "layer" (``PruningSpec.multiple``); 1 without."""
        return self.spec.multiple(self.pruned[n].numel())

    def _keep_best(self, n: str, k: int) -> None:
        rank = self._ranking(n).flatten()
        pruned = torch.ones(rank.numel(), dtype=torch.bool)
        pruned[rank.topk(min(k, rank.numel())).indices] = False
        self.pruned[n] = pruned.reshape(self.pruned[n].shape)

    def _never_empty(self) -> None:
        for n, pruned in self.pruned.items():
            kept = pruned.numel() - count_true(pruned)
            need = min(self._min_keep(n), pruned.numel())
            if kept < need:
                self._keep_best(n, need)
                self.notes.append(kept_note(n, kept, need, self.spec, need))
            if n in self.outputs and self.spec.granularity in _ROW_UNITS:
                self._keep_rows(n)

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
        self.notes.append(emptied_note(n, text, self.spec))

    def _round_to(self, pool: list[str], target: float, local: dict[str, float]) -> None:
        """Kept counts to their multiples, up or down (:mod:`.rounding`): the global pool so its
        removed parameters land nearest ``target``, any other layer to its nearest multiple."""
        if not self.spec.round_to:
            return
        batches = [(pool, target)] if pool else []
        batches += [([n], local[n]) for n in self.pruned if n not in pool]
        for names, share in batches:
            layers = {n: self._rounded(n, n in pool) for n in names}
            kept = {n: layers[n].units - count_true(self.pruned[n]) for n in names}
            for n, k in balanced_keep(layers, kept, share).items():
                if k != kept[n]:
                    self._keep_best(n, k)
        multiples = {n: self._min_keep(n) for n in self.pruned}
        groups = {n: len(g) - 1 for n, g in self.coupling.members().items()}
        removed = self._removed_share(pool) if len(pool) > 1 else None
        self.notes.append(info(rounded_note(self.spec, multiples, groups, (target, removed))))

    def _rounded(self, n: str, pooled: bool) -> Rounded:
        units, multiple = self.pruned[n].numel(), self._min_keep(n)
        floor = min(multiple, units)
        if pooled and self.spec.granularity in CHANNEL_LEVELS:  # as _cap keeps
            cap = self.spec.max_layer_sparsity
            floor = max(floor, math.ceil(round((1.0 - cap) * units, 6)))
        return Rounded(self._ranking(n), multiple, self._unit_size(n), floor)

    def _removed_share(self, names: list[str]) -> float:
        sizes = {n: self._unit_size(n) for n in names}
        total = sum(sizes[n] * self.pruned[n].numel() for n in names)
        return sum(sizes[n] * count_true(self.pruned[n]) for n in names) / total

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
            self.coupling.members(),
        )
