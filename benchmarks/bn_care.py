"""BatchNorm and bias care after a prune step, measured on digits: accuracy right after pruning
(before fine-tuning) and after the usual fine-tuning, with and without each care.

* cnn_small (has BatchNorm): 50% of the filters (L1, layerwise, classifier kept) as masks and
  physically removed, with and without ``pruning.bn_recalibrate``; 80% element masks too.
* cnn_small with its BatchNorm folded into the convs (no BN left): 50% of the filters, with and
  without ``pruning.bias_correction``.

    .venv/bin/python benchmarks/bn_care.py [--epochs 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.train import train

PRETRAIN = FinetuneSpec(epochs=4, lr=0.05, optimizer="sgd", batch_size=64)


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy of a zoo ``cnn_small`` with every Conv -> BatchNorm pair fused into one Conv."""
    folded = copy.deepcopy(model).eval()
    feats = folded.features
    for i in range(len(feats) - 1):
        if isinstance(feats[i], nn.Conv2d) and isinstance(feats[i + 1], nn.BatchNorm2d):
            feats[i] = fuse_conv_bn_eval(feats[i], feats[i + 1])
            feats[i + 1] = nn.Identity()
    return folded


def _run(
    model: nn.Module, data, pruning: dict, epochs: int, seed: int
) -> tuple[float, float, list[str]]:
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "bn_care",
            "pruning": {"criterion": "l1", **pruning},
            "finetune": {"epochs": epochs, "lr": 0.02, "optimizer": "sgd", "batch_size": 64},
            "seed": seed,
        }
    )
    result = run_recipe(recipe, copy.deepcopy(model), data, latency=False)
    step = result.steps[1]
    notes = [n["text"] for n in result.notes if "bias correction" in n["text"]]
    return step["before_finetune"]["accuracy"], result.final["accuracy"], notes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="pre-training and recipe seed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_digits()
    torch.manual_seed(args.seed)
    model = zoo.build("cnn_small")
    train(model, data, PRETRAIN)
    folded = fold_bn(model)
    filt = {
        "granularity": "filter",
        "scope": "layerwise",
        "sparsity": 0.5,
        "exclude": ["classifier"],
    }
    cases = [
        ("cnn_small filter 50% masks", model, filt, "bn_recalibrate"),
        ("cnn_small filter 50% physical", model, {**filt, "physical": True}, "bn_recalibrate"),
        (
            "cnn_small element 80% masks",
            model,
            {"granularity": "element", "sparsity": 0.8},
            "bn_recalibrate",
        ),
        ("cnn_small BN folded, filter 50% masks", folded, filt, "bias_correction"),
        (
            "cnn_small BN folded, filter 50% physical",
            folded,
            {**filt, "physical": True},
            "bias_correction",
        ),
    ]
    from app.pruning.measure import evaluate

    print(
        f"baseline {evaluate(model, data)['accuracy']:.4f}, "
        f"folded {evaluate(folded, data)['accuracy']:.4f}"
    )
    for label, net, pruning, switch in cases:
        for on in (False, True):
            pruned, tuned, notes = _run(net, data, {**pruning, switch: on}, args.epochs, args.seed)
            print(
                f"{label:42s} {switch}={on!s:5s} after prune {pruned:.4f}  "
                f"after {args.epochs} epochs {tuned:.4f}  {notes}"
            )


if __name__ == "__main__":
    main()
