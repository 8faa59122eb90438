"""Datasets the worker side holds in memory: the built-in ``digits`` and the normalised
``dataset.npz`` an upload is stored as (written by the decoding child, read by runs).

Worker side only, like ``dataset_formats``: the web process reads the summary the decoding
child reports and never imports this module.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from app.catalogue import BUILTIN_DATASETS
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


def dataset_summary(ds: ArrayDataset) -> dict:
    """What the API returns about a dataset."""
    return {
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "input_shape": list(ds.input_shape),
        "n_classes": ds.n_classes,
    }


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
