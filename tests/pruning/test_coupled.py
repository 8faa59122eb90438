"""Coupled layers (residual streams) are ranked and cut together at filter/channel level."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from app import zoo
from app.pruning.checks import sparsity_notes
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.pruning_spec import PruningSpec
from app.pruning.structural.remove import physical_prune, zero_removed_units

torch.set_num_threads(1)
SHAPE = (3, 8, 8)
STREAMS = {  # the producers of each stage's residual stream
    16: ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"],
    32: ["layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"],
    64: ["layer3.0.shortcut.0", "layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv2"],
}


def _resnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return zoo.build("resnet20", input_shape=SHAPE).eval()


def _cut(model: nn.Module, spec: PruningSpec, x: torch.Tensor) -> tuple[nn.Module, list, object]:
    plan = compute_masks(model, spec, example=x)
    masked = copy.deepcopy(model)
    apply_masks(masked, plan)
    zero_removed_units(masked, plan, x, granularity=spec.granularity)
    notes: list[str] = []
    small = physical_prune(masked, plan, x, granularity=spec.granularity, notes=notes)
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-4)
    return small, notes, plan


def _out(model: nn.Module, name: str) -> int:
    return dict(model.named_modules())[name].out_channels


@pytest.mark.parametrize("granularity", ["filter", "channel"])
def test_resnet20_at_half_loses_about_half_of_every_coupled_group(granularity: str) -> None:
    model, x = _resnet(), torch.randn(4, *SHAPE)
    spec = PruningSpec(granularity, "l1", scope="layerwise", sparsity=0.5, physical=True)
    small, notes, _ = _cut(model, spec, x)
    assert notes == []  # nothing kept back silently
    for width, stream in STREAMS.items():
        kept = {_out(small, n) for n in stream}
        assert len(kept) == 1, (stream, kept)  # every producer keeps the same channels
        assert 0.4 <= kept.pop() / width <= 0.6, stream
    params = sum(p.numel() for p in small.parameters())
    assert params < 0.45 * sum(p.numel() for p in model.parameters())


def test_group_masks_keep_the_same_channels_in_every_member() -> None:
    model, x = _resnet(1), torch.randn(4, *SHAPE)
    plan = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.4), example=x)
    for stream in STREAMS.values():
        kept = [plan.channels[n] for n in stream]
        assert all(torch.equal(k, kept[0]) for k in kept), stream
        assert set(plan.groups[next(n for n in plan.groups if n in stream)]) == set(stream)
    assert any("coupled layers ranked and cut together" in n["text"] for n in plan.notes)


def test_round_to_gives_multiples_per_group() -> None:
    model, x = _resnet(), torch.randn(4, *SHAPE)
    spec = PruningSpec("filter", "l1", scope="layerwise", sparsity=0.3, round_to=8)
    small, notes, _ = _cut(model, spec, x)
    assert notes == []
    for width, stream in STREAMS.items():
        assert {_out(small, n) for n in stream} == {int(0.7 * width / 8 + 0.5) * 8}  # nearest
    convs = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    assert all(c % 8 == 0 for c in convs), convs


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_round_to_capped_per_layer_rounds_each_group_to_its_own_multiple(scope: str) -> None:
    """round_to 16 capped per layer: the 16-channel stream keeps a multiple of 4, the 32 one
    of 8, the 64 one of 16, the same channels in every member, and the first stream is cut."""
    model, x = _resnet(), torch.randn(4, *SHAPE)
    spec = PruningSpec("filter", "l1", scope=scope, sparsity=0.3, round_to=16, round_to_cap="layer")
    small, notes, plan = _cut(model, spec, x)
    assert notes == []
    for width, stream in STREAMS.items():
        kept = {_out(small, n) for n in stream}
        assert len(kept) == 1, (stream, kept)
        assert kept.pop() % {16: 4, 32: 8, 64: 16}[width] == 0, stream
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name, width in convs.items():
        assert _out(small, name) % min(16, width // 4) == 0, name
    assert _out(small, "conv1") < 16  # a global multiple of 16 would keep this stream whole
    if scope == "layerwise":
        assert {_out(small, n) for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2")} == {
            12,
            24,
            48,
        }
    note = next(n["text"] for n in plan.notes if "per layer (or coupled group)" in n["text"])
    assert (
        "pruning.round_to_cap 'layer'" in note
        and "16 'layer3.0.conv1', 'layer3.0.shortcut.0' (+3 coupled)" in note
    )


def _removed_share(model: nn.Module, plan) -> float:
    """Filter parameters removed (weights + biases of each pruned output channel)."""
    convs = {n: m for n, m in model.named_modules() if n in plan.channels}
    per = {n: m.weight[0].numel() + (m.bias is not None) for n, m in convs.items()}
    total = sum(per[n] * c.numel() for n, c in plan.channels.items())
    return sum(per[n] * int((~c).sum()) for n, c in plan.channels.items()) / total


@pytest.mark.parametrize("cap", ["none", "layer"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_a_coarse_global_multiple_still_reaches_the_sparsity_asked(
    cap: str, sparsity: float
) -> None:
    """round_to 16 on resnet20 (streams of 16, 32, 64): rounding every kept count up removed
    21% of the filter parameters for 30% asked; rounded up or down it lands within one block
    (16 channels of the widest group) of the target, every group keeps a multiple (at least
    one) and the same channels in every member."""
    model, x = _resnet(), torch.randn(4, *SHAPE)
    spec = PruningSpec("filter", "l1", sparsity=sparsity, round_to=16, round_to_cap=cap)
    plan = compute_masks(model, spec, example=x)
    convs = {n: m for n, m in model.named_modules() if n in plan.channels}
    block = max(16 * m.weight[0].numel() for m in convs.values()) * 4  # widest group: 4 members
    total = sum(m.weight.numel() for m in convs.values())
    assert abs(_removed_share(model, plan) - sparsity) <= block / total
    for name, channels in plan.channels.items():
        kept, width = int(channels.sum()), channels.numel()
        multiple = spec.multiple(width)
        assert kept >= min(multiple, width) and (kept % multiple == 0 or kept == width), name
    for stream in STREAMS.values():
        assert all(torch.equal(plan.channels[n], plan.channels[stream[0]]) for n in stream)
    rounding = next(n["text"] for n in plan.notes if "rounded up or down" in n["text"])
    assert f"for {sparsity:.0%}" in rounding


def test_rounding_down_respects_max_layer_sparsity() -> None:
    model, x = _resnet(), torch.randn(4, *SHAPE)
    spec = PruningSpec("filter", "l1", sparsity=0.6, round_to=16, max_layer_sparsity=0.7)
    plan = compute_masks(model, spec, example=x)
    for name, channels in plan.channels.items():
        assert int(channels.sum()) >= 0.3 * channels.numel(), name


def test_global_scope_never_takes_more_than_the_cap_from_a_layer_or_group() -> None:
    model, x = _resnet(2), torch.randn(4, *SHAPE)
    with torch.no_grad():  # the global ranking would take the whole first stream
        for name in STREAMS[16]:
            dict(model.named_modules())[name].weight.mul_(1e-3)
    spec = PruningSpec(
        "filter", "l1", sparsity=0.6, max_layer_sparsity=0.75, physical=True, normalize="none"
    )
    small, notes, plan = _cut(model, spec, x)
    assert notes == []
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name, conv in convs.items():
        assert _out(small, name) >= 0.25 * conv.out_channels, name
    assert {_out(small, n) for n in STREAMS[16]} == {4}
    capped = [n for n in plan.notes if "pruning.max_layer_sparsity" in n["text"]]
    assert any("coupled group" in n["text"] and n["level"] == "warning" for n in capped)
    table = [n["text"] for n in sparsity_notes(plan, 0.6, physical=True)]
    assert any(t.startswith("requested -> achieved per coupled group") for t in table)
    assert any("+".join(plan.groups["conv1"]) + " 60%->75%" in t for t in table)


def test_default_cap_keeps_a_tenth_of_each_layer() -> None:
    model, x = _resnet(3), torch.randn(4, *SHAPE)
    plan = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.95), example=x)
    for name, keep in plan.channels.items():
        assert int(keep.sum()) >= 0.1 * keep.numel(), name


def test_max_layer_sparsity_is_validated_and_only_where_it_applies() -> None:
    assert PruningSpec.from_dict({"granularity": "filter"}).max_layer_sparsity == 0.9
    spec = PruningSpec.from_dict({"granularity": "channel", "max_layer_sparsity": 0.5})
    assert PruningSpec.from_dict(spec.to_dict()) == spec
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="pruning.max_layer_sparsity"):
            PruningSpec(granularity="filter", max_layer_sparsity=bad)
    with pytest.raises(ValueError, match="max_layer_sparsity applies to scope 'global'"):
        PruningSpec(granularity="element", max_layer_sparsity=0.5)
    with pytest.raises(ValueError, match="max_layer_sparsity applies to scope 'global'"):
        PruningSpec(granularity="filter", scope="layerwise", max_layer_sparsity=0.5)


def test_an_override_on_one_member_sets_its_whole_group() -> None:
    model, x = _resnet(4), torch.randn(4, *SHAPE)
    spec = PruningSpec(
        "filter",
        "l1",
        scope="layerwise",
        sparsity=0.5,
        overrides={"layer1.1.conv2": 0.25, "conv1": 0.75},
        physical=True,
    )
    small, notes, plan = _cut(model, spec, x)
    assert notes == []
    assert {_out(small, n) for n in STREAMS[16]} == {12}  # the smallest override: 25% of 16
    assert {plan.requested[n] for n in STREAMS[16]} == {0.25}
