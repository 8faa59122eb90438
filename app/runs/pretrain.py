"""``prunelab run --pretrain``: the reference recipes pre-train their own model first.

A recipe file may say how its model was pre-trained: a ``finetune`` block under
``expected.pretrain`` (the reference recipes in ``recipes/``) or a top-level ``pretrain``.
With ``--pretrain --arch NAME`` and no ``--model``, ``prunelab run`` builds ``NAME`` seeded with
0 and trains it densely with that block (seed 0) before running the recipe, so the recipe's
documented result reproduces from the command line alone.

Example:
    >>> pretrain_spec({"expected": {"pretrain": {"epochs": 5, "lr": 0.003}}}).epochs
    5
    >>> pretrain_spec({"kind": "prune"}) is None
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.pruning.spec import FinetuneSpec

if TYPE_CHECKING:
    from torch import nn

    from app.pruning.data import ArrayDataset

PRETRAIN_SEED = 0


def pretrain_spec(body: dict) -> FinetuneSpec | None:
    """The pre-training a recipe file names (``pretrain`` or ``expected.pretrain``), or None."""
    block = body.get("pretrain") or (body.get("expected") or {}).get("pretrain")
    return None if block is None else FinetuneSpec.from_dict(block)


def pretrained_model(arch: str, data: ArrayDataset, spec: FinetuneSpec, device: str) -> nn.Module:
    """A fresh ``arch`` (seed 0) trained densely on ``data`` with ``spec`` (seed 0)."""
    import torch

    from app import zoo
    from app.pruning.train import train

    torch.manual_seed(PRETRAIN_SEED)
    model = zoo.build(arch, num_classes=data.n_classes, input_shape=data.input_shape)
    train(model, data, spec, device=device, seed=PRETRAIN_SEED)
    return model


def pretrain_from_recipe(
    body: dict, *, arch: str | None, model_given: bool, data: ArrayDataset, device: str
) -> tuple[nn.Module, str, str]:
    """``--pretrain``: ``(model, identity, note)`` for the recipe file's pre-training.

    Raises:
        ValueError: ``--model`` was given too, ``--arch`` is missing, or the recipe names no
            pre-training.
    """
    if model_given or not arch:
        raise ValueError("--pretrain builds the model itself: give --arch NAME and no --model")
    spec = pretrain_spec(body)
    if spec is None:
        raise ValueError(
            "--pretrain needs a 'pretrain' block (finetune fields) in the recipe file, "
            "or 'expected.pretrain' as the reference recipes have"
        )
    model = pretrained_model(arch, data, spec, device)
    identity = f"arch:{arch}+pretrain:{sorted(spec.to_dict().items())}"
    return model, identity, f"pre-trained a fresh {arch} (seed 0): {spec.to_dict()}"
