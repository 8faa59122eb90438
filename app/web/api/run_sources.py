"""Checks at run creation of what a recipe takes from earlier runs (no torch, no model loaded).

* ``retrain_init: rewind`` needs the rewind weights a train run stored for the model
  (``store.rewind_points``, ``targets.choose_rewind``); a model without them (an upload) is
  refused with a sentence saying what to use instead.
* ``pruning.allocation_from: RUN_ID`` names a finished sensitivity run of the same model
  (every signed-in user may read every run); its stored per-layer allocation becomes the
  recipe's ``pruning.overrides`` (overrides given in the recipe win; excluded layers stay out),
  so the stored recipe says exactly what the run prunes.
"""

from __future__ import annotations

from sqlmodel import Session

from app import store
from app.models import ModelRecord
from app.pruning.spec import Recipe
from app.pruning.targets import choose_rewind


def check_sources(session: Session, recipe: Recipe, model: ModelRecord, stored: dict) -> dict:
    """``stored`` (the recipe as stored) with every earlier run the recipe relies on resolved.

    Raises:
        ValueError: one sentence saying what is missing and what to use instead.
    """
    choose_rewind(recipe.schedule, store.rewind_points(session, model_id=model.id))
    source = recipe.pruning.allocation_from
    if source is None:
        return stored
    allocation = _allocation(session, source, model)
    pruning = stored["pruning"]
    kept = {k: v for k, v in allocation.items() if k not in set(pruning["exclude"])}
    pruning["overrides"] = {**kept, **pruning["overrides"]}
    return stored


def _allocation(session: Session, run_id: int, model: ModelRecord) -> dict[str, float]:
    run = store.get_run(session, run_id=run_id)
    where = f"pruning.allocation_from: run {run_id}"
    if run is None:
        raise ValueError(f"{where} does not exist; name a finished sensitivity run")
    if run.kind != "sensitivity":
        raise ValueError(f"{where} is a {run.kind} run; name a finished sensitivity run")
    if run.status != "succeeded":
        raise ValueError(f"{where} has not succeeded (it is {run.status}); wait for it to finish")
    if run.model_id != model.id:
        raise ValueError(
            f"{where} swept model {run.model_id}, not model_id {model.id}; sweep this model first"
        )
    if not run.allocation:
        raise ValueError(
            f"{where} has no allocation: run the sweep with a sensitivity.target to get one"
        )
    return {str(k): float(v) for k, v in run.allocation.items()}
