"""Cost of keeping an 8.5M-parameter MLP pruned during SGD-momentum training.

Prints ms/step (median of interleaved repeats) for a dense step and, at each mask, our
masked step (``MaskKeeper.zero_grads`` + ``after_step``, as in ``train.py``), ``after_step``
alone, and torch.nn.utils.prune's forward-pre-hook masks, with ratios to dense
(target: ours <= 1.05x). Masks: element 50% and 90% (a float multiply per tensor),
element 2% (zeros written at indices), filter 50% (whole rows zeroed).

    .venv/bin/python benchmarks/masked_step.py [--repeats 7] [--steps 3] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import MaskKeeper, apply_masks
from app.pruning.masks.plan import MaskPlan
from app.pruning.pruning_spec import PruningSpec

MASKS = {
    "element 50%": PruningSpec("element", "l1", sparsity=0.5),
    "element 90%": PruningSpec("element", "l1", sparsity=0.9),
    "element 2%": PruningSpec("element", "l1", sparsity=0.02),
    "filter 50%": PruningSpec("filter", "l1", sparsity=0.5, exclude=("6",)),
}


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(  # 8.5M parameters
        nn.Linear(1072, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 1024),
        nn.ReLU(),
        nn.Linear(1024, 10),
    )


KEEPER_MS: dict[int, list[float]] = {}  # id(step) -> ms spent in the keeper's calls


def runner(model: nn.Module, keeper: MaskKeeper | None, x, y, *, grads: bool = True):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    spent: list[float] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        start = time.perf_counter()
        if keeper is not None and grads:
            keeper.zero_grads()
        middle = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if keeper is not None:
            keeper.after_step(opt)
        spent.append((middle - start + time.perf_counter() - end) * 1000)

    if keeper is not None:
        KEEPER_MS[id(step)] = spent
    return step


def variants(base: nn.Module, x, y) -> tuple[dict[str, Callable[[], None]], list]:
    """name -> step function; plus (model, plan) pairs whose zeros are checked at the end."""
    steps: dict[str, Callable[[], None]] = {"dense": runner(copy.deepcopy(base), None, x, y)}
    checks: list[tuple[nn.Module, MaskPlan]] = []
    for label, spec in MASKS.items():
        plan = compute_masks(base, spec)
        for name, grads in (("ours", True), ("after_step only", False)):
            model = copy.deepcopy(base)
            apply_masks(model, plan)
            steps[f"{label}: {name}"] = runner(model, MaskKeeper(model, plan), x, y, grads=grads)
            checks.append((model, plan))
        if spec.granularity == "element" and spec.sparsity == 0.9:
            hooked = copy.deepcopy(base)
            params = [(m, "weight") for m in hooked if isinstance(m, nn.Linear)]
            tprune.global_unstructured(params, tprune.L1Unstructured, amount=spec.sparsity)
            steps[f"{label}: torch.prune"] = runner(hooked, None, x, y)
    return steps, checks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = build()
    n_params = sum(p.numel() for p in base.parameters())
    x, y = torch.randn(args.batch, 1072), torch.randint(0, 10, (args.batch,))
    steps, checks = variants(base, x, y)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():  # warm-up: optimizer state, allocator, the keeper's first pass
        step()
    names = list(steps)
    for r in range(args.repeats):
        # interleaved, so load changes hit every variant; rotated, so none always runs first
        for name in names[r % len(names) :] + names[: r % len(names)]:
            step = steps[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) * 1000 / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"MLP {n_params / 1e6:.2f}M params, batch {args.batch}, threads {args.threads}, "
        f"SGD momentum 0.9, median of {args.repeats} x {args.steps} steps"
    )
    print("(keeper: ms/step inside zero_grads + after_step; 1 + keeper/dense is the ratio with")
    print(" the noise of the rest of the step removed)")
    for name, ms in med.items():
        spent = KEEPER_MS.get(id(steps[name]))
        keeper = (
            ""
            if spent is None
            else f"   keeper {statistics.median(spent):6.2f} ms = "
            + (f"{1 + statistics.median(spent) / med['dense']:.3f}x")
        )
        print(f"{name:>30}: {ms:8.2f} ms/step   {ms / med['dense']:.3f}x dense{keeper}")
    zero = all(
        bool((m.weight[~plan.masks[n]] == 0).all())
        for model, plan in checks
        for n, m in model.named_modules()
        if n in plan.masks
    )
    print(f"pruned weights still exactly zero after training: {zero} (target ours <= 1.05x dense)")


if __name__ == "__main__":
    main()
