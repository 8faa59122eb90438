"""Scores -> masks: equality with torch.nn.utils.prune, targets, overrides, keeping masks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from app.pruning.masks.compute import compute_masks, validate
from app.pruning.masks.keeper import MaskKeeper, apply_masks
from app.pruning.masks.ranking import global_lowest
from app.pruning.pruning_spec import PruningSpec
from tests.pruning.conftest import TinyResNet, make_cnn, make_mlp


def _torch_masks(model: nn.Module, names: list[str], amount: float, glob: bool) -> dict:
    model = copy.deepcopy(model)
    mods = dict(model.named_modules())
    if glob:
        params = [(mods[n], "weight") for n in names]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    else:
        for n in names:
            tprune.l1_unstructured(mods[n], "weight", amount=amount)
    return {n: mods[n].weight_mask.bool() for n in names}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("amount", [0.3, 0.6, 0.75])
def test_element_l1_masks_equal_torch_prune(scope, amount) -> None:
    model = make_cnn()
    plan = compute_masks(model, PruningSpec("element", "l1", scope=scope, sparsity=amount))
    expected = _torch_masks(model, list(plan.masks), amount, scope == "global")
    assert not any("would have been emptied" in n["text"] for n in plan.notes)
    for name, mask in expected.items():
        assert torch.equal(plan.masks[name], mask), name


def test_global_element_keeps_one_weight_where_torch_empties_a_layer() -> None:
    model = make_cnn()  # at 90% torch's global ranking takes every weight of conv '3'
    # the never-empty rule alone (the default layer floor keeps more: test_layer_floor.py)
    plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.9, layer_floor=0.0))
    expected = _torch_masks(model, list(plan.masks), 0.9, True)
    assert int(expected["3"].sum()) == 0 and int(plan.masks["3"].sum()) == 1
    w = model[3].weight.abs()
    assert bool(plan.masks["3"][w == w.max()].all())
    assert torch.equal(plan.masks["0"], expected["0"]) and torch.equal(
        plan.masks["8"], expected["8"]
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=4), st.floats(0, 1), st.integers(0, 99))
def test_global_lowest_selects_exactly_k_with_ties(sizes, frac, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.randint(0, 20, (n,), generator=gen).float() / 7 for n in sizes]  # many ties
    flat = torch.cat(scores)
    k = round(frac * flat.numel())
    chosen, cut = global_lowest(scores, k)
    picked = torch.cat(chosen)
    assert int(picked.sum()) == k
    if k:
        assert float(flat[picked].max()) == cut
        assert bool((flat[~picked] >= cut).all())


def test_threshold_criterion_prunes_exactly_below_t() -> None:
    model = make_mlp()
    plan = compute_masks(model, PruningSpec("element", "threshold", threshold=0.15))
    for name, mask in plan.masks.items():
        w = dict(model.named_modules())[name].weight
        assert torch.equal(mask, w.abs() >= 0.15)
        assert plan.thresholds[name] == 0.15 and plan.requested[name] is None


def test_exclusions_and_overrides_are_respected() -> None:
    model = make_mlp()
    spec = PruningSpec("element", "l1", sparsity=0.8, exclude=("4",), overrides={"0": 0.25})
    plan = compute_masks(model, spec)
    assert "4" not in plan.masks and plan.achieved["4"] == 0.0
    assert plan.requested["0"] == 0.25 and abs(plan.achieved["0"] - 0.25) < 1 / 192
    assert abs(plan.achieved["2"] - 0.8) < 1 / 256
    assert apply_masks(model, plan) is None and bool((model[4].weight != 0).all())


def test_unknown_or_unprunable_names_are_refused() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="pruning.exclude names 'fc3', which is not a layer"):
        validate(PruningSpec("element", "l1", sparsity=0.5, exclude=("fc3",)), model)
    with pytest.raises(ValueError, match="names '0', a Embedding, which PruneLab does not prune"):
        validate(PruningSpec("element", "l1", sparsity=0.5, overrides={"0": 0.5}), model)


@pytest.mark.parametrize("round_to", [2, 3, 4])
def test_round_to_keeps_a_multiple_of_filters(round_to) -> None:
    model = make_mlp()
    spec = PruningSpec("filter", "l1", sparsity=0.6, round_to=round_to, exclude=("4",))
    plan = compute_masks(model, spec)
    for name in ("0", "2"):
        kept = int(plan.channels[name].sum())
        assert kept % round_to == 0 and kept >= round_to
        assert int(plan.masks[name].any(dim=1).sum()) == kept
    assert any("multiple of" in n["text"] for n in plan.notes)


def test_no_layer_is_emptied_even_at_extreme_global_targets() -> None:
    model = make_mlp()
    with torch.no_grad():
        model[2].weight *= 1e-4  # a raw global ranking would take all of it
    spec = PruningSpec("filter", "l1", sparsity=0.95, max_layer_sparsity=1.0, normalize="none")
    plan = compute_masks(model, spec)
    assert int(plan.channels["2"].sum()) >= 1
    assert any("would have been emptied" in n["text"] for n in plan.notes)


def test_previous_masks_stay_pruned_and_the_pruned_set_grows() -> None:
    model = make_cnn()
    first = compute_masks(model, PruningSpec("element", "random", sparsity=0.5), seed=1)
    second = compute_masks(model, PruningSpec("element", "l1", sparsity=0.7), previous=first.masks)
    for name, mask in first.masks.items():
        assert not bool((second.masks[name] & ~mask).any()), name
    total = sum(m.numel() for m in second.masks.values())
    assert abs(sum(int((~m).sum()) for m in second.masks.values()) / total - 0.7) < 1e-3


def test_nm_plan_reports_the_fixed_sparsity() -> None:
    plan = compute_masks(make_mlp(), PruningSpec("nm", "l1", nm=(2, 4)))
    assert set(plan.requested.values()) == {0.5}
    assert all(abs(a - 0.5) < 1e-9 for a in plan.achieved.values())


def test_filter_plan_zeroes_bias_and_bn_so_pruned_channels_output_zero() -> None:
    model = make_cnn().eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    spec = PruningSpec("filter", "l1", scope="layerwise", sparsity=0.5, exclude=("8",))
    plan = compute_masks(model, spec)
    apply_masks(model, plan)
    dead = ~plan.channels["0"]
    assert dead.any() and {"0.bias", "1.weight", "1.bias"} <= set(plan.extra)
    act = model[:3](torch.randn(2, 1, 8, 8))
    assert bool((act[:, dead] == 0).all()) and bool((act[:, ~dead] != 0).any())


def test_layer_granularity_turns_a_residual_block_into_the_identity() -> None:
    model = TinyResNet().eval()
    plan = compute_masks(model, PruningSpec("layer", "l1", sparsity=0.3))
    removed = [n for n, a in plan.achieved.items() if a == 1.0]
    assert removed in (["block1.conv1", "block1.conv2"], ["block2.conv1", "block2.conv2"])
    x = torch.randn(2, 1, 8, 8)
    apply_masks(model, plan)
    block = model.block1 if removed[0].startswith("block1") else model.block2
    h = torch.relu(torch.randn(2, 8, 8, 8))
    assert torch.equal(block(h), h)
    assert model(x).shape == (2, 4)


def test_layer_granularity_refused_without_residual_blocks() -> None:
    with pytest.raises(ValueError, match="granularity 'layer' needs residual blocks"):
        compute_masks(make_cnn(), PruningSpec("layer", "l1", sparsity=0.3))


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_mask_keeper_holds_weights_and_optimizer_state_at_zero(opt_name, vector_data) -> None:
    model = make_mlp()
    plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.6))
    apply_masks(model, plan)
    keeper = MaskKeeper(model, plan)
    opt = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        if opt_name == "sgd"
        else torch.optim.Adam(model.parameters(), lr=1e-2)
    )
    x, y = vector_data.tensors("train")
    before = {n: model.get_submodule(n).weight.detach().clone() for n in plan.masks}
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        keeper.zero_grads()
        opt.step()
        keeper.after_step(opt)
    for name, mask in plan.masks.items():
        w = model.get_submodule(name).weight
        assert bool((w[~mask] == 0).all())
        assert not torch.equal(w[mask], before[name][mask])  # the kept weights did train
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            if key in opt.state[w]:
                assert bool((opt.state[w][key][~mask] == 0).all()), key


def _random_masks(model: nn.Module, frac: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return {n: torch.rand(m.weight.shape, generator=gen) >= frac for n, m in layers}


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(["l1", "l2", "threshold"]),
    st.sampled_from(["global", "layerwise"]),
    st.sampled_from([0.0, 0.3, 0.9, 0.99]),
    st.booleans(),
    st.booleans(),
    st.integers(0, 99),
)
def test_element_magnitude_fast_path_equals_the_general_path(
    criterion, scope, sparsity, ties, with_previous, seed
) -> None:
    import app.pruning.masks.compute as masks_mod
    import app.pruning.masks.ranking as ranking_mod

    model = make_cnn(seed)
    if ties:  # few distinct magnitudes: many ties at every cut
        with torch.no_grad():
            for p in model.parameters():
                p.copy_((p * 8).round() / 8)
    previous = _random_masks(model, 0.4, seed) if with_previous else None
    spec = PruningSpec(
        "element",
        criterion,
        scope=scope,
        sparsity=sparsity,
        overrides={"3": 0.5} if seed % 2 else {},
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ranking_mod, "CHUNK", 7 + seed)  # many chunks, some split mid-layer
        fast = compute_masks(model, spec, previous=previous)
        mp.setattr(masks_mod, "_raw_magnitude", lambda *_: False)
        general = compute_masks(model, spec, previous=previous)
    assert masks_mod._raw_magnitude(spec, {"0": model[0]})
    assert fast.masks.keys() == general.masks.keys()
    for name, mask in general.masks.items():
        assert torch.equal(fast.masks[name], mask), name
    assert fast.thresholds == general.thresholds and fast.achieved == general.achieved
    assert fast.notes == general.notes


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=4), st.floats(0, 1), st.integers(0, 99))
def test_global_lowest_abs_equals_global_lowest_of_the_ranks(sizes, frac, seed) -> None:
    from app.pruning.masks.ranking import global_lowest_abs

    gen = torch.Generator().manual_seed(seed)
    weights = [(torch.randint(-9, 10, (n,), generator=gen).float() / 7) for n in sizes]
    forced = [None if i % 2 else torch.rand(n, generator=gen) < 0.3 for i, n in enumerate(sizes)]
    ranks = [
        w.abs() if f is None else torch.where(f, float("inf"), w.abs())
        for w, f in zip(weights, forced, strict=True)
    ]
    k = round(frac * sum(sizes))
    expected, cut = global_lowest(ranks, k)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("app.pruning.masks.ranking.CHUNK", 1 + seed % 50)
        got, got_cut = global_lowest_abs(weights, forced, k)
    assert got_cut == cut
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=4), st.floats(0, 1), st.integers(0, 99))
def test_global_lowest_breaks_ties_by_position_like_a_stable_sort(sizes, frac, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.randint(0, 5, (n,), generator=gen).float() for n in sizes]  # many ties
    flat = torch.cat(scores)
    k = round(frac * flat.numel())
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[torch.argsort(flat, stable=True)[:k]] = True
    assert torch.equal(torch.cat(global_lowest(scores, k)[0]), expected)


def test_a_kept_count_rounded_up_to_round_to_is_not_called_an_emptied_layer() -> None:
    model = make_mlp()
    spec = PruningSpec("filter", "l1", sparsity=0.95, round_to=8, scope="layerwise")
    plan = compute_masks(model, spec)
    texts = [n["text"] for n in plan.notes if n["layer"] == "0"]
    assert int(plan.channels["0"].sum()) == 8
    assert any("rounded up to 8" in t and "pruning.round_to 8" in t for t in texts)
    assert not any("would have been emptied" in t for t in texts)
    spec = PruningSpec("filter", "l1", sparsity=0.99, round_to=4, scope="layerwise")
    plan = compute_masks(model, spec)  # 0.99 of 16 filters rounds to all 16
    texts = [n["text"] for n in plan.notes if n["layer"] == "0"]
    assert any("would have been emptied" in t and "pruning.round_to 4" in t for t in texts)


def test_round_to_capped_per_layer_names_the_layer_s_own_multiple() -> None:
    model = make_mlp()  # hidden layers of 16 units: round_to 16 capped at 4
    spec = PruningSpec(
        "filter", "l1", sparsity=0.95, round_to=16, round_to_cap="layer", scope="layerwise"
    )
    plan = compute_masks(model, spec)
    assert int(plan.channels["0"].sum()) == 4
    texts = [n["text"] for n in plan.notes if n["layer"] == "0"]
    assert any(
        "rounded up to 4 (a multiple of 4: pruning.round_to 16 capped for this layer's width)" in t
        for t in texts
    ), texts
