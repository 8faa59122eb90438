"""Datasets the worker side holds in memory: the built-in ``digits`` and the normalised
``dataset.npz`` an upload is stored as (written by the decoding child, read by runs; a text
corpus's tokenizer and vocabulary travel in it as ``text``, see :func:`read_text_meta`).

Worker side only, like ``dataset_formats``: the web process reads the summary the decoding
child reports and never imports this module.
"""

from __future__ import annotations

import json
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


def dataset_summary(ds: ArrayDataset, text: dict | None = None) -> dict:
    """What the API returns about a dataset (``text``: a corpus's tokenizer, seq_len, vocab)."""
    return {
        "n_train": ds.n_train,
        "n_test": ds.n_test,
        "input_shape": list(ds.input_shape),
        "n_classes": ds.n_classes,
        "task": ds.task,
        "input_dtype": ds.input_dtype,
        "text": text,
    }


def save_dataset(ds: ArrayDataset, directory: Path, text: dict | None = None) -> Path:
    """Write a validated dataset as a normalised ``dataset.npz`` under ``directory``, atomically
    (with a text corpus's ``text`` description, vocabulary included, as JSON in ``text``)."""
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
            **({} if text is None else {"text": np.array(json.dumps(text))}),
        )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def load_saved_dataset(path: Path) -> ArrayDataset:
    """Read a dataset written by :func:`save_dataset` (integer inputs stay integers)."""
    with np.load(path, allow_pickle=False) as z:
        return ArrayDataset(
            str(z["name"]),
            z["x_train"],
            z["y_train"],
            z["x_test"],
            z["y_test"],
            n_classes=int(z["n_classes"]),
        )


def read_text_meta(path: Path) -> dict | None:
    """A text corpus's ``{"tokenizer", "seq_len", "vocab_size", "vocab"}`` stored by
    :func:`save_dataset`, or None for other datasets."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["text"])) if "text" in z.files else None
