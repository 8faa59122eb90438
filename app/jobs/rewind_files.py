"""A train run's rewind points as files: ``init.safetensors`` / ``rewind.safetensors``.

:func:`write_rewind` writes the points a ``train`` run kept (``RunResult.rewind``) as artifact
rows; :func:`rewind_state_for` gives a later ``retrain`` run (``retrain_init: rewind``) the
weights its schedule asks for, from the train run that produced the model it prunes.
``prunelab run`` reads them from the folder of ``--model`` (:func:`read_rewind_folder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Session

from app import store
from app.jobs.artifacts import ArtifactStore
from app.jobs.inputs import fetch
from app.models import ModelRecord
from app.pruning.rewind import REWIND_FILES, choose_rewind
from app.pruning.spec import Recipe

if TYPE_CHECKING:
    from torch import Tensor


def write_rewind(points: dict[str, dict[str, Tensor]], out: Path) -> list[dict]:
    """Save each rewind point as safetensors in ``out``; one artifact row (kind ``rewind``) each."""
    from safetensors.torch import save_file

    from app.modelio.export import file_sha256

    rows = []
    for point, state in points.items():
        path = out / REWIND_FILES[point]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        rows.append(
            {
                "name": path.name,
                "kind": "rewind",
                "size_bytes": path.stat().st_size,
                "verified": True,
                "max_abs_diff": 0.0,
                "sha256": file_sha256(path),
            }
        )
    return rows


def _load(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def read_rewind_folder(recipe: Recipe, folder: Path | None) -> dict[str, Tensor] | None:
    """The rewind weights a recipe asks for, from the rewind files found in ``folder`` (none
    without a folder: an untrained ``--arch`` model).

    Raises:
        ValueError: the recipe rewinds and the folder lacks the point it asks for.
    """
    found = {} if folder is None else {p: folder / n for p, n in REWIND_FILES.items()}
    available = {p: path for p, path in found.items() if path.is_file()}
    point = choose_rewind(recipe.schedule, available)
    return None if point is None else _load(available[point])


def available_points(session: Session, model: ModelRecord | None) -> dict[str, str]:
    """Rewind point -> storage key, from the run that produced ``model`` (empty for uploads)."""
    if model is None or model.source_run_id is None:
        return {}
    names = {
        a.name: a.storage_key for a in store.list_artifacts(session, run_id=model.source_run_id)
    }
    return {p: names[n] for p, n in REWIND_FILES.items() if n in names}


def rewind_state_for(
    session: Session, artifacts: ArtifactStore, model_id: int | None, recipe: Recipe, tmp: Path
) -> dict[str, Tensor] | None:
    """The weights a run's ``retrain_init: rewind`` goes back to, or None when it needs none.

    Raises:
        ValueError: the schedule rewinds and the model has no such weights.
    """
    model = None if model_id is None else session.get(ModelRecord, model_id)
    keys = available_points(session, model)
    point = choose_rewind(recipe.schedule, keys)
    return None if point is None else _load(fetch(artifacts, keys[point], tmp))
