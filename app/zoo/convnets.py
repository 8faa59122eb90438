"""Convolutional built-ins: LeNet-5, a small CNN, CIFAR ResNet-20 and VGG-11 with BN."""

from __future__ import annotations

import torch
from torch import nn

from app.zoo.layers import Shape, flat_size, image_shape


class LeNet5(nn.Module):
    """LeNet-5 (6-16 conv, 120-84 dense); the second conv is padded when the input is small."""

    def __init__(self, num_classes: int, input_shape: Shape) -> None:
        super().__init__()
        c, h, w = image_shape(input_shape, "lenet5")
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
        n_flat = flat_size(self.features, (c, h, w))
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
        c, h, w = image_shape(input_shape, "cnn_small")
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
        c, _, _ = image_shape(input_shape, "resnet20")
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
        c, h, w = image_shape(input_shape, "vgg11_bn")
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
