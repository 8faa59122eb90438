"""What a run attempt starts from: its dataset, its model and its recipe (part of ``tasks``).

The rows are read in the worker's session; the files come from the artifact store (a local
copy is made when the store is remote).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import Session

from app.jobs.artifacts import ArtifactStore
from app.models import DatasetRecord, ModelRecord, Run


def fetch(artifacts: ArtifactStore, key: str, tmp: Path) -> Path:
    """A local copy of a stored file (absolute paths are used as they are)."""
    if Path(key).is_absolute():
        return Path(key)
    if not artifacts.remote:
        return artifacts.local_path(key)
    dest = tmp / Path(key).name
    if not artifacts.get_file(key, dest):
        raise ValueError(f"stored file {key!r} is missing from the artifact store")
    return dest


def load_dataset(session: Session, artifacts: ArtifactStore, dataset_id: str, tmp: Path) -> Any:
    """The run's dataset as an ``ArrayDataset`` (built-in ``digits`` or an uploaded one)."""
    from app import datasets

    if dataset_id in datasets.BUILTIN_DATASETS:
        return datasets.load_builtin(dataset_id)
    record = session.get(DatasetRecord, dataset_id)
    if record is None or not record.storage_key:
        raise ValueError(f"dataset_id {dataset_id!r} does not exist (any more)")
    key = record.storage_key
    if not artifacts.remote and artifacts.local_path(key).is_dir():
        key = f"{key}/dataset.npz"  # save_dataset writes a folder holding dataset.npz
    return datasets.load_saved_dataset(fetch(artifacts, key, tmp))


def load_model_for(
    session: Session, artifacts: ArtifactStore, run: Run, data: Any, tmp: Path
) -> tuple[Any, bool, str | None, list[str]]:
    """``(module, rebuildable, arch, notes)`` of the run's model, or a fresh zoo model for
    ``arch``; the notes say what fine-tuning cannot change (BatchNorm frozen in a trace)."""
    from app import zoo

    arch = (run.recipe or {}).get("arch")
    if run.model_id is None:
        if not arch:
            raise ValueError("model_id is missing: give a model, or an arch for a train run")
        module = zoo.build(arch, num_classes=data.n_classes, input_shape=data.input_shape)
        return module, True, arch, []
    from app.modelio.load import load_model

    record = session.get(ModelRecord, run.model_id)
    if record is None:
        raise ValueError(f"model_id {run.model_id} does not exist (any more)")
    shape = tuple(record.input_shape) if record.input_shape else data.input_shape
    if len(shape) == len(data.input_shape) + 1:
        shape = shape[1:]
    # the model's own input dtype: an int64 (token ids) module rounds float batches to ids
    loaded = load_model(
        fetch(artifacts, record.storage_key, tmp),
        record.format,
        arch=record.arch,
        num_classes=record.num_classes or data.n_classes,
        input_shape=shape,
        input_dtype=record.input_dtype,
    )
    return loaded.module, bool(loaded.rebuildable), record.arch or loaded.arch, loaded.train_notes


def build_recipe(body: dict) -> Any:
    """The engine's ``Recipe`` of a stored run recipe (``arch`` is the envelope's, not its)."""
    from app.pruning.spec import Recipe

    return Recipe.from_dict({k: v for k, v in body.items() if k != "arch"})
