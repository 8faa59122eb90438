"""Lottery-ticket rewinding: the earlier weights a ``retrain`` run with ``retrain_init: rewind`` restores.

A ``train`` run records two points (:class:`RewindRecorder`): ``"init"``, the weights before the
first batch, and ``"early"``, the weights after epoch ``REWIND_EPOCH`` (Frankle et al. 2020
rewind to an early iteration rather than to the initialisation). The run stores them as
``init.safetensors`` and ``rewind.safetensors`` (``REWIND_FILES``); a prune run of that train
run's result model restores one of them after pruning (``schedule.rewind_from``, default
``"early"`` when the train run had one). A model without such weights (an upload) cannot be
rewound: :func:`choose_rewind` refuses the recipe with a sentence saying what to use instead.

Example:
    >>> from app.pruning.spec import ScheduleSpec
    >>> choose_rewind(ScheduleSpec(kind="retrain"), {"init", "early"})
    'early'
    >>> choose_rewind(ScheduleSpec(kind="retrain", rewind_from="init"), {"init", "early"})
    'init'
    >>> choose_rewind(ScheduleSpec(kind="retrain", retrain_init="reinit"), set()) is None
    True
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from app.pruning.spec import ScheduleSpec

if TYPE_CHECKING:  # torch-free at import: the web process checks recipes with this module
    from torch import Tensor, nn

REWIND_EPOCH = 1
REWIND_FILES: dict[str, str] = {"init": "init.safetensors", "early": "rewind.safetensors"}
"""rewind point -> the artifact a train run stores it as."""

NO_REWIND = (
    "schedule.retrain_init 'rewind' needs the weights of an earlier point of this model's "
    "training, and this model has none (only a train run in the lab stores them): use "
    '"retrain_init": "reinit", or train the model here first (a run of kind "train") and '
    "prune its result."
)


def needs_rewind(schedule: ScheduleSpec) -> bool:
    """True when the schedule restores earlier weights (``retrain`` with ``rewind``)."""
    return schedule.kind == "retrain" and schedule.retrain_init == "rewind"


def choose_rewind(schedule: ScheduleSpec, available: Collection[str]) -> str | None:
    """The rewind point to restore (``"init"``/``"early"``), or None when none is needed.

    Raises:
        ValueError: the schedule rewinds but ``available`` lacks the point it asks for.
    """
    if not needs_rewind(schedule):
        return None
    wanted = schedule.rewind_from or ("early" if "early" in available else "init")
    if wanted in available:
        return wanted
    if not available:
        raise ValueError(NO_REWIND)
    raise ValueError(
        f"schedule.rewind_from {wanted!r}: this model's train run stored only "
        f"{', '.join(sorted(available))}; use one of those."
    )


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
