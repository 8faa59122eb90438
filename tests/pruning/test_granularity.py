"""Zero patterns of every granularity on random layer shapes (hypothesis), plus layer lookup."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from app.pruning.granularity import unit_view
from app.pruning.layers import prunable_layers
from app.pruning.masks.compute import compute_masks
from app.pruning.pruning_spec import PruningSpec
from app.pruning.topology import following_bn, residual_blocks
from tests.pruning.conftest import TinyResNet, make_cnn

FAST = settings(max_examples=25, deadline=None)


@st.composite
def conv_layers(draw) -> nn.Module:
    torch.manual_seed(draw(st.integers(0, 1000)))
    o, i, kh, kw = (draw(st.integers(2, 6)) for _ in range(4))
    kind = draw(st.sampled_from(["conv2d", "conv1d", "linear", "convT"]))
    if kind == "conv2d":
        return nn.Conv2d(i, o, (kh, kw))
    if kind == "conv1d":
        return nn.Conv1d(i, o, kh)
    if kind == "convT":
        return nn.ConvTranspose2d(i, o, (kh, kw))
    return nn.Linear(i * kh, o)


def _mask(layer: nn.Module, granularity: str, sparsity: float = 0.5, **kw) -> torch.Tensor:
    model = nn.Sequential(layer)
    spec = PruningSpec(granularity, "l1", scope="layerwise", sparsity=sparsity, **kw)
    return compute_masks(model, spec).masks["0"]


def _canon(layer: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """(out, in, *k) view of a mask (ConvTranspose stores (in, out, *k))."""
    return mask.transpose(0, 1) if isinstance(layer, nn.ConvTranspose2d) else mask


def _all_or_none(t: torch.Tensor, dims: tuple[int, ...]) -> bool:
    return bool((t.all(dim=dims) | ~t.any(dim=dims)).all())


@FAST
@given(conv_layers(), st.floats(0.1, 0.9))
def test_filter_pruning_removes_whole_output_channels(layer, sparsity) -> None:
    m = _canon(layer, _mask(layer, "filter", sparsity))
    assert _all_or_none(m, tuple(range(1, m.dim())))
    assert m.flatten(1).any(1).sum() >= 1


@FAST
@given(conv_layers(), st.floats(0.1, 0.9))
def test_channel_pruning_removes_whole_input_channels(layer, sparsity) -> None:
    m = _canon(layer, _mask(layer, "channel", sparsity))
    assert _all_or_none(m, (0, *range(2, m.dim())))


@FAST
@given(conv_layers(), st.floats(0.1, 0.9))
def test_kernel_pruning_zeroes_whole_kernels(layer, sparsity) -> None:
    m = _canon(layer, _mask(layer, "kernel", sparsity))
    if m.dim() > 2:
        assert _all_or_none(m, tuple(range(2, m.dim())))


@FAST
@given(conv_layers(), st.floats(0.1, 0.9))
def test_vector_pruning_zeroes_whole_kernel_rows(layer, sparsity) -> None:
    m = _canon(layer, _mask(layer, "vector", sparsity))
    if m.dim() > 2:
        assert _all_or_none(m, (m.dim() - 1,))
    if m.dim() == 4:  # a 2-D kernel keeps some rows and loses others somewhere
        rows = m.any(dim=3)
        assert m.numel() == 0 or rows.any()


@FAST
@given(conv_layers(), st.floats(0.1, 0.9))
def test_group_pruning_uses_the_same_pattern_in_every_filter(layer, sparsity) -> None:
    m = _canon(layer, _mask(layer, "group", sparsity))
    assert bool((m == m[:1]).all())
    if sparsity * m[0].numel() >= 1:  # at least one whole position asked for (12.5% of a
        assert not bool(m.all())  # 4-position pattern is half a unit: none is as near)


@FAST
@given(conv_layers(), st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8), (2, 3)]))
def test_nm_keeps_at_most_n_of_every_m_along_the_input(layer, nm) -> None:
    n, m_ = nm
    m = _canon(layer, _mask(layer, "nm", nm=nm))
    if m.shape[1] % m_:  # the reduction dimension is not a multiple of M: left dense
        assert bool(m.all())
        return
    groups = m.movedim(1, -1).reshape(-1, m_)  # (out, *kernel, in): M consecutive inputs
    assert int(groups.sum(1).max()) <= n
    assert bool((groups.sum(1) == min(n, groups.shape[1])).all())


def test_nm_groups_input_channels_as_sparse_kernels_read_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4),
    )
    plan = compute_masks(model, PruningSpec("nm", "l1", nm=(2, 4)))
    hardware = plan.masks["2"].permute(0, 2, 3, 1).reshape(-1, 4)  # [out, kh, kw, in]
    assert int(hardware.sum(1).max()) <= 2 and bool((hardware.sum(1) == 2).all())
    linear = plan.masks["5"].reshape(-1, 4)  # consecutive input features of a row
    assert bool((linear.sum(1) == 2).all())
    assert bool(plan.masks["0"].all()) and plan.achieved["0"] == 0.0  # 1-channel stem
    assert [note for note in plan.notes if "'0'" in note and "dense" in note]
    assert not [note for note in plan.notes if "'2'" in note and "dense" in note]


def test_nm_leaves_depthwise_kernels_dense_and_says_so() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(), nn.Conv2d(8, 8, 1))
    plan = compute_masks(model, PruningSpec("nm", "l1", nm=(2, 4)))
    assert bool(plan.masks["0"].all()) and plan.achieved["2"] == 0.5
    assert [note for note in plan.notes if "'0'" in note and "dense" in note]


@FAST
@given(
    conv_layers(), st.sampled_from(["element", "vector", "kernel", "group", "filter", "channel"])
)
def test_unit_view_expand_inverts_reduce(layer, granularity) -> None:
    transposed = isinstance(layer, nn.ConvTranspose2d)
    view = unit_view(layer.weight, granularity, transposed=transposed)
    units = torch.rand(view.unit_shape) > 0.5
    full = view.expand(units)
    assert full.shape == layer.weight.shape
    assert torch.equal(view.reduce(full.float(), "min") > 0.5, units)
    assert view.unit_size * units.numel() == layer.weight.numel()


def test_prunable_layers_and_bn_pairs_of_a_bn_model() -> None:
    model = make_cnn()
    assert list(prunable_layers(model)) == ["0", "3", "8"]
    assert following_bn(model) == {"0": "1", "3": "4"}
    assert following_bn(make_cnn(bn=False)) == {}


def test_residual_blocks_are_found_with_their_norms() -> None:
    blocks = residual_blocks(TinyResNet())
    assert [b.layers for b in blocks] == [
        ("block1.conv1", "block1.conv2"),
        ("block2.conv1", "block2.conv2"),
    ]
    assert blocks[0].norms == ("block1.bn1", "block1.bn2")
    assert residual_blocks(make_cnn()) == []


def test_channel_pruning_of_a_depthwise_conv_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
    with pytest.raises(ValueError, match="grouped/depthwise conv '0'"):
        compute_masks(model, PruningSpec("channel", "l1", sparsity=0.5))
    plan = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5, exclude=("1",)))
    assert plan.masks["0"].flatten(1).any(1).sum() == 2
