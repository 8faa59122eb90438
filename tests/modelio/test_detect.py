"""Format detection from content: real files of each format, hostile files refused statically."""

from __future__ import annotations

import shutil

import pytest

from app.errors import BadRequest, Forbidden, UnsupportedMedia
from app.modelio.detect import check_code_format_allowed, detect_format


@pytest.mark.parametrize(
    ("key", "fmt"),
    [
        ("safetensors", "safetensors"),
        ("state_dict", "state_dict"),
        ("state_dict_legacy", "state_dict"),
        ("checkpoint", "state_dict"),
        ("torchscript", "torchscript"),
        ("pt2", "pt2"),
        ("onnx", "onnx"),
        ("onnx_hardmax", "onnx"),
    ],
)
def test_each_format_is_detected_from_content(files, key, fmt):
    assert detect_format(files[key]) == fmt


def test_extension_is_ignored(files, tmp_path):
    disguised = tmp_path / "model.onnx"
    shutil.copy(files["torchscript"], disguised)
    assert detect_format(disguised) == "torchscript"
    disguised2 = tmp_path / "weights.safetensors"
    shutil.copy(files["onnx"], disguised2)
    assert detect_format(disguised2) == "onnx"


def test_random_bytes_are_not_a_model(files):
    with pytest.raises(UnsupportedMedia, match="not a model file we recognise"):
        detect_format(files["random"])


def test_empty_file_is_refused(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    with pytest.raises(UnsupportedMedia, match="empty"):
        detect_format(tmp_path / "e")


@pytest.mark.parametrize("key", ["torchscript", "onnx", "safetensors", "pt2"])
def test_truncated_files_are_refused_with_a_sentence(files, key):
    with pytest.raises(UnsupportedMedia) as info:
        detect_format(files[f"truncated_{key}"])
    assert "truncated" in info.value.message or "recognise" in info.value.message


def test_whole_module_pickle_names_the_class_and_how_to_convert(files):
    with pytest.raises(UnsupportedMedia) as info:
        detect_format(files["whole"])
    msg = info.value.message
    assert "pickled whole model" in msg and "LeNet5" in msg
    for hint in ("torch.jit.script", "torch.export", "external_data=False", "state_dict"):
        assert hint in msg


@pytest.mark.parametrize("key", ["evil_zip", "evil_raw"])
def test_malicious_pickle_is_named_and_never_run(files, key):
    with pytest.raises(UnsupportedMedia, match=r"imports code \((posix|os|nt)\.system"):
        detect_format(files[key])
    assert not files["sentinel"].exists()


def test_zip_slip_in_a_model_archive_is_refused(files, tmp_path, zip_maker):
    path = zip_maker(tmp_path / "slip.pt", {"m/data.pkl": b"\x80\x02}q\x00.", "../../evil": b"x"})
    with pytest.raises(BadRequest, match="outside the archive"):
        detect_format(path)


def test_zip_without_torch_content_is_not_a_model(tmp_path, zip_maker):
    path = zip_maker(tmp_path / "docs.zip", {"readme.txt": b"hello"})
    with pytest.raises(UnsupportedMedia, match="not a model file we recognise"):
        detect_format(path)


@pytest.mark.parametrize(
    ("fmt", "policy", "admin", "allowed"),
    [
        ("torchscript", "admins", True, True),
        ("torchscript", "admins", False, False),
        ("pt2", "nobody", True, False),
        ("pt2", "everyone", False, True),
        ("onnx", "nobody", False, True),
    ],
)
def test_code_formats_follow_the_policy(fmt, policy, admin, allowed):
    if allowed:
        check_code_format_allowed(fmt, policy, is_admin=admin)
    else:
        with pytest.raises(Forbidden, match="PRUNELAB_CODE_FORMATS"):
            check_code_format_allowed(fmt, policy, is_admin=admin)
