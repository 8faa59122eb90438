"""The two sides of ``quality_vs_anchors.py``: the lab's engine with its default recipe, and the
anchors (``torch.nn.utils.prune`` for elements, Torch-Pruning for filters) with a plain loop.

Both sides prune the same layers (``app.pruning.layers.prunable_layers``; the model's output
layers are left whole at filter level on both sides), in the same number of steps, with the same
total epochs, to the same budget: element levels are the same share of those weights; at filter
level the lab's ``sparsity`` is a share of the weights while Torch-Pruning's ``pruning_ratio``
is a share of each layer's channels, so the ratio is bisected until Torch-Pruning keeps no more
non-zero parameters than the lab's result. The anchors take the best of SGD (lr 0.01, momentum
0.9) and Adam (lr 1e-3).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from app.modelio.ort_channels import runtime_timers
from app.pruning.counts import count_flops
from app.pruning.data import ArrayDataset
from app.pruning.layers import prunable_layers
from app.pruning.outputs import output_layers
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from benchmarks.anchor_models import OPTIMIZERS, evaluate, train_plain


@dataclass(frozen=True)
class Job:
    """One comparison: a granularity at a level, in ``steps`` steps and ``epochs`` in total."""

    granularity: str  # "element" or "filter"
    sparsity: float
    steps: int
    epochs: int

    @property
    def per_step(self) -> int:
        return max(1, self.epochs // self.steps)


@dataclass(frozen=True)
class Outcome:
    """A pruned model's test accuracy, MAC and non-zero-parameter reductions, and how."""

    accuracy: float
    macs_x: float
    params_x: float
    how: str = ""
    nonzero: int = 0


def nonzero(model: nn.Module) -> int:
    """Non-zero parameters."""
    return sum(int(p.detach().ne(0).sum()) for p in model.parameters())


def _reductions(dense: nn.Module, pruned: nn.Module, example: torch.Tensor) -> tuple[float, float]:
    macs = count_flops(dense, example)[0] / max(count_flops(pruned, example)[0], 1)
    return macs, nonzero(dense) / max(nonzero(pruned), 1)


def lab_recipe(
    job: Job, seed: int, extra: dict | None = None, finetune: dict | None = None
) -> Recipe:
    """The lab's default recipe: only granularity, criterion, sparsity, schedule and epochs set
    (plus any ``extra`` pruning and ``finetune`` fields, to compare a variant).

    Example:
        >>> r = lab_recipe(Job("filter", 0.5, 1, 5), 0)
        >>> r.schedule.kind, r.finetune.epochs, r.pruning.physical
        ('oneshot', 5, True)
    """
    pruning = {"granularity": job.granularity, "criterion": "l1", "sparsity": job.sparsity}
    if job.granularity == "filter":
        pruning["physical"] = True
    pruning.update(extra or {})
    kind = "iterative" if job.steps > 1 else "oneshot"
    return Recipe.from_dict(
        {
            "kind": "prune",
            "name": f"anchors {job.granularity} {job.sparsity}",
            "seed": seed,
            "pruning": pruning,
            "schedule": {"kind": kind, "steps": job.steps},
            "finetune": {"epochs": job.per_step, **(finetune or {})},
        }
    )


# the measured channel-multiple table a server keeps in its data dir (``pruning.round_to``'s
# default for physical filter runs), kept here for the benchmark's runs
SHAPE_CACHE = Path(tempfile.gettempdir()) / "prunelab-anchors-shapes"


def run_lab(
    model: nn.Module,
    data: ArrayDataset,
    job: Job,
    seed: int,
    *,
    rebuildable: bool = True,
    extra: dict | None = None,
    finetune: dict | None = None,
) -> Outcome:
    """The lab's engine in-process on ``model`` (changed in place) with ``lab_recipe``, with the
    defaults a server run gets (the measured ``round_to`` for physical filter runs)."""
    example = data.sample_batch(1)
    dense = copy.deepcopy(model)
    result = run_recipe(
        lab_recipe(job, seed, extra, finetune),
        model,
        data,
        latency=False,
        rebuildable=rebuildable,
        shape_cache=SHAPE_CACHE,
        shape_timers=runtime_timers(),
    )
    pruned = result.model
    macs, params = _reductions(dense, pruned, example)
    how = "masks" if result.masks_only else "physical"
    return Outcome(evaluate(pruned, data), macs, params, how, nonzero(pruned))


def _element_step(layers: list[nn.Module], kept: int) -> None:
    """One global L1 step of ``torch.nn.utils.prune`` down to ``kept`` weights in all."""
    alive = sum(
        int(m.weight_mask.sum()) if hasattr(m, "weight_mask") else m.weight.numel() for m in layers
    )
    prune.global_unstructured(
        [(m, "weight") for m in layers],
        pruning_method=prune.L1Unstructured,
        amount=max(alive - kept, 0),
    )


def _element_anchor(dense: nn.Module, data: ArrayDataset, job: Job, seed: int, opt: str):
    model = copy.deepcopy(dense)
    layers = list(prunable_layers(model).values())
    total = sum(m.weight.numel() for m in layers)
    for k in range(1, job.steps + 1):  # geometric in the kept fraction, as the lab's iterative
        kept = round(total * (1.0 - job.sparsity) ** (k / job.steps))
        _element_step(layers, kept)
        torch.manual_seed(seed)
        train_plain(model, data, opt, job.per_step, seed + k)
    for m in layers:
        prune.remove(m, "weight")
    return model


def _tp_pruner(model: nn.Module, example: torch.Tensor, ratio: float, steps: int):
    layers = prunable_layers(model)
    return tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=[layers[n] for n in output_layers(model, example)],
    )


def tp_ratio_for(dense: nn.Module, example: torch.Tensor, kept: int) -> float:
    """The smallest Torch-Pruning ratio that leaves at most ``kept`` non-zero parameters."""
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        model = copy.deepcopy(dense).eval()
        _tp_pruner(model, example, mid, 1).step()
        lo, hi = (mid, hi) if nonzero(model) > kept else (lo, mid)
    return hi


def _filter_anchor(dense: nn.Module, data: ArrayDataset, job: Job, seed: int, opt: str, ratio):
    model = copy.deepcopy(dense).eval()
    pruner = _tp_pruner(model, data.sample_batch(2), ratio, job.steps)
    for k in range(1, job.steps + 1):
        pruner.step()
        torch.manual_seed(seed)
        train_plain(model, data, opt, job.per_step, seed + k)
    return model


def run_anchor(dense: nn.Module, data: ArrayDataset, job: Job, seed: int, lab: Outcome) -> Outcome:
    """The anchor for ``job.granularity`` at ``lab``'s budget, best of SGD and Adam on test
    accuracy; ``how`` names the optimizer (and Torch-Pruning's ratio)."""
    example = data.sample_batch(1)
    best: Outcome | None = None
    ratio = None
    if job.granularity == "filter":
        ratio = tp_ratio_for(dense, data.sample_batch(2), lab.nonzero)
    for opt in OPTIMIZERS:
        if ratio is None:
            model, how = _element_anchor(dense, data, job, seed, opt), opt
        else:
            model, how = _filter_anchor(dense, data, job, seed, opt, ratio), f"{opt}, r={ratio:.2f}"
        acc = evaluate(model, data)
        if best is None or acc > best.accuracy:
            best = Outcome(acc, *_reductions(dense, model, example), how, nonzero(model))
    assert best is not None
    return best
