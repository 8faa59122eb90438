"""Physical removal: a smaller dense copy (``physical_prune``), the masked model it equals
(``zero_removed_units``) and why a model cannot be cut (``removal_blockers``).

The channels that go are planned in :mod:`~app.pruning.structural.graph`.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> keep = torch.ones(6, 4, dtype=torch.bool)
    >>> keep[:3] = False
    >>> with torch.no_grad():
    ...     model[0].weight[:3] = 0.0
    >>> x = torch.randn(5, 4)
    >>> _ = zero_removed_units(model, {"0": keep}, x, granularity="filter")
    >>> small = physical_prune(model, {"0": keep}, x, granularity="filter")
    >>> small[0].out_features, bool(torch.allclose(small(x), model(x), atol=1e-6))
    (3, True)
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from app.pruning.structural.graph import WEIGHTED, build_graph, eval_mode, plan_removal

logger = logging.getLogger(__name__)

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


def _eval_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x)


def physical_prune(
    model: nn.Module,
    plan_or_masks: object,
    example_input: torch.Tensor,
    *,
    granularity: str,
    coupled: str = "intersection",
    notes: list[str] | None = None,
) -> nn.Module:
    """A new, smaller dense copy of ``model`` without the zero filters or channels.

    Args:
        model: the (masked) model; it is deep-copied and left untouched.
        plan_or_masks: a ``MaskPlan`` or ``{layer name: bool mask}`` (True = kept).
        example_input: a real input batch, used to trace the coupled groups.
        granularity: ``"filter"`` or ``"channel"``.
        coupled: ``"intersection"`` (default, exact) or ``"union"``; see the module docstring.
        notes: when given, the plan's sentences for the user (channels kept, and why) are
            appended to it.

    Returns:
        The pruned copy, in the same train/eval mode, with the same output shape.

    Raises:
        ValueError: a blocker from :func:`removal_blockers`, bad arguments, or a cut that
            changed the output shape.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        >>> keep = torch.ones(4, 1, 3, 3, dtype=torch.bool)
        >>> keep[0] = False
        >>> small = physical_prune(model, {"0": keep}, torch.randn(2, 1, 8, 8), granularity="filter")
        >>> small[0].out_channels, small[3].in_features
        (3, 108)
    """
    blockers = removal_blockers(model, example_input)
    if blockers:
        raise ValueError(blockers[0])
    pruned = copy.deepcopy(model)
    dg = build_graph(pruned, example_input)
    plan = plan_removal(pruned, plan_or_masks, dg, granularity=granularity, coupled=coupled)
    for note in plan.notes:
        logger.info("physical_prune: %s", note)
    if notes is not None:
        notes.extend(plan.notes)
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
    dg = build_graph(model, example_input)
    plan = plan_removal(model, plan_or_masks, dg, granularity=granularity, coupled=coupled)
    for root, handler, idxs in plan.cuts:
        for item in dg.get_pruning_group(root, handler, idxs):
            _zero_item(
                item.dep.target.module, item.idxs, dg.is_out_channel_pruning_fn(item.dep.handler)
            )
    return plan.removed


def _zero_item(module: object, idxs: list[int], out: bool) -> None:
    idx = torch.as_tensor(sorted(set(idxs)), dtype=torch.long)
    if isinstance(module, WEIGHTED):
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
    weighted = {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED)}
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
        with eval_mode(model), torch.enable_grad():
            ops = _op_names(model(example_input[:2]))
        dg = build_graph(model, example_input[:2])
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
