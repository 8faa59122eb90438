"""Make an ONNX model exported at a fixed batch of 1 run at any batch size, where that is safe.

A legacy export without ``dynamic_axes`` (or a dynamo export without a dynamic batch) fixes the
batch dimension of its inputs and outputs to 1 and bakes it into ``Reshape`` targets such as
``[1, -1]``. :func:`batch_agnostic` writes a symbolic batch on the inputs/outputs and ``0``
(copy the input's size) for a leading 1 in those targets, then checks the result with
onnxruntime: two different samples as one batch must give what each gives alone. Where that
check fails the model is returned unchanged and the preflight's batch-2 run refuses it with the
export call to use.

Example:
    >>> import io, onnx, torch
    >>> buf = io.BytesIO()
    >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> torch.onnx.export(net, (torch.zeros(1, 2, 2),), buf, dynamo=False, opset_version=17)
    >>> model = onnx.load_from_string(buf.getvalue())
    >>> fixed_batch(model)
    1
    >>> model, changed = batch_agnostic(model)
    >>> changed, fixed_batch(model)
    (True, None)
"""

from __future__ import annotations

import copy

import numpy as np

# ONNX TensorProto element types the preflight can feed
_INT_TYPES = {6: np.int32, 7: np.int64}
_MAX_CHECK_BYTES = 1 << 30  # onnxruntime needs the model serialised in memory for the check


def fixed_batch(model) -> int | None:
    """The fixed batch size of the first graph input, or None when it is symbolic or unknown."""
    for value in _inputs(model):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
        return None
    return None


def batch_agnostic(model):
    """``(model, True)`` rewritten for any batch and checked, or ``(model, False)`` unchanged."""
    if fixed_batch(model) != 1 or model.ByteSize() > _MAX_CHECK_BYTES:
        return model, False
    candidate = copy.deepcopy(model)
    graph = candidate.graph
    for value in [*_inputs(candidate), *graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = "batch"
    del graph.value_info[:]  # intermediate shapes still say batch 1; onnxruntime re-infers them
    _rewrite_reshapes(candidate)
    try:
        same = _same_per_sample(model, candidate)
    except Exception:  # noqa: BLE001 - any failure means the rewrite is not safe
        same = False
    return (candidate, True) if same else (model, False)


def _inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def _rewrite_reshapes(model) -> None:
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        tensor = consts[node.input[1]]
        shape = numpy_helper.to_array(tensor).copy()
        if shape.ndim != 1 or len(shape) < 2 or shape[0] != 1 or (shape == 0).any():
            continue
        shape[0] = 0  # 0: the size of the reshaped tensor's own first (batch) dimension
        tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
        for attr in node.attribute:
            if attr.name == "allowzero":
                attr.i = 0


def _samples(model) -> dict[str, np.ndarray]:
    """Two different samples per input, stacked: ids 0 and 1, or two seeded normal draws."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in _inputs(model):
        ttype = value.type.tensor_type
        rest = [d.dim_value if d.HasField("dim_value") else 1 for d in ttype.shape.dim][1:]
        if ttype.elem_type in _INT_TYPES:
            dtype = _INT_TYPES[ttype.elem_type]
            feeds[value.name] = np.stack([np.zeros(rest, dtype), np.ones(rest, dtype)])
        else:
            feeds[value.name] = rng.standard_normal((2, *rest)).astype(np.float32)
    return feeds


def _same_per_sample(original, candidate) -> bool:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    provider = ["CPUExecutionProvider"]
    old = ort.InferenceSession(original.SerializeToString(), opts, providers=provider)
    new = ort.InferenceSession(candidate.SerializeToString(), opts, providers=provider)
    feeds = _samples(original)
    both = new.run(None, feeds)
    for i in range(2):
        alone = old.run(None, {k: v[i : i + 1] for k, v in feeds.items()})
        for got, want in zip(both, alone, strict=True):
            if got.shape[0] != 2 or not np.allclose(got[i : i + 1], want, rtol=1e-3, atol=1e-4):
                return False
    return True
