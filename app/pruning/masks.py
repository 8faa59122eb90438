"""Scores -> masks: global or layer-wise ranking, sparsity or threshold targets, overrides.

Masks are bool tensors shaped like each layer's weight, True = kept (as in
``torch.nn.utils.prune``). They are applied by zeroing in place: no hooks, no
``weight_orig``, so a pruned model saves, copies and exports like any other.

Rules every plan follows (and states in ``plan.notes``):
* a layer is never emptied: at least one unit (``round_to`` units for filter/channel)
  stays, except at granularity ``layer`` whose point is removing whole blocks;
* units pruned in ``previous`` stay pruned (iterative schedules only grow the pruned set);
* structured targets count parameters, not units: "50% of filters" in a global ranking
  removes units until half of the parameters in scope are gone.

Example:
    >>> plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.9))
    >>> apply_masks(model, plan)
    >>> keeper = MaskKeeper(model, plan)   # call keeper.after_step(opt) after each step
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from app.pruning.granularity import (
    check_layer,
    following_bn,
    is_transposed,
    nm_mask,
    prunable_layers,
    residual_blocks,
    unit_view,
)
from app.pruning.importance import CRITERIA
from app.pruning.spec import PruningSpec

logger = logging.getLogger(__name__)
_MAGNITUDE = ("l1", "l2", "threshold")
NEVER_EMPTY_NOTE = "no layer is emptied: at least one unit per layer is always kept"


@dataclass
class MaskPlan:
    """The outcome of one pruning step.

    ``masks``: layer -> bool keep-mask shaped like its weight. ``requested``/``achieved``:
    layer -> fraction of its weights pruned (``requested`` is None under a threshold target).
    ``thresholds``: layer -> the score cut (element-level magnitude only, else None).
    ``channels``: filter/channel levels: layer -> kept output filters / kept input channels.
    ``extra``: parameter name -> keep-mask for coupled parameters (bias of pruned filters, BN
    gamma/beta after them, everything inside a removed block); applied by :func:`apply_masks`
    and :class:`MaskKeeper` when given the plan.
    """

    masks: dict[str, Tensor]
    requested: dict[str, float | None]
    achieved: dict[str, float]
    thresholds: dict[str, float | None]
    channels: dict[str, Tensor] | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    granularity: str = "element"


def _layer_error(
    name: str, layers: dict[str, nn.Module], modules: dict[str, nn.Module], field_: str
) -> str:
    if name in modules:
        kind = type(modules[name]).__name__
        return f"pruning.{field_} names '{name}', a {kind}, which PruneLab does not prune."
    sample = ", ".join(list(layers)[:8]) + (", ..." if len(layers) > 8 else "")
    return (
        f"pruning.{field_} names '{name}', which is not a layer of this model (layers: {sample})."
    )


def validate(spec: PruningSpec, model: nn.Module) -> None:
    """Check a spec against a model before a job starts.

    Raises:
        ValueError: no prunable layer, unknown/unprunable names in ``exclude``/``overrides``,
            an override on an excluded layer, a BN criterion without BN, a layer the
            granularity cannot cut, or ``layer`` granularity without residual blocks.
    """
    layers, modules = prunable_layers(model), dict(model.named_modules())
    if not layers:
        raise ValueError("the model has no prunable layer (Linear, Conv1d/2d/3d, ConvTranspose).")
    for field_, names in (("exclude", spec.exclude), ("overrides", tuple(spec.overrides))):
        for name in names:
            if name not in layers:
                raise ValueError(_layer_error(name, layers, modules, field_))
    both = sorted(set(spec.exclude) & set(spec.overrides))
    if both:
        raise ValueError(f"layer '{both[0]}' is both excluded and overridden; choose one.")
    targets = {n: m for n, m in layers.items() if n not in spec.exclude}
    if not targets:
        raise ValueError("every prunable layer is excluded; nothing is left to prune.")
    crit = CRITERIA[spec.criterion]
    if spec.granularity not in crit.granularities:
        raise ValueError(
            f"criterion '{crit.name}' does not support granularity '{spec.granularity}'; "
            f"it supports: {', '.join(sorted(crit.granularities))}."
        )
    if crit.needs_bn and not following_bn(model):
        raise ValueError(
            f"criterion '{crit.name}' needs BatchNorm layers after the pruned layers; "
            "this model has none (try l1 or fpgm)."
        )
    for name, layer in targets.items():
        check_layer(name, layer, spec.granularity)
    if spec.granularity == "layer" and not _blocks_in(model, targets):
        raise ValueError(
            "granularity 'layer' needs residual blocks with an identity shortcut (x + f(x)); "
            "this model has none that can be removed (try 'filter')."
        )


def _blocks_in(model: nn.Module, targets: dict[str, nn.Module]):
    return [b for b in residual_blocks(model) if all(n in targets for n in b.layers)]


def compute_masks(
    model: nn.Module,
    spec: PruningSpec,
    *,
    sparsity: float | None = None,
    data: Any = None,
    device: str | torch.device = "cpu",
    previous: dict[str, Tensor] | None = None,
    seed: int = 0,
) -> MaskPlan:
    """Score the units of every layer in scope and choose which to prune.

    Args:
        model: the model (not modified).
        spec: granularity, criterion, scope, target, exclusions and overrides.
        sparsity: this step's target; wins over ``spec.sparsity`` and ``spec.threshold``.
        data: calibration data for data-driven criteria (``ArrayDataset`` or batches).
        device: where criteria run their passes.
        previous: earlier keep-masks; what they pruned stays pruned.
        seed: for ``random`` and calibration sampling.

    Returns:
        A :class:`MaskPlan`.

    Raises:
        ValueError: see :func:`validate`; or no target (neither sparsity nor threshold).
    """
    validate(spec, model)
    previous = previous or {}
    threshold = spec.threshold if sparsity is None else None
    target = spec.sparsity if sparsity is None else sparsity
    if spec.granularity != "nm" and target is None and threshold is None:
        raise ValueError("set pruning.sparsity or pruning.threshold for this pruning step.")
    layers = prunable_layers(model)
    targets = {n: m for n, m in layers.items() if n not in spec.exclude}
    if spec.granularity == "layer":
        return _layer_plan(model, spec, targets, layers, target or 0.0, previous, seed)
    scores = CRITERIA[spec.criterion].score(
        model, targets, spec.granularity, data=data, device=device, nm=spec.nm, seed=seed,
        batches=spec.calibration_batches,
    )  # fmt: skip
    ctx = _Selection(spec, {n: targets[n] for n in scores}, scores, previous)
    ctx.notes.extend(f"'{n}' left dense: criterion '{spec.criterion}' cannot score it"
                     for n in targets if n not in scores)  # fmt: skip
    del scores  # the selection owns them and frees them before building masks
    if spec.granularity == "nm":
        ctx.select_nm()
    elif threshold is not None:
        ctx.select_threshold(threshold)
    else:
        ctx.select_sparsity(target, spec.overrides)
    return ctx.plan(model, layers)


class _Selection:
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
            if self.spec.criterion in _MAGNITUDE and self.spec.granularity == "element":
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
            if self.spec.criterion in _MAGNITUDE and self.spec.granularity == "element":
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
            kept = pruned.numel() - _count(pruned)
            need = min(self._min_keep(), pruned.numel())
            if kept < need:
                self._keep_best(n, need)
                self.notes.append(f"'{n}' would have been emptied; its best {need} unit(s) kept")

    def _round_to(self) -> None:
        r = self.spec.round_to
        if not r:
            return
        for n, pruned in self.pruned.items():
            units, kept = pruned.numel(), pruned.numel() - _count(pruned)
            rounded = min(units, -(-kept // r) * r)
            if rounded != kept:
                self._keep_best(n, rounded)
        self.notes.append(f"kept filter/channel counts rounded up to a multiple of {r}")

    def plan(self, model: nn.Module, layers: dict[str, nn.Module]) -> MaskPlan:
        masks, achieved, channels = {}, {}, {}
        self.scores.clear()  # free the scores before the masks are built (peak memory)
        for n in list(self.pruned):
            pruned = self.pruned.pop(n)
            keep = self.views[n].expand(_invert(pruned))
            if n in self.previous:
                keep &= self.previous[n].bool().cpu()
            masks[n] = keep
            if self.spec.granularity in ("filter", "channel"):
                channels[n] = ~pruned.flatten()
        for n in layers:
            if n not in masks and n in self.previous:
                masks[n] = self.previous[n].bool().cpu()
            kept = _count(masks[n]) if n in masks else 0
            achieved[n] = 1.0 - kept / masks[n].numel() if n in masks else 0.0
            self.requested.setdefault(n, 0.0)
            self.thresholds.setdefault(n, None)
        extra = _filter_extras(model, masks) if self.spec.granularity == "filter" else {}
        return MaskPlan(masks, self.requested, achieved, self.thresholds,
                        channels or None, extra, self.notes, self.spec.granularity)  # fmt: skip


def _filter_extras(model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
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


def _invert(t: Tensor) -> Tensor:
    return torch.from_numpy(~t.numpy()) if t.device.type == "cpu" else ~t


def _count(t: Tensor) -> int:
    """Non-zeros of a tensor (numpy's count is much faster on CPU)."""
    return int(np.count_nonzero(t.numpy())) if t.device.type == "cpu" else int(t.count_nonzero())


def _layer_plan(model, spec, targets, layers, target, previous, seed) -> MaskPlan:
    """Granularity ``layer``: remove whole residual branches, lowest score first, until
    ``target`` of the parameters in scope are gone."""
    blocks = _blocks_in(model, targets)
    crit = CRITERIA[spec.criterion]
    scores = crit.score(model, targets, "layer", seed=seed)
    sizes = {n: m.weight.numel() for n, m in targets.items()}
    total = float(sum(sizes.values()))
    rank = []
    for b in blocks:
        n_params = sum(sizes[n] for n in b.layers)
        score = sum(float(scores[n]) * sizes[n] for n in b.layers) / n_params
        forced = all(n in previous and not bool(previous[n].any()) for n in b.layers)
        rank.append((float("-inf") if forced else score, n_params, b))
    rank.sort(key=lambda r: r[0])
    removed, cut = [], 0.0
    for score, n_params, b in rank:
        if score != float("-inf") and abs(cut + n_params - target * total) > abs(
            cut - target * total
        ):
            break
        removed.append(b)
        cut += n_params
    masks = {n: previous[n].bool().cpu() for n in targets if n in previous}
    modules, extra = dict(model.named_modules()), {}
    for b in removed:
        for n in b.layers:
            masks[n] = torch.zeros_like(targets[n].weight, dtype=torch.bool, device="cpu")
            if targets[n].bias is not None:
                extra[f"{n}.bias"] = torch.zeros(targets[n].bias.shape, dtype=torch.bool)
        for n in b.norms:
            if getattr(modules[n], "affine", False):
                shape = modules[n].weight.shape
                extra[f"{n}.weight"] = extra[f"{n}.bias"] = torch.zeros(shape, dtype=torch.bool)
    achieved = {n: 1.0 - float(masks[n].sum()) / masks[n].numel() if n in masks else 0.0
                for n in layers}  # fmt: skip
    notes = [f"granularity 'layer' removed {len(removed)} of {len(blocks)} residual blocks: "
             + (", ".join("+".join(b.layers) for b in removed) or "none")]  # fmt: skip
    requested = {n: (target if n in targets else 0.0) for n in layers}
    return MaskPlan(masks, requested, achieved, dict.fromkeys(layers), None, extra, notes, "layer")


def _resolve(model: nn.Module, masks: MaskPlan | dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """(parameter, keep-mask) pairs: each layer's weight, plus the plan's coupled extras."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    plan_masks = masks.masks if isinstance(masks, MaskPlan) else masks
    pairs = []
    for name, mask in plan_masks.items():
        if name not in modules or not isinstance(getattr(modules[name], "weight", None), Tensor):
            raise ValueError(
                f"mask names '{name}', which is not a layer with weights in this model."
            )
        pairs.append((modules[name].weight, mask))
    for name, mask in (masks.extra if isinstance(masks, MaskPlan) else {}).items():
        pairs.append((params[name], mask))
    for p, mask in pairs:
        if tuple(mask.shape) != tuple(p.shape):
            raise ValueError(
                f"a mask of shape {tuple(mask.shape)} does not fit a weight of shape {tuple(p.shape)}."
            )
    return pairs


def apply_masks(model: nn.Module, masks: MaskPlan | dict[str, Tensor]) -> None:
    """Zero the pruned weights in place (no hooks, no ``weight_orig``).

    Args:
        model: the model to modify.
        masks: layer -> keep-mask, or a :class:`MaskPlan` (then its ``extra`` too: biases and
            BN entries of pruned filters, whole removed blocks).

    Raises:
        ValueError: a mask names no layer of the model or has the wrong shape.
    """
    with torch.no_grad():
        for p, mask in _resolve(model, masks):
            mask = mask.to(device=p.device, dtype=torch.bool)
            if p.device.type == "cpu" and p.is_contiguous() and mask.is_contiguous():
                arr = p.detach().numpy()
                np.multiply(arr, mask.numpy(), out=arr)  # in place, no temporaries
            else:
                p.masked_fill_(~mask, 0.0)


def _mul_(tensors: list[Tensor], masks: list[Tensor]) -> None:
    """In-place ``t *= m``; numpy on contiguous CPU tensors (fewer passes than torch there)."""
    if all(t.device.type == "cpu" and t.is_contiguous() for t in tensors):
        for t, m in zip(tensors, masks, strict=True):
            arr = t.detach().numpy()
            np.multiply(arr, m.numpy(), out=arr)
    else:
        torch._foreach_mul_(tensors, masks)


class MaskKeeper:
    """Keeps pruned weights (and their optimizer state) at exactly zero during training.

    The float masks are built once on each parameter's device; each call is one fused
    ``torch._foreach_mul_`` per tensor list, so a masked step costs about a dense step.

    Example:
        >>> keeper = MaskKeeper(model, plan)
        >>> loss.backward(); keeper.zero_grads(); opt.step(); keeper.after_step(opt)
    """

    _STATE_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(self, model: nn.Module, masks: MaskPlan | dict[str, Tensor]) -> None:
        pairs = _resolve(model, masks)
        self.params = [p for p, _ in pairs]
        self.masks = [m.to(device=p.device, dtype=p.dtype).contiguous() for p, m in pairs]

    def zero_grads(self) -> None:
        """Zero the gradients of pruned weights (call between ``backward`` and ``step``)."""
        pairs = [
            (p.grad, m) for p, m in zip(self.params, self.masks, strict=True) if p.grad is not None
        ]
        if pairs:
            _mul_([g for g, _ in pairs], [m for _, m in pairs])

    def after_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Re-zero pruned weights and their momentum / Adam moments after ``optimizer.step()``."""
        with torch.no_grad():
            _mul_(self.params, self.masks)
            if optimizer is None:
                return
            for key in self._STATE_KEYS:
                bufs, masks = [], []
                for p, m in zip(self.params, self.masks, strict=True):
                    buf = optimizer.state.get(p, {}).get(key)
                    if isinstance(buf, Tensor) and buf.shape == m.shape:
                        bufs.append(buf)
                        masks.append(m)
                if bufs:
                    _mul_(bufs, masks)

    def apply(self) -> None:
        """Re-zero the pruned weights (e.g. after loading a checkpoint)."""
        with torch.no_grad():
            torch._foreach_mul_(self.params, self.masks)
