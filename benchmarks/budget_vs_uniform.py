"""Does the budget's allocation keep more accuracy than uniform pruning at the same exact cost?

A latency budget is judged on a shared machine's timings (``latency_budget.py``); a FLOPs or
parameter budget is counted exactly, so it shows what the allocation itself is worth. On the
built-in digits, a trained model (``cnn_small`` and ``resnet20`` by default, trained as in
``latency_budget.py``) is pruned with ``pruning.target = {"flops": fraction x dense}`` (filters,
L1, physical; the lab's default fine-tuning for 3 epochs), and a uniform layer-wise filter
sparsity is searched (bisection on the counted MACs) that meets the same budget, then run with
the same recipe otherwise. Prints, per fine-tuning seed, both accuracies, what each model
counts as a fraction of the dense one, and the budget run's lead; then the median.

Run: ``PYTHONPATH=. nice .venv/bin/python benchmarks/budget_vs_uniform.py [--archs cnn_small resnet20]
[--fraction 0.4] [--kind flops|params] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from app.modelio.dataset_files import load_digits
from app.pruning.budget import pruned_copy
from app.pruning.budget_table import metric
from app.pruning.layers import prunable_layers
from app.pruning.pipeline import run_recipe
from benchmarks.latency_budget import recipe, trained


def uniform_meeting(model: torch.nn.Module, target: dict, exclude: list[str]) -> float:
    """The smallest layer-wise sparsity whose physically pruned model meets ``target``."""
    data = load_digits()
    spec = recipe({"sparsity": 0.5, "scope": "layerwise", "exclude": exclude}).pruning
    names = [n for n in prunable_layers(model) if n not in exclude]
    kind = next(iter(target))
    lo, hi = 0.0, 0.9
    for _ in range(12):
        mid = (lo + hi) / 2
        small = pruned_copy(model, spec, dict.fromkeys(names, mid), data)
        over = metric(small, target, data, dense=model) > target[kind]
        lo, hi = (mid, hi) if over else (lo, mid)
    return hi


def run(arch: str, args: argparse.Namespace) -> None:
    data = load_digits()
    model = trained(arch)
    exclude = [n for n, m in prunable_layers(model).items() if isinstance(m, torch.nn.Linear)]
    dense = metric(model, {args.kind: 1}, data, dense=model)
    target = {args.kind: int(dense * args.fraction)}
    sparsity = uniform_meeting(model, target, exclude)
    leads = []
    for seed in args.seeds:
        bud = run_recipe(
            recipe({"target": target, "exclude": exclude}, seed),
            copy.deepcopy(model),
            data,
            latency=False,
        )
        uni = run_recipe(
            recipe({"sparsity": sparsity, "scope": "layerwise", "exclude": exclude}, seed),
            copy.deepcopy(model),
            data,
            latency=False,
        )
        counts = [
            metric(r.model.cpu().eval(), target, data, dense=model) / dense for r in (bud, uni)
        ]
        acc = [bud.final["accuracy"], uni.final["accuracy"]]
        leads.append(acc[0] - acc[1])
        print(
            f"{arch:9s} {args.kind} <= {args.fraction:.0%} of dense, seed {seed}: budget run "
            f"{acc[0]:.4f} at {counts[0]:.3f} vs uniform {sparsity:.3f} {acc[1]:.4f} at "
            f"{counts[1]:.3f}: {leads[-1] * 100:+.2f} points; allocation {bud.allocation}",
            flush=True,
        )
    print(
        f"{arch:9s} budget run - uniform at the same {args.kind} budget, seeds {args.seeds}: "
        f"{', '.join(f'{d * 100:+.2f}' for d in leads)}; median "
        f"{statistics.median(leads) * 100:+.2f} (target: >= 0, i.e. more accurate)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cnn_small", "resnet20"])
    parser.add_argument("--fraction", type=float, default=0.4)
    parser.add_argument("--kind", choices=("flops", "params"), default="flops")
    parser.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds, e.g. 0,1,2")
    args = parser.parse_args()
    args.seeds = [int(v) for v in args.seeds.split(",")]
    torch.set_num_threads(1)
    for arch in args.archs:
        run(arch, args)


if __name__ == "__main__":
    main()
