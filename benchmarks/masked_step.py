"""Cost of keeping an 8.5M-parameter MLP pruned during SGD-momentum training.

Prints ms/step (median of interleaved repeats) for: a dense step, our masked step
(``MaskKeeper.zero_grads`` + ``after_step``, 90% element sparsity) and
torch.nn.utils.prune's forward-pre-hook masks, with ratios to dense (target <= 1.05x).

    .venv/bin/python benchmarks/masked_step.py [--repeats 7] [--steps 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.utils.prune as tprune
from torch import nn

from app.pruning.masks import MaskKeeper, apply_masks, compute_masks
from app.pruning.spec import PruningSpec


def build() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(  # 8.5M parameters
        nn.Linear(1072, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
        nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, 10),
    )  # fmt: skip


def runner(model: nn.Module, keeper: MaskKeeper | None, x, y, *, grads: bool = True):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if keeper is not None and grads:
            keeper.zero_grads()
        opt.step()
        if keeper is not None:
            keeper.after_step(opt)

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    base = build()
    n_params = sum(p.numel() for p in base.parameters())
    x, y = torch.randn(args.batch, 1072), torch.randint(0, 10, (args.batch,))

    dense = copy.deepcopy(base)
    ours, lean = copy.deepcopy(base), copy.deepcopy(base)
    plan = compute_masks(ours, PruningSpec("element", "l1", sparsity=0.9))
    apply_masks(ours, plan)
    apply_masks(lean, plan)
    hooked = copy.deepcopy(base)
    layers = [m for m in hooked if isinstance(m, nn.Linear)]
    tprune.global_unstructured([(m, "weight") for m in layers], tprune.L1Unstructured, amount=0.9)
    steps = {
        "dense": runner(dense, None, x, y),
        "ours": runner(ours, MaskKeeper(ours, plan), x, y),
        # after_step alone gives the same weights (pruned grads only reach state it re-zeroes);
        # zero_grads matters only when something reads the gradients (clipping by norm).
        "ours-lean": runner(lean, MaskKeeper(lean, plan), x, y, grads=False),
        "torch.prune": runner(hooked, None, x, y),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for step in steps.values():  # warm-up: optimizer state, allocator
        step()
    for _ in range(args.repeats):
        for name, step in steps.items():  # interleaved, so load changes hit all three
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - start) * 1000 / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"MLP {n_params / 1e6:.2f}M params, batch {args.batch}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} x {args.steps} steps")  # fmt: skip
    for name, ms in med.items():
        print(f"{name:>12}: {ms:8.2f} ms/step   {ms / med['dense']:.3f}x dense")
    zero = all(
        bool((m.weight[~plan.masks[n]] == 0).all())
        for n, m in ours.named_modules()
        if n in plan.masks
    )
    print(f"pruned weights still exactly zero after training: {zero} (target ours <= 1.05x dense)")


if __name__ == "__main__":
    main()
