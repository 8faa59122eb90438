"""Fine-tuning defaults on digits (issue 13): which optimizer/LR recovers best, does
distillation from the dense model help.

Cases (zoo models pre-trained here, seed per run): MLP 95% element one-shot + 4 epochs; MLP
at 20x (95.8%) iterative 5 steps x 8 epochs; cnn_small 90% element iterative 3 x 2 epochs;
cnn_small 50% filters (layerwise, physically removed) one-shot + 3 epochs. Prints the dense
accuracy, the final accuracy and the LR ``"auto"`` chose.

    python benchmarks/finetune_defaults.py lr [--cases a,b] [--seeds 0,1]
    python benchmarks/finetune_defaults.py distill [--cases a,b] [--seeds 0,1,2] [--epochs N]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import train

DATA = load_digits()
L1 = {"criterion": "l1"}
CASES = {
    "mlp95": ("mlp", {**L1, "granularity": "element", "sparsity": 0.95}, {"kind": "oneshot"}, 4),
    "mlp20x": (
        "mlp",
        {**L1, "granularity": "element", "sparsity": 0.958},
        {"kind": "iterative", "steps": 5},
        8,
    ),
    "cnn90": (
        "cnn_small",
        {**L1, "granularity": "element", "sparsity": 0.9},
        {"kind": "iterative", "steps": 3},
        2,
    ),
    "cnn50filter": (
        "cnn_small",
        {**L1, "granularity": "filter", "scope": "layerwise", "sparsity": 0.5, "physical": True},
        {"kind": "oneshot"},
        3,
    ),
}
LR_VARIANTS = {
    "sgd 0.01 (old default)": {"optimizer": "sgd", "lr": 0.01, "warmup": 0.0},
    "adamw 1e-3": {"optimizer": "adamw", "lr": 0.001},
    "adamw 3e-3": {"optimizer": "adamw", "lr": 0.003},
    "adamw 1e-2": {"optimizer": "adamw", "lr": 0.01},
    "adamw 3e-2": {"optimizer": "adamw", "lr": 0.03},
    "adamw auto (default)": {"optimizer": "adamw", "lr": "auto"},
}
DISTILL_VARIANTS = {
    "off": {"distill": None},
    "w0.5 T2": {"distill": {"weight": 0.5, "temperature": 2.0}},
    "w0.9 T4": {"distill": {"weight": 0.9, "temperature": 4.0}},
}
_CACHE: dict[tuple[str, int], torch.nn.Module] = {}


def pretrained(arch: str, seed: int) -> torch.nn.Module:
    if (arch, seed) not in _CACHE:
        torch.manual_seed(seed)
        model = zoo.build(arch)
        spec = (
            FinetuneSpec(epochs=15, lr=0.003, optimizer="adam", batch_size=64, warmup=0.0)
            if arch == "mlp"
            else FinetuneSpec(epochs=4, lr=0.05, optimizer="sgd", batch_size=64, warmup=0.0)
        )
        train(model, DATA, spec, seed=seed)
        _CACHE[(arch, seed)] = model
    return copy.deepcopy(_CACHE[(arch, seed)])


def run(case: str, finetune: dict, seed: int, epochs: int = 0) -> tuple[float, float, str]:
    arch, pruning, schedule, default_epochs = CASES[case]
    epochs = epochs or default_epochs
    body = {"kind": "prune", "name": case, "seed": seed, "pruning": pruning}
    body |= {"schedule": schedule, "finetune": {"epochs": epochs, **finetune}}
    result = run_recipe(Recipe.from_dict(body), pretrained(arch, seed), DATA, latency=False)
    auto = [n["text"] for n in result.notes if n["text"].startswith("lr auto")]
    chosen = "/".join(a.split("chose ")[1].split(" ")[0] for a in auto)
    return result.baseline["accuracy"], result.final["accuracy"], chosen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("lr", "distill"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=0, help="instead of the case's epochs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = LR_VARIANTS if args.what == "lr" else DISTILL_VARIANTS
    seeds = [int(s) for s in args.seeds.split(",")]
    for case in args.cases.split(","):
        for name, finetune in variants.items():
            runs = [run(case, finetune, seed, args.epochs) for seed in seeds]
            dense = statistics.median(r[0] for r in runs)
            final = statistics.median(r[1] for r in runs)
            lrs = " ".join(r[2] for r in runs if r[2])
            print(
                f"{case:12s} {name:24s} dense {dense:.4f} final {final:.4f} "
                f"drop {100 * (dense - final):+.1f} pt  {lrs}",
                flush=True,
            )


if __name__ == "__main__":
    main()
