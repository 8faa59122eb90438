"""Built-in architectures: small, readable models that run on digits (1x8x8) and CIFAR-sized input.

Every builder takes ``(num_classes, input_shape)`` and sizes itself from the input (flattened
sizes are found with one zero forward pass, pools are skipped once the feature map is 1x1), so
``build(name, input_shape=(1, 8, 8))`` works for every name. Module names are stable
(``fc1``, ``features.0``, ``layer2.0.conv1``) because recipes refer to them in
``exclude``/``overrides``.

Shapes and descriptions come from :mod:`app.catalogue` (the web process lists them without
torch); this package adds the builders.

Example:
    >>> import torch
    >>> model = build("mlp", num_classes=10, input_shape=(1, 8, 8))
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from app import catalogue
from app.zoo.convnets import VGG11BN, CNNSmall, LeNet5, ResNet20
from app.zoo.dense import MLP, TinyViT
from app.zoo.layers import Shape


@dataclass(frozen=True)
class Arch:
    """A built-in architecture: its name, the input it is made for, and its builder."""

    name: str
    default_input_shape: Shape
    build: Callable[[int, Shape], nn.Module]
    description: str = ""


_BUILDERS: dict[str, Callable[[int, Shape], nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "cnn_small": CNNSmall,
    "resnet20": ResNet20,
    "vgg11_bn": VGG11BN,
    "transformer": TinyViT,
}
ARCHITECTURES: dict[str, Arch] = {
    name: Arch(name, info.default_input_shape, _BUILDERS[name], info.description)
    for name, info in catalogue.ARCHITECTURES.items()
}


def build(arch: str, *, num_classes: int = 10, input_shape: Shape | None = None) -> nn.Module:
    """Build an untrained built-in architecture.

    Args:
        arch: a key of ``ARCHITECTURES``.
        num_classes: output size of the classifier.
        input_shape: one sample's shape without the batch dimension; the arch's default if None.

    Returns:
        A freshly initialised ``nn.Module`` in train mode.

    Raises:
        ValueError: unknown architecture, non-positive class count, or an unusable input shape.
    """
    if arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ValueError(f"unknown architecture {arch!r}; built-in architectures: {known}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1; got {num_classes}")
    spec = ARCHITECTURES[arch]
    shape = tuple(int(d) for d in (input_shape or spec.default_input_shape))
    if any(d < 1 for d in shape):
        raise ValueError(f"input_shape must have positive sizes; got {list(shape)}")
    return spec.build(int(num_classes), shape)


def reset_parameters(model: nn.Module) -> None:
    """Re-initialise a model in place with its own init (children first, then their parents).

    Used by the ``at_init`` and ``retrain`` schedules to train a pruned structure from scratch;
    works on physically pruned copies too because every layer resets from its current shape.
    """
    for module in reversed(list(model.modules())):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
