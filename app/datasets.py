"""Datasets: the built-in ``digits`` and (later) uploaded files, as ArrayDataset."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from app.pruning.data import ArrayDataset

BUILTIN_DATASETS = ("digits",)


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
