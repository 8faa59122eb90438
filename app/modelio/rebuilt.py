"""Physically pruned models as safetensors whose header holds their architecture.

Filter/channel removal leaves weights that no longer fit the built-in ``arch`` they came from.
A run's result model is therefore saved with ``structural.architecture_config`` as JSON under
the :data:`ARCH_METADATA_KEY` entry of the safetensors header: one file that ``load_model``
(format ``safetensors``) turns back into the smaller module, that downloads and uploads like
any safetensors file, and that a later run can prune again, physically too.

The header comes from a file a user may upload, so it is checked before anything is built:
only Conv/Linear/norm layers, and no more parameters declared than the file plausibly holds.

Example:
    >>> import tempfile
    >>> from app import zoo
    >>> from app.modelio.load import load_model
    >>> from app.pruning.structural.rebuild import architecture_config
    >>> small = zoo.build("lenet5")  # structurally pruned, in a run
    >>> path = Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> save_pruned(small, path, architecture_config(small, arch="lenet5"))
    >>> type(load_model(path, "safetensors").module).__name__  # no arch given: the header has it
    'LeNet5'
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from app.errors import Invalid

ARCH_METADATA_KEY = "prunelab_architecture"
_REBUILD_KINDS = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)
MAX_INPUT_ELEMENTS = 1 << 24
MAX_CLASSES = 100_000
_BAD_HEADER = "the architecture in the safetensors header"


def save_pruned(module: nn.Module, path: Path, config: Mapping) -> None:
    """Write ``module``'s weights with ``config`` (``architecture_config``) in the header."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    meta = {"format": "pt", ARCH_METADATA_KEY: json.dumps(dict(config), sort_keys=True)}
    save_file(state, str(path), metadata=meta)


def read_architecture(path: Path) -> dict | None:
    """The architecture config in a safetensors header, or None when there is none."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(ARCH_METADATA_KEY)
    except Exception:  # noqa: BLE001 - read_state_dict reports an unreadable file
        return None
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), dict):
        raise Invalid(
            f"the {ARCH_METADATA_KEY!r} entry of the safetensors header is not an "
            "architecture config written by PruneLab"
        )
    return config


def rebuild_module(config: dict, state: Mapping[str, torch.Tensor], arch: str | None) -> nn.Module:
    """The rebuilt (smaller) architecture ``config`` describes, checked against ``state``.

    The module comes back with fresh weights; ``load_model`` checks ``state`` fits and loads it.
    """
    from app.pruning.structural.rebuild import rebuild

    name = config.get("arch")
    if arch and name and arch != name:
        raise Invalid(f"the file holds a pruned {name!r} model, not arch {arch!r}")
    check_config(config, state)
    try:
        return rebuild(config)
    except (ValueError, TypeError, KeyError) as exc:
        raise Invalid(f"{_BAD_HEADER} does not rebuild: {exc}") from exc


def check_config(config: Mapping, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse unknown layer kinds and sizes far beyond the file's weights before building."""
    found = config.get("input_shape") or []
    ok = isinstance(found, list) and all(isinstance(d, int) and d > 0 for d in found)
    if not ok or math.prod(found) > MAX_INPUT_ELEMENTS:
        raise Invalid(f"{_BAD_HEADER} has an impossible input_shape {found!r}")
    classes = config.get("num_classes")
    if classes is not None and not (isinstance(classes, int) and 0 < classes <= MAX_CLASSES):
        raise Invalid(f"{_BAD_HEADER} has an impossible num_classes {classes!r}")
    declared = 0
    for name, spec in config["layers"].items():
        kind = spec.get("kind") if isinstance(spec, dict) else None
        cls = getattr(nn, str(kind), None)
        if not (isinstance(cls, type) and issubclass(cls, _REBUILD_KINDS)):
            raise Invalid(
                f"{_BAD_HEADER} has layer {name!r} of kind {kind!r}, which PruneLab "
                "does not rebuild"
            )
        declared += _declared_params(spec.get("args") or {})
    have = sum(t.numel() for t in state.values())
    if declared > 2 * have + 100_000:
        raise Invalid(f"{_BAD_HEADER} declares {declared} parameters but the file holds {have}")


def _declared_params(args: Mapping) -> int:
    """Roughly the weight count of one layer from its constructor arguments."""
    if "in_channels" in args:
        kernel = args.get("kernel_size") or [1]
        kernel = kernel if isinstance(kernel, list) else [kernel]
        groups = max(1, _int(args.get("groups", 1)))
        per = _int(args["in_channels"]) * _int(args.get("out_channels")) // groups
        return per * math.prod(_int(k) for k in kernel)
    if "in_features" in args:
        return _int(args["in_features"]) * _int(args.get("out_features"))
    if "normalized_shape" in args:
        ns = args["normalized_shape"]
        return math.prod(_int(d) for d in (ns if isinstance(ns, list) else [ns]))
    return _int(args.get("num_features", args.get("num_channels", 0)))


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
