"""In-memory datasets the engine trains and evaluates on.

The engine never reads files: callers (``app.intake.datasets``, the CLI, a worker, a
notebook) hand it an :class:`ArrayDataset` of numpy arrays.

torch is imported inside the methods only: ``app.intake.datasets`` (and through it the
web process, which must stay torch-free) builds and validates ArrayDatasets.

Example:
    >>> x = np.zeros((10, 1, 4, 4), np.float32)
    >>> ds = ArrayDataset("toy", x, np.arange(10) % 3, x[:4], np.arange(4) % 3, 3)
    >>> ds.input_shape, ds.n_train, ds.n_test, tuple(ds.sample_batch(2).shape)
    ((1, 4, 4), 10, 4, (2, 1, 4, 4))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A classification dataset held as numpy arrays.

    Args:
        name: short name (``"digits"``).
        x_train, x_test: float32 arrays shaped ``(N, *input_shape)``.
        y_train, y_test: int64 label arrays shaped ``(N,)`` with values in ``[0, n_classes)``.
        n_classes: number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

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
        """``(x, y)`` of ``"train"`` or ``"test"`` as CPU tensors (shared memory, no copy)."""
        import torch

        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(y, dtype=np.int64)
        )

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
