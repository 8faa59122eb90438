"""Quality benchmark on digits: plain iterative magnitude pruning vs our best schedule.

Unstructured: the MLP (64-300-100-10). Levels are real compression ratios (non-zero parameters,
biases included, vs dense): 12.5x, 20x and 33x, i.e. 92.5%, 95.8% and 97.8% of the weights.
Plain = Han et al. style iterative global magnitude pruning, ``--steps`` rounds with 10
fine-tune epochs each (Adam, constant LR). Ours = ``recipes/mlp_agp_best_*.json``: AGP (cubic
ramp) with a mask update every epoch inside one SGD + cosine-LR fine-tuning run of the same
total epochs. Both run side by side for each seed; the table shows medians over the seeds.
Targets: 20x within 1 point and 33x within 3 points of the dense accuracy.

Structured: cnn_small at 4x fewer FLOPs (target: within 1 point). Ours = L1 filter pruning,
layerwise, iterative, physically removed, fine-tuned; Torch-Pruning = ``tp.pruner.MetaPruner``
with ``tp.importance.MagnitudeImportance`` at a pruning ratio found to match the same FLOPs
budget, then the same fine-tuning.

Run: ``python benchmarks/quality_digits.py [--seeds 0,1] [--quick]`` (about 3-4 min on 2 busy
CPU cores with the default seeds).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch

from app import zoo
from app.intake.datasets import load_digits
from app.pruning.counts import count_flops
from app.pruning.granularity import prunable_layers
from app.pruning.measure import evaluate
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import fine_tune, train

RATIOS = (12.5, 20.0, 100 / 3)
TARGET_DROP = {20.0: 0.01, 100 / 3: 0.03}
PRETRAIN_MLP = {"epochs": 15, "lr": 0.003, "optimizer": "adam", "batch_size": 64}


def pretrained(arch: str, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = zoo.build(arch)
    spec = (
        FinetuneSpec(**{**PRETRAIN_MLP, "epochs": epochs})
        if arch == "mlp"
        else FinetuneSpec(epochs=epochs, lr=0.05, optimizer="sgd", batch_size=64)
    )
    train(model, load_digits(), spec, seed=seed)
    return model


def prune(model: torch.nn.Module, body: dict, seed: int):
    recipe = Recipe.from_dict({"kind": "prune", "name": "bench", "seed": seed, **body})
    return run_recipe(recipe, copy.deepcopy(model), load_digits(), latency=False)


def sparsity_for(model: torch.nn.Module, ratio: float) -> float:
    """The weight sparsity whose non-zero parameters (biases included) give ``ratio``."""
    total = sum(p.numel() for p in model.parameters())
    weights = sum(m.weight.numel() for m in prunable_layers(model).values())
    kept = math.floor(total / ratio - (total - weights))
    return math.ceil((1.0 - kept / weights) * 1e4) / 1e4


def plain_body(sparsity: float, steps: int, epochs: int) -> dict:
    return {
        "pruning": {"granularity": "element", "criterion": "l1", "sparsity": sparsity},
        "schedule": {"kind": "iterative", "steps": steps},
        "finetune": {
            "epochs": epochs,
            "lr": 0.001,
            "optimizer": "adam",
            "batch_size": 64,
            "lr_schedule": "constant",
        },
    }


def ours_body(sparsity: float, epochs: int) -> dict:
    """recipes/mlp_agp_best_*.json at another sparsity and length: one mask update per epoch."""
    return {
        "pruning": {"granularity": "element", "criterion": "l1", "sparsity": sparsity},
        "schedule": {"kind": "agp", "steps": epochs},
        "finetune": {
            "epochs": epochs,
            "lr": 0.05,
            "optimizer": "sgd",
            "momentum": 0.9,
            "batch_size": 64,
            "lr_schedule": "cosine",
        },
    }


def unstructured(seeds: list[int], steps: int, epochs: int, pretrain: int) -> None:
    rows: dict[float, dict[str, list[float]]] = {r: {} for r in RATIOS}
    bases = []
    for seed in seeds:
        dense = pretrained("mlp", pretrain, seed)
        base = evaluate(dense, load_digits())["accuracy"]
        bases.append(base)
        for ratio in RATIOS:
            s = sparsity_for(dense, ratio)
            plain = prune(dense, plain_body(s, steps, epochs), seed)
            ours = prune(dense, ours_body(s, steps * epochs), seed)
            for key, value in (
                ("plain", base - plain.final["accuracy"]),
                ("ours", base - ours.final["accuracy"]),
                ("x", ours.final["compression"]),
                ("s", s),
            ):
                rows[ratio].setdefault(key, []).append(value)
            print(
                f"  seed {seed} {ratio:5.1f}x: dense {base:.4f} plain drop "
                f"{rows[ratio]['plain'][-1]:+.4f}, ours drop {rows[ratio]['ours'][-1]:+.4f}",
                flush=True,
            )
    _print_unstructured(rows, bases, seeds, steps, epochs)


def _print_unstructured(
    rows: dict, bases: list[float], seeds: list[int], steps: int, epochs: int
) -> None:
    med = statistics.median
    print(f"\nMLP 64-300-100-10 on digits, seeds {seeds}: dense accuracy (median) {med(bases):.4f}")
    print(
        f"plain = iterative {steps} x {epochs} epochs; ours = AGP, {steps * epochs} epochs, "
        "update every epoch, SGD cosine; drops are medians (points = drop x 100)"
    )
    print(
        f"{'x':>6} {'achieved':>8} {'sparsity':>8} | {'plain drop':>10} | {'ours drop':>9} | target"
    )
    for ratio, r in rows.items():
        goal = TARGET_DROP.get(ratio)
        ours = med(r["ours"])
        verdict = "-" if goal is None else ("PASS" if ours <= goal else "MISS")
        goal_s = "" if goal is None else f"<= {goal:.2f} "
        print(
            f"{ratio:>6.1f} {med(r['x']):>8.1f} {med(r['s']):>8.4f} | {med(r['plain']):>+10.4f} "
            f"| {ours:>+9.4f} | {goal_s}{verdict} (worst seed {max(r['ours']):+.4f})"
        )


def tp_prune_to_flops(model: torch.nn.Module, flops_budget: int, example: torch.Tensor):
    """Torch-Pruning's MetaPruner + MagnitudeImportance at the ratio that meets the budget."""
    import torch_pruning as tp

    def pruned_at(ratio: float) -> torch.nn.Module:
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            m,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            ignored_layers=[m.classifier],
        )
        pruner.step()
        return m

    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = (lo + hi) / 2
        if count_flops(pruned_at(mid), example)[0] > flops_budget:
            lo = mid
        else:
            hi = mid
    return pruned_at(hi), hi


def structured_seed(dense: torch.nn.Module, epochs: int, seed: int) -> dict[str, float]:
    """Ours and Torch-Pruning at the same FLOPs on one pre-trained cnn_small (interleaved)."""
    data = load_digits()
    example = data.sample_batch(1)
    base = evaluate(dense, data)["accuracy"]
    dense_flops = count_flops(dense, example)[0]
    ft = {"epochs": epochs, "lr": 0.02, "optimizer": "sgd", "batch_size": 64}
    ours = prune(
        dense,
        {
            "pruning": {
                "granularity": "filter",
                "criterion": "l1",
                "scope": "layerwise",
                "sparsity": 0.55,
                "physical": True,
                "exclude": ["classifier"],
            },
            "schedule": {"kind": "iterative", "steps": 2},
            "finetune": ft,
        },
        seed,
    )
    ours_flops = count_flops(ours.model, example)[0]
    theirs, ratio = tp_prune_to_flops(dense, ours_flops, example)
    torch.manual_seed(seed)
    fine_tune(theirs, data, FinetuneSpec(**{**ft, "epochs": 2 * epochs}), seed=seed)
    return {
        "base": base,
        "ours": base - ours.final["accuracy"],
        "tp": base - evaluate(theirs, data)["accuracy"],
        "ratio": ratio,
        "ours_x": dense_flops / ours_flops,
        "tp_x": dense_flops / count_flops(theirs, example)[0],
    }


def structured(seeds: list[int], pretrain: int, epochs: int) -> None:
    runs = []
    for seed in seeds:
        runs.append(structured_seed(pretrained("cnn_small", pretrain, seed), epochs, seed))
        print(
            f"  seed {seed} cnn_small: dense {runs[-1]['base']:.4f} ours drop "
            f"{runs[-1]['ours']:+.4f}, Torch-Pruning drop {runs[-1]['tp']:+.4f}",
            flush=True,
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    print(
        f"\ncnn_small on digits, seeds {seeds}: dense accuracy (median) {med('base'):.4f}; "
        f"ours = L1 filter, layerwise, 2 steps x {epochs} epochs, physical; Torch-Pruning = "
        f"MetaPruner + L1 magnitude, {2 * epochs} epochs; drops are medians"
    )
    print(f"{'method':<28} {'FLOPs x':>8} {'drop':>8} {'worst seed':>10}")
    print(
        f"{'ours (L1 filter, physical)':<28} {med('ours_x'):>8.2f} {med('ours'):>+8.4f} "
        f"{max(r['ours'] for r in runs):>+10.4f}"
    )
    tp_name = f"Torch-Pruning (ratio {med('ratio'):.3f})"
    print(
        f"{tp_name:<28} {med('tp_x'):>8.2f} {med('tp'):>+8.4f} {max(r['tp'] for r in runs):>+10.4f}"
    )
    ok = med("ours_x") >= 4 and med("ours") <= 0.01
    print(f"target: >= 4x fewer FLOPs within 1 point: {'PASS' if ok else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (medians shown)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and epochs (smoke run)")
    parser.add_argument("--skip-structured", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, epochs = (2, 2) if args.quick else (5, 10)
    start = time.perf_counter()
    unstructured(seeds, steps, epochs, 3 if args.quick else PRETRAIN_MLP["epochs"])
    if not args.skip_structured:
        structured(seeds, 2 if args.quick else 8, 2 if args.quick else 10)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
