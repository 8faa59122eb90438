"""Give back the weights onnx2torch hides: constant MatMul/Gather operands become real layers.

onnx2torch maps ``Gemm`` to ``nn.Linear`` but a ``MatMul`` with a constant weight (every Linear
on 3-D activations, so all of a transformer) to ``OnnxMatMul`` reading a buffer, and a token
embedding (``Gather`` of a constant table) to ``OnnxGather``. Buffers are not parameters: the
lab would neither list, prune, fine-tune nor count them. :func:`expose_weights` rewrites the fx
graph: ``MatMul(x, W)`` (+ ``Add`` of a constant bias) becomes ``nn.Linear`` and
``Gather(T, ids)`` on axis 0 becomes ``nn.Embedding``, with the same numbers.

Example:
    >>> import io, onnx
    >>> from app.modelio.onnx_convert import import_onnx2torch
    >>> onnx2torch = import_onnx2torch()  # without torchvision
    >>> buf = io.BytesIO()
    >>> net = nn.Linear(4, 3)
    >>> torch.onnx.export(net, (torch.zeros(2, 5, 4),), buf, dynamo=False, opset_version=17)
    >>> converted = onnx2torch.convert(onnx.load_from_string(buf.getvalue()))
    >>> any(isinstance(m, nn.Linear) for m in converted.modules())
    False
    >>> module = expose_weights(converted)
    >>> [type(m).__name__ for m in module.modules() if isinstance(m, nn.Linear)]
    ['Linear']
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn

from app.modelio.weights import digest


def expose_weights(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite constant-weight MatMul(+Add) to ``nn.Linear`` and Gather to ``nn.Embedding``."""
    changed = False
    shared = _tied(gm)
    for node in list(gm.graph.nodes):
        kind = _kind(gm, node)
        if kind == "OnnxMatMul":
            changed |= _to_linear(gm, node, shared)
        elif kind == "OnnxGather":
            changed |= _to_embedding(gm, node, shared)
    if changed:
        gm.graph.eliminate_dead_code()
        _drop_unused_constants(gm)
        gm.graph.lint()
        gm.recompile()
    return gm


def _tied(gm: fx.GraphModule) -> set[str]:
    """Targets of constants read more than once or equal to another constant.

    onnx2torch gives every use of an ONNX initializer its own buffer, so a weight the file
    shares (tied embeddings, one matrix used twice) shows up as equal copies; those stay
    constants: as separate layers they would be counted twice and drift apart in training.
    """
    reads = Counter(str(n.target) for n in gm.graph.nodes if n.op == "get_attr")
    shared = {target for target, n in reads.items() if n > 1}
    groups: dict[tuple, list[str]] = {}
    for target in reads:
        value = _fetch(gm, target)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == 2:
            key = (tuple(value.shape), digest(value))
            groups.setdefault(key, []).append(target)
    shared.update(t for targets in groups.values() if len(targets) > 1 for t in targets)
    return shared


def _kind(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op != "call_module":
        return ""
    return type(gm.get_submodule(str(node.target))).__name__


def _constant(gm: fx.GraphModule, node: object, dims: int, shared: set[str]) -> torch.Tensor | None:
    """The float tensor a ``get_attr`` node reads, when nothing else reads it (a weight used
    twice, e.g. tied embeddings, stays one constant rather than becoming two layers)."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or len(node.users) != 1:
        return None
    if str(node.target) in shared:
        return None
    value = _fetch(gm, str(node.target))
    ok = isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() == dims
    return value if ok else None


def _fetch(gm: fx.GraphModule, target: str) -> object:
    owner, _, leaf = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf, None)


def _new_name(gm: fx.GraphModule, target: str, old: str, new: str) -> str:
    base = target[: -len(old)] + new if target.endswith(old) else f"{target}/{new}"
    name, i = base, 1
    while name in dict(gm.named_modules()):
        name, i = f"{base}_{i}", i + 1
    return name


def _to_linear(gm: fx.GraphModule, node: fx.Node, shared: set[str]) -> bool:
    if len(node.args) != 2:
        return False
    x, w_node = node.args
    weight = _constant(gm, w_node, 2, shared)
    if weight is None:
        return False
    bias, add = _bias_of(gm, node, weight.shape[1], shared)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.t())
        if bias is not None:
            linear.bias.copy_(bias)
    name = _new_name(gm, str(node.target), "MatMul", "Linear")
    gm.add_submodule(name, linear)
    out = add if add is not None else node
    with gm.graph.inserting_before(out):
        new = gm.graph.call_module(name, (x,))
    out.replace_all_uses_with(new)
    return True


def _bias_of(gm: fx.GraphModule, node: fx.Node, width: int, shared: set[str]):
    """``(bias, add_node)`` when the MatMul's only user adds a constant vector of ``width``."""
    if len(node.users) != 1:
        return None, None
    add = next(iter(node.users))
    if _kind(gm, add) != "OnnxBinaryMathOperation" or len(add.args) != 2:
        return None, None
    mod = gm.get_submodule(str(add.target))
    if mod.math_op_function is not torch.add or getattr(mod, "broadcast", None) == 1:
        return None, None
    other = add.args[0] if add.args[1] is node else add.args[1]
    bias = _constant(gm, other, 1, shared)
    if bias is None or bias.shape[0] != width:
        return None, None
    return bias, add


def _to_embedding(gm: fx.GraphModule, node: fx.Node, shared: set[str]) -> bool:
    mod = gm.get_submodule(str(node.target))
    if getattr(mod, "_axis", 0) != 0 or len(node.args) != 2:
        return False
    table_node, ids = node.args
    table = _constant(gm, table_node, 2, shared)
    if table is None:
        return False
    embedding = nn.Embedding(table.shape[0], table.shape[1])
    with torch.no_grad():
        embedding.weight.copy_(table)
    name = _new_name(gm, str(node.target), "Gather", "Embedding")
    gm.add_submodule(name, embedding)
    with gm.graph.inserting_before(node):
        long_ids = gm.graph.call_method("long", (ids,))
        new = gm.graph.call_module(name, (long_ids,))
    node.replace_all_uses_with(new)
    return True


def _drop_unused_constants(gm: fx.GraphModule) -> None:
    """Delete onnx2torch constants no ``get_attr`` reads any more (not counted twice)."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    holder = getattr(gm, "initializers", None)
    if isinstance(holder, nn.Module):
        for leaf in list(holder._buffers):
            if f"initializers.{leaf}" not in used:
                del holder._buffers[leaf]
    gm.delete_all_unused_submodules()
