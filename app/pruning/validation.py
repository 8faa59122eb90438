"""The validation split a run makes its choices on; the test split is only reported.

A run that chooses something from measured accuracy (``schedule.max_accuracy_drop``,
``finetune.early_stop_patience``, a ``sensitivity`` sweep and its allocation) carves
``VAL_FRACTION`` of the training data off, stratified by class and seeded with the recipe's
seed (:func:`carve_validation`), and chooses on it: every measurement then carries
``val_accuracy``/``val_loss`` next to the test ``accuracy``/``loss``. A run that chooses
nothing trains on all of the training data. The run's notes say which split was used.

Example:
    >>> import numpy as np
    >>> x = np.zeros((100, 3), np.float32)
    >>> data = ArrayDataset("toy", x, np.arange(100) % 4, x[:8], np.arange(8) % 4, 4)
    >>> part = carve_validation(data, seed=0)
    >>> part.n_train, len(part.y_val), sorted(np.bincount(part.y_val).tolist())
    (92, 8, [2, 2, 2, 2])
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from app.pruning.data import ArrayDataset
from app.pruning.notes import Note, info
from app.pruning.spec import Recipe

VAL_FRACTION = 0.1


def needs_validation(recipe: Recipe) -> bool:
    """True when the recipe chooses anything from measured accuracy."""
    return (
        recipe.kind == "sensitivity"
        or (recipe.kind == "prune" and recipe.schedule.max_accuracy_drop is not None)
        or recipe.finetune.early_stop_patience is not None
    )


def carve_validation(
    data: ArrayDataset, *, seed: int, fraction: float = VAL_FRACTION
) -> ArrayDataset:
    """``data`` with ``fraction`` of each class's training samples moved to a validation split
    (a language-modelling dataset: its last training sequences, the text after the rest)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(data.y_train)
    if data.task == "language_model":
        take = int(round(len(y) * fraction))
        if not 0 < take < len(y):
            raise ValueError(
                f"dataset {data.name!r} has too few training sequences to carve a validation split"
            )
        return replace(
            data,
            x_train=data.x_train[:-take],
            y_train=y[:-take],
            x_val=data.x_train[-take:],
            y_val=y[-take:],
        )
    val_idx = []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        rng.shuffle(idx)
        take = int(round(len(idx) * fraction))
        if 0 < take < len(idx):
            val_idx.append(idx[:take])
    if not val_idx:
        raise ValueError(
            f"dataset {data.name!r} has too few training samples to carve a validation split"
        )
    val = np.sort(np.concatenate(val_idx))
    train = np.setdiff1d(np.arange(len(y)), val)
    return replace(
        data,
        x_train=data.x_train[train],
        y_train=y[train],
        x_val=data.x_train[val],
        y_val=y[val],
    )


def validation_note(data: ArrayDataset, *, seed: int) -> Note:
    """The (info) note a run carries about the split its choices were made on."""
    n_val = 0 if data.y_val is None else len(data.y_val)
    how = "the last sequences" if data.task == "language_model" else f"stratified, seed {seed}"
    return info(
        f"choices made on a validation split of {n_val} training samples "
        f"({VAL_FRACTION:.0%}, {how}); the test split "
        f"({data.n_test} samples) is only reported"
    )
