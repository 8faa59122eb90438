"""Checks at run creation of what a recipe takes from earlier runs (no torch, no model loaded).

``retrain_init: rewind`` needs the rewind weights a train run stored for the model
(``app.pruning.rewind``); a model without them (an upload) is refused with a sentence
saying what to use instead.
"""

from __future__ import annotations

from sqlmodel import Session

from app.jobs.rewind_files import available_points
from app.models import ModelRecord
from app.pruning.rewind import choose_rewind
from app.pruning.spec import Recipe


def check_sources(session: Session, recipe: Recipe, model: ModelRecord) -> None:
    """Check every earlier run the recipe relies on.

    Raises:
        ValueError: one sentence saying what is missing and what to use instead.
    """
    choose_rewind(recipe.schedule, available_points(session, model))
