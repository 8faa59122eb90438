"""Sensitivity sweeps and the per-layer allocation that meets a global target."""

from __future__ import annotations

import copy

import pytest
import torch

from app import zoo
from app.intake.datasets import load_digits
from app.pruning.sensitivity import allocate, run_sensitivity
from app.pruning.spec import FinetuneSpec, SensitivitySpec
from app.pruning.train import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.build("mlp")
    train(model, load_digits(), FinetuneSpec(epochs=4, lr=0.003, optimizer="adam", batch_size=64))
    return model


def test_sweep_prunes_each_layer_alone_and_leaves_the_model_unchanged(mlp) -> None:
    before = copy.deepcopy(mlp.state_dict())
    rows, allocation = run_sensitivity(mlp, load_digits(), SensitivitySpec(sparsities=(0.5, 0.99)))
    assert allocation == {}
    assert len(rows) == 3 * 3
    acc = {(r["layer"], r["sparsity"]): r["accuracy"] for r in rows}
    for layer in ("fc1", "fc2", "fc3"):
        assert acc[(layer, 0.99)] < acc[(layer, 0.0)]  # removing 99% of one layer hurts
    assert all(torch.equal(v, mlp.state_dict()[k]) for k, v in before.items())


def test_allocation_meets_the_global_target_and_spares_sensitive_layers(mlp) -> None:
    spec = SensitivitySpec(sparsities=(0.25, 0.5, 0.75, 0.9, 0.95), target=0.8)
    rows, allocation = run_sensitivity(mlp, load_digits(), spec)
    sizes = {"fc1": 64 * 300, "fc2": 300 * 100, "fc3": 100 * 10}
    removed = sum(allocation[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert removed == pytest.approx(0.8, abs=1e-3)
    assert allocation["fc3"] < allocation["fc2"]  # the small output layer is the sensitive one
    assert all(0.0 <= s <= 0.95 for s in allocation.values())


def test_allocate_prefers_the_flat_curve() -> None:
    rows = [
        {"layer": "a", "sparsity": 0.0, "accuracy": 0.9},
        {"layer": "a", "sparsity": 0.9, "accuracy": 0.9},
        {"layer": "b", "sparsity": 0.0, "accuracy": 0.9},
        {"layer": "b", "sparsity": 0.9, "accuracy": 0.1},
    ]
    alloc = allocate(rows, {"a": 100, "b": 100}, 0.45)
    assert alloc == {"a": 0.9, "b": 0.0}


def test_allocate_refuses_a_target_beyond_the_sweep() -> None:
    rows = [{"layer": "a", "sparsity": s, "accuracy": 0.9} for s in (0.0, 0.5)]
    with pytest.raises(ValueError, match="sensitivity.target"):
        allocate(rows, {"a": 10}, 0.8)
