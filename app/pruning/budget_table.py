"""The lookup table a budget is allocated from: one entry per coupled group, several widths each.

A *group* is what physical removal cuts together: the layers of one coupled group
(:func:`app.pruning.structural.coupling.coupled_layers`: channels tied through residual adds,
BN and depthwise chains) or a layer of its own. Probing a residual layer alone would measure
nothing (its channels cannot go without the rest of the stream), so each group is pruned as a
whole to every sparsity in ``PROBES`` and measured: the latency saved at the budget's batch
(the modules the removal reshapes, timed dense and at every probe in one round-robin with the
whole original, as a share of its latency; in CPU time with one thread, :func:`clock`), the
parameters or MACs of the pruned model, and
its test-accuracy drop without fine-tuning, after re-estimating BatchNorm statistics on
training batches as the run itself does after each prune step (``bn_recalibrate``). Without
that step the stale statistics dominate the drop, and a group whose damage one pass of
statistics repairs looks as costly as one whose capacity is gone (Li et al., "EagleEye",
ECCV 2020: adaptive-BN accuracy ranks pruned candidates the way fine-tuned accuracy does).
Keys are the group's first member; ``members`` lists
them all. Between probes, savings and drops are linear (:func:`at`), 0 at sparsity 0.

Example:
    >>> entry = {"members": ["a"], "points": [[0.5, 4.0, 0.25], [1.0, 6.0, 0.75]]}
    >>> at(entry, 0.25), at(entry, 0.75)
    ((2.0, 0.125), (5.0, 0.5))
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.counts import count_flops
from app.pruning.data import ArrayDataset
from app.pruning.latency import time_interleaved, time_models
from app.pruning.layers import prunable_layers
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.measure import batch_of, evaluate
from app.pruning.outputs import output_layers
from app.pruning.pruning_spec import PruningSpec
from app.pruning.structural.bn import recalibrate_bn
from app.pruning.structural.coupling import coupled_layers
from app.pruning.structural.remove import physical_prune

PROBES = (0.25, 0.5, 0.75, 0.9)  # group sparsities measured; 0.9 is the most a budget prunes
TABLE_VERSION = "groups-v5"  # v1: single layers; v2: stale BN; v3: wall clock; v4: round-up only
BN_BATCHES, BN_BATCH_SIZE = 4, 128  # the run's BN_SAMPLES (512) training samples


def clock() -> str:
    """Which clock latency budgets are timed with: ``"cpu"`` (the calling thread's CPU time,
    with one intra-op thread: the time other processes hold the core does not count) or
    ``"wall"`` (more threads: the workers' time is not the caller's)."""
    return "cpu" if torch.get_num_threads() == 1 else "wall"


def kind_of(target: dict) -> str:
    """``"latency_ms"``, ``"params"`` or ``"flops"``: which quantity the budget limits."""
    return next(k for k in ("latency_ms", "params", "flops") if k in target)


def allocated(spec: PruningSpec, overrides: dict[str, float]) -> PruningSpec:
    """``spec`` with its budget replaced by per-layer ``overrides`` (other layers stay whole)."""
    return replace(spec, target=None, sparsity=0.0, scope="layerwise", overrides=overrides)


def pruned_copy(
    model: nn.Module, spec: PruningSpec, overrides: dict[str, float], data: ArrayDataset
) -> nn.Module:
    """The physically pruned copy of ``model`` under per-layer ``overrides`` (model untouched)."""
    work = copy.deepcopy(model)
    plan = compute_masks(work, allocated(spec, overrides), data=data)
    apply_masks(work, plan)
    example = data.sample_batch(8)
    return physical_prune(work, plan, example, granularity=spec.granularity).eval()


def metric(
    model: nn.Module,
    target: dict,
    data: ArrayDataset,
    *,
    dense: nn.Module,
    dense_value: float | None = None,
    budget_s: float = 0.4,
) -> float:
    """The budget's quantity for ``model``: latency (ms), params or MACs per sample.

    Latency is timed interleaved with ``dense``; given ``dense_value`` (the original's latency
    measured once), it is ``dense_value x`` the measured ratio, which load drift hits far less.
    """
    kind = kind_of(target)
    if kind == "params":
        return float(sum(p.numel() for p in model.parameters()))
    if kind == "flops":
        return float(count_flops(model, data.sample_batch(1))[1])
    x = batch_of(data, int(target.get("batch", 1)))
    t_dense, t_model = time_models([dense, model], x, budget_s=budget_s, cpu=clock() == "cpu")
    if dense_value is None:
        return t_model.median_ms
    return dense_value * t_model.median_ms / t_dense.median_ms


def groups(model: nn.Module, spec: PruningSpec, data: ArrayDataset) -> dict[str, list[str]]:
    """First member -> the layers cut together, for every layer the budget may prune.

    The scope is the mask selection's: prunable layers minus ``spec.exclude`` and, for
    filters, the model's output layers (never cut).
    """
    x = data.sample_batch(2)
    scope = [n for n in prunable_layers(model) if n not in spec.exclude]
    if spec.granularity == "filter":
        outputs = output_layers(model, x)
        scope = [n for n in scope if n not in outputs]
    coupled = (
        coupled_layers(model, x, spec.granularity, scope)
        if spec.granularity in CHANNEL_LEVELS
        else []
    )
    out: dict[str, list[str]] = {}
    grouped = {n for g in coupled for n in g.members}
    for g in coupled:
        members = [n for n in scope if n in g.members]  # model order: a stable key
        out[members[0]] = members
    for n in scope:
        if n not in grouped:
            out[n] = [n]
    order = {n: i for i, n in enumerate(scope)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[0]]))


def _key(spec: PruningSpec, target: dict) -> str:
    batch = int(target.get("batch", 1))
    parts = (TABLE_VERSION, f"{kind_of(target)}@{batch}", spec.granularity, spec.criterion)
    rounding = f"round_to={spec.round_to or 1}" + ("/layer" if spec.round_to_cap == "layer" else "")
    return ":".join((*parts, rounding, ",".join(sorted(spec.exclude))))


def layer_table(
    model: nn.Module, spec: PruningSpec, data: ArrayDataset, target: dict, cache: Path | None
) -> dict:
    """``{"base", "base_acc", "groups": {first member: {"members", "points"}}}``.

    ``points`` are ``[sparsity, saved, acc_drop]`` for each of ``PROBES``: what pruning the
    group alone to that sparsity saves (ms, parameters or MACs) and costs in accuracy (a
    fraction, without fine-tuning). Kept in the JSON file ``cache`` when given.
    """
    key = _key(spec, target)
    stored = json.loads(cache.read_text(encoding="utf-8")) if cache and cache.is_file() else {}
    if key in stored:
        return stored[key]
    model.eval()
    base_acc = evaluate(model, data)["accuracy"]
    base = metric(model, target, data, dense=model)
    table: dict = {"base": base, "base_acc": base_acc, "groups": {}}
    for lead, members in groups(model, spec, data).items():
        smalls = [pruned_copy(model, spec, dict.fromkeys(members, s), data) for s in PROBES]
        values = _values(smalls, target, data, dense=model, base=base)
        points = [
            [s, base - v, base_acc - probe_accuracy(small, spec, data)]
            for s, v, small in zip(PROBES, values, smalls, strict=True)
        ]
        table["groups"][lead] = {"members": members, "points": _monotone(points)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**stored, key: table}), encoding="utf-8")
    return table


def probe_accuracy(small: nn.Module, spec: PruningSpec, data: ArrayDataset) -> float:
    """Test accuracy of a pruned probe, after the BatchNorm re-estimation the run would do."""
    if spec.bn_recalibrate:
        recalibrate_bn(small, data.loader("train", BN_BATCH_SIZE, seed=0), batches=BN_BATCHES)
    return float(evaluate(small.eval(), data)["accuracy"])


def _values(
    smalls: list[nn.Module], target: dict, data: ArrayDataset, *, dense: nn.Module, base: float
) -> list[float]:
    """The budget's quantity for each of a group's probes.

    Latency: the modules whose input or output shape the group's removal changes (its
    members, their BatchNorm, activations and pooling, and the layers that read their
    channels) are run alone, dense and at every probe, in one round-robin with the whole
    original model, on inputs of the shapes they see at the budget's batch; each probe is
    ``base`` minus ``base x`` (their time saved / the model's time). A single group's change
    of the whole model's latency is a few percent, under a shared machine's noise; its own
    modules' change is most of their time.
    """
    if kind_of(target) != "latency_ms":
        return [metric(m, target, data, dense=dense) for m in smalls]
    batch = int(target.get("batch", 1))
    x = batch_of(data, batch)
    seen = [_leaf_shapes(m, x[:1]) for m in (dense, *smalls)]
    changed = sorted({n for s in seen[1:] for n, io in s.items() if io != seen[0].get(n)})
    runs = [_modules_run(m, changed, x) for m in (dense, *smalls)]
    with torch.inference_mode():
        t_model, t_dense, *timings = time_interleaved(
            [lambda: dense(x), *runs], budget_s=0.25 * (len(smalls) + 2), cpu=clock() == "cpu"
        )
    return [
        base - base * max(0.0, t_dense.median_ms - t.median_ms) / t_model.median_ms for t in timings
    ]


def _leaf_shapes(model: nn.Module, x1: Tensor) -> dict[str, tuple]:
    """Leaf module -> (input shapes, output shape) for one sample (tensor out)."""
    shapes: dict[str, tuple] = {}

    def hook(name: str) -> Callable:
        def record(_m: nn.Module, inp: tuple, out: object) -> None:
            if inp and isinstance(out, Tensor):
                ins = tuple(tuple(i.shape) if isinstance(i, Tensor) else None for i in inp)
                shapes.setdefault(name, (ins, tuple(out.shape)))

        return record

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    _hooked_forward(model, x1, [(m, hook(n)) for n, m in leaves])
    return shapes


def _hooked_forward(model: nn.Module, x: Tensor, hooks: list[tuple[nn.Module, Callable]]) -> None:
    """One eval-mode inference forward of ``x`` with each ``(module, forward hook)`` attached."""
    handles = [m.register_forward_hook(h) for m, h in hooks]
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()


def _modules_run(model: nn.Module, names: list[str], x: Tensor) -> Callable[[], None]:
    """A callable running ``model``'s modules ``names`` alone, each on the inputs it received
    in one forward of ``x`` (every positional input: an ONNX graph's Add or Mul takes two)."""
    modules = dict(model.named_modules())
    pairs: list[tuple[nn.Module, tuple]] = []

    def keep(m: nn.Module, inp: tuple, _out: object) -> None:
        pairs.append((m, inp))

    _hooked_forward(model, x, [(modules[n], keep) for n in names if n in modules])

    def run() -> None:
        for module, inp in pairs:
            module(*inp)

    return run


def _monotone(points: list[list[float]]) -> list[list[float]]:
    """Savings and drops never negative and never smaller at a higher sparsity (timer noise)."""
    out, saved, drop = [], 0.0, 0.0
    for s, sv, dr in points:
        saved, drop = max(saved, sv), max(drop, dr)
        out.append([s, saved, drop])
    return out


def at(entry: dict, sparsity: float) -> tuple[float, float]:
    """``(saved, acc_drop)`` of a group at ``sparsity``, linear between probes (0 at 0)."""
    prev = [0.0, 0.0, 0.0]
    for point in entry["points"]:
        if sparsity <= point[0]:
            w = (sparsity - prev[0]) / (point[0] - prev[0]) if point[0] > prev[0] else 1.0
            return (
                prev[1] + w * (point[1] - prev[1]),
                prev[2] + w * (point[2] - prev[2]),
            )
        prev = point
    return prev[1], prev[2]
