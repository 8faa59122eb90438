"""Scores -> masks: global or layer-wise ranking, sparsity or threshold targets, overrides.

Masks are bool tensors shaped like each layer's weight, True = kept (as in
``torch.nn.utils.prune``). They are applied by zeroing in place: no hooks, no
``weight_orig``, so a pruned model saves, copies and exports like any other.

This module validates a spec and computes a :class:`~app.pruning.masks.plan.MaskPlan`;
:mod:`~app.pruning.masks.select` chooses the units, :mod:`~app.pruning.masks.keeper` applies
and keeps the masks.

Rules every plan follows (and states in ``plan.notes``):
* a layer is never emptied: at least one unit (``round_to`` units for filter/channel)
  stays, except at granularity ``layer`` whose point is removing whole blocks;
* units pruned in ``previous`` stay pruned (iterative schedules only grow the pruned set);
* structured targets count parameters, not units: "50% of filters" in a global ranking
  removes units until half of the parameters in scope are gone.

Example:
    >>> from torch import nn
    >>> from app.pruning.masks.keeper import apply_masks
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> plan = compute_masks(model, PruningSpec("element", "l1", scope="layerwise", sparsity=0.9))
    >>> round(plan.achieved["0"], 2), plan.masks["0"].shape
    (0.9, torch.Size([16, 8]))
    >>> apply_masks(model, plan)
    >>> round(float((model[0].weight == 0).float().mean()), 2)
    0.9
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.criteria import CRITERIA
from app.pruning.criteria.context import CalibrationData
from app.pruning.criteria.magnitude import no_bn_error
from app.pruning.granularity import canonical, check_layer
from app.pruning.layers import is_transposed, prunable_layers
from app.pruning.masks.heads import add_mlp_columns, check_heads, compute_head_masks, mlp_scope
from app.pruning.masks.plan import MaskPlan
from app.pruning.masks.select import MAGNITUDE, Selection
from app.pruning.masks.select_notes import scope_notes
from app.pruning.masks.tied import untie_scope
from app.pruning.notes import Note, info, warning
from app.pruning.outputs import example_input, output_layers
from app.pruning.pruning_spec import PruningSpec
from app.pruning.structural.coupling import Coupled, coupled_layers
from app.pruning.topology import Block, following_bn, residual_blocks


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
        raise no_bn_error(crit.name)
    for name, layer in targets.items():
        check_layer(name, layer, spec.granularity)
    if spec.granularity == "head":
        check_heads(model, spec, set(spec.exclude))
    if spec.granularity == "layer" and not _blocks_in(model, targets):
        raise ValueError(
            "granularity 'layer' needs residual blocks with an identity shortcut (x + f(x)); "
            "this model has none that can be removed (try 'filter')."
        )


def _blocks_in(model: nn.Module, targets: dict[str, nn.Module]) -> list[Block]:
    return [b for b in residual_blocks(model) if all(n in targets for n in b.layers)]


def compute_masks(
    model: nn.Module,
    spec: PruningSpec,
    *,
    sparsity: float | None = None,
    data: CalibrationData | None = None,
    device: str | torch.device = "cpu",
    previous: dict[str, Tensor] | None = None,
    seed: int = 0,
    example: Tensor | None = None,
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
        example: an input batch to find the model's output layers (default: from ``data``).

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
    if spec.granularity == "head":
        return compute_head_masks(model, spec, target or 0.0, previous, seed)
    targets, untied = untie_scope(model, spec, targets)  # a head tied to the embedding
    x = example if example is not None else example_input(data, model)
    outputs, notes = _outputs(model, spec, x)
    notes += untied
    scoped: list[Note] = []
    if spec.granularity == "filter":  # a filter of an output layer is an output unit
        targets = {n: m for n, m in targets.items() if n not in outputs}
        targets, coupled, scoped = mlp_scope(model, targets)  # transformers: MLP neurons only
        notes += scoped
    if not (spec.granularity == "filter" and scoped):
        coupled = _coupled(model, spec, x, targets)
    absolute = _raw_magnitude(spec, targets)
    if absolute:  # |w| is ranked chunk by chunk from the weights themselves
        scores = {n: m.weight.detach() for n, m in targets.items()}
    else:
        scores = CRITERIA[spec.criterion].score(
            model,
            targets,
            spec.granularity,
            data=data,
            device=device,
            nm=spec.nm,
            seed=seed,
            batches=spec.calibration_batches,
        )
    ctx = Selection(
        spec,
        {n: targets[n] for n in scores},
        scores,
        previous,
        absolute=absolute,
        outputs=outputs,
        coupled=coupled,
    )
    ctx.notes.extend(notes)
    ctx.notes.extend(
        warning(f"'{n}' left dense: criterion '{spec.criterion}' cannot score it", layer=n)
        for n in targets
        if n not in scores
    )
    del scores  # the selection owns them and frees them before building masks
    ctx.notes.extend(scope_notes(spec, getattr(data, "task", None)))
    if spec.granularity == "nm":
        ctx.select_nm()
    elif threshold is not None:
        ctx.select_threshold(threshold)
    else:
        ctx.select_sparsity(target, spec.overrides)
    plan = ctx.plan(model, layers)
    if spec.granularity == "filter" and scoped:
        add_mlp_columns(model, plan)
    for n in outputs - set(plan.masks) - set(spec.exclude):  # protected: kept whole
        plan.masks[n] = torch.ones_like(layers[n].weight, dtype=torch.bool, device="cpu")
        if plan.channels is not None:
            units = canonical(plan.masks[n], is_transposed(layers[n])).shape[0]
            plan.channels[n] = torch.ones(units, dtype=torch.bool)
    return plan


def _coupled(
    model: nn.Module, spec: PruningSpec, x: Tensor | None, targets: dict[str, nn.Module]
) -> list[Coupled]:
    """Filter/channel levels: the coupled groups ranked as one (none without an input)."""
    if spec.granularity not in CHANNEL_LEVELS or x is None:
        return []
    return coupled_layers(model, x, spec.granularity, targets)


def _outputs(
    model: nn.Module, spec: PruningSpec, x: Tensor | None
) -> tuple[frozenset[str], list[Note]]:
    """The output layers of ``model`` (never cut) and the notes that say so."""
    if x is None:
        text = "the model's output layers could not be traced (no example input): their "
        return frozenset(), [warning(text + "output units are not protected")]
    found = frozenset(output_layers(model, x))
    what = "left dense" if spec.granularity == "filter" else "every output unit kept"
    return found, [
        info(f"'{n}' {what}: its outputs are the model's outputs", layer=n) for n in sorted(found)
    ]


def _raw_magnitude(spec: PruningSpec, targets: dict[str, nn.Module]) -> bool:
    """Element-level l1/l2/threshold on float32 CPU weights: every score is just ``|w|``."""
    return (
        spec.granularity == "element"
        and spec.criterion in MAGNITUDE
        and all(
            m.weight.device.type == "cpu" and m.weight.dtype == torch.float32
            for m in targets.values()
        )
    )


def _layer_plan(
    model: nn.Module,
    spec: PruningSpec,
    targets: dict[str, nn.Module],
    layers: dict[str, nn.Module],
    target: float,
    previous: dict[str, Tensor],
    seed: int,
) -> MaskPlan:
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
    achieved = {
        n: 1.0 - float(masks[n].sum()) / masks[n].numel() if n in masks else 0.0 for n in layers
    }
    text = f"granularity 'layer' removed {len(removed)} of {len(blocks)} residual blocks: " + (
        ", ".join("+".join(b.layers) for b in removed) or "none"
    )
    notes = [info(text) if removed else warning(text + "; no block fits the target")]
    requested = {n: (target if n in targets else 0.0) for n in layers}
    return MaskPlan(masks, requested, achieved, dict.fromkeys(layers), None, extra, notes, "layer")
