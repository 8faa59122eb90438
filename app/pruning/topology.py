"""What the traced graph says about prunable layers: the BatchNorm that follows each one, and
the residual branches that zeroing their layers turns into the identity.

Example:
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> following_bn(model)
    {'0': '1'}
    >>> residual_blocks(model)
    []
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from app.pruning.layers import is_transposed, prunable_layers

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
