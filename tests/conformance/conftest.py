"""Public architectures built from ``transformers`` configs (random weights, tiny sizes, no
downloads) and our zoo's cnn_small, each exported the ways people export models; built once
per test session."""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from app.zoo import build
from tests.hf_models import Logits

torch.set_num_threads(1)


@dataclass(frozen=True)
class Arch:
    name: str
    make: Callable[[], nn.Module]
    sample: tuple[int, ...]
    dtype: str


def _resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4
    )
    return Logits(ResNetForImageClassification(cfg))


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=4,
        attn_implementation="eager",
    )
    return Logits(ViTForImageClassification(cfg))


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=4,
        attn_implementation="eager",
    )
    return Logits(BertForSequenceClassification(cfg))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
        use_cache=False,
        attn_implementation="eager",
    )
    return Logits(LlamaForCausalLM(cfg))


def _cnn_small() -> nn.Module:
    return build("cnn_small", num_classes=10, input_shape=(1, 8, 8))


ARCHS = {
    a.name: a
    for a in (
        Arch("cnn_small", _cnn_small, (1, 8, 8), "float32"),
        Arch("resnet", _resnet, (3, 16, 16), "float32"),
        Arch("vit", _vit, (3, 16, 16), "float32"),
        Arch("bert", _bert, (8,), "int64"),
        Arch("llama", _llama, (8,), "int64"),
    )
}
FORMATS = ("onnx_dynamic", "onnx_static", "onnx_dynamo_zip", "torchscript", "pt2", "pt2_static")


def example(arch: Arch, batch: int) -> torch.Tensor:
    if arch.dtype == "int64":
        return torch.randint(
            0, 64, (batch, *arch.sample), generator=torch.Generator().manual_seed(0)
        )
    return torch.randn(batch, *arch.sample, generator=torch.Generator().manual_seed(0))


def export(model: nn.Module, arch: Arch, fmt: str, d: Path) -> Path:
    """Write ``model`` in ``fmt`` under ``d``; the path to upload."""
    x1, x2 = example(arch, 1), example(arch, 2)
    if fmt.startswith("onnx_dynamo"):
        dynamic = "static" not in fmt  # a batch of 1 would be specialised by torch.export
        return _dynamo_zip(model, x2 if dynamic else x1, d, dynamic=dynamic)
    if fmt.startswith("onnx"):
        path = d / "model.onnx"
        axes = {"input": {0: "batch"}, "output": {0: "batch"}} if fmt == "onnx_dynamic" else None
        torch.onnx.export(
            model,
            (x1,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes=axes,
        )
        return path
    if fmt == "torchscript":
        path = d / "model.pt"
        torch.jit.save(torch.jit.trace(model, x2, check_trace=False), str(path))
        return path
    path = d / "model.pt2"
    if fmt == "pt2_static":
        program = torch.export.export(model, (x1,))
    else:
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (x2,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _dynamo_zip(model: nn.Module, x: torch.Tensor, d: Path, *, dynamic: bool) -> Path:
    """The default ``torch.onnx.export`` (dynamo, weights in ``model.onnx.data``), zipped."""
    path = d / "model.onnx"
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    torch.onnx.export(
        model, (x,), str(path), dynamo=True, dynamic_shapes=shapes, external_data=True
    )
    out = d / "model.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for f in d.iterdir():
            if f.name.startswith("model.onnx"):
                zf.write(f, f.name)
    return out


@pytest.fixture(scope="session")
def built() -> dict[str, nn.Module]:
    models = {}
    for name, arch in ARCHS.items():
        torch.manual_seed(0)
        models[name] = arch.make().eval()
    return models


@pytest.fixture(scope="session")
def exported(built, tmp_path_factory) -> Callable[[str, str], Path | str]:
    """``exported(arch, fmt)``: the file, or the exporter's own error as a string."""
    cache: dict[tuple[str, str], Path | str] = {}

    def get(arch: str, fmt: str) -> Path | str:
        if (arch, fmt) not in cache:
            d = tmp_path_factory.mktemp(f"{arch}-{fmt}")
            try:
                with warnings.catch_warnings():  # exporters warn a lot; pytest makes that fatal
                    warnings.simplefilter("ignore")
                    cache[arch, fmt] = export(built[arch], ARCHS[arch], fmt, d)
            except Exception as exc:  # noqa: BLE001 - the exporter itself failing is an outcome
                cache[arch, fmt] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        return cache[arch, fmt]

    return get
