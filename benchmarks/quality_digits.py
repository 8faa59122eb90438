"""Quality benchmark on digits: plain iterative magnitude pruning vs our best schedule.

Unstructured: the MLP (64-300-100-10). Plain = Han et al. style iterative global magnitude
pruning, ``--steps`` rounds with 10 fine-tune epochs each at a constant LR. Ours = AGP (cubic
ramp) inside one cosine fine-tuning run of the same total epochs. Targets: 20x within 1 point
and 33x within 3 points of the dense accuracy.

Structured: cnn_small at 4x fewer FLOPs (target: within 1 point). Ours = L1 filter pruning,
layerwise, iterative, physically removed, fine-tuned; Torch-Pruning = ``tp.pruner.MetaPruner``
with ``tp.importance.MagnitudeImportance`` at a pruning ratio found to match the same FLOPs
budget, then the same fine-tuning.

Run: ``python benchmarks/quality_digits.py [--seed 0] [--quick]``. Takes a few minutes on CPU.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from app import zoo
from app.datasets import load_digits
from app.pruning.measure import count_flops, evaluate
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import fine_tune, train

LEVELS = ((12.5, 0.92), (20.0, 0.95), (100 / 3, 0.97))
TARGET_DROP = {20.0: 0.01, 100 / 3: 0.03}


def pretrained(arch: str, epochs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = zoo.build(arch)
    spec = (
        FinetuneSpec(epochs=epochs, lr=0.003, optimizer="adam", batch_size=64)
        if arch == "mlp"
        else FinetuneSpec(epochs=epochs, lr=0.05, optimizer="sgd", batch_size=64)
    )
    train(model, load_digits(), spec, seed=seed)
    return model


def prune(model: torch.nn.Module, body: dict, seed: int):
    recipe = Recipe.from_dict({"kind": "prune", "name": "bench", "seed": seed, **body})
    return run_recipe(recipe, copy.deepcopy(model), load_digits(), latency=False)


def unstructured(dense: torch.nn.Module, steps: int, epochs: int, seed: int) -> None:
    base = evaluate(dense, load_digits())["accuracy"]
    print(f"\nMLP 64-300-100-10 on digits: dense accuracy {base:.4f}")
    print(f"{'x':>6} {'sparsity':>8} | {'plain':>7} {'drop':>7} | {'ours':>7} {'drop':>7} | target")
    for ratio, sparsity in LEVELS:
        pruning = {
            "granularity": "element",
            "criterion": "l1",
            "scope": "global",
            "sparsity": sparsity,
        }
        plain = prune(dense, {
            "pruning": pruning, "schedule": {"kind": "iterative", "steps": steps},
            "finetune": {"epochs": epochs, "lr": 0.001, "optimizer": "adam", "batch_size": 64,
                         "lr_schedule": "constant"},
        }, seed)  # fmt: skip
        ours = prune(dense, {
            "pruning": pruning, "schedule": {"kind": "agp", "steps": 2 * steps},
            "finetune": {"epochs": steps * epochs, "lr": 0.003, "optimizer": "adam",
                         "batch_size": 64, "lr_schedule": "cosine", "label_smoothing": 0.05},
        }, seed)  # fmt: skip
        a_plain, a_ours = plain.final["accuracy"], ours.final["accuracy"]
        goal = TARGET_DROP.get(ratio)
        verdict = "-" if goal is None else ("met" if base - a_ours <= goal else "MISSED")
        goal_s = "" if goal is None else f"<= {goal:.2f} "
        print(f"{ratio:>6.1f} {ours.final['sparsity']:>8.4f} | {a_plain:>7.4f} {base - a_plain:>+7.4f} | "
              f"{a_ours:>7.4f} {base - a_ours:>+7.4f} | {goal_s}{verdict}")  # fmt: skip


def tp_prune_to_flops(model: torch.nn.Module, flops_budget: int, example: torch.Tensor):
    """Torch-Pruning's MetaPruner + MagnitudeImportance at the ratio that meets the budget."""
    import torch_pruning as tp

    def pruned_at(ratio: float) -> torch.nn.Module:
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(
            m, example, importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, ignored_layers=[m.classifier],
        )  # fmt: skip
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


def structured(dense: torch.nn.Module, epochs: int, seed: int) -> None:
    data = load_digits()
    example = data.sample_batch(1)
    base = evaluate(dense, data)["accuracy"]
    dense_flops = count_flops(dense, example)[0]
    ft = {"epochs": epochs, "lr": 0.02, "optimizer": "sgd", "batch_size": 64}
    ours = prune(dense, {
        "pruning": {"granularity": "filter", "criterion": "l1", "scope": "layerwise",
                    "sparsity": 0.55, "physical": True, "exclude": ["classifier"]},
        "schedule": {"kind": "iterative", "steps": 2}, "finetune": ft,
    }, seed)  # fmt: skip
    ours_flops = count_flops(ours.model, example)[0]
    theirs, ratio = tp_prune_to_flops(dense, ours_flops, example)
    torch.manual_seed(seed)
    fine_tune(theirs, data, FinetuneSpec(**{**ft, "epochs": 2 * epochs}), seed=seed)
    a_ours, a_tp = ours.final["accuracy"], evaluate(theirs, data)["accuracy"]
    tp_flops = count_flops(theirs, example)[0]
    print(f"\ncnn_small on digits: dense accuracy {base:.4f}, {dense_flops} FLOPs")
    print(f"{'method':<28} {'FLOPs x':>8} {'accuracy':>9} {'drop':>8}")
    print(
        f"{'ours (L1 filter, physical)':<28} {dense_flops / ours_flops:>8.2f} {a_ours:>9.4f} {base - a_ours:>+8.4f}"
    )
    print(
        f"{f'Torch-Pruning (ratio {ratio:.3f})':<28} {dense_flops / tp_flops:>8.2f} {a_tp:>9.4f} {base - a_tp:>+8.4f}"
    )
    verdict = "met" if dense_flops / ours_flops >= 4 and base - a_ours <= 0.01 else "MISSED"
    print(f"target: >= 4x fewer FLOPs within 1 point: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer steps and epochs (smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    steps, epochs = (2, 2) if args.quick else (5, 10)
    start = time.perf_counter()
    unstructured(pretrained("mlp", 3 if args.quick else 15, args.seed), steps, epochs, args.seed)
    structured(
        pretrained("cnn_small", 2 if args.quick else 8, args.seed),
        2 if args.quick else 10,
        args.seed,
    )
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
