"""Loading each format in-process (what the worker/preflight process does)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from app import zoo
from app.errors import Invalid, UnsupportedMedia
from app.modelio.load import load_model, read_state_dict, set_eval
from app.modelio.onnx_convert import import_onnx2torch

X = torch.linspace(0, 1, 2 * 64).reshape(2, 1, 8, 8)


def _reference() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.build("lenet5", num_classes=10, input_shape=(1, 8, 8)).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_weights_plus_arch_reproduce_the_original_outputs(files, fmt):
    loaded = load_model(files[fmt], fmt, arch="lenet5")
    loaded.module.eval()
    assert loaded.rebuildable and loaded.arch == "lenet5" and loaded.input_shape == (1, 8, 8)
    torch.testing.assert_close(loaded.module(X), _reference()(X))


def test_legacy_torch_save_and_nested_checkpoint_load(files):
    assert load_model(files["state_dict_legacy"], "state_dict", arch="lenet5").module
    loaded = load_model(files["checkpoint"], "state_dict", arch="lenet5")
    assert loaded.module(X).shape == (2, 7)  # num_classes read from the classifier weight


def test_weights_without_arch_ask_for_one(files):
    with pytest.raises(Invalid, match="choose the built-in arch"):
        load_model(files["safetensors"], "safetensors")


def test_weights_of_another_arch_name_the_key_and_both_shapes(files):
    with pytest.raises(Invalid) as info:
        load_model(files["safetensors"], "safetensors", arch="lenet5", input_shape=(3, 16, 16))
    msg = info.value.message
    assert "features.0.weight" in msg and "[6, 1, 5, 5]" in msg and "[6, 3, 5, 5]" in msg


def test_missing_key_is_named(tmp_path):
    state = _reference().state_dict()
    state.pop("fc3.bias")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(Invalid, match="'fc3.bias'.*missing"):
        load_model(tmp_path / "w.safetensors", "safetensors", arch="lenet5")


def test_malicious_pickle_is_refused_by_the_loader_too(files):
    with pytest.raises(UnsupportedMedia, match="could not be read safely"):
        read_state_dict(files["evil_zip"], "state_dict")
    assert not files["sentinel"].exists()


def test_onnx_converts_to_an_editable_module_with_the_same_outputs(files):
    loaded = load_model(files["onnx"], "onnx")
    assert loaded.rebuildable and loaded.input_shape == (1, 8, 8)
    kinds = {type(m).__name__ for m in loaded.module.modules()}
    assert {"Conv2d", "Linear"} <= kinds
    torch.testing.assert_close(loaded.module(X), _reference()(X), atol=1e-5, rtol=1e-4)


def test_onnx2torch_imports_without_torchvision():
    import sys

    assert import_onnx2torch().convert
    tv = sys.modules.get("torchvision")
    assert tv is None or not getattr(tv, "__prunelab_stub__", False)


def test_onnx_external_data_is_refused_with_the_export_hint(files):
    with pytest.raises(Invalid) as info:
        load_model(files["onnx_external"], "onnx")
    assert ".onnx.data" in info.value.message and "external_data=False" in info.value.message


def test_onnx_op_onnx2torch_cannot_convert_is_named_with_its_opset(files):
    with pytest.raises(Invalid, match=r"op Hardmax at opset 17 \(node 'odd'\)"):
        load_model(files["onnx_hardmax"], "onnx")


def test_newer_opset_is_down_converted_before_conversion(files):
    loaded = load_model(files["onnx_opset19"], "onnx")
    assert loaded.module(torch.ones(1, 4)).tolist() == [[4.0, 4.0, 4.0]]


def test_default_dynamo_exporter_output_loads(tmp_path):
    """torch.onnx.export's default (dynamo) output: Reshape allowzero=1 is relaxed, then it loads."""
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(_reference(), (torch.zeros(1, 1, 8, 8),), str(path), external_data=False)
    loaded = load_model(path, "onnx")
    torch.testing.assert_close(loaded.module(X[:1]), _reference()(X[:1]), atol=1e-5, rtol=1e-4)


def test_torchscript_loads_masks_only_and_masking_in_place_works(files):
    loaded = load_model(files["torchscript"], "torchscript", input_shape=(1, 8, 8))
    assert not loaded.rebuildable and "masks only" in loaded.notes[0]
    with torch.no_grad():
        for p in loaded.module.parameters():
            p.mul_(0)
    assert loaded.module(X).abs().sum() == 0


def test_pt2_loads_with_its_input_shape_and_eval_is_tolerated(files):
    loaded = load_model(files["pt2"], "pt2")
    assert loaded.input_shape == (1, 8, 8) and not loaded.rebuildable
    set_eval(loaded.module)
    torch.testing.assert_close(loaded.module(X), _reference()(X))


@pytest.mark.parametrize("key", ["truncated_torchscript", "truncated_pt2"])
def test_truncated_code_archives_are_refused(files, key):
    fmt = key.removeprefix("truncated_")
    with pytest.raises(UnsupportedMedia, match="could not be loaded"):
        load_model(files[key], fmt, input_shape=(1, 8, 8))


def _pruned_lenet(keep: int = 4) -> tuple[torch.nn.Module, dict]:
    """lenet5 with ``keep`` of the 6 filters of its first conv, as physical removal leaves it."""
    from app.pruning.structural.rebuild import architecture_config, rebuild

    config = architecture_config(_reference(), arch="lenet5", num_classes=10, input_shape=(1, 8, 8))
    config["layers"]["features.0"]["args"]["out_channels"] = keep
    config["layers"]["features.3"]["args"]["in_channels"] = keep
    torch.manual_seed(1)
    return rebuild(config).eval(), config


def test_safetensors_with_a_pruned_architecture_load_the_smaller_model(tmp_path):
    from app.modelio.rebuilt import save_pruned

    small, config = _pruned_lenet()
    path = tmp_path / "pruned.safetensors"
    save_pruned(small, path, config)
    loaded = load_model(path, "safetensors")  # no arch needed: the header names it
    assert loaded.rebuildable and loaded.arch == "lenet5" and loaded.input_shape == (1, 8, 8)
    assert loaded.module.features[0].weight.shape == (4, 1, 5, 5)
    torch.testing.assert_close(loaded.module.eval()(X), small(X))
    with pytest.raises(Invalid, match="pruned 'lenet5' model, not arch 'mlp'"):
        load_model(path, "safetensors", arch="mlp")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["layers"]["fc1"].update(kind="Transformer"), "kind 'Transformer'"),
        (lambda c: c["layers"]["fc1"]["args"].update(in_features=10**6), "declares"),
        (lambda c: c.update(input_shape=[1, 10**5, 10**5]), "impossible input_shape"),
    ],
)
def test_a_hostile_architecture_header_is_refused_before_anything_is_built(
    tmp_path, change, message
):
    from app.modelio.rebuilt import save_pruned

    small, config = _pruned_lenet()
    change(config)
    path = tmp_path / "hostile.safetensors"
    save_pruned(small, path, config)
    with pytest.raises(Invalid, match=message):
        load_model(path, "safetensors", arch="lenet5")
