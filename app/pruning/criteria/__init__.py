"""Criteria: score the units of each layer (PRUNING.md section 4). Higher = more important.

This is the registry: :data:`CRITERIA` maps each name of :data:`app.catalogue.CRITERIA` (which
states the levels a criterion scores and whether it needs BN or data) to its implementation in
:mod:`~app.pruning.criteria.magnitude` (weights only), :mod:`~app.pruning.criteria.data`
(gradients and activations), :mod:`~app.pruning.criteria.reconstruction` (ThiNet) or
:mod:`~app.pruning.criteria.sparsegpt` (whose weight update runs after the masks are chosen).
Policy only: :mod:`app.pruning.masks` turns scores into masks.

Example:
    >>> from torch import nn
    >>> from app.pruning.layers import prunable_layers
    >>> model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    >>> scores = CRITERIA["l1"].score(model, {"0": model[0]}, "filter")
    >>> scores["0"].shape   # one score per output channel
    torch.Size([16])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from app import catalogue
from app.pruning.criteria import data as data_criteria
from app.pruning.criteria import magnitude, sparsegpt
from app.pruning.criteria.context import CalibrationData, ScoreContext, Scores
from app.pruning.criteria.reconstruction import reconstruction
from app.pruning.granularity import check_layer

ScoreFn = Callable[[ScoreContext], Scores]


@dataclass(frozen=True)
class Criterion:
    """A named importance measure (as the catalogue states it) and its implementation."""

    name: str
    granularities: frozenset[str]
    needs_bn: bool
    needs_data: bool
    fn: ScoreFn

    def score(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        granularity: str,
        *,
        data: CalibrationData | None = None,
        device: str | torch.device = "cpu",
        nm: tuple[int, int] = (2, 4),
        seed: int = 0,
        batches: int = 4,
    ) -> Scores:
        """Score every unit of every layer in ``layers``.

        Args:
            model: the whole model (BN lookup, forward passes).
            layers: name -> prunable layer to score.
            granularity: unit level, one of ``self.granularities``.
            data: an ``ArrayDataset`` or an iterable of ``(x, y)`` batches (data criteria).
            device: where forward/backward passes run.
            nm, seed, batches: N:M pattern, random seed, calibration batches.

        Returns:
            name -> float tensor of ``unit_view(...).unit_shape`` (layers a criterion cannot
            score, e.g. ``bn_gamma`` on a layer without a following BN, are left out).

        Raises:
            ValueError: unsupported granularity, missing BN or data, unsupported layer.
        """
        if granularity not in self.granularities:
            raise ValueError(
                f"criterion '{self.name}' does not support granularity '{granularity}'; "
                f"it supports: {', '.join(sorted(self.granularities))}."
            )
        if self.needs_data and data is None:
            raise ValueError(f"criterion '{self.name}' needs calibration data; pass a dataset.")
        for name, layer in layers.items():
            check_layer(name, layer, granularity)
        ctx = ScoreContext(
            model, layers, granularity, data, torch.device(device), nm, seed, batches, self.name
        )
        return self.fn(ctx)


_IMPLEMENTATIONS: dict[str, ScoreFn] = {
    "l1": magnitude.l1,
    "l2": magnitude.l2,
    "threshold": magnitude.l1,
    "bn_gamma": magnitude.bn_gamma,
    "synaptic": magnitude.synaptic,
    "fpgm": magnitude.fpgm,
    "reconstruction": reconstruction,
    "taylor": data_criteria.taylor,
    "snip": data_criteria.snip,
    "apoz": data_criteria.apoz,
    "wanda": data_criteria.wanda,
    "sparsegpt": sparsegpt.sparsegpt,
    "random": magnitude.random,
}
assert set(_IMPLEMENTATIONS) == set(catalogue.CRITERIA), "catalogue and registry disagree"

CRITERIA: dict[str, Criterion] = {
    name: Criterion(
        name, info.granularities, info.needs_bn, info.needs_data, _IMPLEMENTATIONS[name]
    )
    for name, info in catalogue.CRITERIA.items()
}
