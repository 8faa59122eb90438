"""Dataset uploads (.npz, .csv, image .zip) built in the tests, validated and split."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from app.errors import BadRequest, Invalid, TooLarge
from app.intake.datasets import check_fits
from app.modelio.dataset_files import (
    dataset_summary,
    load_builtin,
    load_saved_dataset,
    save_dataset,
)
from app.modelio.dataset_formats import load_dataset_file

RNG = np.random.default_rng(0)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_builtin_digits_unchanged():
    ds = load_builtin("digits")
    assert dataset_summary(ds) == {
        "n_train": 1257,
        "n_test": 540,
        "input_shape": [1, 8, 8],
        "n_classes": 10,
        "task": "classification",
        "input_dtype": "float32",
        "text": None,
    }
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


def test_npz_without_test_part_gets_a_stratified_70_30_split(tmp_path):
    x = RNG.random((100, 1, 4, 4)).astype(np.float32)
    y = np.repeat(np.arange(4), 25)
    ds = load_dataset_file(_npz(tmp_path / "d.npz", x=x, y=y), name="toy")
    assert (ds.n_train, ds.n_test, ds.n_classes, ds.input_shape) == (70, 30, 4, (1, 4, 4))
    assert np.bincount(ds.y_test).tolist() == [8, 8, 7, 7] or sorted(np.bincount(ds.y_test)) == [
        7,
        7,
        8,
        8,
    ]
    again = load_dataset_file(tmp_path / "d.npz", name="toy")
    assert np.array_equal(again.y_test, ds.y_test)  # seed 0: the same split every time


def test_npz_with_test_part_keeps_it(tmp_path):
    path = _npz(
        tmp_path / "d.npz",
        x=RNG.random((10, 5)),
        y=np.arange(10) % 2,
        x_test=RNG.random((4, 5)),
        y_test=np.array([0, 1, 1, 0]),
    )
    ds = load_dataset_file(path, name="t")
    assert (ds.n_train, ds.n_test, ds.input_shape, ds.x_train.dtype) == (10, 4, (5,), np.float32)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.array([[np.nan, 1.0]] * 6), "y": np.arange(6) % 2}, "NaN or infinite"),
        ({"x": np.ones((6, 2)), "y": np.array([0, 1, 0, 1, 0, -1])}, "negative labels"),
        ({"x": np.ones((6, 2)), "y": np.array([0, 2, 0, 2, 0, 2])}, "class 1 has no training"),
        ({"x": np.ones((6, 2)), "y": np.arange(5)}, "5 labels for 6 samples"),
        ({"x": np.ones((6, 2)), "y": np.array([0, 0, 0, 0, 0, 1])}, "class 1 has only 1 sample"),
        ({"x": np.ones((6, 2)), "y": np.array([0.5] * 6)}, "not whole numbers"),
        ({"x": np.array(["a"] * 6), "y": np.arange(6) % 2}, "must hold numbers"),
        ({"x": np.ones((6, 2, 2, 2, 2)), "y": np.arange(6) % 2}, "N x F or N x C x H x W"),
        ({"x": np.ones((6, 2))}, "arrays named 'x'"),
        (
            {
                "x": np.ones((6, 2)),
                "y": np.arange(6) % 2,
                "x_test": np.ones((2, 3)),
                "y_test": np.array([0, 1]),
            },
            r"x_test samples have shape \[3\] but x samples have shape \[2\]",
        ),
    ],
)
def test_bad_npz_is_422_with_a_sentence(tmp_path, arrays, message):
    with pytest.raises(Invalid, match=message):
        load_dataset_file(_npz(tmp_path / "bad.npz", **arrays), name="bad")


def test_npz_with_pickled_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(Invalid, match="object array"):
        load_dataset_file(path, name="obj")


def test_csv_with_label_column(tmp_path):
    lines = ["f1,label,f2"] + [f"{i / 10},{i % 3},{i}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    ds = load_dataset_file(tmp_path / "d.csv", name="csv")
    assert (ds.n_train + ds.n_test, ds.n_classes, ds.input_shape) == (30, 3, (2,))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "'label' column"),
        ("a,label\n1,0\nx,1\n", "line 3 holds a value that is not a number"),
        ("a,label\n1,0\n1,2,3\n", "line 3 has 3 fields"),
    ],
)
def test_bad_csv_names_the_line(tmp_path, text, message):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(Invalid, match=message):
        load_dataset_file(tmp_path / "d.csv", name="csv")


def _png(color, size=(6, 5), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _image_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_zip_of_class_folders_becomes_scaled_images(tmp_path):
    entries = {
        f"root/{c}/{i}.png": _png(40 * k) for k, c in enumerate(["cat", "dog"]) for i in range(5)
    }
    ds = load_dataset_file(_image_zip(tmp_path / "img.zip", entries), name="pets")
    assert ds.input_shape == (1, 5, 6) and ds.n_classes == 2 and ds.n_train + ds.n_test == 10
    dog = np.concatenate([ds.x_train[ds.y_train == 1], ds.x_test[ds.y_test == 1]])
    assert np.allclose(dog, 40 / 255)


def test_rgb_images_give_three_channels_and_sizes_must_match(tmp_path):
    entries = {f"{c}/{i}.png": _png((10, 20, 30), mode="RGB") for c in "ab" for i in range(3)}
    ds = load_dataset_file(_image_zip(tmp_path / "rgb.zip", entries), name="rgb")
    assert ds.input_shape == (3, 5, 6)
    entries["b/odd.png"] = _png((1, 2, 3), size=(7, 7), mode="RGB")
    with pytest.raises(Invalid, match="is 7x7 but .* is 6x5"):
        load_dataset_file(_image_zip(tmp_path / "rgb2.zip", entries), name="rgb")


def test_image_zip_slip_and_bomb_are_refused(tmp_path):
    with pytest.raises(BadRequest, match="outside the archive"):
        load_dataset_file(_image_zip(tmp_path / "s.zip", {"../a/1.png": _png(1)}), name="s")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/1.png", bytes(20 * 1024 * 1024))
    with pytest.raises(TooLarge, match="zip bomb"):
        load_dataset_file(bomb, name="b")


def test_non_image_in_zip_is_named(tmp_path):
    with pytest.raises(Invalid, match="'a/x.txt'"):
        load_dataset_file(
            _image_zip(tmp_path / "t.zip", {"a/x.txt": b"hi", "b/1.png": _png(1)}), name="t"
        )


def test_check_fits_names_both_shapes_and_class_counts():
    check_fits((1, 8, 8), 10, (1, 8, 8), 10)
    check_fits((1, 8, 8), 10, (1, 1, 8, 8), 10)  # a batch dimension on the model side is fine
    with pytest.raises(
        Invalid, match=r"shape \[3, 32, 32\] but the model expects input shape \[1, 8, 8\]"
    ):
        check_fits((3, 32, 32), 10, (1, 8, 8), 10)
    with pytest.raises(Invalid, match="4 classes but the model outputs 10"):
        check_fits((1, 8, 8), 4, (1, 8, 8), 10)


def test_save_and_reload_a_validated_dataset(tmp_path):
    ds = load_builtin("digits")
    path = save_dataset(ds, tmp_path / "ds1")
    assert sorted(p.name for p in (tmp_path / "ds1").iterdir()) == ["dataset.npz"]
    back = load_saved_dataset(path)
    assert dataset_summary(back) == dataset_summary(ds) and back.name == "digits"
    assert np.array_equal(back.x_test, ds.x_test) and np.array_equal(back.y_train, ds.y_train)
