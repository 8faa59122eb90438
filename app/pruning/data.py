"""In-memory datasets the engine trains and evaluates on.

The engine never reads files: callers (``app.modelio.dataset_formats``, the CLI, a worker, a
notebook) hand it an :class:`ArrayDataset` of numpy arrays.

torch is imported inside the methods only: the dataset decoding child
(``app.modelio.dataset_worker``) builds and validates ArrayDatasets without loading torch.

A dataset's task follows from its labels: ``y`` shaped ``(N,)`` is a classification dataset,
``y`` shaped ``(N, L)`` (the next token at every position of ``x``) a language-modelling one.
Integer inputs (token ids) stay integers: they reach the model as int64, anything else as
float32.

Example:
    >>> x = np.zeros((10, 1, 4, 4), np.float32)
    >>> ds = ArrayDataset("toy", x, np.arange(10) % 3, x[:4], np.arange(4) % 3, 3)
    >>> ds.input_shape, ds.n_train, ds.n_test, tuple(ds.sample_batch(2).shape), ds.task
    ((1, 4, 4), 10, 4, (2, 1, 4, 4), 'classification')
    >>> ids = np.arange(40).reshape(5, 8) % 7
    >>> lm = ArrayDataset("text", ids[:, :-1], ids[:, 1:], ids[:2, :-1], ids[:2, 1:], 7)
    >>> lm.task, lm.metric, lm.sample_batch(1).dtype
    ('language_model', 'perplexity', torch.int64)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A classification or language-modelling dataset held as numpy arrays.

    Args:
        name: short name (``"digits"``).
        x_train, x_test: arrays shaped ``(N, *input_shape)``: float32, or integer token ids.
        y_train, y_test: int64 label arrays shaped ``(N,)`` with values in ``[0, n_classes)``,
            or next-token targets shaped like ``x`` (language modelling).
        n_classes: number of classes (the vocabulary size of a language-modelling dataset).
        x_val, y_val: the validation split the run's choices are made on, or None.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    @property
    def has_val(self) -> bool:
        """True when a validation split was carved off (``validation.carve_validation``)."""
        return self.x_val is not None

    @property
    def task(self) -> str:
        """``"language_model"`` when every position has a target (``y`` is 2-D), else
        ``"classification"``."""
        return "language_model" if np.ndim(self.y_train) == 2 else "classification"

    @property
    def metric(self) -> str:
        """The headline quality metric of the task: ``"perplexity"`` or ``"accuracy"``."""
        return "perplexity" if self.task == "language_model" else "accuracy"

    @property
    def input_dtype(self) -> str:
        """``"int64"`` for integer inputs (token ids), else ``"float32"``."""
        return "int64" if np.asarray(self.x_train).dtype.kind in "iu" else "float32"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension (``(1, 8, 8)`` for digits)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"`` as CPU tensors (no copy)."""
        import torch

        splits = {
            "train": (self.x_train, self.y_train),
            "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }
        x, y = splits[split]
        if x is None:
            raise ValueError(f"dataset {self.name!r} has no {split} split")
        x_dtype = np.int64 if self.input_dtype == "int64" else np.float32
        return torch.from_numpy(np.ascontiguousarray(x, dtype=x_dtype)), torch.from_numpy(
            np.ascontiguousarray(y, dtype=np.int64)
        )

    def with_float_inputs(self) -> ArrayDataset:
        """This dataset with integer inputs as float32 (for a model that takes floats)."""
        if self.input_dtype != "int64":
            return self
        cast = {
            k: None if getattr(self, k) is None else getattr(self, k).astype(np.float32)
            for k in ("x_train", "x_test", "x_val")
        }
        return replace(self, **cast)

    def loader(
        self, split: str, batch_size: int = 128, *, shuffle: bool | None = None, seed: int = 0
    ) -> DataLoader:
        """A DataLoader over one split; the train split is shuffled with ``seed`` by default."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        x, y = self.tensors(split)
        shuffle = (split == "train") if shuffle is None else shuffle
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen
        )

    def sample_batch(self, n: int = 32, split: str = "train") -> torch.Tensor:
        """The first ``n`` inputs of a split: a fixed, real batch for tracing and export checks."""
        x, _ = self.tensors(split)
        return x[:n].clone()
