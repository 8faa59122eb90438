"""The upload formats a dataset comes in: ``.npz``, ``.csv`` with a label column, and ``.zip``
of class folders of PNG/JPEG images (decoded from memory: nothing is extracted). Text corpora
(``.txt``, ``.jsonl``) for language modelling are ``text_corpus``'s.

Integer ``x`` (token ids) is kept as int64, floats become float32; a run feeds integers to a
model that takes int64 and casts them to float32 for one that takes floats
(``app.runs.inputs.as_fed``).

:func:`load_dataset_file` recognises the format from the content; every reader validates
dtypes, shapes, labels (at most :attr:`DecodeLimits.max_classes` classes), image sizes, NaN/inf
and class counts, then splits 70/30 stratified with seed 0 when the file brings no test part.
Worker side only: the web process decodes uploads through ``app.modelio.dataset_preflight``'s
limited child (``app.modelio.dataset_worker``), never by importing this module.
"""

from __future__ import annotations

import csv
import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from app.errors import Invalid, TooLarge, UnsupportedMedia
from app.modelio.archive import check_zip
from app.pruning.data import ArrayDataset

TEST_FRACTION = 0.3
SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class DecodeLimits:
    """What an upload may hold (``PRUNELAB_MAX_CLASSES`` and ``PRUNELAB_MAX_IMAGE_PIXELS``
    for uploads, sent in the decoding request; these defaults for the CLI)."""

    max_classes: int = 10_000
    max_image_pixels: int = MAX_IMAGE_PIXELS


def load_dataset_file(
    path: Path, *, name: str, limits: DecodeLimits = DecodeLimits()
) -> ArrayDataset:
    """Read and validate an uploaded dataset, recognised from its content.

    Args:
        path: an ``.npz`` (``x``, ``y``, optional ``x_test``/``y_test``), a ``.csv`` with a
            ``label`` column, or a ``.zip`` of ``class_name/*.png|jpg`` folders.
        name: the dataset's name.
        limits: the most classes and pixels per image the file may hold.

    Returns:
        A validated ``ArrayDataset``; without a test part, a stratified 70/30 split (seed 0).

    Raises:
        Invalid: bad dtypes or shapes, NaN/inf, negative or missing labels, labels or images
            over ``limits``, a class with fewer than 2 samples; UnsupportedMedia: not a dataset
            format; BadRequest/TooLarge: an unsafe zip.
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        with open_zip(path) as zf:
            infos = check_zip(zf)
            if infos and all(i.filename.endswith(".npy") for i in infos if not i.is_dir()):
                return from_npz(path, name, limits)
            return from_image_zip(zf, infos, name, limits)
    return from_csv(path, name, limits)


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedMedia(f"the dataset archive is truncated or damaged ({exc})") from exc


def from_npz(path: Path, name: str, limits: DecodeLimits) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test") if k in z.files}
    except ValueError as exc:
        raise Invalid(f"the .npz holds an object array, which is not allowed ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UnsupportedMedia(f"the .npz file could not be read ({exc})") from exc
    if "x" not in arrays or "y" not in arrays:
        raise Invalid("the .npz needs arrays named 'x' (samples) and 'y' (integer labels)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise Invalid("the .npz has only one of 'x_test' and 'y_test'; give both or neither")
    x, y = arrays["x"], arrays["y"]
    return _build(name, x, y, arrays.get("x_test"), arrays.get("y_test"), limits)


def from_csv(path: Path, name: str, limits: DecodeLimits) -> ArrayDataset:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            rows = list(reader)
    except csv.Error as exc:
        raise Invalid(_csv_error(reader.line_num, exc)) from exc
    except UnicodeDecodeError as exc:
        raise UnsupportedMedia(
            "not a dataset file we recognise: expected .npz, .csv with a 'label' column, "
            "or a .zip of class folders of images"
        ) from exc
    if not rows or "label" not in [c.strip() for c in rows[0]]:
        raise Invalid("the CSV needs a header row with a 'label' column and feature columns")
    header = [c.strip() for c in rows[0]]
    col = header.index("label")
    x, y = [], []
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise Invalid(f"CSV line {i} has {len(row)} fields but the header has {len(header)}")
        try:
            y.append(float(row[col]))
            x.append([float(v) for j, v in enumerate(row) if j != col])
        except ValueError as exc:
            raise Invalid(f"CSV line {i} holds a value that is not a number ({exc})") from exc
    if len(header) < 2:
        raise Invalid("the CSV has a 'label' column but no feature columns")
    return _build(name, np.asarray(x, dtype=np.float64), np.asarray(y), None, None, limits)


def _csv_error(line: int, exc: csv.Error) -> str:
    if "field larger than field limit" in str(exc):
        return (
            f"CSV line {line} has a field longer than {csv.field_size_limit()} characters; "
            "each field holds one number"
        )
    return f"CSV line {line} cannot be read as CSV ({exc})"


def from_image_zip(
    zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], name: str, limits: DecodeLimits
) -> ArrayDataset:
    files = [i for i in infos if not i.is_dir() and not _hidden(i.filename)]
    parts = [PurePosixPath(i.filename).parts for i in files]
    if parts and len({p[0] for p in parts}) == 1 and all(len(p) == 3 for p in parts):
        parts = [p[1:] for p in parts]  # one wrapping folder: root/class/image.png
    if not files or any(len(p) != 2 for p in parts):
        raise Invalid("the dataset zip must hold class folders of images: class_name/image.png")
    bad = next((i.filename for i in files if not i.filename.lower().endswith(IMAGE_SUFFIXES)), None)
    if bad:
        raise Invalid(f"the dataset zip holds {bad!r}, which is not a .png or .jpg image")
    classes = sorted({p[0] for p in parts})
    images = [_read_image(zf, info, limits.max_image_pixels) for info in files]
    rgb = any(im.mode not in ("L", "1", "I", "I;16", "F") for im in images)
    arrays = []
    for info, im in zip(files, images, strict=True):
        if im.size != images[0].size:
            raise Invalid(
                f"image {info.filename!r} is {im.size[0]}x{im.size[1]} but "
                f"{files[0].filename!r} is {images[0].size[0]}x{images[0].size[1]}; "
                "all images must have the same size"
            )
        arr = np.asarray(im.convert("RGB" if rgb else "L"), dtype=np.float32) / 255.0
        arrays.append(arr.transpose(2, 0, 1) if rgb else arr[None])
    y = np.array([classes.index(p[0]) for p in parts], dtype=np.int64)
    return _build(name, np.stack(arrays), y, None, None, limits)


def _hidden(filename: str) -> bool:
    return any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(filename).parts)


def _read_image(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_pixels: int):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with zf.open(info) as fh, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(fh.read()))
            if im.size[0] * im.size[1] > max_pixels:  # from the header, before decoding
                raise Invalid(
                    f"image {info.filename!r} is {im.size[0]}x{im.size[1]} pixels, over this "
                    f"server's limit of {max_pixels} pixels per image (PRUNELAB_MAX_IMAGE_PIXELS)"
                )
            im.load()
    except Invalid:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image {info.filename!r} has too many pixels") from exc
    except Exception as exc:
        raise Invalid(f"image {info.filename!r} could not be read ({exc})") from exc
    return im


def _samples(x: np.ndarray, part: str) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise Invalid(f"{part} must hold numbers; it has dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]  # N x H x W grey images
    if x.ndim not in (2, 4) or x.shape[0] == 0:
        raise Invalid(
            f"{part} must be shaped N x F or N x C x H x W with N > 0; got {list(x.shape)}"
        )
    if x.dtype.kind in "iu":  # token ids (or 8-bit pixels) stay integers: as_fed casts
        if x.dtype == np.uint64 and x.size and x.max() > np.iinfo(np.int64).max:
            raise Invalid(f"{part} holds integers over the int64 range")
        return x.astype(np.int64)
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise Invalid(f"{part} holds NaN or infinite values")
    return x


def _labels(y: np.ndarray, n: int, part: str, max_classes: int) -> np.ndarray:
    if y.dtype.kind not in "biuf" or y.ndim != 1:
        raise Invalid(
            f"{part} must be a 1-D array of integer labels; got {y.dtype} {list(y.shape)}"
        )
    if y.shape[0] != n:
        raise Invalid(f"{part} has {y.shape[0]} labels for {n} samples")
    if y.dtype.kind == "f" and (not np.isfinite(y).all() or (y != np.round(y)).any()):
        raise Invalid(f"{part} holds labels that are not whole numbers")
    if y.size and y.max() >= max_classes:  # before any per-class array is allocated
        raise Invalid(
            f"{part} holds the label {y.max():g}, over this server's limit of {max_classes} "
            "classes (labels 0 .. n_classes-1; PRUNELAB_MAX_CLASSES)"
        )
    y = y.astype(np.int64)
    if (y < 0).any():
        raise Invalid(f"{part} holds negative labels; labels must be 0 .. n_classes-1")
    return y


def _build(name: str, x, y, x_test, y_test, limits: DecodeLimits) -> ArrayDataset:
    x = _samples(np.asarray(x), "x")
    y = _labels(np.asarray(y), x.shape[0], "y", limits.max_classes)
    if x_test is not None:
        x_test = _samples(np.asarray(x_test), "x_test")
        y_test = _labels(np.asarray(y_test), x_test.shape[0], "y_test", limits.max_classes)
        if (x_test.dtype.kind == "i") != (x.dtype.kind == "i"):
            raise Invalid(
                f"x holds {x.dtype} but x_test holds {x_test.dtype}; give both as integers "
                "(token ids) or both as floats"
            )
        if x_test.shape[1:] != x.shape[1:]:
            raise Invalid(
                f"x_test samples have shape {list(x_test.shape[1:])} but x samples have "
                f"shape {list(x.shape[1:])}"
            )
    n_classes = int(max(y.max(), y_test.max() if y_test is not None else 0)) + 1
    counts = np.bincount(y, minlength=n_classes)
    if n_classes < 2 or (counts == 0).any():
        missing = int(np.flatnonzero(counts == 0)[0]) if (counts == 0).any() else None
        raise Invalid(
            "a dataset needs at least 2 classes labelled 0 .. n_classes-1"
            + (f"; class {missing} has no training samples" if missing is not None else "")
        )
    if x_test is None:
        if counts.min() < 2:
            raise Invalid(
                f"class {int(counts.argmin())} has only {int(counts.min())} sample; every class "
                "needs at least 2 for the stratified 70/30 split (or give x_test and y_test)"
            )
        x, x_test, y, y_test = _split(x, y, n_classes)
    return ArrayDataset(name, x, y, x_test, y_test, n_classes=n_classes)


def _split(x: np.ndarray, y: np.ndarray, n_classes: int):
    from sklearn.model_selection import train_test_split

    n_test = int(np.ceil(TEST_FRACTION * len(y)))
    if n_test < n_classes or len(y) - n_test < n_classes:
        raise Invalid(
            f"{len(y)} samples are too few for a stratified 70/30 split of {n_classes} classes; "
            "give more samples or x_test and y_test"
        )
    return train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=SPLIT_SEED)
