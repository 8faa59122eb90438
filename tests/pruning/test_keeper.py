"""MaskKeeper: exact zeros for weights and optimizer state, at one pass per masked step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import INDEX_MAX_PRUNED, MaskKeeper, PrunedEntries, apply_masks
from app.pruning.pruning_spec import PruningSpec
from tests.pruning.conftest import make_mlp

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def _plan(model: nn.Module):
    # '0' element 60% (multiply), '2' filters (whole rows), '4' one weight of 64 (indices)
    plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.6, overrides={"4": 0.02}))
    rows = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5))
    plan.masks["2"] = rows.masks["2"]
    return plan


def _train(model, plan, opt_name, data, how: str, steps: int = 5):
    """how: 'keeper' (zero_grads + after_step), 'after_step' (alone), 'grads' (reference:
    mask the gradients with torch, nothing after the step)."""
    opt = OPTIMIZERS[opt_name](model.parameters())
    keeper = MaskKeeper(model, plan)
    x, y = data.tensors("train")
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if how == "keeper":
            keeper.zero_grads()
        elif how == "grads":
            for name, mask in plan.masks.items():
                model.get_submodule(name).weight.grad.mul_(mask)
        opt.step()
        if how != "grads":
            keeper.after_step(opt)
    return opt


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_rezeroing_after_the_step_gives_the_weights_of_masked_gradients(
    opt_name, vector_data
) -> None:
    base = make_mlp()
    plan = _plan(base)
    apply_masks(base, plan)
    runs = {how: copy.deepcopy(base) for how in ("keeper", "after_step", "grads")}
    opts = {how: _train(m, plan, opt_name, vector_data, how) for how, m in runs.items()}
    ref = dict(runs["grads"].named_parameters())
    for how in ("keeper", "after_step"):
        for name, p in runs[how].named_parameters():
            assert torch.equal(p, ref[name]), (how, name)
            state, ref_state = opts[how].state[p], opts["grads"].state[ref[name]]
            for key in MaskKeeper._STATE_KEYS:
                if key in state:
                    assert torch.equal(state[key], ref_state[key]), (how, name, key)
    for name, mask in plan.masks.items():
        w = runs["keeper"].get_submodule(name).weight
        assert bool((w[~mask] == 0).all()) and bool((w[mask] != 0).any())


def test_a_new_keeper_zeroes_the_momentum_an_existing_optimizer_holds(vector_data) -> None:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = vector_data.tensors("train")

    def step(keeper: MaskKeeper | None) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if keeper is not None:
            keeper.zero_grads()
        opt.step()
        if keeper is not None:
            keeper.after_step(opt)

    step(None)  # dense training: momentum everywhere (as when AGP prunes mid-training)
    plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.7))
    apply_masks(model, plan)
    keeper = MaskKeeper(model, plan)
    for _ in range(4):
        step(keeper)
        for name, mask in plan.masks.items():
            w = model.get_submodule(name).weight
            assert bool((w[~mask] == 0).all())
            assert bool((opt.state[w]["momentum_buffer"][~mask] == 0).all())


def test_a_masked_step_costs_one_pass_and_other_optimizers_get_the_full_pass(
    vector_data, monkeypatch
) -> None:
    x, y = vector_data.tensors("train")
    for opt_cls, per_step in ((torch.optim.SGD, 1), (torch.optim.RMSprop, 6)):
        model = make_mlp()
        plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.5))
        apply_masks(model, plan)
        keeper, opt = MaskKeeper(model, plan), opt_cls(model.parameters(), lr=0.01)
        calls: list[int] = []
        zero = keeper.entries.zero
        monkeypatch.setattr(
            keeper.entries, "zero", lambda t, zero=zero, calls=calls: calls.append(1) or zero(t)
        )
        for i in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            keeper.zero_grads()
            opt.step()
            keeper.after_step(opt)
            if i == 0:  # the first step zeroes weights and state: grads, weights, 4 state keys
                assert len(calls) == 6
                calls.clear()
        assert len(calls) == 3 * per_step, opt_cls.__name__
        for name, mask in plan.masks.items():
            assert bool((model.get_submodule(name).weight[~mask] == 0).all())


def _random_keep(shape, pruned: float, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) >= pruned


@pytest.mark.parametrize(
    ("keep", "mode"),
    [
        (_random_keep((32, 24), 0.5), "mul"),
        (_random_keep((32, 24), INDEX_MAX_PRUNED / 2), "index"),
        (_random_keep((32, 1), 0.5).expand(32, 24), "rows"),
        (_random_keep((40,), 0.5), "mul"),
        (torch.ones(32, 24, dtype=torch.bool), None),
    ],
)
@pytest.mark.parametrize("layout", ["contiguous", "strided", "float64", "bfloat16"])
def test_pruned_entries_zero_exactly_the_pruned_entries(keep, mode, layout) -> None:
    entries = PrunedEntries([keep], [torch.empty(keep.shape)])
    assert entries.modes == [mode]
    dtype = {"float64": torch.float64, "bfloat16": torch.bfloat16}.get(layout, torch.float32)
    t = torch.randn(keep.shape, dtype=dtype)
    if layout == "strided":
        t = torch.randn(2 * keep.numel())[::2] if keep.dim() == 1 else torch.randn(24, 32).T
    expected = t * keep
    entries.zero([None])  # tensors a step did not create (no grad yet) are skipped
    entries.zero([t])
    assert torch.equal(t, expected)
    assert bool((t[keep] != 0).all()) and bool((t[~keep] == 0).all())
