"""Tiny seeded models and data for the pruning-engine tests (CPU, one thread)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from app.pruning.data import ArrayDataset

torch.set_num_threads(1)


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def make_cnn(seed: int = 0, bn: bool = True) -> nn.Sequential:
    """Conv-BN-ReLU x2 -> pool -> Linear, on 1x8x8 inputs."""
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        norm(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        norm(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block1, self.block2 = ResBlock(8), ResBlock(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def make_data(shape: tuple[int, ...], n: int = 128, seed: int = 0) -> ArrayDataset:
    """Labels from a fixed random linear teacher, so gradients and activations are real."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape)).astype(np.float32)
    teacher = rng.standard_normal((int(np.prod(shape)), 4))
    y = (x.reshape(n, -1) @ teacher).argmax(1).astype(np.int64)
    return ArrayDataset("tiny", x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :], 4)


@pytest.fixture
def mlp() -> nn.Sequential:
    return make_mlp()


@pytest.fixture
def cnn() -> nn.Sequential:
    return make_cnn()


@pytest.fixture
def image_data() -> ArrayDataset:
    return make_data((1, 8, 8))


@pytest.fixture
def vector_data() -> ArrayDataset:
    return make_data((12,))
