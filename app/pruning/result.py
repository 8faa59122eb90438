"""What a run hands back: :class:`RunResult`, with the final model physically smaller or masked.

Channel levels (filter, channel) are physically removed at the end when asked
(``pruning.physical``) and the model can be rebuilt; everything else stays masked, and the
notes say so (``app.catalogue.MASKS_ONLY_NOTE``) so that nobody expects a speed-up that cannot
come. ``physical`` and ``masks_only`` say the same as typed fields.

Example:
    >>> from torch import nn
    >>> result = RunResult(nn.Linear(2, 2), {"accuracy": 0.9}, {"accuracy": 0.8}, masks_only=True)
    >>> summary = result.summary()
    >>> summary["physical"], summary["masks_only"], summary["final"]
    (False, True, {'accuracy': 0.8})
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from app.catalogue import MASKS_ONLY_NOTE
from app.pruning.checks import chance_note, sparsity_notes, uniform_note
from app.pruning.context import RunContext
from app.pruning.histograms import histograms, prunable_weights
from app.pruning.layers import prunable_layers
from app.pruning.measure import batch_of
from app.pruning.notes import Note, add_notes, info, warning
from app.pruning.pruning_spec import PruningSpec
from app.pruning.speedup import compare_latency, masks_only_latency, speed_note
from app.pruning.structural.blocks import remove_blocks
from app.pruning.structural.remove import physical_prune, removal_blockers
from app.pruning.structural.transformer import mlp_layers, shrink
from app.pruning.task import METRIC


@dataclass
class RunResult:
    """Everything a run produced; JSON-able except ``model`` and ``masks``.

    ``physical``: the model handed back is physically smaller. ``masks_only``: pruned weights
    stay in place as zeros (no speed-up expected); both False for runs that pruned nothing.
    ``rewind``: a train run's earlier weights by rewind point (``catalogue.REWIND_FILES``).
    ``original``: the run's starting weights in the original shapes (when latency was timed).
    ``task``: the dataset's (``task.py``); ``summary()`` names its ``metric`` too.
    """

    model: nn.Module
    baseline: dict
    final: dict
    steps: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    histograms: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    physical: bool = False
    masks_only: bool = False
    masks: dict[str, torch.Tensor] | None = None
    allocation: dict[str, float] | None = None
    rewind: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    original: nn.Module | None = None  # the unpruned model, for timing exports against
    task: str = "classification"  # or "language_model": perplexity is the headline metric
    batch_size: int | None = None  # the fine-tuning batch size used ("auto" resolved)

    def summary(self) -> dict:
        """The JSON-able part: measurements, records, notes and the typed flags."""
        return {
            "baseline": self.baseline,
            "final": self.final,
            "steps": self.steps,
            "layers": self.layers,
            "curve": self.curve,
            "sensitivity": self.sensitivity,
            "notes": self.notes,
            "task": self.task,
            "metric": METRIC[self.task],
            "physical": self.physical,
            "masks_only": self.masks_only,
            "allocation": self.allocation,
            "batch_size": self.batch_size,
        }


def max_abs_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """The largest absolute difference of two models' outputs on ``x`` (both in eval mode)."""
    modes = (a.training, b.training)
    a.eval(), b.eval()
    with torch.no_grad():
        diff = float((a(x) - b(x)).abs().max())
    a.train(modes[0]), b.train(modes[1])
    return diff


def final_model(ctx: RunContext, rebuildable: bool) -> tuple[nn.Module, bool]:
    """The model to hand back: physically smaller when asked and possible, else the masked one."""
    spec = ctx.recipe.pruning
    if ctx.masks is None or ctx.plan is None:
        return ctx.model, False
    if spec.granularity == "layer" and spec.physical:
        return _without_blocks(ctx, rebuildable)
    if spec.physical and (spec.granularity == "head" or _has_mlps(ctx.model, spec.granularity)):
        return _transformer_cut(ctx, rebuildable)
    if spec.granularity == "head":
        ctx.notes.append(info(f"{MASKS_ONLY_NOTE} (pruning.physical is false)"))
        return ctx.model, False
    if not ctx.structured:
        text = MASKS_ONLY_NOTE
        if spec.granularity == "group" and spec.physical:
            text += (
                " (granularity 'group' is masks only: the smaller dense GEMM with fewer columns "
                "is not built, so pruning.physical has no effect)"
            )
        ctx.notes.append(info(text) if text == MASKS_ONLY_NOTE else warning(text))
        return ctx.model, False
    if not spec.physical:
        ctx.notes.append(info(f"{MASKS_ONLY_NOTE} (pruning.physical is false)"))
        return ctx.model, False
    blockers = [] if rebuildable else ["this model format cannot be rebuilt (TorchScript, .pt2)"]
    blockers = blockers or removal_blockers(ctx.model, ctx.example)
    if blockers:
        text = f"{MASKS_ONLY_NOTE}: physical removal is not possible, {blockers[0]}"
        ctx.notes.append(warning(text))
        return ctx.model, False
    removal: list[str] = []
    small = physical_prune(
        ctx.model, ctx.plan, ctx.example, granularity=spec.granularity, notes=removal
    )
    add_notes(ctx.notes, [warning(f"physical removal {n}") for n in removal])
    diff = max_abs_diff(ctx.model, small, ctx.example)
    ctx.notes.append(
        info(f"physically removed {spec.granularity}s: max output difference {diff:.2e}")
    )
    return small, True


def original_model(ctx: RunContext, like: nn.Module) -> nn.Module:
    """The run's starting weights in ``like``'s (pre-removal) shapes."""
    dense = copy.deepcopy(like)
    if ctx.initial_state is not None:
        dense.load_state_dict(ctx.initial_state)
    return dense.eval()


def deploy_speedup(
    ctx: RunContext, dense: nn.Module, model: nn.Module, physical: bool, flops: float = 0.0
) -> dict:
    """The original vs the model handed back in PyTorch, timed interleaved.

    Masks only: 1.0x, nothing timed. A measurably slower pruned model, or one whose speed-up is
    under half its MAC reduction (``flops`` per sample now vs the baseline's), adds a note.
    """
    batch = int(ctx.baseline.get("batch") or 256)
    if not physical:
        return masks_only_latency(batch)
    x_one = ctx.data.sample_batch(1)
    comparison = compare_latency(dense, model, x_one, batch_of(ctx.data, batch), device=ctx.device)
    hint = pytorch_hint(ctx.recipe.pruning)
    before = float(ctx.baseline.get("flops") or 0.0)
    note = speed_note(comparison, (before, flops), "PyTorch", hint)
    if note is not None:
        ctx.notes.append(note)
    return comparison


def pytorch_hint(spec: PruningSpec) -> str:
    """What to change when PyTorch runs the pruned widths slowly per MAC, for this run's
    rounding.

    Example:
        >>> spec = PruningSpec("filter", physical=True, round_to=16, round_to_cap="layer")
        >>> pytorch_hint(spec)[:60]
        '; pruning.round_to 16 was capped at a quarter of each narrow'
    """
    if spec.deploy_runtime != "pytorch":
        return " (this run's widths are shaped for ONNX Runtime: pruning.deploy_runtime)"
    multiple = spec.round_to or 1
    if multiple > 1 and spec.round_to_cap == "layer":
        return (
            f"; pruning.round_to {multiple} was capped at a quarter of each narrow layer's "
            f"width (the default), so those layers kept multiples of 4 or 8: set "
            f"pruning.round_to {multiple} for that multiple on every layer (fewer MACs "
            "removed, each running faster) or prune less"
        )
    if multiple > 1:
        return (
            f"; the kept widths are multiples of {multiple}: where a layer's time is mostly "
            "reading and writing activations (small inputs, narrow layers), cutting its MACs "
            "buys less; prune less, or time at a larger batch"
        )
    return "; try pruning.round_to with a multiple the CPU kernels like (8 or 16)"


def _has_mlps(model: nn.Module, granularity: str) -> bool:
    eager = isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule)
    return granularity == "filter" and eager and bool(mlp_layers(model))


def _transformer_cut(ctx: RunContext, rebuildable: bool) -> tuple[nn.Module, bool]:
    """Heads, or MLP neurons at level ``filter``, of a transformer's blocks (physical)."""
    eager = isinstance(ctx.model, nn.Module) and not isinstance(ctx.model, torch.jit.ScriptModule)
    if not rebuildable or not eager:
        text = f"{MASKS_ONLY_NOTE}: this model format cannot be rebuilt (TorchScript, .pt2)"
        ctx.notes.append(warning(text))
        return ctx.model, False
    cut = shrink(ctx.model, ctx.plan.masks, ctx.recipe.pruning.granularity)
    if cut is None:
        ctx.notes.append(warning(f"{MASKS_ONLY_NOTE}: no unit could be removed physically"))
        return ctx.model, False
    small, sentences = cut
    diff = max_abs_diff(ctx.model, small, ctx.example)
    ctx.notes.append(info(f"physically removed {sentences[0]}: max output difference {diff:.2e}"))
    return small, True


def _without_blocks(ctx: RunContext, rebuildable: bool) -> tuple[nn.Module, bool]:
    """Granularity ``layer`` with ``physical``: removed blocks become identities."""
    if not rebuildable or not isinstance(ctx.model, nn.Module):
        text = f"{MASKS_ONLY_NOTE}: this model format cannot be rebuilt (TorchScript, .pt2)"
        ctx.notes.append(warning(text))
        return ctx.model, False
    small, sentences = remove_blocks(ctx.model, ctx.plan.masks, ctx.example)
    kept = [s for s in sentences if "kept as zeros" in s]
    add_notes(ctx.notes, [warning(s) if s in kept else info(s) for s in sentences])
    if len(kept) == len(sentences):
        ctx.notes.append(warning(f"{MASKS_ONLY_NOTE}: no block could be removed physically"))
        return ctx.model, False
    diff = max_abs_diff(ctx.model, small, ctx.example)
    ctx.notes.append(info(f"physically removed blocks: max output difference {diff:.2e}"))
    return small, True


def result_notes(ctx: RunContext, model: nn.Module, final: dict, *, physical: bool) -> None:
    """Warn when the result is far from what was asked (sparsity, chance accuracy, or a
    language model's perplexity no better than uniform guessing)."""
    spec = ctx.recipe.pruning
    if ctx.plan is not None and spec.granularity != "nm":
        total = sum(w.numel() for w in ctx.hist_before.values())
        kept = sum(int(torch.count_nonzero(m.weight)) for m in prunable_layers(model).values())
        achieved = 1.0 - kept / total if total else 0.0
        add_notes(ctx.notes, sparsity_notes(ctx.plan, achieved, physical=physical))
    if ctx.data.task == "language_model" and "perplexity" in ctx.baseline:
        note = uniform_note(
            float(final["perplexity"]),
            float(ctx.baseline["perplexity"]),
            ctx.data.n_classes,
            threshold=spec.threshold,
        )
    else:
        note = chance_note(
            float(final["accuracy"]),
            float(ctx.baseline["accuracy"]),
            ctx.data.n_classes,
            threshold=spec.threshold,
        )
    if note is not None:
        ctx.notes.append(note)


def finish_run(ctx: RunContext, rebuildable: bool) -> RunResult:
    """Histograms, the final model and its measurements, as a :class:`RunResult`."""
    after_finetune = prunable_weights(ctx.model)
    thresholds = {} if ctx.plan is None else dict(ctx.plan.thresholds)
    tuned = after_finetune if ctx.curve else None  # no epoch ran: no "after fine-tuning" phase
    hists = histograms(ctx.hist_before, ctx.hist_after_prune or after_finetune, tuned, thresholds)
    original = None
    if ctx.latency and ctx.masks is not None:
        original = original_model(ctx, ctx.model)
    model, physical = final_model(ctx, rebuildable)
    ctx.model = model
    final = ctx.measure()
    if original is not None:
        flops = float(final.get("flops") or 0.0)
        final["speedup"] = deploy_speedup(ctx, original, model, physical, flops)
    result_notes(ctx, model, final, physical=physical)
    ctx.report("progress", {"fraction": 1.0, "message": "done"})
    return RunResult(
        model=model,
        baseline=ctx.baseline,
        final=final,
        steps=ctx.steps,
        layers=ctx.layers,
        histograms=hists,
        curve=ctx.curve,
        notes=ctx.notes,
        physical=physical,
        masks_only=ctx.masks is not None and not physical,
        masks=ctx.masks,
        original=original,
        task=ctx.data.task,
        batch_size=int(ctx.recipe.finetune.batch_size),
    )
