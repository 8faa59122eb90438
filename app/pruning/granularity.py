"""Which units a weight tensor is cut into (PRUNING.md section 3).

Every prunable weight is seen in a canonical layout ``(out, in, *kernel)``:
Linear is ``(out, in)`` (a conv with no kernel dims), Conv1d/2d/3d are as
stored, ConvTranspose (stored ``(in, out, *k)``) is transposed. A
:class:`UnitView` reduces an element-wise score tensor to one score per unit
and expands a unit mask back to an element mask shaped like the weight.

Example:
    >>> w = torch.randn(8, 4, 3, 3)
    >>> view = unit_view(w, "filter")
    >>> view.unit_shape
    (8,)
    >>> view.expand(view.reduce(w.abs()) > 0.5).shape
    torch.Size([8, 4, 3, 3])
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
from torch import Tensor, nn

from app.catalogue import GRANULARITIES

PRUNABLE_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
)
# Element-wise modules f with f(0) = 0: a zeroed branch stays zero through them.
ZERO_PRESERVING = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Dropout,
    nn.Identity,
)
_ADD_TARGETS = (operator.add, operator.iadd, torch.add)
_ZERO_FUNCS = (torch.relu, nn.functional.relu, nn.functional.gelu, torch.tanh)


PRUNABLE_NAMES = frozenset(t.__name__ for t in PRUNABLE_TYPES)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv1d/2d/3d, ConvTranspose1d/2d and Linear layers by qualified name, in module order.

    Embedding, LayerNorm, attention in-projections and other weights are not pruned. Layers of
    TorchScript archives (``original_name``) and of ``torch.export`` programs (the module stack
    recorded in the graph) count too: they are pruned as masks, in place.
    """
    kinds = layer_kinds(model)
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if kinds.get(name) in PRUNABLE_NAMES and isinstance(weight, Tensor) and weight.dim() >= 2:
            found[name] = module
    return found


def layer_kinds(model: nn.Module) -> dict[str, str]:
    """Module path -> its class name (``Conv2d``), also inside TorchScript and exported graphs."""
    exported = exported_kinds(model)
    kinds = {}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if isinstance(module, torch.jit.ScriptModule):
            kind = getattr(module, "original_name", kind)
        elif name in exported:
            kind = exported[name]
        kinds[name] = kind
    return kinds


def exported_kinds(model: nn.Module) -> dict[str, str]:
    """Module path -> class name, from a ``torch.export`` graph's ``nn_module_stack``."""
    graph = getattr(model, "graph", None)
    if graph is None or isinstance(model, torch.jit.ScriptModule):
        return {}
    kinds: dict[str, str] = {}
    for node in graph.nodes:
        for path, cls in (node.meta.get("nn_module_stack") or {}).values():
            kinds[str(path)] = str(getattr(cls, "__name__", cls)).rsplit(".", 1)[-1]
    return kinds


def is_transposed(layer: nn.Module) -> bool:
    return isinstance(layer, nn.ConvTranspose1d | nn.ConvTranspose2d)


def check_layer(name: str, layer: nn.Module, granularity: str) -> None:
    """Raise ValueError when ``granularity`` cannot cut this layer.

    Raises:
        ValueError: grouped ConvTranspose, or channel pruning of a grouped conv
            (its input channel index differs per group).
    """
    groups = getattr(layer, "groups", 1)
    if is_transposed(layer) and groups > 1:
        raise ValueError(
            f"layer '{name}' is a grouped ConvTranspose, which PruneLab cannot prune; exclude it."
        )
    if granularity == "channel" and groups > 1:
        raise ValueError(
            f"granularity 'channel' cannot cut grouped/depthwise conv '{name}' (groups={groups}): "
            "its input channels differ per group; exclude it or prune filters."
        )


def canonical(weight: Tensor, transposed: bool = False) -> Tensor:
    """The ``(out, in, *kernel)`` view of a weight (a transpose view for ConvTranspose)."""
    return weight.transpose(0, 1) if transposed else weight


@dataclass(frozen=True)
class UnitView:
    """How one weight is cut into units of one granularity.

    ``reduce`` maps a tensor shaped like the weight to ``unit_shape``;
    ``expand`` maps a unit tensor back to the weight's shape.
    """

    granularity: str
    weight_shape: tuple[int, ...]
    transposed: bool
    unit_shape: tuple[int, ...]
    reduce_dims: tuple[int, ...]  # canonical dims folded into one unit

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        s = self.weight_shape
        return (s[1], s[0], *s[2:]) if self.transposed else s

    @property
    def unit_size(self) -> int:
        """Weights per unit."""
        n = 1
        for d in self.reduce_dims:
            n *= self.canonical_shape[d]
        return n

    def reduce(self, elem: Tensor, how: str = "sum") -> Tensor:
        """Fold an element-wise tensor into units with ``sum``, ``mean``, ``l2``, ``rms``,
        ``max`` or ``min``."""
        if not self.reduce_dims:
            return elem
        c = canonical(elem, self.transposed)
        dims = self.reduce_dims
        if how == "sum":
            out = c.sum(dim=dims)
        elif how == "mean":
            out = c.mean(dim=dims)
        elif how in ("l2", "rms"):
            out = c.pow(2).sum(dim=dims)
            out = (out / self.unit_size if how == "rms" else out).sqrt()
        elif how == "max":
            out = c.amax(dim=dims)
        elif how == "min":
            out = c.amin(dim=dims)
        else:
            raise ValueError(f"unknown reduction {how!r}.")
        return out.reshape(self.unit_shape)

    def expand(self, units: Tensor) -> Tensor:
        """A unit tensor broadcast back to the weight's (stored) shape, contiguous."""
        if not self.reduce_dims:
            return units.reshape(self.weight_shape).contiguous()
        cshape = list(self.canonical_shape)
        keep = [1 if d in self.reduce_dims else n for d, n in enumerate(cshape)]
        full = units.reshape(keep).expand(cshape)
        return canonical(full, self.transposed).contiguous()


def unit_view(
    weight: Tensor, granularity: str, nm: tuple[int, int] = (2, 4), *, transposed: bool = False
) -> UnitView:
    """Describe how ``weight`` is cut into ``granularity`` units.

    Args:
        weight: a Linear/Conv weight (ConvTranspose with ``transposed=True``).
        granularity: a name of :data:`app.catalogue.GRANULARITIES`.
        nm: (N, M) for ``nm``; its units are elements, selected by :func:`nm_mask`.
        transposed: the weight is stored ``(in, out, *k)``.

    Returns:
        A :class:`UnitView`. Linear weights have no kernel dims, so ``vector`` and
        ``kernel`` units of a Linear layer are single weights and ``group`` units are columns.

    Raises:
        ValueError: unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is not one of: {', '.join(GRANULARITIES)}.")
    shape = tuple(weight.shape)
    cshape = (shape[1], shape[0], *shape[2:]) if transposed else shape
    nd = len(cshape)
    dims: tuple[int, ...] = {
        "element": (),
        "nm": (),
        "vector": (nd - 1,) if nd > 2 else (),
        "kernel": tuple(range(2, nd)),
        "group": (0,),
        "filter": tuple(range(1, nd)),
        "channel": (0, *range(2, nd)),
        "layer": tuple(range(nd)),
    }[granularity]
    unit_shape = tuple(n for d, n in enumerate(cshape) if d not in dims) or (1,)
    if not dims:
        unit_shape = shape
    return UnitView(granularity, shape, transposed, unit_shape, dims)


def nm_dense_reason(layer: nn.Module, m: int) -> str | None:
    """Why N:M cannot cut ``layer`` (its reduction dimension is not a multiple of ``m``), or None.

    The reduction dimension is the input channels per group of a conv (``weight.shape[1]``; 1
    for a depthwise kernel) and ``in_features`` of a Linear.
    """
    weight = layer.weight
    inputs = weight.shape[0] if is_transposed(layer) else weight.shape[1]
    if inputs % m == 0:
        return None
    what = "input features" if weight.dim() == 2 else "input channels"
    if getattr(layer, "groups", 1) > 1:
        what += " per group"
    return f"its {what} ({inputs}) are not a multiple of M={m}"


def nm_mask(scores: Tensor, n: int, m: int, *, transposed: bool = False) -> Tensor:
    """Keep the ``n`` best of every ``m`` consecutive weights along the reduction dimension.

    Grouped in the order sparse kernels (NVIDIA 2:4 tensor cores, ASP) read them: a Linear's
    consecutive input features of a row; a conv weight laid out as ``[out, *kernel, in]``, i.e.
    ``m`` consecutive input channels at a fixed kernel position. The input channels must be a
    multiple of ``m`` (:func:`nm_dense_reason`). Returns a bool keep-mask shaped like ``scores``.

    Raises:
        ValueError: the input channels are not a multiple of ``m``.
    """
    c = canonical(scores, transposed)
    if c.shape[1] % m:
        raise ValueError(f"N:M needs input channels in multiples of {m}, got {c.shape[1]}.")
    last = c.movedim(1, -1)  # (out, *kernel, in)
    groups = last.reshape(-1, m).float()
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(min(n, m), dim=1).indices, True)
    keep = keep.reshape(last.shape).movedim(-1, 1)
    return canonical(keep, transposed).contiguous()


def _trace(model: nn.Module) -> torch.fx.GraphModule | None:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: use module order instead
        return None


def following_bn(model: nn.Module) -> dict[str, str]:
    """Map each prunable layer to the BatchNorm that directly normalises its output.

    Uses torch.fx when the model traces, else module registration order; a BN is
    paired only when its ``num_features`` equals the layer's output channels.
    """
    layers = prunable_layers(model)
    modules = dict(model.named_modules())
    bn_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def matches(layer_name: str, bn_name: str) -> bool:
        bn, layer = modules[bn_name], layers[layer_name]
        outs = layer.weight.shape[1] if is_transposed(layer) else layer.weight.shape[0]
        return isinstance(bn, bn_types) and bn.num_features == outs and bn.affine

    found: dict[str, str] = {}
    gm = _trace(model)
    if gm is not None:
        for node in gm.graph.nodes:
            if node.op == "call_module" and node.target in layers and len(node.users) == 1:
                user = next(iter(node.users))
                if (
                    user.op == "call_module"
                    and user.target in modules
                    and matches(node.target, user.target)
                ):
                    found[node.target] = user.target
        return found
    leaves = [n for n, m in model.named_modules() if not list(m.children())]
    for a, b in zip(leaves, leaves[1:], strict=False):
        if a in layers and matches(a, b):
            found[a] = b
    return found


@dataclass(frozen=True)
class Block:
    """A residual branch ``y = x + branch(x)`` whose layers can all be zeroed."""

    layers: tuple[str, ...]
    norms: tuple[str, ...]  # BatchNorms inside the branch (their gamma/beta are zeroed too)


def _is_zero_preserving(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], ZERO_PRESERVING)
    return node.op == "call_function" and node.target in _ZERO_FUNCS


def residual_blocks(model: nn.Module) -> list[Block]:
    """The residual branches with an identity shortcut (``x + f(x)``), found with torch.fx.

    A branch qualifies when it is a single chain of modules from the fork ``x`` to the
    add and everything after its last prunable layer maps zero to zero; zeroing all its
    layers (weights, biases, BN affine) turns the block into the identity.
    """
    gm = _trace(model)
    if gm is None:
        return []
    modules = dict(gm.named_modules())
    layers = prunable_layers(model)
    blocks: list[Block] = []
    for add in gm.graph.nodes:
        if add.op != "call_function" or add.target not in _ADD_TARGETS:
            continue
        ins = [a for a in add.args if isinstance(a, torch.fx.Node)]
        if len(ins) != 2:
            continue
        for branch, shortcut in (ins, ins[::-1]):
            block = _walk_branch(branch, shortcut, modules, layers)
            if block is not None:
                blocks.append(block)
    return blocks


def _walk_branch(node, shortcut, modules, layers) -> Block | None:
    names: list[str] = []
    norms: list[str] = []
    tail_ok = True  # nodes after the last prunable layer (walking backwards: seen so far)
    while node is not shortcut:
        if len(node.users) != 1 or len(node.all_input_nodes) != 1 or node.op == "placeholder":
            return None
        if node.op == "call_module" and node.target in layers:
            names.append(node.target)
            tail_ok = False
        elif node.op == "call_module" and isinstance(
            modules[node.target], nn.modules.batchnorm._BatchNorm
        ):
            norms.append(node.target)
        elif tail_ok and not _is_zero_preserving(node, modules):
            return None
        node = node.all_input_nodes[0]
    return Block(tuple(reversed(names)), tuple(reversed(norms))) if names else None
