"""The built-in architectures: every one runs on digits and on its default input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app import zoo

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", sorted(zoo.ARCHITECTURES))
def test_every_architecture_classifies_digits_sized_input(arch: str) -> None:
    torch.manual_seed(0)
    model = zoo.build(arch, num_classes=10, input_shape=(1, 8, 8)).eval()
    out = model(torch.rand(4, 1, 8, 8))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(zoo.ARCHITECTURES))
def test_every_architecture_runs_on_its_default_input_shape(arch: str) -> None:
    spec = zoo.ARCHITECTURES[arch]
    model = zoo.build(arch, num_classes=3).eval()
    assert model(torch.zeros(2, *spec.default_input_shape)).shape == (2, 3)


def test_mlp_is_lenet_300_100_sized_from_the_input() -> None:
    model = zoo.build("mlp", input_shape=(1, 8, 8))
    shapes = {
        n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    assert shapes == {"fc1": (300, 64), "fc2": (100, 300), "fc3": (10, 100)}


def test_resnet20_has_twenty_weighted_layers_and_projection_shortcuts() -> None:
    model = zoo.build("resnet20", input_shape=(3, 32, 32))
    names = dict(model.named_modules())
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
    assert len(convs) + 1 == 20  # 19 convolutions + the classifier
    assert isinstance(names["layer2.0.shortcut.0"], nn.Conv2d)


def test_vgg11_skips_pools_once_the_map_is_one_pixel() -> None:
    small = zoo.build("vgg11_bn", input_shape=(1, 8, 8))
    big = zoo.build("vgg11_bn", input_shape=(3, 32, 32))
    pools = lambda m: sum(isinstance(x, nn.MaxPool2d) for x in m.modules())  # noqa: E731
    assert (pools(small), pools(big)) == (3, 5)


def test_transformer_prunable_layers_are_linear_and_fit_2_of_4() -> None:
    model = zoo.build("transformer", input_shape=(1, 8, 8))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) >= 10
    assert all(m.in_features % 4 == 0 for m in linears)
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'alexnet'.*mlp"):
        zoo.build("alexnet")


def test_image_architecture_refuses_a_flat_input_shape() -> None:
    with pytest.raises(ValueError, match="C,H,W"):
        zoo.build("cnn_small", input_shape=(64,))


def test_reset_parameters_redraws_weights_and_keeps_shapes() -> None:
    torch.manual_seed(0)
    model = zoo.build("cnn_small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.features[1].weight.fill_(3.0)
    zoo.reset_parameters(model)
    after = model.state_dict()
    assert all(after[k].shape == v.shape for k, v in before.items())
    assert not torch.equal(after["features.0.weight"], before["features.0.weight"])
    assert torch.equal(after["features.1.weight"], torch.ones(16))  # BN gamma back to 1


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "cnn_small", "resnet20", "transformer"])
def test_architectures_trace_for_export(arch: str) -> None:
    model = zoo.build(arch).eval()
    x = torch.rand(2, *zoo.ARCHITECTURES[arch].default_input_shape)
    traced = torch.jit.trace(model, x)
    assert torch.allclose(traced(x), model(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["mlp", "lenet5", "cnn_small", "resnet20", "vgg11_bn"])
def test_structured_removal_is_possible_on_conv_and_mlp_architectures(arch: str) -> None:
    from app.pruning.structural.remove import removal_blockers

    model = zoo.build(arch, input_shape=(1, 8, 8))
    assert removal_blockers(model, torch.rand(2, 1, 8, 8)) == []
