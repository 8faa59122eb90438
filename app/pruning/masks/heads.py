"""Transformer units: granularity ``head`` (whole attention heads) and ``filter`` on
transformer blocks (MLP neurons only).

A head (a KV group under grouped-query attention) is scored over its q/k/v output rows and
its output projection's input columns: ``l1`` the mean ``|w|``, ``l2`` the root mean
square, ``random`` a uniform draw. Globally the lowest heads go until ``target`` of the heads
in scope are gone; layer-wise each attention module loses ``round(target * heads)``. Every
module keeps at least one head. The masks zero the head's q/k/v rows (with their biases) and
its o columns, so the masked model equals the physically smaller one.

Example:
    >>> from app import zoo
    >>> from app.pruning.pruning_spec import HEAD_TARGET, PruningSpec
    >>> model = zoo.build("transformer")
    >>> plan = compute_head_masks(model, PruningSpec("head", "l1", scope="layerwise"), 0.5, {}, 0)
    >>> [int(plan.masks[f"blocks.{i}.attn.q"].any(dim=1).sum()) // 8 for i in (0, 1)]
    [2, 2]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.pruning.layers import prunable_layers
from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import info, warning
from app.pruning.pruning_spec import HEAD_TARGET, PruningSpec
from app.pruning.structural.coupling import Coupled
from app.pruning.structural.transformer import (
    Attention,
    attention_layers,
    dead_neurons,
    mlp_layers,
)

NO_HEADS = (
    "granularity 'head' needs attention layers with separate q/k/v/output Linear layers "
    "(BERT, ViT, Llama or the zoo's transformer); this model has none (TorchScript, .pt2 and ONNX uploads lose that structure: try 'filter')."
)


def check_heads(model: nn.Module, spec: PruningSpec, exclude: set[str]) -> list[Attention]:
    """The attention modules in scope; ValueError when there are none or the spec asks for
    what heads cannot do (a threshold, per-layer overrides)."""
    found = [a for a in attention_layers(model) if not exclude & set(a.layers)]
    if not found:
        raise ValueError(NO_HEADS)
    if spec.threshold is not None or spec.overrides:
        raise ValueError(HEAD_TARGET)
    return found


def _score(model: nn.Module, att: Attention, criterion: str, gen: torch.Generator) -> Tensor:
    if criterion == "random":
        return torch.rand(att.groups, generator=gen)
    modules = dict(model.named_modules())
    out = []
    for g in range(att.groups):
        parts = [modules[n].weight.detach()[att.rows(g, n)] for n in (att.q, att.k, att.v)]
        parts.append(modules[att.o].weight.detach()[:, att.rows(g, att.o)])
        w = torch.cat([p.flatten() for p in parts]).float()
        out.append(w.abs().mean() if criterion == "l1" else w.pow(2).mean().sqrt())
    return torch.stack(out).cpu()


def _choose(scores: dict[str, Tensor], target: float, scope: str) -> dict[str, set[int]]:
    """KV groups to remove per attention module (forced ones score -inf)."""
    gone = {n: {int(i) for i in torch.nonzero(s == -torch.inf)} for n, s in scores.items()}
    if scope == "layerwise":
        for n, s in scores.items():
            want = min(len(s) - 1, max(round(target * len(s)), len(gone[n])))
            gone[n] |= {int(i) for i in torch.argsort(s)[:want]}
        return gone
    total = sum(len(s) for s in scores.values())
    ranked = sorted((float(v), n, i) for n, s in scores.items() for i, v in enumerate(s))
    want = round(target * total)
    for _, n, i in ranked:
        if sum(len(g) for g in gone.values()) >= want:
            break
        if len(gone[n]) < len(scores[n]) - 1:
            gone[n].add(i)
    return gone


def compute_head_masks(
    model: nn.Module,
    spec: PruningSpec,
    target: float,
    previous: dict[str, Tensor],
    seed: int,
) -> MaskPlan:
    """The :class:`MaskPlan` removing ``target`` of the heads (see the module docstring)."""
    atts = check_heads(model, spec, set(spec.exclude))
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    scores = {}
    for a in atts:
        s = _score(model, a, spec.criterion, gen)
        if a.q in previous:
            dead = ~previous[a.q].bool().any(dim=1)
            for g in range(a.groups):
                if bool(dead[a.rows(g, a.q)].all()):
                    s[g] = -torch.inf
        scores[a.q] = s
    gone = _choose(scores, target, spec.scope)
    masks, extra, achieved = {}, {}, {}
    for a in atts:
        for n in a.layers:
            w = modules[n].weight
            keep = torch.ones(w.shape, dtype=torch.bool)
            rows = torch.zeros(w.shape[0 if n != a.o else 1], dtype=torch.bool)
            for g in gone[a.q]:
                rows[a.rows(g, n)] = True
            if n == a.o:
                keep[:, rows] = False
            else:
                keep[rows] = False
                if modules[n].bias is not None:
                    extra[f"{n}.bias"] = ~rows
            masks[n] = keep
            achieved[n] = 1.0 - float(keep.sum()) / keep.numel()
    layers = {n for a in atts for n in a.layers}
    removed = sum(len(g) for g in gone.values())
    total = sum(a.groups for a in atts)
    unit = "KV groups" if any(a.per_group > 1 for a in atts) else "heads"
    text = f"granularity 'head' removed {removed} of {total} {unit} in {len(atts)} attention layers"
    notes = [info(text) if removed else warning(text + "; none fits the target")]
    everything = prunable_layers(model)
    requested = {n: (target if n in layers else 0.0) for n in everything}
    achieved = {n: achieved.get(n, 0.0) for n in everything}
    for n, m in everything.items():  # the others kept whole: asked and achieved count them
        masks.setdefault(n, torch.ones(m.weight.shape, dtype=torch.bool))
    return MaskPlan(
        masks, requested, achieved, dict.fromkeys(everything), None, extra, notes, "head"
    )


def mlp_scope(
    model: nn.Module, targets: dict[str, nn.Module]
) -> tuple[dict[str, nn.Module], list[Coupled], list]:
    """Filter level on a transformer: only the MLP up/gate layers are ranked (hidden-size rows
    stay), gate and up ranked as one; ``(targets, coupled, notes)``, unchanged without MLPs."""
    mlps = mlp_layers(model)
    if not mlps:
        return targets, [], []
    producers = [p for m in mlps for p in m.producers if p in targets]
    kept = {n: targets[n] for n in producers}
    coupled = []
    for m in mlps:
        if len(m.producers) > 1 and all(p in kept for p in m.producers):
            size = kept[m.producers[0]].out_features
            coupled.append(Coupled({p: torch.arange(size) for p in m.producers}, size))
    text = (
        "transformer blocks: granularity 'filter' removes MLP neurons only (up/gate rows with "
        "the down layer's columns); the hidden size, attention and norms are left whole"
    )
    return kept, coupled, [info(text)]


def add_mlp_columns(model: nn.Module, plan: MaskPlan) -> None:
    """Filter level on a transformer: mask each down layer's columns of the removed neurons
    (what the physical cut deletes, asked and counted like the rows) and list every other
    prunable layer as kept whole, so asked and achieved cover the same weights."""
    for mlp in mlp_layers(model):
        if not all(p in plan.masks for p in mlp.producers):
            continue
        dead = dead_neurons(plan.masks, mlp)
        keep = torch.ones(dict(model.named_modules())[mlp.down].weight.shape, dtype=torch.bool)
        keep[:, dead] = False
        plan.masks[mlp.down] = keep
        plan.requested[mlp.down] = plan.requested.get(mlp.producers[0])
        plan.achieved[mlp.down] = float(dead.float().mean())
        plan.thresholds.setdefault(mlp.down, None)
    for n, m in prunable_layers(model).items():
        if n not in plan.masks:
            plan.masks[n] = torch.ones(m.weight.shape, dtype=torch.bool)
            plan.requested[n], plan.achieved[n] = 0.0, 0.0
            plan.thresholds.setdefault(n, None)
