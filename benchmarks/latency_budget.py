"""Prune to a latency budget: asked vs reached, accuracy vs uniform pruning at the same latency.

On the built-in digits, a trained model (``cnn_small`` and ``resnet20`` by default) is pruned
with ``pruning.target = {"latency_ms": fraction x dense, "batch": 256}`` (filters, L1,
physical, the same fine-tuning), then a uniform layer-wise filter sparsity is searched that
reaches the latency the budget run measured, and run with the same recipe otherwise. Prints
asked vs reached latency (targets: within 10%), both accuracies (target: budget >= uniform),
and a repeatability check: the dense model timed twice, medians within 10%.

Run: ``nice .venv/bin/python benchmarks/latency_budget.py [--fraction 0.6] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import copy

import torch

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.budget import pruned_copy
from app.pruning.latency import time_models
from app.pruning.layers import prunable_layers
from app.pruning.measure import batch_of
from app.pruning.pipeline import run_recipe
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import train

FINETUNE = {"epochs": 3, "lr": 0.01, "optimizer": "sgd", "batch_size": 64}
BATCH = 256


def trained(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    data = load_digits()
    model = zoo.build(arch, input_shape=data.input_shape)
    train(model, data, FinetuneSpec(epochs=6, lr=0.05, optimizer="sgd", batch_size=64))
    return model.eval()


def recipe(pruning: dict) -> Recipe:
    base = {"granularity": "filter", "criterion": "l1", "physical": True}
    return Recipe.from_dict(
        {"kind": "prune", "name": "b", "pruning": {**base, **pruning}, "finetune": FINETUNE}
    )


def latency(dense: torch.nn.Module, model: torch.nn.Module, budget_s: float = 2.0) -> float:
    x = batch_of(load_digits(), BATCH)
    return time_models([dense, model], x, budget_s=budget_s)[1].median_ms


def uniform_sparsity(model: torch.nn.Module, spec: PruningSpec, goal_ms: float) -> float:
    """The layer-wise sparsity whose physically pruned model runs in ``goal_ms`` (bisection)."""
    names = [n for n in prunable_layers(model) if n not in spec.exclude]
    lo, hi = 0.0, 0.9
    for _ in range(8):
        mid = (lo + hi) / 2
        small = pruned_copy(model, spec, dict.fromkeys(names, mid), load_digits())
        lo, hi = (mid, hi) if latency(model, small, 0.6) > goal_ms else (lo, mid)
    return hi


def run(arch: str, args: argparse.Namespace) -> None:
    data = load_digits()
    model = trained(arch)
    exclude = [n for n, m in prunable_layers(model).items() if isinstance(m, torch.nn.Linear)]
    dense_ms = latency(model, model)
    again_ms = latency(model, model)
    print(
        f"{arch:9s} repeatability: dense median {dense_ms:.3f} ms then {again_ms:.3f} ms "
        f"({abs(dense_ms - again_ms) / dense_ms:.1%} apart; target < 10%)",
        flush=True,
    )
    asked = round(dense_ms * args.fraction, 4)
    target = {"latency_ms": asked, "batch": BATCH}
    try:
        res = run_recipe(
            recipe({"target": target, "exclude": exclude}),
            copy.deepcopy(model),
            data,
            latency=False,
        )
    except ValueError as exc:  # an unreachable budget is a result too
        print(f"{arch:9s} budget {asked:.3f} ms at batch {BATCH}: {exc}", flush=True)
        return
    report = res.final["budget"]
    reached = report["reached"]
    base_acc = res.baseline["accuracy"]
    print(
        f"{arch:9s} budget {asked:.3f} ms at batch {BATCH} (dense {dense_ms:.3f} ms): reached "
        f"{reached:.3f} ms ({reached / asked - 1:+.1%}), accuracy {res.final['accuracy']:.4f} "
        f"(dense {base_acc:.4f}), allocation {res.allocation}",
        flush=True,
    )
    spec = recipe({"sparsity": 0.5, "scope": "layerwise", "exclude": exclude}).pruning
    s = uniform_sparsity(model, spec, reached)
    uni = run_recipe(
        recipe({"sparsity": s, "scope": "layerwise", "exclude": exclude}),
        copy.deepcopy(model),
        data,
        latency=False,
    )
    uni_ms = latency(model, uni.model.cpu().eval())
    print(
        f"{arch:9s} uniform sparsity {s:.3f}: latency {uni_ms:.3f} ms, accuracy "
        f"{uni.final['accuracy']:.4f}  -> budget run {'more' if res.final['accuracy'] > uni.final['accuracy'] else 'not more'} "
        "accurate at the same measured latency",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cnn_small", "resnet20"])
    parser.add_argument("--fraction", type=float, default=0.6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for arch in args.archs:
        run(arch, args)


if __name__ == "__main__":
    main()
