"""Models, dense training and a plain training loop for ``quality_vs_anchors.py``.

The models all take digits (1x8x8, 10 classes): the zoo's ``mlp``, ``cnn_small`` and
``resnet20``, two public architectures built from ``transformers`` configs as in
``tests/conformance`` (a ResNet and a ViT, random init, sized for 8x8 one-channel input), and
``onnx_cnn``: the dense ``cnn_small`` exported to ONNX from eval mode (BatchNorm folded into the
convs by the exporter), which the lab loads through its own intake (``app.modelio.load``) and
the anchors get as the equivalent torch module (the same BN-folded convs, ``torch.fx`` fuse).

The training loop here (``train_plain``) is the anchors' own and trains the dense models for
both sides: it knows nothing of the lab's fine-tuning defaults.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from app import zoo
from app.pruning.data import ArrayDataset

BATCH = 64
OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
}


class Logits(nn.Module):
    """A ``transformers`` model as people export it: a tensor in, the logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _hf_resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(
        num_channels=1,
        embedding_size=16,
        hidden_sizes=[32, 64],
        depths=[1, 1],
        num_labels=10,
        downsample_in_first_stage=False,
    )
    return Logits(ResNetForImageClassification(cfg))


def _hf_vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        attn_implementation="eager",
    )
    return Logits(ViTForImageClassification(cfg))


def _zoo(name: str) -> Callable[[], nn.Module]:
    return lambda: zoo.build(name, num_classes=10, input_shape=(1, 8, 8))


# name -> (builder of the untrained model, dense training epochs); onnx_cnn reuses cnn_small
BUILDERS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "mlp": (_zoo("mlp"), 20),
    "cnn_small": (_zoo("cnn_small"), 15),
    "resnet20": (_zoo("resnet20"), 8),
    "hf_resnet": (_hf_resnet, 20),
    "hf_vit": (_hf_vit, 30),
}
DENSE_OF = {"onnx_cnn": "cnn_small"}


def evaluate(model: nn.Module, data: ArrayDataset) -> float:
    """Test accuracy."""
    x, y = data.tensors("test")
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_plain(
    model: nn.Module, data: ArrayDataset, optimizer: str, epochs: int, seed: int
) -> nn.Module:
    """``epochs`` of cross-entropy training at a constant learning rate, batches of 64."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[optimizer](params)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        for x, y in data.loader("train", BATCH, seed=seed * 1000 + epoch):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    return model.eval()


class DenseCache:
    """Dense models trained once per (model, seed), their weights kept under ``root``."""

    def __init__(self, root: Path, data: ArrayDataset, epochs_scale: float = 1.0) -> None:
        self.root, self.data, self.scale = root, data, epochs_scale

    def get(self, name: str, seed: int) -> nn.Module:
        """A fresh copy of the trained dense model (for ``onnx_cnn``: cnn_small's)."""
        base = DENSE_OF.get(name, name)
        make, epochs = BUILDERS[base]
        path = self.root / f"{base}-{seed}.pt"
        torch.manual_seed(seed)
        model = make()
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
        train_plain(model, self.data, "adam", max(1, round(epochs * self.scale)), seed)
        torch.save(model.state_dict(), path)
        return model.eval()


def folded(model: nn.Module) -> nn.Module:
    """The torch module equivalent to the BN-folded ONNX export: BatchNorm fused into convs."""
    return fuse(copy.deepcopy(model).eval())


def through_intake(model: nn.Module, folder: Path) -> tuple[nn.Module, bool]:
    """Export ``model`` to ONNX as a user would and load it with the lab's loader.

    Returns:
        ``(module, rebuildable)`` as the lab's worker would have them.
    """
    from app.modelio.detect import detect_format
    from app.modelio.load import load_model

    path = folder / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            copy.deepcopy(model).eval(),
            (torch.randn(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=17,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    loaded = load_model(path, detect_format(path), input_shape=(1, 8, 8))
    return loaded.module, bool(loaded.rebuildable)
