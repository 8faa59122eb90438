"""What a run starts from: its dataset, its model and its recipe.

A server run is handed what its rows say (``app.jobs.tasks`` reads them: nothing here touches
the database) and reads its files from the artifact store (a local copy is made when the store
is remote); ``prunelab run`` reads local files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.artifacts import ArtifactStore
from app.catalogue import BUILTIN_DATASETS
from app.pruning.notes import Note, info

if TYPE_CHECKING:
    from app.pruning.data import ArrayDataset

# Keys reference recipes carry for people and tests; the recipe loader does not know them.
ANNOTATION_KEYS = ("expected", "description", "comment", "pretrain")


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


def load_dataset(
    artifacts: ArtifactStore, dataset_id: str, storage_key: str | None, tmp: Path
) -> ArrayDataset:
    """The run's dataset: built-in ``digits``, or the upload stored under ``storage_key``
    (None when its row is gone)."""
    from app.modelio import dataset_files

    if dataset_id in BUILTIN_DATASETS:
        return dataset_files.load_builtin(dataset_id)
    if not storage_key:
        raise ValueError(f"dataset_id {dataset_id!r} does not exist (any more)")
    key = storage_key
    if not artifacts.remote and artifacts.local_path(key).is_dir():
        key = f"{key}/dataset.npz"  # save_dataset writes a folder holding dataset.npz
    return dataset_files.load_saved_dataset(fetch(artifacts, key, tmp))


@dataclass(frozen=True)
class StoredModel:
    """What a run needs of its model's row to load the file."""

    storage_key: str
    format: str
    arch: str | None
    input_shape: list[int] | None
    num_classes: int | None
    input_dtype: str | None = None


@dataclass
class RunModel:
    """The module a server run prunes and what the run needs to know about it.

    ``input_dtype`` is the model's (``float32`` or ``int64`` token ids; the result model keeps
    it); ``notes`` say what fine-tuning cannot change (BatchNorm frozen in a trace).
    """

    module: Any
    rebuildable: bool
    arch: str | None
    input_dtype: str = "float32"
    notes: list[Note] = field(default_factory=list)


def load_model_for(
    artifacts: ArtifactStore,
    stored: StoredModel | None,
    arch: str | None,
    data: ArrayDataset,
    tmp: Path,
) -> RunModel:
    """The run's stored model (module, rebuildable, arch, input dtype, notes), or a fresh zoo model for
    ``arch`` when the run has none (a train run)."""
    from app import zoo

    if stored is None:
        if not arch:
            raise ValueError("model_id is missing: give a model, or an arch for a train run")
        module = zoo.build(arch, num_classes=data.n_classes, input_shape=data.input_shape)
        return RunModel(module, True, arch)
    from app.modelio.load import load_model

    shape = tuple(stored.input_shape) if stored.input_shape else data.input_shape
    if len(shape) == len(data.input_shape) + 1:
        shape = shape[1:]
    # the model's own input dtype: an int64 (token ids) module rounds float batches to ids
    loaded = load_model(
        fetch(artifacts, stored.storage_key, tmp),
        stored.format,
        arch=stored.arch,
        num_classes=stored.num_classes or data.n_classes,
        input_shape=shape,
        input_dtype=stored.input_dtype,
    )
    return RunModel(
        loaded.module,
        bool(loaded.rebuildable),
        stored.arch or loaded.arch,
        input_dtype=loaded.input_dtype,
        notes=[info(n) for n in loaded.train_notes],
    )


def build_recipe(body: dict) -> Any:
    """The engine's ``Recipe`` of a stored run recipe (``arch`` is the envelope's, not its)."""
    from app.pruning.spec import Recipe

    return Recipe.from_dict({k: v for k, v in body.items() if k != "arch"})


def read_recipe_dict(path: str | Path, *, annotations: bool = False) -> dict:
    """A recipe file (JSON, or YAML by its ``.yaml``/``.yml`` suffix) as a dict, minus
    annotations (``expected``, ``pretrain`` ...) unless ``annotations``.

    Raises:
        ValueError: the file is not a JSON/YAML object.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        body = yaml.safe_load(text)
    else:
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"recipe {path.name} is not valid JSON: {exc.msg} (line {exc.lineno})"
            ) from None
    if not isinstance(body, dict):
        raise ValueError(f"recipe {path.name} must hold one JSON/YAML object")
    return {k: v for k, v in body.items() if annotations or k not in ANNOTATION_KEYS}


def load_recipe(path: str | Path, model_format: str | None = None) -> Any:
    """Read and validate a recipe file into a ``spec.Recipe`` (the name defaults to the file's;
    for a model in ``model_format`` "onnx", ``pruning.deploy_runtime`` defaults to ONNX Runtime,
    as on the server: :func:`app.pruning.spec.runtime_for_source`)."""
    from app.pruning.spec import Recipe, runtime_for_source

    body = read_recipe_dict(path)
    body.setdefault("name", Path(path).stem)
    recipe = Recipe.from_dict(runtime_for_source(body, model_format))
    if recipe.pruning.allocation_from is not None:
        raise ValueError(
            "pruning.allocation_from names a run of the server; prunelab run takes the "
            "allocation of a sensitivity run's summary.json as pruning.overrides"
        )
    return recipe


def model_format(model_path: str | Path | None) -> str | None:
    """The model file's format, or None (no file, or one the loader will refuse with its own
    message)."""
    from app.modelio.detect import detect_format

    if model_path is None or not Path(model_path).is_file():
        return None
    try:
        return detect_format(Path(model_path))
    except Exception:  # noqa: BLE001 - load_model_file names what is wrong with the file
        return None


def load_data_file(data: str, *, seq_len: int | None = None) -> ArrayDataset:
    """``digits`` (built in) or an ``.npz`` with ``x``, ``y`` and optional ``x_test``/``y_test``
    (also a ``.csv`` or image ``.zip``, read with the CLI's default limits, or a ``.txt``/``.jsonl``
    corpus, byte-level in sequences of ``seq_len``, 64 by default)."""
    from app.modelio.dataset_files import load_builtin
    from app.modelio.dataset_formats import load_dataset_file
    from app.modelio.text_corpus import is_text_file, load_text_file

    if data in BUILTIN_DATASETS:
        return load_builtin(data)
    path = Path(data)
    if not path.exists():
        raise ValueError(f"--data {data!r} is neither a built-in dataset nor an existing file")
    if is_text_file(path.name):  # byte-level (upload one to choose the tokenizer)
        return load_text_file(
            path,
            filename=path.name,
            name=path.stem,
            tokenizer="byte",
            seq_len=seq_len or 64,
            max_vocab=256,
        ).dataset
    return load_dataset_file(path, name=path.stem)


def load_model_file(
    model_path: str | Path | None,
    *,
    arch: str | None,
    input_shape: tuple[int, ...] | None,
    num_classes: int,
    fmt: str | None = None,
) -> tuple[Any, bool, list[str], str]:
    """``(module, rebuildable, notes, input dtype)`` from a model file (in ``fmt`` when already
    detected), or a fresh ``arch`` when no file."""
    from app import zoo

    if model_path is None:
        if arch is None:
            raise ValueError("give --model FILE, or --arch NAME to start from an untrained model")
        module = zoo.build(arch, num_classes=num_classes, input_shape=input_shape)
        return module, True, [], "float32"
    from app.modelio.detect import detect_format
    from app.modelio.load import load_model

    path = Path(model_path)
    fmt = fmt or detect_format(path)
    loaded = load_model(path, fmt, arch=arch, num_classes=num_classes, input_shape=input_shape)
    return loaded.module, bool(loaded.rebuildable), list(loaded.notes), loaded.input_dtype


def as_fed(data: ArrayDataset, input_dtype: str) -> ArrayDataset:
    """The dataset as the model takes it: integer inputs (token ids) stay int64 for an
    ``int64`` model; a ``float32`` model gets them as float32 (an 8-bit image, say)."""
    return data if input_dtype == "int64" else data.with_float_inputs()
