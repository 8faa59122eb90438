"""Rewrite ONNX ops that have no older version into ops onnx2torch's opset 17 has.

The dynamo exporter (``torch.onnx.export``'s default) writes opset 18+ and uses ``Gelu``
(opset 20), which ``onnx.version_converter`` cannot take back to 17. :func:`decompose_new_ops`
replaces each ``Gelu`` with its definition before the down-conversion:
``0.5 * x * (1 + erf(x / sqrt(2)))``, or the ``tanh`` form for ``approximate="tanh"``; and
``LessOrEqual``/``GreaterOrEqual``, which onnx2torch lacks, with ``Not(Greater)``/``Not(Less)``.

Example:
    >>> from onnx import TensorProto, helper
    >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    >>> graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"])], "g", [x], [y])
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    >>> decompose_new_ops(model)  # in place; then version_converter.convert_version(model, 17)
    >>> sorted({n.op_type for n in model.graph.node})
    ['Add', 'Div', 'Erf', 'Mul']
"""

from __future__ import annotations

import math

import numpy as np

_NEGATED = {"LessOrEqual": "Greater", "GreaterOrEqual": "Less"}


def decompose_new_ops(model) -> None:
    """Replace ``Gelu``, ``LessOrEqual`` and ``GreaterOrEqual`` nodes of the main graph."""
    from onnx import helper, numpy_helper

    graph = model.graph
    _negate_comparisons(graph, helper)
    if not any(n.op_type == "Gelu" for n in graph.node):
        return
    consts = {
        "half": 0.5,
        "one": 1.0,
        "sqrt2": math.sqrt(2.0),
        "k_tanh": math.sqrt(2.0 / math.pi),
        "c_tanh": 0.044715,
        "three": 3.0,
    }
    for key, value in consts.items():
        graph.initializer.append(
            numpy_helper.from_array(np.array(value, np.float32), f"prunelab_gelu_{key}")
        )
    nodes = []
    for i, node in enumerate(graph.node):
        if node.op_type != "Gelu":
            nodes.append(node)
            continue
        approx = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
        nodes += _gelu_nodes(helper, node.input[0], node.output[0], f"prunelab_gelu{i}", approx)
    del graph.node[:]
    graph.node.extend(nodes)


def _gelu_nodes(helper, x: str, y: str, p: str, approx: str) -> list:
    c = "prunelab_gelu_"
    if approx == "tanh":
        inner = [
            helper.make_node("Pow", [x, c + "three"], [p + "_cube"]),
            helper.make_node("Mul", [p + "_cube", c + "c_tanh"], [p + "_cubek"]),
            helper.make_node("Add", [x, p + "_cubek"], [p + "_sum"]),
            helper.make_node("Mul", [p + "_sum", c + "k_tanh"], [p + "_arg"]),
            helper.make_node("Tanh", [p + "_arg"], [p + "_t"]),
        ]
    else:
        inner = [
            helper.make_node("Div", [x, c + "sqrt2"], [p + "_arg"]),
            helper.make_node("Erf", [p + "_arg"], [p + "_t"]),
        ]
    return [
        *inner,
        helper.make_node("Add", [p + "_t", c + "one"], [p + "_1p"]),
        helper.make_node("Mul", [x, p + "_1p"], [p + "_x1p"]),
        helper.make_node("Mul", [p + "_x1p", c + "half"], [y]),
    ]


def _negate_comparisons(graph, helper) -> None:
    if not any(n.op_type in _NEGATED for n in graph.node):
        return
    nodes = []
    for i, node in enumerate(graph.node):
        if node.op_type not in _NEGATED:
            nodes.append(node)
            continue
        tmp = f"prunelab_cmp{i}"
        nodes.append(helper.make_node(_NEGATED[node.op_type], list(node.input), [tmp]))
        nodes.append(helper.make_node("Not", [tmp], [node.output[0]]))
    del graph.node[:]
    graph.node.extend(nodes)
