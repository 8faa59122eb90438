"""Rebuilding a physically pruned built-in architecture: ``architecture_config`` records each
Conv/Linear/norm layer's shape, ``rebuild`` makes a model of those shapes to load weights into.

Example:
    >>> from app import zoo
    >>> model = zoo.build("mlp")
    >>> config = architecture_config(model, arch="mlp", num_classes=10, input_shape=(1, 8, 8))
    >>> rebuilt = rebuild(config)
    >>> [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    True
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

from torch import nn

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
