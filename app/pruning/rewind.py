"""Lottery-ticket rewinding: the earlier weights a ``retrain`` run with ``retrain_init: rewind`` restores.

A ``train`` run records two points (:class:`RewindRecorder`): ``"init"``, the weights before the
first batch, and ``"early"``, the weights after epoch ``REWIND_EPOCH`` (Frankle et al. 2020
rewind to an early iteration rather than to the initialisation). The run stores them as
``init.safetensors`` and ``rewind.safetensors`` (``catalogue.REWIND_FILES``); a prune run of
that train run's result model restores one of them after pruning (``schedule.rewind_from``,
default ``"early"`` when the train run had one). A model without such weights (an upload)
cannot be rewound: ``targets.choose_rewind`` refuses the recipe with a sentence saying what to
use instead (torch-free, so run creation checks it too).

Example:
    >>> from torch import nn
    >>> recorder = RewindRecorder(nn.Linear(2, 1))
    >>> sorted(recorder.points)
    ['init']
    >>> recorder.on_epoch({"epoch": 1}, {})
    >>> sorted(recorder.points), sorted(recorder.points["early"])
    (['early', 'init'], ['bias', 'weight'])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

REWIND_EPOCH = 1


class RewindRecorder:
    """Keeps the weights a train run can be rewound to: at the start and after an early epoch."""

    def __init__(self, model: nn.Module, epoch: int = REWIND_EPOCH) -> None:
        self.model, self.epoch = model, epoch
        self.points: dict[str, dict[str, Tensor]] = {"init": _snapshot(model)}

    def on_epoch(self, point: dict, _training: dict) -> None:
        """``fine_tune``'s ``on_epoch``: snapshot the weights after epoch ``self.epoch``."""
        if int(point["epoch"]) == self.epoch:
            self.points["early"] = _snapshot(self.model)


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
