"""Bounds on every number a user sends, from ``PRUNELAB_MAX_*`` settings.

Each check raises :class:`LimitExceeded` (a 422) whose sentence names the value, the limit and
the setting that raises it, e.g. "schedule.steps is 1000000, over this server's limit of 100
(PRUNELAB_MAX_SCHEDULE_STEPS)". Nothing here imports torch or numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from app.config import Settings
from app.errors import Invalid

MAX_SEED = 2**63 - 1
MAX_ID = 2**63 - 1
MAX_SWEEP_RECIPE_BYTES = 64 * 1024


class LimitExceeded(Invalid):
    """A value over one of this server's limits (422)."""


def over(what: str, value: object, limit: int, setting: str) -> LimitExceeded:
    return LimitExceeded(
        f"{what} is {value}, over this server's limit of {limit} (PRUNELAB_{setting.upper()})"
    )


def check_recipe(recipe: dict, settings: Settings) -> None:
    """Steps, epochs, batch sizes and seed of a validated recipe (``Recipe.to_dict()``)."""
    schedule = recipe.get("schedule") or {}
    finetune = recipe.get("finetune") or {}
    target = (recipe.get("pruning") or {}).get("target") or {}
    bounds = (
        (
            "schedule.steps",
            schedule.get("steps"),
            settings.max_schedule_steps,
            "max_schedule_steps",
        ),
        (
            "finetune.epochs",
            finetune.get("epochs"),
            settings.max_finetune_epochs,
            "max_finetune_epochs",
        ),
        (
            "finetune.batch_size",
            finetune.get("batch_size"),
            settings.max_batch_size,
            "max_batch_size",
        ),
        (
            "pruning.target.batch",  # a latency budget times the model at this batch
            target.get("batch"),
            settings.max_batch_size,
            "max_batch_size",
        ),
    )
    for what, value, limit, setting in bounds:
        if isinstance(value, int) and value > limit:
            raise over(what, value, limit, setting)
    seed = recipe.get("seed")
    if isinstance(seed, int) and not 0 <= seed <= MAX_SEED:
        raise LimitExceeded(f"seed must be between 0 and 2^63-1 (a 64-bit integer); got {seed}")


def check_sweep(n_sparsities: int, n_criteria: int, recipe: dict, settings: Settings) -> None:
    """A sweep's size, before anything is expanded or copied."""
    runs = n_sparsities * n_criteria
    if runs > settings.max_sweep_runs:
        what = f"the sweep's run count ({n_sparsities} sparsities x {n_criteria} criteria)"
        raise over(what, runs, settings.max_sweep_runs, "max_sweep_runs")
    size = len(json.dumps(recipe, separators=(",", ":")))
    if size > MAX_SWEEP_RECIPE_BYTES:
        raise LimitExceeded(
            f"the sweep's recipe is {size // 1024} KB of JSON; a recipe is at most "
            f"{MAX_SWEEP_RECIPE_BYTES // 1024} KB"
        )


def check_input_shape(shape: Sequence[int], settings: Settings) -> None:
    """One sample's shape: its number of values (e.g. 3x224x224 = 150528)."""
    values = math.prod(int(d) for d in shape)
    if values > settings.max_input_elements:
        shown = "x".join(str(int(d)) for d in shape)
        what = f"the number of values in one input of shape {shown}"
        raise over(what, values, settings.max_input_elements, "max_input_elements")


def check_id(value: int, what: str) -> None:
    """Database ids are signed 64-bit; anything bigger cannot exist (404 upstream)."""
    if not 0 <= value <= MAX_ID:
        raise Invalid(f"{what} must be between 0 and 2^63-1; got {value}")
