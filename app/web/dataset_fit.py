"""Whether a dataset can feed a model, from their rows alone (no model is loaded): the runs
route refuses a mismatch with this sentence, the new-run form greys the dataset out with it."""

from __future__ import annotations

from app.models import ModelRecord


def _shape(shape: list[int] | None, like: list[int]) -> list[int] | None:
    if shape and len(shape) == len(like) + 1:
        return list(shape[1:])  # a leading batch dimension
    return list(shape) if shape else None


def dataset_mismatch(model: ModelRecord, data: dict) -> str | None:
    """Why a dataset (``{"input_shape", "n_classes", "task"}``) cannot feed ``model``, or None;
    the new-run form greys such datasets out with this sentence."""
    want = data.get("input_shape")
    have = _shape(model.input_shape, want or [])
    if want and have and list(want) != have:
        return (
            f"model_id {model.id} takes inputs of shape {have} but dataset_id has "
            f"samples of shape {list(want)}"
        )
    if data.get("task") == "language_model":
        if model.num_classes and data.get("n_classes") and model.num_classes < data["n_classes"]:
            return (
                f"model_id {model.id} has a vocabulary of {model.num_classes} tokens but the "
                f"dataset's tokenizer uses {data['n_classes']}"
            )
    elif model.num_classes and data.get("n_classes") and model.num_classes != data["n_classes"]:
        return (
            f"model_id {model.id} predicts {model.num_classes} classes but the "
            f"dataset has {data['n_classes']}"
        )
    return None
