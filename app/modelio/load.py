"""Load a model file of a detected format into an ``nn.Module``, never running pickled code.

TorchScript and ``.pt2`` files can execute code when loaded (PyTorch's security policy), so
:func:`load_model` is called only in a worker or preflight process, never in the web process.
Nothing here calls ``torch.load(weights_only=False)`` or ``pickle.load``.

Example:
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> from app import zoo
    >>> path = Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_file(zoo.build("lenet5").state_dict(), str(path))
    >>> loaded = load_model(path, "safetensors", arch="lenet5")
    >>> loaded.module(torch.zeros(1, *loaded.input_shape)).shape
    torch.Size([1, 10])
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from app.catalogue import MASKS_ONLY_NOTE
from app.errors import Invalid, UnsupportedMedia
from app.modelio.detect import FORMATS
from app.modelio.pickle_scan import CONVERT_HINT
from app.modelio.pt2 import make_trainable
from app.modelio.rebuilt import read_architecture, rebuild_module
from app.modelio.signature import cast_inputs, onnx_signature, pt2_signature, sample_shape

Shape = tuple[int, ...]
BN_FROZEN_NOTE = (
    "this TorchScript trace keeps its {kinds} layers in the mode they were traced in: "
    "fine-tuning does not update their statistics (upload ONNX or a .pt2 program to train them)"
)
FORMAT_NOTE = (
    "{fmt} models: " + MASKS_ONLY_NOTE + " (weights are zeroed in place; they cannot be "
    "physically shrunk or rebuilt)"
)


@dataclass
class LoadedModel:
    """A loaded model and what intake learnt about it.

    ``input_shape`` is one sample's shape without the batch dimension (``(1, 8, 8)``), as in
    ``app.zoo`` and ``ArrayDataset``; ``None`` when the file does not tell it.
    ``rebuildable`` is False for TorchScript and ``.pt2`` (masks only). ``input_dtype`` is
    ``float32`` or ``int64`` (token ids); an ``int64`` module also accepts float batches (see
    ``signature.cast_inputs``). ``train_notes`` are what a run that trains it should say.
    """

    module: nn.Module
    format: str
    input_shape: Shape | None
    rebuildable: bool
    arch: str | None = None
    notes: list[str] = field(default_factory=list)
    example_batch: int = 1  # the batch a .pt2 program was exported with, where it is fixed
    input_dtype: str = "float32"
    train_notes: list[str] = field(default_factory=list)


def load_model(
    path: Path,
    fmt: str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: Shape | None = None,
    input_dtype: str | None = None,
) -> LoadedModel:
    """Load a model file.

    Args:
        path: the file.
        fmt: its format from ``detect.detect_format``.
        arch: a built-in architecture, required for ``safetensors`` and ``state_dict`` (unless
            the safetensors header holds the architecture of a pruned model, see ``rebuilt``).
        num_classes: classifier size for ``arch``; read from the weights when None.
        input_shape: one sample's shape, or a full shape with a leading batch of 1; overrides
            what the file says.
        input_dtype: ``float32`` or ``int64``; an integer input the file declares wins.

    Returns:
        A :class:`LoadedModel` on the CPU.

    Raises:
        Invalid: weights that do not fit ``arch`` (first bad key and both shapes named), a
            missing ``arch``, an ONNX file that cannot be converted.
        UnsupportedMedia: a file that cannot be read as ``fmt``.
    """
    if fmt not in FORMATS:
        raise Invalid(f"unknown model format {fmt!r}; known formats: {', '.join(FORMATS)}")
    shape = tuple(int(d) for d in input_shape) if input_shape else None
    if fmt in ("safetensors", "state_dict"):
        loaded = _load_weights(Path(path), fmt, arch, num_classes, sample_shape(shape, 4))
        loaded.input_dtype = input_dtype or "float32"
    elif fmt == "onnx":
        loaded = _load_onnx(Path(path), shape, input_dtype)
    elif fmt == "torchscript":
        loaded = _load_torchscript(Path(path), shape, input_dtype)
    else:
        loaded = _load_pt2(Path(path), shape, input_dtype)
    loaded.module = cast_inputs(loaded.module, loaded.input_dtype)
    return loaded


def _load_onnx(path: Path, shape: Shape | None, dtype: str | None) -> LoadedModel:
    from app.modelio.onnx_convert import convert_onnx

    module, model = convert_onnx(path)
    found, rank, file_dtype = onnx_signature(model)
    dtype = _file_dtype_wins(file_dtype, dtype)
    return LoadedModel(module, "onnx", sample_shape(shape, rank) or found, True, input_dtype=dtype)


def _load_torchscript(path: Path, shape: Shape | None, dtype: str | None) -> LoadedModel:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UnsupportedMedia(
            f"the TorchScript archive could not be loaded: {short(exc)}"
        ) from exc
    notes = [FORMAT_NOTE.format(fmt="torchscript")]
    kinds = {getattr(m, "original_name", "") for m in module.modules()}
    bn = sorted(k for k in kinds if k.startswith("BatchNorm"))
    train_notes = [BN_FROZEN_NOTE.format(kinds=", ".join(bn))] if bn else []
    return LoadedModel(
        module,
        "torchscript",
        sample_shape(shape, None),
        False,
        notes=notes + train_notes,
        input_dtype=dtype or "float32",
        train_notes=train_notes,
    )


def _load_pt2(path: Path, shape: Shape | None, dtype: str | None) -> LoadedModel:
    """A ``.pt2`` program as a module whose ``train()``/``eval()`` work (masks only)."""
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:
        raise UnsupportedMedia(f"the .pt2 program could not be loaded: {short(exc)}") from exc
    found, rank, batch, file_dtype = pt2_signature(program)
    return LoadedModel(
        make_trainable(module),
        "pt2",
        sample_shape(shape, rank) or found,
        False,
        notes=[FORMAT_NOTE.format(fmt="pt2")],
        example_batch=batch or 1,
        input_dtype=_file_dtype_wins(file_dtype, dtype),
    )


def _file_dtype_wins(file_dtype: str, given: str | None) -> str:
    """An integer input the file declares wins over the form's choice; float32 is the default."""
    return file_dtype if file_dtype != "float32" else (given or file_dtype)


def read_state_dict(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a weights-only ``torch.save`` (nested checkpoints too)."""
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsupportedMedia(
            f"the weights file could not be read safely ({short(exc)}); {CONVERT_HINT}"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise UnsupportedMedia(
            f"the file holds a {type(obj).__name__}, not a state_dict of tensors; {CONVERT_HINT}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UnsupportedMedia("the state_dict in the file holds no tensors")
    return tensors


def _load_weights(
    path: Path, fmt: str, arch: str | None, num_classes: int | None, shape: Shape | None
) -> LoadedModel:
    from app import zoo

    config = read_architecture(path) if fmt == "safetensors" else None
    if config is not None:  # a physically pruned model: its own layer shapes, not the arch's
        return _load_rebuilt(read_state_dict(path, fmt), config, fmt, arch, shape)
    if not arch:
        known = ", ".join(zoo.ARCHITECTURES)
        raise Invalid(
            f"a {fmt} file holds weights only; choose the built-in arch they belong to ({known})"
        )
    state = read_state_dict(path, fmt)
    try:
        if num_classes is None:
            num_classes = _infer_num_classes(arch, state, shape)
        module = zoo.build(arch, num_classes=num_classes, input_shape=shape)
    except ValueError as exc:
        raise Invalid(str(exc)) from exc
    _check_fit(module, state, arch)
    module.load_state_dict(state, strict=True)
    shape = shape or tuple(zoo.ARCHITECTURES[arch].default_input_shape)
    return LoadedModel(module, fmt, shape, True, arch=arch)


def _load_rebuilt(
    state: Mapping[str, torch.Tensor],
    config: dict,
    fmt: str,
    arch: str | None,
    shape: Shape | None,
) -> LoadedModel:
    """A ``LoadedModel`` of the rebuilt (smaller) architecture holding ``state``."""
    module = rebuild_module(config, state, arch)
    name = config.get("arch")
    _check_fit(module, state, str(name))
    module.load_state_dict(state, strict=True)
    found = config.get("input_shape")
    shape = shape or (tuple(int(d) for d in found) if found else None)
    return LoadedModel(module, fmt, shape, True, arch=name)


def _infer_num_classes(arch: str, state: Mapping[str, torch.Tensor], shape: Shape | None) -> int:
    """The classifier size: the dim 0 of the weight that changes when num_classes changes."""
    from app import zoo

    a = zoo.build(arch, num_classes=10, input_shape=shape).state_dict()
    b = zoo.build(arch, num_classes=11, input_shape=shape).state_dict()
    for key, tensor in a.items():
        if key in b and tensor.shape != b[key].shape and key in state and state[key].dim():
            return int(state[key].shape[0])
    return 10


def _check_fit(module: nn.Module, state: Mapping[str, torch.Tensor], arch: str) -> None:
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise Invalid(
                f"the weights do not fit arch {arch!r}: key {key!r} (shape "
                f"{list(tensor.shape)}) is missing from the file"
            )
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise Invalid(
                f"the weights do not fit arch {arch!r}: key {key!r} has shape "
                f"{list(state[key].shape)} in the file but {list(tensor.shape)} in the "
                "architecture (check arch, num_classes and input_shape)"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise Invalid(
            f"the weights do not fit arch {arch!r}: the file has key {extra[0]!r} "
            "that the architecture does not"
        )


def set_eval(module: nn.Module) -> None:
    """``module.eval()``, tolerating ``.pt2`` modules whose ``eval()`` raises NotImplementedError."""
    with contextlib.suppress(NotImplementedError):
        module.eval()


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
