"""Planning physical removal on Torch-Pruning's dependency graph: which channels go.

Masks say *which* units are zero; this module turns a filter/channel mask into a smaller dense
model. Coupled layers (Conv -> BN -> Conv, residual adds, ``torch.cat``, flatten -> Linear) are
cut together, once per coupled group, by Torch-Pruning (``tp.DependencyGraph``).

Which channels go, per coupled group (one "channel" of a group is one index of its root layer):

* ``granularity="filter"``: a channel is removable when the mask row of every producing
  Conv/Linear in the group is all False (``coupled="intersection"``, the default), or of at
  least one of them (``coupled="union"``). A producer without a mask keeps its channels.
* ``granularity="channel"``: the same with the mask *columns* of every consuming Conv/Linear
  (a flatten -> Linear consumer needs all the columns of one channel to be zero).
* Channels that reach the model output are never removed (the output shape is kept), and one
  channel of a group always stays.

Equality with the masked model. Channel removal of zero *columns* changes nothing: the
producing filter feeds only zero weights. Filter removal is exact when the removed filter's
output is exactly zero, which a weight mask alone does not guarantee: its bias and the BN shift
``beta - gamma * mean / sqrt(var + eps)`` still make a constant, non-zero channel. So "the
masked model" here means the weight mask *plus* the coupled parameters the cut deletes (bias,
BN gamma/beta, the next layer's input columns): :func:`zero_removed_units` zeroes exactly
those in place, and ``physical_prune`` of that model gives the same outputs (BN in eval or train
mode; activations with f(0) = 0 such as ReLU/GELU). With ``coupled="union"`` the cut also
drops non-zero channels; ``zero_removed_units`` with the same arguments gives the masked model
that matches it.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> keep = torch.ones(6, 4, dtype=torch.bool)
    >>> keep[:2] = False
    >>> dg = build_graph(model, torch.randn(2, 4))
    >>> plan_removal(model, {"0": keep}, dg, granularity="filter", coupled="intersection").removed
    {'0': 2}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from app.catalogue import CHANNEL_LEVELS

COUPLING = ("intersection", "union")
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)


@dataclass
class RemovalPlan:
    """What :func:`physical_prune` cuts: per coupled group, the root layer and its indices.

    ``removed`` counts removed output channels per producing layer name; ``notes`` are sentences
    for the user (coupled layers that disagreed, groups kept because they reach the output).
    """

    cuts: list[tuple[nn.Module, object, list[int]]] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _masks_of(plan_or_masks: object) -> Mapping[str, torch.Tensor]:
    masks = getattr(plan_or_masks, "masks", plan_or_masks)
    if not isinstance(masks, Mapping):
        raise ValueError("physical removal needs a MaskPlan or a dict of layer name -> mask")
    return masks


def _unit_zero(module: nn.Module, mask: torch.Tensor, idxs: list[int], out: bool) -> list[bool]:
    """For each index, True when the whole row (out) or column (in) of the mask is False."""
    transposed = bool(getattr(module, "transposed", False))
    dim = (1 if transposed else 0) if out else (0 if transposed else 1)
    kept = mask.bool().transpose(0, dim).flatten(1).any(dim=1)
    return [not bool(kept[i]) for i in idxs]


def _touches_output(dg: tp.DependencyGraph, group: tp.Group) -> bool:
    """True when the group changes the channels of a model output (a consumer's inputs don't)."""
    for item in group:
        node = item.dep.target
        consumer = isinstance(node.module, WEIGHTED) and dg.is_in_channel_pruning_fn(
            item.dep.handler
        )
        if not consumer and (node.type == tp.ops.OPTYPE.OUTPUT or not node.outputs):
            return True
    return False


def _decide_group(
    dg: tp.DependencyGraph,
    group: tp.Group,
    masks: Mapping[nn.Module, torch.Tensor],
    granularity: str,
    coupled: str,
) -> tuple[list[int], int]:
    """Root indices to cut in one group, and how many were zero in some but not all layers."""
    want_out = granularity == "filter"
    votes: dict[int, list[bool]] = {}
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        is_out = dg.is_out_channel_pruning_fn(handler)
        if not isinstance(module, WEIGHTED) or is_out != want_out:
            continue
        if not is_out and getattr(module, "groups", 1) != 1:
            continue  # depthwise consumers follow their producer
        mask = masks.get(module)
        zero = _unit_zero(module, mask, item.idxs, is_out) if mask is not None else None
        per_root: dict[int, bool] = {}
        for k, root in enumerate(item.root_idxs):
            per_root[root] = per_root.get(root, True) and bool(zero is not None and zero[k])
        for root, is_zero in per_root.items():
            votes.setdefault(root, []).append(is_zero)
    combine = all if coupled == "intersection" else any
    cut = sorted(r for r, v in votes.items() if combine(v))
    disagree = sum(1 for v in votes.values() if any(v) and not all(v))
    n_root = len(group[0].idxs)
    if cut and len(cut) >= n_root:
        cut = cut[1:]  # a layer keeps at least one channel
    return cut, disagree


def plan_removal(
    model: nn.Module,
    plan_or_masks: object,
    dg: tp.DependencyGraph,
    *,
    granularity: str,
    coupled: str = "intersection",
) -> RemovalPlan:
    """Decide the cuts on a built dependency graph of ``model`` (indices in the current shapes).

    Args:
        model: the module the graph was built on; mask names refer to its ``named_modules``.
        plan_or_masks: a ``MaskPlan`` or ``{layer name: bool mask shaped like the weight}``.
        dg: ``tp.DependencyGraph().build_dependency(model, example_inputs=...)``.
        granularity: ``"filter"`` or ``"channel"``.
        coupled: ``"intersection"`` (exact) or ``"union"`` (cut where any coupled layer is zero).

    Returns:
        A :class:`RemovalPlan`.

    Raises:
        ValueError: unknown granularity/coupling, or a mask naming no layer of the model.
    """
    if granularity not in CHANNEL_LEVELS:
        raise ValueError(
            f"physical removal supports granularity 'filter' or 'channel', not {granularity!r}"
        )
    if coupled not in COUPLING:
        raise ValueError(f"coupled must be 'intersection' or 'union', not {coupled!r}")
    named = dict(model.named_modules())
    masks: dict[nn.Module, torch.Tensor] = {}
    for name, mask in _masks_of(plan_or_masks).items():
        if name not in named or not isinstance(named[name], WEIGHTED):
            raise ValueError(f"mask for {name!r} names no Conv/Linear layer of the model")
        masks[named[name]] = mask.detach().cpu()
    names = {m: n for n, m in named.items()}
    plan = RemovalPlan()
    for group in list(dg.get_all_groups(root_module_types=WEIGHTED)):
        cut, disagree = _decide_group(dg, group, masks, granularity, coupled)
        layers = [names.get(i.dep.target.module, "?") for i in group if is_producer(dg, i)]
        if cut and _touches_output(dg, group):
            plan.notes.append(
                f"kept {len(cut)} zero channels of {layers[0]}: they reach the output"
            )
            continue
        if disagree:
            plan.notes.append(
                f"kept {disagree} channels of the coupled layers {', '.join(layers)}: they are "
                "zero in some of these layers but not in all"
                if coupled == "intersection"
                else f"removed {disagree} channels of {', '.join(layers)} that were zero in only "
                "some of these coupled layers; their outputs change"
            )
        if cut:
            root = group[0].dep.target.module
            plan.cuts.append((root, group[0].dep.handler, cut))
            for name in layers:
                plan.removed[name] = plan.removed.get(name, 0) + len(cut)
    return plan


def is_producer(dg: tp.DependencyGraph, item: object) -> bool:
    return isinstance(item.dep.target.module, WEIGHTED) and dg.is_out_channel_pruning_fn(
        item.dep.handler
    )


def build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    with eval_mode(model), torch.enable_grad():  # Torch-Pruning traces in eval mode anyway
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, verbose=False
        )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no BN statistics updates), each module's mode restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)
