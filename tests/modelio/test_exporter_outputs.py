"""Issue 12, intake: what exporters write is accepted or refused at upload, never later.

External-data ONNX in a zip (and only files inside it), files fixed at batch 1, token-id
inputs, weights onnx2torch keeps as constants, BatchNorm in traced and exported programs.
"""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from app import zoo
from app.errors import BadRequest, Invalid
from app.modelio.detect import detect_format
from app.modelio.load import load_model
from app.modelio.onnx_bundle import bundle_files
from app.modelio.preflight_worker import inspect_model

X = torch.linspace(0, 1, 3 * 64).reshape(3, 1, 8, 8)


def _lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", num_classes=10, input_shape=(1, 8, 8)).eval()


def _inspect(path, fmt, **kw) -> dict:
    return inspect_model({"path": str(path), "format": fmt, **kw})


def _external_zip(files, tmp_path, location: str | None = None):
    """The ``ext.onnx`` fixture and its data file zipped, optionally pointing elsewhere."""
    model = onnx.load(str(files["onnx_external"]), load_external_data=False)
    if location is not None:
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
    out = tmp_path / "model.zip"
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("ext.onnx", model.SerializeToString())
        zf.write(files["onnx_external"].with_name("ext.onnx.data"), "ext.onnx.data")
    return out


def test_zip_of_onnx_and_its_data_file_loads_with_the_same_outputs(files, tmp_path):
    path = _external_zip(files, tmp_path)
    assert detect_format(path) == "onnx"
    loaded = load_model(path, "onnx")
    torch.testing.assert_close(loaded.module(X), _lenet()(X), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("location", ["../ext.onnx.data", "/etc/passwd", "C:/x.data"])
def test_onnx_data_outside_the_zip_is_never_read(files, tmp_path, location):
    with pytest.raises(BadRequest, match="outside the upload"):
        load_model(_external_zip(files, tmp_path, location), "onnx")


def test_onnx_data_file_missing_from_the_zip_is_named(files, tmp_path):
    with pytest.raises(Invalid, match="needs the data file 'gone.data'"):
        load_model(_external_zip(files, tmp_path, "gone.data"), "onnx")


def test_two_parts_zip_to_the_same_bytes_every_time(files, tmp_path):
    parts = [
        ("ext.onnx", files["onnx_external"]),
        ("ext.onnx.data", files["onnx_external"].with_name("ext.onnx.data")),
    ]
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, sha_a = bundle_files(parts, tmp_path / "a" / "m.zip")
    _, sha_b = bundle_files(parts[::-1], tmp_path / "b" / "m.zip")
    assert sha_a == sha_b
    with pytest.raises(BadRequest, match="must be the .onnx model"):
        bundle_files([("a.bin", parts[1][1]), ("b.bin", parts[1][1])], tmp_path / "c.zip")


def test_legacy_onnx_without_dynamic_axes_is_made_batch_agnostic(tmp_path):
    class Flat(torch.nn.Module):  # x.view(1, -1): the exporter bakes the batch into Reshape
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(x.shape[0], -1))

    torch.manual_seed(0)
    model, path = Flat().eval(), tmp_path / "static.onnx"
    torch.onnx.export(model, (X[:1],), str(path), dynamo=False, opset_version=17)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    r = _inspect(path, "onnx")
    assert r["ok"] and r["input_shape"] == [1, 8, 8]
    loaded = load_model(path, "onnx")
    torch.testing.assert_close(loaded.module(X), model(X), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key", ["pt2_batch1", "pt2_batch2"])
def test_pt2_with_a_fixed_batch_is_refused_with_the_export_call(files, key):
    with pytest.raises(Invalid, match=r'dynamic_shapes=\(\{0: torch.export.Dim\("batch"\)\},\)'):
        _inspect(files[key], "pt2")


@pytest.mark.parametrize("given", [[1, 8, 8], [1, 1, 8, 8]])
def test_input_shape_is_one_sample_or_a_full_shape_with_batch_1(files, given):
    assert _inspect(files["torchscript"], "torchscript", input_shape=given)["input_shape"] == [
        1,
        8,
        8,
    ]
    assert _inspect(files["onnx"], "onnx", input_shape=given)["input_shape"] == [1, 8, 8]


def _token_onnx(path, *, shared_weight: bool = False):
    """ids[b, 6] -> Gather(table[20, 8]) -> MatMul(W[8, 4]) + b: a tiny token classifier."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((20, 8)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"]),
        helper.make_node("MatMul", ["e", "W"], ["h"]),
        helper.make_node("Add", ["h", "bias"], ["y0"]),
    ]
    if shared_weight:  # W read twice: it stays a constant the lab cannot prune; V is a layer
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "V"))
        nodes += [helper.make_node("MatMul", ["e", "W"], ["h2"])]
        nodes += [helper.make_node("Add", ["y0", "h2"], ["y1"])]
        nodes += [helper.make_node("MatMul", ["y1", "V"], ["y2"])]
    nodes.append(helper.make_node("ReduceMean", [nodes[-1].output[0]], ["y"], axes=[1], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "tokens",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_token_id_onnx_runs_on_int64_and_its_weights_are_layers(tmp_path):
    r = _inspect(_token_onnx(tmp_path / "tok.onnx"), "onnx")
    assert r["input_dtype"] == "int64" and r["input_shape"] == [6]
    kinds = {row["kind"]: row for row in r["layers"]}
    assert kinds["Embedding"]["n_params"] == 160 and kinds["Linear"]["n_params"] == 36
    assert r["n_params"] == 196 and r["weights_seen_fraction"] == 1.0
    loaded = load_model(tmp_path / "tok.onnx", "onnx")
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    assert torch.equal(loaded.module(ids.float()), loaded.module(ids))  # float batches too


def test_weights_kept_as_constants_are_named_in_a_warning(tmp_path):
    r = _inspect(_token_onnx(tmp_path / "shared.onnx", shared_weight=True), "onnx")
    (warning,) = [w for w in r["warnings"] if "the lab sees" in w]
    # the file holds 160 + 32 + 4 + 16 floats; W (32) and its bias stay constants
    assert "the lab sees 176 of 212 float weights (83%)" in warning and "(32)" in warning
    assert r["n_params"] == 176


def test_a_model_with_nothing_to_prune_is_refused(tmp_path):
    shift = numpy_helper.from_array(np.ones((1, 4), np.float32), "shift")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "shift"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[shift],
    )
    path = tmp_path / "add.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(Invalid, match="no weights it can prune"):
        _inspect(path, "onnx")


def _cnn_small() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build("cnn_small", num_classes=10, input_shape=(1, 8, 8)).eval()


def test_pt2_batchnorm_really_trains_after_train(tmp_path):
    path = tmp_path / "bn.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(_cnn_small(), (X[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    loaded = load_model(path, "pt2")
    module = loaded.module
    stats = {k: v.clone() for k, v in module.named_buffers() if k.endswith("running_mean")}
    module.train()
    module(torch.randn(4, 1, 8, 8))
    moved = [k for k, v in module.named_buffers() if k in stats and not torch.equal(v, stats[k])]
    assert moved, "BatchNorm statistics did not update in train mode"
    module.eval()
    after = {k: v.clone() for k, v in module.named_buffers()}
    torch.testing.assert_close(module(X)[:1], module(X[:1]))  # eval: per-sample, stats fixed
    assert all(torch.equal(v, after[k]) for k, v in module.named_buffers())
    assert not any("BatchNorm" in n for n in loaded.train_notes)


def test_traced_batchnorm_is_said_to_stay_frozen(tmp_path):
    path = tmp_path / "bn.pt"
    torch.jit.save(torch.jit.trace(_cnn_small(), X[:2]), str(path))
    r = _inspect(path, "torchscript", input_shape=[1, 8, 8])
    assert any("BatchNorm2d layers in the mode they were traced in" in w for w in r["warnings"])
    assert load_model(path, "torchscript", input_shape=(1, 8, 8)).train_notes
