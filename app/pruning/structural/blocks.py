"""Physical removal at granularity ``layer``: removed residual blocks become an identity.

A block ``y = post(x + branch(x))`` whose branch is all zeros (the ``layer`` plan zeroes its
weights, biases and BN affine) outputs ``post(x)``. :func:`remove_blocks` replaces the whole
block module by ``nn.Identity`` when that gives the masked model's outputs, else by
``nn.ReLU`` (a block that ends with a ReLU after the add, fed by a value that can be
negative), and keeps the block (masks) when neither does. ResNet20's blocks end with a ReLU
after the add, but their input is the previous block's ReLU output (non-negative), so the
identity is exact there. The replacement carries ``prunelab_removed_block = True``, so
:func:`~app.pruning.structural.rebuild.architecture_config` records it.

Example:
    >>> from app import zoo
    >>> from app.pruning.masks.compute import compute_masks
    >>> from app.pruning.masks.keeper import apply_masks
    >>> from app.pruning.pruning_spec import PruningSpec
    >>> model = zoo.build("resnet20", input_shape=(3, 8, 8)).eval()
    >>> plan = compute_masks(model, PruningSpec("layer", "l1", sparsity=0.3))
    >>> apply_masks(model, plan)
    >>> small, notes = remove_blocks(model, plan.masks, torch.randn(2, 3, 8, 8))
    >>> notes[0].startswith("block layer") and "replaced by Identity" in notes[0]
    True
    >>> sum(isinstance(m, nn.Identity) for m in small.modules()) == len(notes)
    True
"""

from __future__ import annotations

import copy
import os

import torch
from torch import Tensor, nn

from app.pruning.structural.graph import eval_mode
from app.pruning.topology import residual_blocks

TOLERANCE = 1e-4


def _owner(names: tuple[str, ...]) -> str:
    """The innermost module holding every layer of a block ('' when it is the model)."""
    return ".".join(os.path.commonprefix([n.split(".")[:-1] for n in names]))


def _output(model: nn.Module, x: Tensor) -> Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x)


def _close(a: Tensor, b: Tensor) -> bool:
    return bool((a - b).abs().max() <= TOLERANCE * max(1.0, float(b.abs().max())))


def removed_blocks(model: nn.Module, masks: dict[str, Tensor]) -> list[str]:
    """Names of the block modules whose prunable layers the masks remove entirely."""
    names = []
    for block in residual_blocks(model):
        if all(n in masks and not bool(masks[n].any()) for n in block.layers):
            owner = _owner(block.layers + block.norms)
            if owner:
                names.append(owner)
    return names


def remove_blocks(
    model: nn.Module, masks: dict[str, Tensor], example: Tensor
) -> tuple[nn.Module, list[str]]:
    """A copy of the masked ``model`` with its removed blocks replaced (see module docstring).

    Args:
        model: the masked model (removed blocks all zero); left untouched.
        masks: the ``layer`` plan's masks.
        example: a real input batch, to check each replacement against the masked model.

    Returns:
        The smaller model and one sentence per block (what replaced it, or why it stayed).
    """
    small, notes = copy.deepcopy(model), []
    expected = _output(model, example)
    for name in removed_blocks(model, masks):
        parent_name, _, attr = name.rpartition(".")
        parent = small.get_submodule(parent_name)
        block = getattr(parent, attr)
        for cls in (nn.Identity, nn.ReLU):
            replacement = cls()
            replacement.prunelab_removed_block = True
            setattr(parent, attr, replacement)
            if _close(_output(small, example), expected):
                notes.append(f"block {name} replaced by {cls.__name__}")
                break
        else:
            setattr(parent, attr, block)
            notes.append(f"block {name} kept as zeros: no identity gives the masked outputs")
    return small, notes
