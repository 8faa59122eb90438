"""Dataset intake: the built-in ``digits`` and uploaded ``.npz``/``.csv``/image ``.zip`` files.

Uploads are recognised from their content and validated (``dataset_formats``), stored
normalised as ``dataset.npz`` in the artifact store, and recorded (:func:`ingest_dataset`, which
the upload route calls). Zips go through ``app.modelio.archive.check_zip``. Torch-free at import.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlmodel import Session

from app import store
from app.artifacts import ArtifactStore
from app.catalogue import BUILTIN_DATASETS
from app.config import Settings
from app.errors import Invalid
from app.intake.dataset_formats import from_csv, from_image_zip, from_npz, open_zip
from app.modelio.archive import check_zip
from app.models import DatasetRecord, User
from app.pruning.data import ArrayDataset


@lru_cache(maxsize=1)
def load_digits() -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits: stratified 70/30 split, seed 0, pixels in [0, 1], 1x8x8."""
    from sklearn.datasets import load_digits as _sk_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return ArrayDataset("digits", x_tr, y_tr, x_te, y_te, n_classes=10)


def load_builtin(name: str) -> ArrayDataset:
    """A built-in dataset by id; ``ValueError`` naming the known ones otherwise."""
    if name == "digits":
        return load_digits()
    raise ValueError(
        f"unknown built-in dataset {name!r}; built-in datasets: {', '.join(BUILTIN_DATASETS)}"
    )


def load_dataset_file(path: Path, *, name: str) -> ArrayDataset:
    """Read and validate an uploaded dataset, recognised from its content.

    Args:
        path: an ``.npz`` (``x``, ``y``, optional ``x_test``/``y_test``), a ``.csv`` with a
            ``label`` column, or a ``.zip`` of ``class_name/*.png|jpg`` folders.
        name: the dataset's name.

    Returns:
        A validated ``ArrayDataset``; without a test part, a stratified 70/30 split (seed 0).

    Raises:
        Invalid: bad dtypes or shapes, NaN/inf, negative or missing labels, a class with fewer
            than 2 samples; UnsupportedMedia: not a dataset format; BadRequest/TooLarge: an
            unsafe zip.
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        with open_zip(path) as zf:
            infos = check_zip(zf)
            if infos and all(i.filename.endswith(".npy") for i in infos if not i.is_dir()):
                return from_npz(path, name)
            return from_image_zip(zf, infos, name)
    return from_csv(path, name)


def dataset_summary(ds: ArrayDataset) -> dict:
    """What the API returns about a dataset."""
    return {
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "input_shape": list(ds.input_shape),
        "n_classes": ds.n_classes,
    }


def check_fits(
    ds_input_shape: Sequence[int],
    ds_classes: int,
    model_input_shape: Sequence[int] | None,
    model_classes: int | None,
) -> None:
    """Refuse a run whose dataset does not fit the model (shapes are per sample, no batch).

    Raises:
        Invalid: naming both shapes, or both class counts.
    """
    ds_shape = [int(d) for d in ds_input_shape]
    if model_input_shape is not None:
        m_shape = [int(d) for d in model_input_shape]
        if m_shape != ds_shape and not (
            len(m_shape) == len(ds_shape) + 1 and m_shape[1:] == ds_shape
        ):
            raise Invalid(
                f"the dataset's samples have shape {ds_shape} but the model expects input "
                f"shape {m_shape}"
            )
    if model_classes is not None and int(model_classes) != int(ds_classes):
        raise Invalid(f"the dataset has {ds_classes} classes but the model outputs {model_classes}")


def save_dataset(ds: ArrayDataset, directory: Path) -> Path:
    """Write a validated dataset as a normalised ``dataset.npz`` under ``directory``, atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / "dataset.npz"
    tmp = directory / f".dataset-{os.getpid()}.tmp.npz"
    try:
        np.savez(
            tmp,
            x_train=ds.x_train,
            y_train=ds.y_train,
            x_test=ds.x_test,
            y_test=ds.y_test,
            n_classes=np.int64(ds.n_classes),
            name=np.array(ds.name),
        )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_saved_dataset(path: Path) -> ArrayDataset:
    """Read a dataset written by :func:`save_dataset`."""
    with np.load(path, allow_pickle=False) as z:
        return ArrayDataset(
            str(z["name"]),
            z["x_train"],
            z["y_train"],
            z["x_test"],
            z["y_test"],
            n_classes=int(z["n_classes"]),
        )


def ingest_dataset(
    settings: Settings,
    session: Session,
    user: User,
    path: Path,
    *,
    filename: str,
    name: str,
    sha256: str,
) -> DatasetRecord:
    """Parse and validate an uploaded file, store it normalised as .npz, add the row."""
    ds = load_dataset_file(path, name=name)
    ds_id = "ds_" + secrets.token_hex(5)
    key = f"datasets/{ds_id}/dataset.npz"
    artifacts = ArtifactStore(settings.artifacts)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        artifacts.put_file(save_dataset(ds, Path(work)), key)
    try:
        row = store.add_dataset(
            session,
            id=ds_id,
            name=name,
            format=_format_of(path, filename),
            n_train=ds.n_train,
            n_test=ds.n_test,
            input_shape=list(ds.input_shape),
            n_classes=ds.n_classes,
            sha256=sha256,
            storage_key=key,
            owner_id=user.id,
        )
        session.commit()
    except Exception:
        session.rollback()
        artifacts.delete_prefix(f"datasets/{ds_id}")
        raise
    return row


def _format_of(path: Path, filename: str) -> str:
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "npz" if filename.lower().endswith(".npz") else "zip"
    return "csv"
