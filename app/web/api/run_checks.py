"""What the runs and sweeps routes check before they queue anything: the recipe against the
model and dataset rows (no model is loaded) and the per-user queue cap. Who may create or
change a run is :mod:`app.web.deps`'s (``may_create``, ``OwnedRunDep``).
"""

from __future__ import annotations

import math

from fastapi import HTTPException, Request
from sqlmodel import Session

from app import catalogue, store
from app.config import Settings
from app.limits import MAX_ID, check_recipe
from app.models import ModelRecord, User
from app.web.api.run_sources import check_sources
from app.web.dataset_fit import dataset_mismatch


# ---------------------------------------------------------------- validation
def invalid(message: str) -> HTTPException:
    return HTTPException(422, message)


def _dataset_meta(session: Session, dataset_id: str) -> dict:
    if (builtin := catalogue.DATASETS.get(dataset_id)) is not None:
        return {"input_shape": list(builtin.input_shape), "n_classes": builtin.n_classes}
    record = store.get_dataset(session, dataset_id=dataset_id)
    if record is None:
        raise invalid(f"dataset_id {dataset_id!r} does not exist; use 'digits' or upload one")
    return {"input_shape": record.input_shape, "n_classes": record.n_classes, "task": record.task}


def _check_budget(model: ModelRecord, target: dict | None) -> None:
    """A parameter budget the model already meets, or that its unprunable layers exceed."""
    if not target or "params" not in target or not model.n_params:
        return
    asked = target["params"]
    if asked >= model.n_params:
        raise invalid(
            f"pruning.target.params {asked:,} is not below model_id {model.id}'s "
            f"{model.n_params:,} parameters: there is nothing to prune"
        )
    rows = [r for r in model.layers or [] if r.get("prunable")]
    prunable = sum(int(r.get("n_params") or 0) for r in rows)
    one_unit = sum(math.prod((r.get("shape") or [0, 0])[1:]) for r in rows)  # one kept unit each
    floor = model.n_params - prunable + one_unit if model.layers else 0
    if asked <= floor:
        raise invalid(
            f"pruning.target.params {asked:,} cannot be reached: model_id {model.id} keeps at "
            f"least {floor:,} parameters (its unprunable layers and one unit per layer)"
        )


def _check_model(model: ModelRecord, data: dict, pruning: dict) -> None:
    if (why := dataset_mismatch(model, data)) is not None:
        raise invalid(why)
    _check_budget(model, pruning.get("target"))
    if pruning.get("granularity") == "layer":
        _check_blocks(model, pruning)
    if pruning.get("granularity") == "head":
        _check_heads(model, pruning)
    names = {layer.get("name") for layer in model.layers or []}
    if not names:
        return
    kinds = {str(layer.get("kind", "")) for layer in model.layers or []}
    criterion = pruning.get("criterion")
    if criterion in catalogue.NEEDS_BN and not any(k.startswith("BatchNorm") for k in kinds):
        raise invalid(
            f"pruning.criterion {criterion!r} needs BatchNorm layers and model_id "
            f"{model.id} has none; try 'l1' or 'fpgm'"
        )
    asked = [("exclude", n) for n in pruning.get("exclude") or []]
    asked += [("overrides", n) for n in pruning.get("overrides") or {}]
    for field_name, name in asked:
        if name not in names:
            known = ", ".join(sorted(n for n in names if n)[:20])
            raise invalid(
                f"pruning.{field_name} names layer {name!r}, which model_id "
                f"{model.id} does not have; its layers: {known}"
            )


def _check_blocks(model: ModelRecord, pruning: dict) -> None:
    """Granularity 'layer' needs a removable residual block (from the model's preflight)."""
    blocks = (model.preflight or {}).get("residual_blocks")
    if blocks is None:
        return  # a record from before preflight listed blocks: the worker checks
    excluded = set(pruning.get("exclude") or [])
    if not any(not set(block) & excluded for block in blocks):
        where = " outside pruning.exclude" if blocks else ""
        raise invalid(
            "pruning.granularity 'layer' removes residual blocks with an identity shortcut "
            f"(x + f(x)); model_id {model.id} has none that can be removed{where} (try 'filter')"
        )


def _check_heads(model: ModelRecord, pruning: dict) -> None:
    """Granularity 'head' needs attention layers with q/k/v/output Linear layers."""
    found = (model.preflight or {}).get("attention_heads")
    if found is None:
        return  # a record from before preflight listed them: the worker checks
    excluded = set(pruning.get("exclude") or [])
    if not any(not set(layers) & excluded for layers in found):
        raise invalid(
            "pruning.granularity 'head' removes attention heads of q/k/v/output Linear layers; "
            f"model_id {model.id} has none (TorchScript, .pt2 and ONNX uploads lose that "
            "structure: try 'filter')"
        )


def validate_body(session: Session, body: dict, settings: Settings) -> tuple[dict, int | None, str]:
    """The stored recipe, model id and dataset id of a valid body; 422 with a sentence if not
    (also for a number over one of this server's limits, naming the setting)."""
    from app.pruning.spec import Recipe, runtime_for_source  # torch-free

    envelope = {"model_id", "dataset_id", "arch"}
    try:
        # a JSON null section means "not given" (Recipe.from_dict would keep the None)
        given = {k: v for k, v in body.items() if k not in envelope and v is not None}
        recipe = Recipe.from_dict(given)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    stored = recipe.to_dict()
    check_recipe(stored, settings)
    model_id, dataset_id = body.get("model_id"), str(body.get("dataset_id") or "digits")
    data = _dataset_meta(session, dataset_id)
    if model_id is None:
        arch = body.get("arch")
        if recipe.kind != "train" or not arch:
            raise invalid("model_id is required (a train run may give arch instead)")
        stored["arch"] = str(arch)
        return stored, None, dataset_id
    model = store.get_model(session, model_id=model_id) if 0 <= model_id <= MAX_ID else None
    if model is None:
        raise invalid(f"model_id {model_id} does not exist")
    shaped = runtime_for_source(given, model.format)  # an ONNX upload deploys in ONNX Runtime
    if shaped is not given:
        recipe = Recipe.from_dict(shaped)
        stored = recipe.to_dict()
    _check_model(model, data, stored["pruning"])
    try:
        stored = check_sources(session, recipe, model, stored)
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return stored, model_id, dataset_id


# ---------------------------------------------------------------- queueing
def queue_room(session: Session, settings: Settings, user: User, adding: int) -> None:
    queued = store.count_queued(session, owner_id=user.id)
    if queued + adding > settings.max_queued_per_user:
        raise HTTPException(
            429,
            f"you have {queued} queued runs and this adds {adding}, over "
            f"the limit of {settings.max_queued_per_user}; wait for some "
            "to start or cancel them",
        )


def wake(request: Request) -> None:
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.wake()
