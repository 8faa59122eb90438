"""ONNX -> an editable ``torch.fx.GraphModule`` through onnx2torch, with user-facing errors.

onnx2torch 1.5.15 converts what the legacy exporter writes at opset <= 17. Newer files are first
moved to opset 17 with ``onnx.version_converter``; whatever still fails is refused with the op
and its opset named. Files whose weights live in a sidecar (``x.onnx.data``, the default of
``torch.onnx.export``) come as one ``.zip`` (:mod:`app.modelio.onnx_bundle`); a bare ``.onnx``
that names a sidecar is refused. A model fixed at batch 1 is made batch-agnostic where that is
safe (:mod:`app.modelio.onnx_batch`), and constant MatMul/Gather weights become ``nn.Linear``/
``nn.Embedding`` layers (:mod:`app.modelio.onnx_linear`).

onnx2torch imports torchvision for its NonMaxSuppression and RoiAlign converters only; there is
no CPU torchvision here, so :func:`import_onnx2torch` installs a stand-in for exactly those
symbols while onnx2torch is imported, and removes it from ``sys.modules`` afterwards.
"""

from __future__ import annotations

import sys
import tempfile
import types
import zipfile
from pathlib import Path

from app.errors import Invalid, UnsupportedMedia

TARGET_OPSET = 17
_EXTERNAL_HINT = (
    "upload a .zip holding the .onnx and its .onnx.data file (or send both files in one "
    "upload), or re-export it with its weights inside the file: "
    "torch.onnx.export(model, (example,), 'model.onnx', dynamo=False, external_data=False)"
)


def _torchvision_stub() -> types.ModuleType:
    def missing(op: str):
        def fail(*_args, **_kwargs):
            raise Invalid(f"the ONNX op {op} needs torchvision, which this server does not have")

        return fail

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = missing("NonMaxSuppression")  # type: ignore[attr-defined]
    ops.box_convert = missing("NonMaxSuppression")  # type: ignore[attr-defined]
    ops.roi_align = missing("RoiAlign")  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    tv.__prunelab_stub__ = True  # type: ignore[attr-defined]
    return tv


def import_onnx2torch() -> types.ModuleType:
    """Import onnx2torch whether or not torchvision is installed."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401

        have_tv = True
    except ImportError:
        have_tv = False
    if have_tv:
        import onnx2torch

        return onnx2torch
    stub = _torchvision_stub()
    sys.modules["torchvision"], sys.modules["torchvision.ops"] = stub, stub.ops
    try:
        import onnx2torch
    finally:
        # onnx2torch keeps its own reference; nothing else should believe torchvision exists
        sys.modules.pop("torchvision", None)
        sys.modules.pop("torchvision.ops", None)
    return onnx2torch


def load_onnx(path: Path, workdir: Path | None = None):
    """Parse and check an ONNX file, or a ``.zip`` of one with its external data.

    Args:
        path: an ``.onnx`` file holding its own weights, or a zip (see ``onnx_bundle``).
        workdir: where a zip is extracted; required for a zip.

    Raises:
        UnsupportedMedia: not parseable as ONNX.
        Invalid: a bare file naming external data, or ``onnx.checker`` finds the model invalid.
        BadRequest: a zip whose data locations point outside it.
    """
    import onnx
    from onnx import external_data_helper

    if zipfile.is_zipfile(path) and workdir is not None:
        from app.modelio.onnx_bundle import read_onnx_zip

        model = read_onnx_zip(Path(path), workdir)
    else:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise UnsupportedMedia(
                f"the file is not a readable ONNX model ({_short(exc)})"
            ) from exc
        external = [
            t.name
            for t in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(t)
        ]
        if external:
            raise Invalid(
                f"this ONNX file keeps {len(external)} weight tensors (first: {external[0]!r}) "
                "in a separate .onnx.data file, which the default torch.onnx.export writes; "
                + _EXTERNAL_HINT
            )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise Invalid(f"onnx.checker refused the model: {_short(exc)}") from exc
    return model


def model_opset(model) -> int:
    """The default-domain opset the model declares."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def convert_onnx(path: Path):
    """Load, check, down-convert if needed and convert an ONNX file to a torch module.

    Args:
        path: an ``.onnx`` file holding its own weights, or a ``.zip`` with its data files.

    Returns:
        ``(module, model)``: a ``torch.fx.GraphModule`` with ordinary ``nn.Conv2d``/
        ``nn.Linear``/``nn.Embedding`` layers where they can be mapped, and the ONNX model it
        came from (after a batch-1 rewrite, see ``onnx_batch``).

    Raises:
        Invalid: external data missing, a checker failure, or an op onnx2torch cannot convert
            (named, with its opset).
    """
    from app.modelio.onnx_batch import batch_agnostic
    from app.modelio.onnx_linear import expose_weights
    from app.modelio.onnx_ops import decompose_new_ops

    with tempfile.TemporaryDirectory(prefix="prunelab-onnx-") as work:
        model = load_onnx(path, Path(work))
    model, _ = batch_agnostic(model)
    _inline_identities(model)
    opset = model_opset(model)
    decompose_new_ops(model)
    if opset > TARGET_OPSET:
        model = _down_convert(model, opset)
        opset = TARGET_OPSET
    onnx2torch = import_onnx2torch()
    _check_ops_supported(model, opset)
    _relax_reshape_allowzero(model)
    try:
        module = onnx2torch.convert(model)
    except Exception as exc:
        raise Invalid(
            f"the ONNX model (opset {opset}) could not be converted to PyTorch: {_short(exc)}; "
            f"export it with torch.onnx.export(..., dynamo=False, opset_version={TARGET_OPSET})"
        ) from exc
    return expose_weights(module), model


def _down_convert(model, opset: int):
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, TARGET_OPSET)
    except Exception as exc:
        raise Invalid(
            f"the ONNX model uses opset {opset} and could not be converted to opset "
            f"{TARGET_OPSET} ({_short(exc)}); export it with torch.onnx.export(..., dynamo=False, "
            f"opset_version={TARGET_OPSET}, external_data=False)"
        ) from exc


def _inline_identities(model) -> None:
    """Give each ``Identity(initializer)`` output its own copy of the tensor.

    The legacy exporter stores equal weights (e.g. zero biases) once and hands them out through
    ``Identity`` nodes; onnx2torch then sees a computed value where it needs a constant
    (``Conv``, ``Gemm``) and the weights cannot become separate layers.
    """
    inits = {t.name: t for t in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in inits:
            copy = model.graph.initializer.add()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            inits[copy.name] = copy
        else:
            keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)


def _relax_reshape_allowzero(model) -> None:
    """Set ``allowzero=0`` on Reshape nodes whose constant target shape holds no 0.

    The dynamo exporter writes ``allowzero=1`` on every Reshape; onnx2torch refuses it. The
    attribute only changes what a 0 in the target shape means, so with no 0 it is a no-op.
    """
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        shape = numpy_helper.to_array(consts[node.input[1]])
        if (shape == 0).any():
            continue
        for attr in node.attribute:
            if attr.name == "allowzero" and attr.i == 1:
                attr.i = 0


def _check_ops_supported(model, opset: int) -> None:
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain: o.version for o in model.opset_import}
    for node in model.graph.node:
        version = opsets.get(node.domain, opset)
        try:
            get_converter(operation_type=node.op_type, version=version, domain=node.domain)
        except NotImplementedError as exc:
            domain = f" (domain {node.domain!r})" if node.domain else ""
            raise Invalid(
                f"the ONNX op {node.op_type}{domain} at opset {version} (node {node.name!r}) "
                "cannot be converted to PyTorch; replace it or export at opset 17 with "
                "dynamo=False"
            ) from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
