"""A global element ranking keeps every layer above pruning.layer_floor (issue 13)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.pruning.masks.compute import compute_masks
from app.pruning.pruning_spec import PruningSpec


def _stem_and_body() -> nn.Module:
    """A small first layer with small weights before a large one: a plain global magnitude
    ranking empties the first (as it left a transformers ResNet's 7x7 stem 11 of 784)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 200), nn.ReLU(), nn.Linear(200, 3)
    )
    with torch.no_grad():
        model[0].weight.mul_(0.01)
    return model


def _kept(plan) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in plan.masks.items()}


def test_a_small_layer_keeps_half_a_uniform_cuts_share_and_the_total_still_meets_the_target():
    model = _stem_and_body()
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    plain = _kept(compute_masks(model, PruningSpec("element", "l1", sparsity=0.8, layer_floor=0.0)))
    assert plain["0"] <= 1  # emptied but for the never-empty unit
    plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.8))  # default floor 0.5
    kept = _kept(plan)
    assert kept["0"] == 2  # ceil(0.5 * (1 - 0.8) * 20)
    assert all(k >= 0.5 * 0.2 * plan.masks[n].numel() for n, k in kept.items())
    assert sum(kept.values()) == total - round(0.8 * total)
    assert any("pruning.layer_floor" in n["text"] for n in plan.notes)


def test_the_floor_leaves_a_ranking_that_respects_it_unchanged():
    model = _stem_and_body()
    with torch.no_grad():  # every layer on one scale: each keeps about the uniform share
        for layer in model:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_()
    spec = PruningSpec("element", "l1", sparsity=0.5)
    off = PruningSpec("element", "l1", sparsity=0.5, layer_floor=0.0)
    assert _kept(compute_masks(model, spec)) == _kept(compute_masks(model, off))


def test_layer_floor_is_refused_where_it_does_not_apply():
    with pytest.raises(ValueError, match="layer_floor"):
        PruningSpec("filter", "l1", sparsity=0.5, layer_floor=0.2)
    with pytest.raises(ValueError, match="layer_floor"):
        PruningSpec("element", "l1", sparsity=0.5, layer_floor=1.5)
