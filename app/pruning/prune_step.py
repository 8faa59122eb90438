"""The model side of one pruning step: the ThiNet re-fit and settling a channel-level structure.

``refit`` re-fits, by least squares on calibration data, every layer that lost input channels
(criterion ``reconstruction``) and notes the errors; ``settle_structure`` zeroes what physical
removal would delete and re-estimates BatchNorm statistics. :class:`app.pruning.context.RunContext`
calls both from its ``prune`` step.

Example:
    >>> from torch import nn
    >>> has_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    True
    >>> has_bn(nn.Linear(2, 2))
    False
"""

from __future__ import annotations

from torch import Tensor, nn

from app.pruning import measure as measure_mod
from app.pruning.criteria.reconstruction import refit_layers, refit_note
from app.pruning.criteria.sparsegpt import sparsegpt_update, update_note
from app.pruning.data import ArrayDataset
from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import Note, info
from app.pruning.spec import Recipe
from app.pruning.structural.bn import recalibrate_bn
from app.pruning.structural.remove import removal_blockers, zero_removed_units


def has_bn(model: nn.Module) -> bool:
    """Whether the model has any BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def refit(
    model: nn.Module,
    plan: MaskPlan,
    data: ArrayDataset,
    recipe: Recipe,
    *,
    step: int,
    device: str,
    notes: list[Note],
) -> list[dict]:
    """``reconstruction`` (ThiNet): re-fit every layer that lost input channels by least
    squares on calibration data, before the masks zero them; noted with the errors."""
    spec = recipe.pruning
    if spec.criterion == "sparsegpt":
        return sparsegpt_step(model, plan, data, recipe, step=step, device=device, notes=notes)
    if spec.criterion != "reconstruction" or not plan.channels:
        return []
    errors = refit_layers(
        model,
        plan.channels,
        data,
        batches=spec.calibration_batches,
        device=device,
        seed=int(recipe.seed),
    )
    if errors:
        notes.append(info(refit_note(step, errors)))
    return [e.as_dict() for e in errors]


def sparsegpt_step(
    model: nn.Module,
    plan: MaskPlan,
    data: ArrayDataset,
    recipe: Recipe,
    *,
    step: int,
    device: str,
    notes: list[Note],
) -> list[dict]:
    """``sparsegpt``: prune each layer with SparseGPT's weight update before the masks are
    applied (``plan.masks`` become the masks it chose, with the same counts); noted with the
    output errors masked only -> updated."""
    spec = recipe.pruning
    errors = sparsegpt_update(
        model,
        plan.masks,
        data,
        nm=spec.nm if plan.granularity == "nm" else None,
        batches=spec.calibration_batches,
        device=device,
        seed=int(recipe.seed),
    )
    if errors:
        notes.append(info(update_note(step, errors)))
    return [e.as_dict() for e in errors]


def settle_structure(
    model: nn.Module,
    plan: MaskPlan,
    data: ArrayDataset,
    recipe: Recipe,
    *,
    example: Tensor,
    device: str,
) -> float | None:
    """Zero what physical removal would delete, then re-estimate BN.

    Returns the accuracy before the BN recalibration (None when there was none).
    """
    if not removal_blockers(model, example):
        zero_removed_units(model, plan, example, granularity=recipe.pruning.granularity)
    if not has_bn(model):
        return None
    was_training = model.training
    acc_before = float(measure_mod.evaluate(model, data, device=device)["accuracy"])
    model.train(was_training)
    loader = data.loader("train", int(recipe.finetune.batch_size), seed=recipe.seed)
    recalibrate_bn(model, loader, batches=20)
    model.train(was_training)
    return acc_before
