"""A train run's rewind points as files: ``init.safetensors`` / ``rewind.safetensors``.

:func:`write_rewind` writes the points a ``train`` run kept (``RunResult.rewind``) as artifact
rows (``export.write_run_files`` calls it for the worker and ``prunelab run`` alike);
:func:`rewind_state_for` gives a later ``retrain`` run (``retrain_init: rewind``) of the worker
the weights its schedule asks for, from the stored files of the train run that produced the
model it prunes (``store.rewind_points``, looked up by ``jobs.tasks``). ``prunelab run`` reads
them from the folder of ``--model`` (:func:`read_rewind_folder`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.artifacts import ArtifactStore
from app.catalogue import REWIND_FILES
from app.pruning.spec import Recipe
from app.pruning.targets import choose_rewind
from app.runs.inputs import fetch

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


def rewind_state_for(
    artifacts: ArtifactStore, keys: dict[str, str], recipe: Recipe, tmp: Path
) -> dict[str, Tensor] | None:
    """The weights a server run's ``retrain_init: rewind`` goes back to, or None when it needs
    none; ``keys`` maps the model's rewind points to storage keys (``store.rewind_points``).

    Raises:
        ValueError: the schedule rewinds and the model has no such weights.
    """
    point = choose_rewind(recipe.schedule, keys)
    return None if point is None else _load(fetch(artifacts, keys[point], tmp))
