"""Physical removal of filters and channels, built on Torch-Pruning's dependency graph.

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
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from app.catalogue import CHANNEL_LEVELS

logger = logging.getLogger(__name__)

COUPLING = ("intersection", "union")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear)
# autograd ops whose channel handling Torch-Pruning models correctly (others are guessed).
_SAFE_OP_NAMES = (
    "Convolution Addmm Mm Linear Add Sub Mul Div Relu Relu6 LeakyRelu Gelu Silu Sigmoid Tanh "
    "Hardswish Hardtanh Elu Prelu NativeBatchNorm BatchNorm CudnnBatchNorm MaxPool2DWithIndices "
    "MaxPool AvgPool2D AdaptiveAvgPool2D AdaptiveMaxPool2D Mean Cat View Reshape UnsafeView "
    "Flatten Clone Dropout Neg Expand AccumulateGrad Squeeze Unsqueeze Pad ConstantPadNd "
    "Upsample UpsampleNearest2D ToCopy TBackward T"
)
_SAFE_OPS = frozenset(_SAFE_OP_NAMES.split())
_EXACTNESS_BREAKERS = (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention, nn.LSTM)


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
        consumer = isinstance(node.module, _WEIGHTED) and dg.is_in_channel_pruning_fn(
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
        if not isinstance(module, _WEIGHTED) or is_out != want_out:
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
        if name not in named or not isinstance(named[name], _WEIGHTED):
            raise ValueError(f"mask for {name!r} names no Conv/Linear layer of the model")
        masks[named[name]] = mask.detach().cpu()
    names = {m: n for n, m in named.items()}
    plan = RemovalPlan()
    for group in list(dg.get_all_groups(root_module_types=_WEIGHTED)):
        cut, disagree = _decide_group(dg, group, masks, granularity, coupled)
        layers = [names.get(i.dep.target.module, "?") for i in group if _is_producer(dg, i)]
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


def _is_producer(dg: tp.DependencyGraph, item: object) -> bool:
    return isinstance(item.dep.target.module, _WEIGHTED) and dg.is_out_channel_pruning_fn(
        item.dep.handler
    )


def _build_graph(model: nn.Module, example_input: torch.Tensor) -> tp.DependencyGraph:
    with _eval_mode(model), torch.enable_grad():  # Torch-Pruning traces in eval mode anyway
        return tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, verbose=False
        )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no BN statistics updates), each module's mode restored."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def _eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with _eval_mode(model), torch.no_grad():
        return model(x)


def physical_prune(
    model: nn.Module,
    plan_or_masks: object,
    example_input: torch.Tensor,
    *,
    granularity: str,
    coupled: str = "intersection",
) -> nn.Module:
    """A new, smaller dense copy of ``model`` without the zero filters or channels.

    Args:
        model: the (masked) model; it is deep-copied and left untouched.
        plan_or_masks: a ``MaskPlan`` or ``{layer name: bool mask}`` (True = kept).
        example_input: a real input batch, used to trace the coupled groups.
        granularity: ``"filter"`` or ``"channel"``.
        coupled: ``"intersection"`` (default, exact) or ``"union"``; see the module docstring.

    Returns:
        The pruned copy, in the same train/eval mode, with the same output shape.

    Raises:
        ValueError: a blocker from :func:`removal_blockers`, bad arguments, or a cut that
            changed the output shape.

    Example:
        >>> small = physical_prune(masked, plan, x[:8], granularity="filter")
    """
    blockers = removal_blockers(model, example_input)
    if blockers:
        raise ValueError(blockers[0])
    pruned = copy.deepcopy(model)
    dg = _build_graph(pruned, example_input)
    plan = plan_removal(pruned, plan_or_masks, dg, granularity=granularity, coupled=coupled)
    for note in plan.notes:
        logger.info("physical_prune: %s", note)
    for root, handler, idxs in plan.cuts:
        dg.get_pruning_group(root, handler, idxs).prune(record_history=False)
    before, after = _eval_output(model, example_input[:2]), _eval_output(pruned, example_input[:2])
    if before.shape != after.shape:
        raise ValueError(
            f"physical removal changed the output shape from {list(before.shape)} to "
            f"{list(after.shape)}; use masks only for this model"
        )
    return pruned


@torch.no_grad()
def zero_removed_units(
    model: nn.Module,
    plan_or_masks: object,
    example_input: torch.Tensor,
    *,
    granularity: str,
    coupled: str = "intersection",
) -> dict[str, int]:
    """Zero, in place, every parameter that :func:`physical_prune` would delete.

    This turns a weight-masked model into the exact reference of the physical cut: a removed
    filter's bias and BN gamma/beta become 0 (so the channel is exactly zero), and so do the
    next layers' input columns.

    Args:
        model: the masked model, changed in place.
        plan_or_masks, example_input, granularity, coupled: as for :func:`physical_prune`.

    Returns:
        ``{layer name: removed output channels}`` as in :class:`RemovalPlan`.

    Raises:
        ValueError: as for :func:`plan_removal`.
    """
    dg = _build_graph(model, example_input)
    plan = plan_removal(model, plan_or_masks, dg, granularity=granularity, coupled=coupled)
    for root, handler, idxs in plan.cuts:
        for item in dg.get_pruning_group(root, handler, idxs):
            _zero_item(
                item.dep.target.module, item.idxs, dg.is_out_channel_pruning_fn(item.dep.handler)
            )
    return plan.removed


def _zero_item(module: object, idxs: list[int], out: bool) -> None:
    idx = torch.as_tensor(sorted(set(idxs)), dtype=torch.long)
    if isinstance(module, _WEIGHTED):
        transposed = bool(getattr(module, "transposed", False))
        dim = (1 if transposed else 0) if out else (0 if transposed else 1)
        depthwise = not out and getattr(module, "groups", 1) != 1
        module.weight.index_fill_(0 if depthwise else dim, idx, 0.0)
        if (out or depthwise) and module.bias is not None:
            module.bias.index_fill_(0, idx, 0.0)
    elif isinstance(module, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm):
        for p in (module.weight, module.bias):
            if p is not None:
                p.index_fill_(0, idx, 0.0)


def _op_names(output: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [output.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__.rstrip("0123456789").removesuffix("Backward"))
        stack.extend(f for f, _ in getattr(fn, "next_functions", ()))
    return names


def removal_blockers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Sentences saying why filters/channels of ``model`` cannot be removed physically.

    Args:
        model: any loaded model (TorchScript, an exported graph, an ``nn.Module``).
        example_input: a real input batch.

    Returns:
        An empty list when :func:`physical_prune` can cut the model; otherwise one sentence
        per problem, each ending in what still works (masks).
    """
    if isinstance(model, torch.jit.ScriptModule) or not isinstance(model, nn.Module):
        return [
            "TorchScript and exported programs can be pruned with masks only; upload "
            "safetensors weights with a built-in architecture to remove channels"
        ]
    weighted = {n: m for n, m in model.named_modules() if isinstance(m, _WEIGHTED)}
    if not weighted:
        return ["the model calls no Conv/Linear modules, so there is nothing to cut; masks only"]
    mixing = [n for n, m in model.named_modules() if isinstance(m, _EXACTNESS_BREAKERS)]
    grouped = [n for n, m in weighted.items() if 1 < getattr(m, "groups", 1) != m.out_channels]
    out: list[str] = []
    if mixing:
        out.append(
            f"layers {', '.join(mixing)} normalise or attend across channels, so removing "
            "channels would change their outputs; masks only"
        )
    if grouped:
        out.append(f"grouped convolutions {', '.join(grouped)} cannot be cut; masks only")
    try:
        with _eval_mode(model), torch.enable_grad():
            ops = _op_names(model(example_input[:2]))
        dg = _build_graph(model, example_input[:2])
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported, not raised
        return out + [f"tracing the model failed ({type(exc).__name__}: {exc}); masks only"]
    unknown = sorted(ops - _SAFE_OPS)
    if unknown:
        out.append(
            f"operations whose channels cannot be followed: {', '.join(unknown)}; masks only"
        )
    missed = [n for n, m in weighted.items() if m not in dg.module2node]
    if missed:
        out.append(
            f"layers not reached by the traced forward pass: {', '.join(missed)}; masks only"
        )
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, batches: int = 20) -> int:
    """Reset BatchNorm running statistics and re-estimate them on ``batches`` batches.

    Uses a cumulative average (``momentum=None``) in train mode, then leaves the model in eval
    mode. Use it after physical removal or heavy masking, when the old statistics no longer
    describe the layer's inputs.

    Args:
        model: the model, changed in place.
        loader: yields ``(x, y)`` pairs or bare input tensors.
        batches: the most batches to read.

    Returns:
        The number of batches used (0 when the model has no BatchNorm).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    device = next(model.parameters()).device
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    used = 0
    try:
        for batch in loader:
            if used >= batches:
                break
            x = batch[0] if isinstance(batch, list | tuple) else batch
            model(x.to(device))
            used += 1
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
        model.eval()
    return used


_CTOR_ARGS: dict[type, tuple[str, ...]] = {
    nn.Linear: ("in_features", "out_features"),
    nn.modules.batchnorm._BatchNorm: (
        "num_features",
        "eps",
        "momentum",
        "affine",
        "track_running_stats",
    ),
    nn.LayerNorm: ("normalized_shape", "eps", "elementwise_affine"),
    nn.GroupNorm: ("num_groups", "num_channels", "eps", "affine"),
}
_CONV_ARGS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "groups",
    "padding_mode",
)
CONFIG_FORMAT = "prunelab-architecture/1"


def _ctor_args(module: nn.Module) -> dict | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        names = _CONV_ARGS + (("output_padding",) if module.transposed else ())
        args = {k: getattr(module, k) for k in names}
        return args | {"bias": module.bias is not None}
    for cls, names in _CTOR_ARGS.items():
        if isinstance(module, cls):
            args = {k: getattr(module, k) for k in names}
            return args | ({"bias": module.bias is not None} if cls is nn.Linear else {})
    return None


def architecture_config(
    model: nn.Module,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: Iterable[int] | None = None,
) -> dict:
    """A JSON-able description from which :func:`rebuild` recreates a (pruned) model.

    It names the built-in architecture and records the constructor arguments of every
    Conv/Linear/norm layer, whose channel counts physical removal changed.

    Args:
        model: the (physically pruned) model.
        arch: built-in architecture name; defaults to ``model.prunelab_arch`` if set.
        num_classes: classifier size the original was built with.
        input_shape: one sample's shape, without the batch dimension.

    Returns:
        ``{"format", "arch", "num_classes", "input_shape", "layers": {name: {"kind", "args"}}}``.
    """
    layers = {}
    for name, module in model.named_modules():
        args = _ctor_args(module)
        if args is not None and name:
            kind = type(module).__name__
            layers[name] = {"kind": kind, "args": {k: _jsonable(v) for k, v in args.items()}}
    return {
        "format": CONFIG_FORMAT,
        "arch": arch if arch is not None else getattr(model, "prunelab_arch", None),
        "num_classes": num_classes,
        "input_shape": list(input_shape) if input_shape is not None else None,
        "layers": layers,
    }


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def rebuild(config: Mapping, *, base: nn.Module | None = None) -> nn.Module:
    """Recreate the module structure described by :func:`architecture_config`.

    Builds the original built-in architecture (``app.zoo.build``), or copies ``base``, then
    replaces every recorded layer by a fresh one with the recorded shape. Load the weights
    (``safetensors.torch.load_file`` + ``load_state_dict(strict=True)``) afterwards.

    Args:
        config: the dict from :func:`architecture_config` (e.g. read from architecture.json).
        base: a module of the original architecture to start from instead of the zoo.

    Returns:
        An ``nn.Module`` in eval mode with freshly initialised parameters.

    Raises:
        ValueError: unknown format, no architecture to start from, or a layer it cannot place.
    """
    if config.get("format") != CONFIG_FORMAT:
        raise ValueError(f"architecture config format must be {CONFIG_FORMAT!r}")
    if base is not None:
        model = copy.deepcopy(base)
    elif config.get("arch"):
        from app.zoo import build  # only the rebuild route needs the built-in architectures

        shape = config.get("input_shape")
        model = build(
            config["arch"],
            num_classes=config.get("num_classes") or 10,
            input_shape=tuple(shape) if shape else None,
        )
    else:
        raise ValueError("architecture config names no built-in 'arch' to rebuild from")
    named = dict(model.named_modules())
    for name, spec in config["layers"].items():
        cls = getattr(nn, spec["kind"], None)
        parent_name, _, attr = name.rpartition(".")
        if cls is None or name not in named or parent_name not in named:
            raise ValueError(f"architecture config layer {name!r} ({spec['kind']}) does not fit")
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
        setattr(named[parent_name], attr, cls(**args))
    return model.eval()
