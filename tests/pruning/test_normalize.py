"""Global filter/channel ranking across layers of different weight scales (pruning.normalize)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.pruning.masks.compute import compute_masks
from app.pruning.pruning_spec import PruningSpec
from tests.pruning.conftest import make_cnn


def _tiny_first_conv() -> nn.Sequential:
    """make_cnn with its first conv's weights x0.01 and its BN rescaled: the same function."""
    model = make_cnn().eval()
    conv, bn = model[0], model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        conv.weight *= 0.01
        conv.bias *= 0.01
        bn.running_mean *= 0.01
        bn.running_var *= 1e-4
    bn.eps *= 1e-4
    return model


def test_a_layer_with_tiny_weights_keeps_its_share_of_filters() -> None:
    model = _tiny_first_conv()
    x = torch.randn(4, 1, 8, 8)
    reference = make_cnn().eval()
    with torch.no_grad():
        reference[1].running_mean.copy_(model[1].running_mean / 0.01)
        reference[1].running_var.copy_(model[1].running_var / 1e-4)
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)

    plan = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5))
    kept = int(plan.channels["0"].sum())
    assert 3 <= kept <= 5  # about half of its 8 filters, like every other layer
    assert any("pruning.normalize" in n["text"] for n in plan.notes)
    assert not any("max_layer_sparsity" in n["text"] for n in plan.notes)

    raw = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5, normalize="none"))
    assert int(raw.channels["0"].sum()) == 1  # raw L1 empties it down to the 0.9 cap
    assert any("max_layer_sparsity" in n["text"] for n in raw.notes)


def test_normalisation_does_not_change_the_ranking_inside_a_layer() -> None:
    model = _tiny_first_conv()
    glob = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5)).channels
    for name, keep in glob.items():  # the kept filters of a layer are its top ones by L1
        scores = model.get_submodule(name).weight.detach().abs().flatten(1).sum(1)
        if (~keep).any():
            assert scores[keep].min() >= scores[~keep].max()


def test_normalize_is_validated_and_only_where_it_applies() -> None:
    assert PruningSpec.from_dict({"granularity": "filter"}).normalize == "mean"
    spec = PruningSpec.from_dict({"granularity": "channel", "normalize": "none"})
    assert PruningSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="pruning.normalize 'max' is not one of: mean, none"):
        PruningSpec(granularity="filter", normalize="max")
    for bad in ({"scope": "layerwise"}, {"granularity": "element"}):
        with pytest.raises(ValueError, match="pruning.normalize applies to scope 'global'"):
            PruningSpec(**{"granularity": "filter", "normalize": "none", **bad})


def test_the_stem_of_a_transformers_resnet_is_not_cut_for_its_small_weights() -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], num_labels=10
    )
    model = ResNetForImageClassification(cfg).eval()
    stem = "resnet.embedder.embedder.convolution"  # 7x7, HF's init leaves it the smallest L1
    x = torch.randn(2, 1, 8, 8)
    plan = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5), example=x)
    assert int(plan.channels[stem].sum()) >= 6  # of 16 (raw L1: 2, the 0.9 cap)
    raw = PruningSpec("filter", "l1", sparsity=0.5, normalize="none")
    assert int(compute_masks(model, raw, example=x).channels[stem].sum()) == 2
