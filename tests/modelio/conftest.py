"""Real model files, friendly and hostile, built once per test session."""

from __future__ import annotations

import io
import os
import pickle
import random
import stat
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import save_file
from torch import nn

from app import zoo

torch.set_num_threads(1)
SHAPE = (1, 8, 8)


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() == 0):
            raise RuntimeError("boom: zero input")
        return self.fc(x.flatten(1))


class Spin(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while bool(x.sum() > -1.0):
            x = x + 1.0
        return x


class Evil:
    """Unpickling this would create ``path``; the tests assert that it never exists."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _lenet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", num_classes=num_classes, input_shape=SHAPE).eval()


def _onnx_export(model: nn.Module, path: Path) -> None:
    torch.onnx.export(
        model,
        (torch.zeros(1, *SHAPE),),
        str(path),
        dynamo=False,
        opset_version=17,
        external_data=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )


def _tiny_onnx(op: str, opset: int) -> onnx.ModelProto:
    """x[1,4] -> MatMul(W[4,3]) -> ``op`` -> y; built by hand to pick the op and the opset."""
    w = numpy_helper.from_array(torch.ones(4, 3).numpy(), "W")
    shape = numpy_helper.from_array(torch.tensor([-1, 3]).numpy(), "S")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm")]
    if op == "Reshape":
        nodes.append(helper.make_node("Reshape", ["h", "S"], ["y"], name="rs"))
    else:
        nodes.append(helper.make_node(op, ["h"], ["y"], name="odd"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[w, shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out: dict[str, Path] = {}
    lenet = _lenet()
    out["safetensors"] = d / "w.safetensors"
    save_file(lenet.state_dict(), str(out["safetensors"]))
    out["state_dict"] = d / "w.pt"
    torch.save(lenet.state_dict(), out["state_dict"])
    out["state_dict_legacy"] = d / "legacy.bin"
    torch.save(lenet.state_dict(), out["state_dict_legacy"], _use_new_zipfile_serialization=False)
    out["checkpoint"] = d / "ckpt.pt"
    torch.save({"state_dict": _lenet(7).state_dict(), "epoch": 3}, out["checkpoint"])
    out["torchscript"] = d / "ts.pt"
    torch.jit.save(torch.jit.script(lenet), str(out["torchscript"]))
    out["pt2"] = d / "prog.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(lenet, (torch.zeros(2, *SHAPE),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(out["pt2"]))
    out["pt2_batch2"] = d / "static2.pt2"  # a fixed batch of 2: every run would fail
    torch.export.save(torch.export.export(lenet, (torch.zeros(2, *SHAPE),)), str(out["pt2_batch2"]))
    out["pt2_batch1"] = d / "static1.pt2"
    torch.export.save(torch.export.export(lenet, (torch.zeros(1, *SHAPE),)), str(out["pt2_batch1"]))
    out["onnx"] = d / "m.onnx"
    _onnx_export(lenet, out["onnx"])
    _hostile(d, out, lenet)
    return out


def _hostile(d: Path, out: dict[str, Path], lenet: nn.Module) -> None:
    out["sentinel"] = d / "PWNED"
    out["evil_zip"] = d / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Evil(out["sentinel"])}, out["evil_zip"])
    out["evil_raw"] = d / "evil.pkl"
    out["evil_raw"].write_bytes(pickle.dumps(Evil(out["sentinel"]), protocol=4))
    out["whole"] = d / "whole.pt"
    torch.save(lenet, out["whole"])
    out["random"] = d / "random.bin"
    out["random"].write_bytes(random.Random(0).randbytes(4096))
    for key in ("torchscript", "onnx", "safetensors", "pt2"):
        data = out[key].read_bytes()
        out[f"truncated_{key}"] = d / f"trunc_{key}"
        out[f"truncated_{key}"].write_bytes(data[: len(data) * 2 // 3])
    out["onnx_external"] = d / "ext.onnx"
    model = onnx.load(str(out["onnx"]))
    onnx.save_model(
        model,
        str(out["onnx_external"]),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    out["onnx_hardmax"] = d / "hardmax.onnx"
    onnx.save_model(_tiny_onnx("Hardmax", 17), str(out["onnx_hardmax"]))
    out["onnx_opset19"] = d / "reshape19.onnx"
    onnx.save_model(_tiny_onnx("Reshape", 19), str(out["onnx_opset19"]))
    out["boom"] = d / "boom.pt"
    torch.jit.save(torch.jit.script(Boom()), str(out["boom"]))
    out["spin"] = d / "spin.pt"
    torch.jit.save(torch.jit.script(Spin()), str(out["spin"]))


def make_zip(path: Path, entries: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def zip_maker():
    """``zip_maker(path, {name: bytes}, symlink=None) -> path``."""
    return make_zip
