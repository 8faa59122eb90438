"""The model side of one pruning step: ThiNet re-fit, zeroing removed units, bias correction
and BatchNorm re-estimation.

``refit`` re-fits, by least squares on calibration data, every layer that lost input channels
(criterion ``reconstruction``) and notes the errors; ``zero_structure`` zeroes what physical
removal would delete; ``BiasCare`` folds the mean contribution of removed channels into the
next layer's bias on networks without BatchNorm (``pruning.bias_correction``);
``recalibrate`` re-estimates BatchNorm statistics after every prune step, masks included
(``pruning.bn_recalibrate``). :class:`app.pruning.context.RunContext` calls them from its
``prune`` step.

Example:
    >>> from torch import nn
    >>> has_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    True
    >>> has_bn(nn.Linear(2, 2))
    False
    >>> bn_samples_batches(128), bn_samples_batches(1000)
    (4, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, fx, nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning import measure as measure_mod
from app.pruning.criteria.context import calibration_batches
from app.pruning.criteria.reconstruction import refit_layers, refit_note
from app.pruning.criteria.sparsegpt import sparsegpt_update, update_note
from app.pruning.data import ArrayDataset
from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import Note, add_notes, info
from app.pruning.spec import Recipe
from app.pruning.structural.bias import Before, capture_means, correct_biases
from app.pruning.structural.bn import recalibrate_bn
from app.pruning.structural.remove import removal_blockers, zero_removed_units

BN_SAMPLES = 512  # training samples BatchNorm statistics are re-estimated on
CORRECTION_BATCH = 128  # calibration batch size of the bias correction's means
FROZEN_BN_NOTE = (
    "BatchNorm statistics were not re-estimated after pruning: the BatchNorm of a TorchScript "
    "or .pt2 model is compiled into its graph, where its statistics cannot be reset"
)


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
    progress: Callable[[int, int, str], None] | None = None,
) -> list[dict]:
    """``reconstruction`` (ThiNet): re-fit every layer that lost input channels by least
    squares on calibration data, before the masks zero them; noted with the errors.
    ``progress`` follows SparseGPT's layer-by-layer pass (``sparsegpt_update``)."""
    spec = recipe.pruning
    if spec.criterion == "sparsegpt":
        return sparsegpt_step(
            model, plan, data, recipe, step=step, device=device, notes=notes, progress=progress
        )
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


def bn_samples_batches(batch_size: int) -> int:
    """Batches of ``batch_size`` that make up :data:`BN_SAMPLES` (at least one)."""
    return max(1, math.ceil(BN_SAMPLES / max(int(batch_size), 1)))


def frozen_bn(model: nn.Module) -> bool:
    """A TorchScript or exported (.pt2) model with BatchNorm that is not an ``nn.BatchNorm``."""
    if isinstance(model, torch.jit.ScriptModule):
        return any(getattr(m, "original_name", "").startswith("BatchNorm") for m in model.modules())
    if isinstance(model, fx.GraphModule):
        return any(
            node.op == "call_function" and "batch_norm" in str(node.target)
            for node in model.graph.nodes
        )
    return False


def zero_structure(model: nn.Module, plan: MaskPlan, recipe: Recipe, *, example: Tensor) -> None:
    """Channel levels: zero what physical removal would delete (bias, BN affine, the next
    layers' input columns), when the model can be traced for removal."""
    if recipe.pruning.granularity not in CHANNEL_LEVELS:
        return
    if not removal_blockers(model, example):
        zero_removed_units(model, plan, example, granularity=recipe.pruning.granularity)


def recalibrate(
    model: nn.Module, data: ArrayDataset, recipe: Recipe, *, device: str, notes: list[Note]
) -> float | None:
    """Re-estimate BatchNorm statistics on :data:`BN_SAMPLES` training samples.

    Returns the test accuracy before the re-estimation (None when there was none: switched
    off, no BatchNorm, or BatchNorm frozen in a TorchScript/.pt2 model, which is noted).
    """
    if not recipe.pruning.bn_recalibrate:
        return None
    if not has_bn(model):
        if frozen_bn(model):
            add_notes(notes, [info(FROZEN_BN_NOTE)])
        return None
    was_training = model.training
    acc_before = float(measure_mod.evaluate(model, data, device=device)["accuracy"])
    batch_size = int(recipe.finetune.batch_size)
    loader = data.loader("train", batch_size, seed=recipe.seed)
    recalibrate_bn(model, loader, batches=bn_samples_batches(batch_size))
    model.train(was_training)
    return acc_before


def sparsegpt_step(
    model: nn.Module,
    plan: MaskPlan,
    data: ArrayDataset,
    recipe: Recipe,
    *,
    step: int,
    device: str,
    notes: list[Note],
    progress: Callable[[int, int, str], None] | None = None,
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
        progress=progress,
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
    notes: list[Note],
) -> float | None:
    """Zero what physical removal would delete, then re-estimate BN (accuracy before it)."""
    zero_structure(model, plan, recipe, example=example)
    return recalibrate(model, data, recipe, device=device, notes=notes)


class BiasCare:
    """Bias correction around one prune step of a network without BatchNorm.

    ``BiasCare.start`` (before the masks are applied) measures every layer's output mean on
    calibration batches; ``finish`` (after the removed units are zeroed) gives the layers that
    lost input channels their mean back through their bias and notes the accuracy before/after.
    """

    def __init__(self, before: Before, batches: list[Tensor], step: int) -> None:
        self.before, self.batches, self.step = before, batches, step

    @classmethod
    def start(
        cls, model: nn.Module, data: ArrayDataset, recipe: Recipe, *, step: int, device: str
    ) -> BiasCare | None:
        """None when the correction does not apply (switched off, element-like levels,
        BatchNorm in the model: its re-estimation re-centres the layers instead)."""
        spec = recipe.pruning
        if not spec.bias_correction or spec.granularity not in CHANNEL_LEVELS:
            return None
        if has_bn(model) or frozen_bn(model):
            return None
        batches = calibration_batches(
            data,
            spec.calibration_batches,
            device=device,
            batch_size=CORRECTION_BATCH,
            seed=int(recipe.seed),
        )
        xs = [x for x, _ in batches]
        return cls(capture_means(model, xs), xs, step)

    def finish(self, model: nn.Module, data: ArrayDataset, *, device: str) -> Note:
        """Correct the biases; the note says which layers and the accuracy it changed."""
        if not self.before.means:
            return info(
                f"bias correction skipped at step {self.step}: the model's Conv/Linear layers "
                "cannot be followed (TorchScript or .pt2 model)"
            )
        acc_before = float(measure_mod.evaluate(model, data, device=device)["accuracy"])
        done = correct_biases(model, self.before, self.batches)
        no_bias = f"; left alone without a bias: {', '.join(done.no_bias)}" if done.no_bias else ""
        if not done.layers and not done.no_bias:
            return info(
                f"bias correction skipped at step {self.step}: no layer fed by the removed "
                "units could be traced (masks only)"
            )
        acc_after = (
            float(measure_mod.evaluate(model, data, device=device)["accuracy"])
            if done.layers
            else acc_before
        )
        return info(
            f"bias correction at step {self.step}: {len(done.layers)} layers"
            f"{' (' + ', '.join(done.layers) + ')' if done.layers else ''}, accuracy right "
            f"after pruning {acc_before:.1%} -> {acc_after:.1%}{no_bias}"
        )
