"""The built-in architectures as plain data, for the web process (which never imports torch).

``app.zoo`` builds them; a test checks that the two lists agree.
"""

from __future__ import annotations

ARCHITECTURES: dict[str, dict] = {
    "mlp": {"default_input_shape": [1, 8, 8], "description": "LeNet-300-100 style MLP"},
    "lenet5": {"default_input_shape": [1, 8, 8], "description": "LeNet-5 for small images"},
    "cnn_small": {
        "default_input_shape": [1, 8, 8],
        "description": "3 conv-BN-ReLU blocks + Linear",
    },
    "resnet20": {
        "default_input_shape": [3, 32, 32],
        "description": "CIFAR ResNet-20 (BN, residual adds)",
    },
    "vgg11_bn": {"default_input_shape": [3, 32, 32], "description": "VGG-11 with BN"},
    "transformer": {"default_input_shape": [1, 8, 8], "description": "small ViT over patches"},
}


def check_arch(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; built-in architectures: {', '.join(ARCHITECTURES)}"
        )
