"""Physical removal of filters/channels: smaller dense models with the masked model's outputs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from app import zoo
from app.pruning.structural.bn import recalibrate_bn
from app.pruning.structural.rebuild import architecture_config, rebuild
from app.pruning.structural.remove import physical_prune, removal_blockers, zero_removed_units

torch.set_num_threads(1)

WEIGHTED = (nn.Conv2d, nn.Linear)


class TwoBranchCat(nn.Module):
    """Two conv branches joined by torch.cat, then a conv, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(6)
        self.b = nn.Conv2d(1, 10, 3, padding=1)
        self.c = nn.Conv2d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.bn_a(self.a(x))), torch.relu(self.b(x))], dim=1)
        return self.fc(torch.flatten(torch.relu(self.c(y)), 1))


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so a forgotten BN shift shows up."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def _masks(model: nn.Module, granularity: str, frac: float, seed: int = 0) -> dict:
    """Random filter (row) or channel (column) masks for every Conv/Linear but the last layer."""
    g = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHTED)]
    masks = {}
    for name, m in layers[:-1] if granularity == "filter" else layers[1:]:
        dim = 0 if granularity == "filter" else 1
        keep = torch.rand(m.weight.shape[dim], generator=g) >= frac
        keep[0] = True
        shape = [1] * m.weight.dim()
        shape[dim] = -1
        masks[name] = keep.view(shape).expand_as(m.weight).clone()
    return masks


def _apply(model: nn.Module, masks: dict) -> None:
    named = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            named[name].weight.mul_(mask)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


CASES = [
    ("cnn_small", lambda: zoo.build("cnn_small", input_shape=(1, 8, 8)), (1, 8, 8)),
    ("mlp", lambda: zoo.build("mlp", input_shape=(1, 8, 8)), (1, 8, 8)),
    ("lenet5_flatten", lambda: zoo.build("lenet5", input_shape=(1, 8, 8)), (1, 8, 8)),
    ("resnet20", lambda: zoo.build("resnet20", input_shape=(3, 8, 8)), (3, 8, 8)),
    ("concat", TwoBranchCat, (1, 8, 8)),
]


@pytest.mark.parametrize("granularity", ["filter", "channel"])
@pytest.mark.parametrize(("label", "make", "shape"), CASES, ids=[c[0] for c in CASES])
def test_physical_removal_matches_masked_model(label, make, shape, granularity) -> None:
    torch.manual_seed(0)
    model = make().eval()
    _randomise_bn(model)
    x = torch.randn(4, *shape)
    masks = _masks(model, granularity, frac=0.4)
    _apply(model, masks)
    removed = zero_removed_units(model, masks, x, granularity=granularity)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    small = physical_prune(model, masks, x, granularity=granularity)

    assert sum(removed.values()) > 0
    assert _n_params(small) < _n_params(model)
    with torch.no_grad():
        expected, got = model(x), small(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_original_model_in_train_mode_is_left_untouched() -> None:
    model = zoo.build("resnet20", input_shape=(3, 8, 8)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 8, 8)
    small = physical_prune(model, _masks(model, "filter", 0.5), x, granularity="filter")
    assert model.training and small.training and small.layer1[0].bn1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_filter_removal_cuts_bn_and_next_layer_inputs() -> None:
    model = zoo.build("cnn_small", input_shape=(1, 8, 8)).eval()
    x = torch.randn(2, 1, 8, 8)
    keep = torch.ones(16, dtype=torch.bool)
    keep[[1, 5, 9, 13]] = False
    masks = {"features.0": keep.view(-1, 1, 1, 1).expand(16, 1, 3, 3).clone()}
    small = physical_prune(model, masks, x, granularity="filter")
    assert small.features[0].weight.shape == (12, 1, 3, 3)
    assert small.features[1].num_features == 12
    assert small.features[4].weight.shape[1] == 12
    last = torch.ones(64, dtype=torch.bool)
    last[:8] = False
    masks = {"features.8": last.view(-1, 1, 1, 1).expand(64, 32, 3, 3).clone()}
    small = physical_prune(model, masks, x, granularity="filter")
    assert small.features[8].out_channels == 56
    assert small.classifier.in_features == 56


def test_bn_shift_of_a_zero_filter_must_be_zeroed_for_equality() -> None:
    """Masking the weight alone leaves BN's beta - gamma*mean/std: the channel is not zero."""
    model = zoo.build("cnn_small", input_shape=(1, 8, 8)).eval()
    _randomise_bn(model)
    x = torch.randn(4, 1, 8, 8)
    masks = _masks(model, "filter", frac=0.5)
    _apply(model, masks)
    small = physical_prune(model, masks, x, granularity="filter")
    with torch.no_grad():
        assert not torch.allclose(small(x), model(x), atol=1e-3)
        zero_removed_units(model, masks, x, granularity="filter")
        assert torch.allclose(small(x), model(x), atol=1e-5)


def test_residual_groups_cut_only_channels_zero_in_every_coupled_layer() -> None:
    model = zoo.build("resnet20", input_shape=(3, 8, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    # every producer of layer1's 16-channel stream loses channels 2 and 3; conv1 also loses 4
    stream = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    named = dict(model.named_modules())
    masks = {}
    for name in stream:
        keep = torch.ones(16, dtype=torch.bool)
        keep[[2, 3] + ([4] if name == "conv1" else [])] = False
        masks[name] = keep.view(-1, 1, 1, 1).expand_as(named[name].weight).clone()
    _apply(model, masks)
    small = physical_prune(model, masks, x, granularity="filter")
    assert small.conv1.out_channels == 14
    assert small.layer1[2].conv2.out_channels == 14
    union = physical_prune(model, masks, x, granularity="filter", coupled="union")
    assert union.conv1.out_channels == 13
    zero_removed_units(model, masks, x, granularity="filter", coupled="union")
    with torch.no_grad():
        assert torch.allclose(union(x), model(x), atol=1e-5)


def test_channels_feeding_the_output_are_kept() -> None:
    model = zoo.build("mlp", input_shape=(1, 8, 8)).eval()
    keep = torch.ones(10, dtype=torch.bool)
    keep[[0, 1]] = False
    masks = {"fc3": keep.view(-1, 1).expand(10, 100).clone()}
    small = physical_prune(model, masks, torch.randn(2, 1, 8, 8), granularity="filter")
    assert small.fc3.out_features == 10


def test_unsupported_granularity_and_unknown_layer_are_value_errors() -> None:
    model = zoo.build("mlp", input_shape=(1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="granularity"):
        physical_prune(model, {}, x, granularity="element")
    with pytest.raises(ValueError, match="nope"):
        physical_prune(model, {"nope": torch.ones(1)}, x, granularity="filter")


def test_removal_blockers_name_what_prevents_removal() -> None:
    x = torch.randn(2, 1, 8, 8)
    assert removal_blockers(zoo.build("cnn_small", input_shape=(1, 8, 8)), x) == []
    vit = removal_blockers(zoo.build("transformer", input_shape=(1, 8, 8)), x)
    assert vit and all("masks only" in s for s in vit)
    assert any("Softmax" in s for s in vit)
    traced = torch.jit.trace(zoo.build("mlp", input_shape=(1, 8, 8)).eval(), x)
    assert "masks only" in removal_blockers(traced, x)[0]
    with pytest.raises(ValueError, match="masks only"):
        physical_prune(traced, {}, x, granularity="filter")


def test_rebuild_from_architecture_config_restores_pruned_model() -> None:
    model = zoo.build("resnet20", input_shape=(3, 8, 8)).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 8, 8)
    small = physical_prune(model, _masks(model, "channel", 0.5), x, granularity="channel")
    config = json.loads(
        json.dumps(
            architecture_config(small, arch="resnet20", num_classes=10, input_shape=(3, 8, 8))
        )
    )
    rebuilt = rebuild(config)
    rebuilt.load_state_dict(small.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))
    with pytest.raises(ValueError, match="arch"):
        rebuild(config | {"arch": None})


@pytest.mark.slow
def test_recalibrate_bn_restores_accuracy_of_pruned_bn_model() -> None:
    from app.intake.datasets import load_digits

    torch.manual_seed(0)
    data = load_digits()
    model = zoo.build("cnn_small", input_shape=data.input_shape)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        for xb, yb in data.loader("train", 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    x_test, y_test = data.tensors("test")

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(x_test).argmax(1) == y_test).float().mean())

    masks = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            norms = m.weight.detach().abs().flatten(1).sum(1)
            keep = norms >= norms.median()
            masks[name] = keep.view(-1, 1, 1, 1).expand_as(m.weight).clone()
    small = physical_prune(model.eval(), masks, data.sample_batch(8), granularity="filter")
    dense_acc, pruned_acc = accuracy(model), accuracy(small)
    used = recalibrate_bn(small, data.loader("train", 128), batches=10)
    recal_acc = accuracy(small)
    assert used == 10
    assert not small.training
    assert dense_acc > 0.9
    assert recal_acc > pruned_acc + 0.05, (dense_acc, pruned_acc, recal_acc)
