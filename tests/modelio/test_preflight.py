"""Preflight in a separate, limited process: reports for good files, 4xx sentences for bad ones."""

from __future__ import annotations

import time

import pytest

from app.errors import Invalid, UnsupportedMedia
from app.modelio.preflight import run_preflight
from app.modelio.preflight_worker import inspect_model

LENET_LAYERS = ["features.0", "features.3", "fc1", "fc2", "fc3"]


@pytest.mark.slow  # starts a Python process that imports torch
def test_safetensors_plus_arch_report_layers_groups_and_classes(files):
    r = run_preflight(files["safetensors"], "safetensors", arch="lenet5", timeout_s=60)
    assert r["ok"] and r["format"] == "safetensors" and r["structured_ok"]
    assert r["input_shape"] == [1, 8, 8] and r["output_shape"] == [10] and r["num_classes"] == 10
    assert [row["name"] for row in r["layers"]] == LENET_LAYERS
    first = r["layers"][0]
    assert first == {
        "name": "features.0",
        "kind": "Conv2d",
        "shape": [6, 1, 5, 5],
        "n_params": 156,
        "prunable": True,
    }
    assert r["n_params"] == sum(row["n_params"] for row in r["layers"])
    assert r["prunable_fraction"] == 1.0
    # cutting conv1's filters cuts conv2's input channels: one coupled group
    assert ["features.0", "features.3"] in r["groups"]
    assert not any(g[0] == "fc3" for g in r["groups"])  # the classifier's outputs are never cut


def _inspect(path, fmt, **kw) -> dict:
    """The child's own function, in-process: same checks without a process start."""
    return inspect_model({"path": str(path), "format": fmt, **kw})


def test_onnx_preflight_is_structured(files):
    r = _inspect(files["onnx"], "onnx")
    assert r["structured_ok"] and r["num_classes"] == 10 and len(r["groups"]) >= 3
    assert sum(row["prunable"] for row in r["layers"]) == 5


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_code_formats_are_masks_only_said_plainly(files, fmt):
    r = _inspect(files[fmt], fmt, input_shape=[1, 8, 8])
    assert r["ok"] and not r["structured_ok"] and r["groups"] == []
    assert any("masks only" in w for w in r["warnings"])
    assert sum(row["prunable"] for row in r["layers"]) == 5


def test_torchscript_without_input_shape_asks_for_it(files):
    with pytest.raises(Invalid, match="input_shape is required"):
        _inspect(files["torchscript"], "torchscript")


def test_forward_that_raises_is_422_with_the_reason(files):
    with pytest.raises(Invalid, match=r"forward raised .*boom: zero input"):
        _inspect(files["boom"], "torchscript", input_shape=[1, 8, 8])


def test_wrong_input_shape_is_named(files):
    with pytest.raises(Invalid, match=r"zero input of shape \[1, 1, 16, 16\]"):
        _inspect(files["onnx"], "onnx", input_shape=[1, 16, 16])


def test_class_count_mismatch_is_named(files):
    with pytest.raises(Invalid, match="outputs 10 classes but num_classes is 3"):
        _inspect(files["onnx"], "onnx", num_classes=3)


@pytest.mark.slow  # starts a Python process that imports torch
def test_malicious_pickle_forced_as_state_dict_never_runs(files):
    with pytest.raises(UnsupportedMedia):
        run_preflight(files["evil_zip"], "state_dict", arch="lenet5")
    assert not files["sentinel"].exists()


@pytest.mark.slow  # starts a Python process that imports torch
def test_endless_forward_is_killed_on_timeout(files):
    start = time.monotonic()
    with pytest.raises(Invalid, match="did not finish within 6 s"):
        run_preflight(files["spin"], "torchscript", input_shape=(4,), timeout_s=6)
    assert time.monotonic() - start < 10


@pytest.mark.slow  # starts a Python process that imports torch
def test_memory_limit_stops_a_greedy_model(files):
    with pytest.raises(Invalid, match="memory|crashed|forward raised"):
        run_preflight(files["safetensors"], "safetensors", arch="lenet5", memory_mb=200)
