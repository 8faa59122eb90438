"""Built-in architectures: small, readable models that run on digits (1x8x8) and CIFAR-sized input.

Every builder takes ``(num_classes, input_shape)`` and sizes itself from the input (flattened
sizes are found with one zero forward pass, pools are skipped once the feature map is 1x1), so
``build(name, input_shape=(1, 8, 8))`` works for every name. Module names are stable
(``fc1``, ``features.0``, ``layer2.0.conv1``) because recipes refer to them in
``exclude``/``overrides``.

Example:
    >>> model = build("mlp", num_classes=10, input_shape=(1, 8, 8))
    >>> model(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Arch:
    """A built-in architecture: its name, the input it is made for, and its builder."""

    name: str
    default_input_shape: Shape
    build: Callable[[int, Shape], nn.Module]
    description: str = ""


def _flat_size(module: nn.Module, input_shape: Shape) -> int:
    with torch.no_grad():
        return int(module(torch.zeros(1, *input_shape)).flatten(1).shape[1])


def _image_shape(input_shape: Shape, arch: str) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(
            f"architecture {arch!r} needs an image input shape C,H,W; got {list(input_shape)}"
        )
    c, h, w = (int(d) for d in input_shape)
    return c, h, w


class MLP(nn.Module):
    """LeNet-300-100 style: Flatten -> fc1(in, 300) -> fc2(300, 100) -> fc3(100, classes)."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        n_in = 1
        for d in input_shape:
            n_in *= int(d)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(n_in, 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        return self.fc3(self.relu2(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5 (6-16 conv, 120-84 dense); the second conv is padded when the input is small."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "lenet5")
        pad2 = 2 if min(h, w) // 2 < 10 else 0
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2) if min(h, w) >= 2 else nn.Identity(),
            nn.Conv2d(6, 16, 5, padding=pad2),
            nn.ReLU(),
            nn.MaxPool2d(2) if min(h, w) >= 4 else nn.Identity(),
        )
        self.flatten = nn.Flatten()
        n_flat = _flat_size(self.features, (c, h, w))
        self.fc1 = nn.Linear(n_flat, 120)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.features(x))
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class CNNSmall(nn.Module):
    """Three conv-BN-ReLU blocks (16, 32, 64), max-pool after the first two, global pool, Linear."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "cnn_small")
        layers: list[nn.Module] = []
        size = min(h, w)
        for i, (c_in, c_out) in enumerate(((c, 16), (16, 32), (32, 64))):
            layers += _conv_bn(c_in, c_out)
            if i < 2 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class BasicBlock(nn.Module):
    """ResNet basic block; the shortcut is a 1x1 conv + BN when the shape changes (option B)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks, 16-32-64 channels."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        c, _, _ = _image_shape(input_shape, "resnet20")
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(*(BasicBlock(16, 16, 1) for _ in range(3)))
        self.layer2 = nn.Sequential(
            BasicBlock(16, 32, 2), BasicBlock(32, 32, 1), BasicBlock(32, 32, 1)
        )
        self.layer3 = nn.Sequential(
            BasicBlock(32, 64, 2), BasicBlock(64, 64, 1), BasicBlock(64, 64, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init for the convolutions, as in the paper (other layers keep their own init)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11BN(nn.Module):
    """VGG-11 with BN (CIFAR classifier 512-512-classes); pools are skipped once the map is 1x1."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "vgg11_bn")
        layers: list[nn.Module] = []
        size, c_in = min(h, w), c
        for v in _VGG11:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            layers += _conv_bn(c_in, int(v))
            c_in = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj Linear layers (prunable, wanda, N:M)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, d // h).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, d // h).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)); x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """A small ViT: non-overlapping patches -> Linear embed -> 2 blocks -> mean pool -> head."""

    def __init__(
        self, num_classes: int, input_shape: Shape, dim: int = 32, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        c, h, w = _image_shape(input_shape, "transformer")
        p = max(1, min(h, w) // 4)
        while h % p or w % p:
            p -= 1
        self.patch = p
        self.n_tokens = (h // p) * (w // p)
        self.embed = nn.Linear(c * p * p, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, dim))
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, 2 * dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-draw the position embedding (the Linear/LayerNorm layers reset themselves)."""
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        x = self.embed(x.reshape(b, (h // p) * (w // p), c * p * p)) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


ARCHITECTURES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("mlp", (1, 8, 8), MLP, "LeNet-300-100 style MLP (Han et al. 2015)"),
        Arch("lenet5", (1, 8, 8), LeNet5, "LeNet-5, padded for small inputs"),
        Arch("cnn_small", (1, 8, 8), CNNSmall, "3 conv-BN-ReLU blocks + Linear"),
        Arch("resnet20", (3, 32, 32), ResNet20, "CIFAR ResNet-20 with BN and residual adds"),
        Arch("vgg11_bn", (3, 32, 32), VGG11BN, "VGG-11 with BN, CIFAR classifier"),
        Arch("transformer", (1, 8, 8), TinyViT, "small ViT over patches (Linear layers)"),
    )
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
