"""BatchNorm and bias care after a prune step: BN statistics re-estimated after every step
(masks too), and the bias correction of BN-free networks, checked on the tensors themselves."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from app.modelio.dataset_files import load_digits
from app.modelio.pt2 import make_trainable
from app.pruning.pipeline import run_recipe
from app.pruning.prune_step import FROZEN_BN_NOTE
from app.pruning.spec import PruningSpec
from app.pruning.structural.bias import capture_means, correct_biases
from app.pruning.structural.remove import zero_removed_units
from tests.pruning.test_pipeline import FAST, recipe, trained

torch.set_num_threads(1)
NO_TUNING = {**FAST, "epochs": 0}
FILTER_MASKS = {
    "granularity": "filter",
    "criterion": "l1",
    "sparsity": 0.5,
    "scope": "layerwise",
    "exclude": ["classifier"],
}


def _prune(model: nn.Module, pruning: dict, **kw):
    return run_recipe(
        recipe(pruning, finetune=NO_TUNING), model, load_digits(), latency=False, **kw
    )


def _folded() -> nn.Module:
    """The trained zoo cnn_small with every Conv -> BatchNorm pair fused: no BatchNorm left."""
    model = trained("cnn_small").eval()
    feats = model.features
    for i in range(len(feats) - 1):
        if isinstance(feats[i], nn.Conv2d) and isinstance(feats[i + 1], nn.BatchNorm2d):
            feats[i], feats[i + 1] = fuse_conv_bn_eval(feats[i], feats[i + 1]), nn.Identity()
    return model


def _channel_means(model: nn.Module, layer: str) -> torch.Tensor:
    """The output mean per channel of ``layer`` on the digits test split (what a user checks)."""
    seen = {}
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda _m, _a, out: seen.__setitem__("out", out))
    with torch.no_grad():
        model.eval()(load_digits().tensors("test")[0])
    handle.remove()
    return seen["out"].transpose(0, 1).flatten(1).mean(1)


@pytest.mark.parametrize(
    "pruning",
    [FILTER_MASKS, {"granularity": "element", "criterion": "l1", "sparsity": 0.8}],
    ids=["filter-masks", "element-masks"],
)
def test_masked_step_re_estimates_bn_statistics_and_does_not_lose_accuracy(pruning) -> None:
    dense = trained("cnn_small")
    on = _prune(trained("cnn_small"), pruning)
    off = _prune(trained("cnn_small"), {**pruning, "bn_recalibrate": False})
    assert not on.physical and not off.physical  # masks only
    bn_on, bn_off = on.model.features[1], off.model.features[1]
    assert torch.equal(bn_off.running_mean, dense.features[1].running_mean)
    assert not torch.allclose(bn_on.running_mean, bn_off.running_mean)
    assert not torch.allclose(bn_on.running_var, bn_off.running_var)
    for name, p in on.model.named_parameters():  # re-estimation leaves every weight alone
        assert torch.equal(p, off.model.get_parameter(name)), name
    acc_on = on.steps[1]["before_finetune"]["accuracy"]
    acc_off = off.steps[1]["before_finetune"]["accuracy"]
    assert acc_on >= acc_off
    assert on.steps[1]["accuracy_before_bn_recalibration"] == pytest.approx(acc_off)
    assert "accuracy_before_bn_recalibration" not in off.steps[1]


def test_bias_correction_brings_a_bn_free_layer_back_to_its_dense_output_mean() -> None:
    dense = _folded()
    on = _prune(_folded(), FILTER_MASKS)
    off = _prune(_folded(), {**FILTER_MASKS, "bias_correction": False})
    for layer in ("features.8", "classifier"):  # a conv that lost inputs, and the head
        want = _channel_means(dense, layer)
        kept = on.model.get_submodule(layer).weight.flatten(1).ne(0).any(dim=1)
        err_on = (_channel_means(on.model, layer) - want)[kept].abs().mean()
        err_off = (_channel_means(off.model, layer) - want)[kept].abs().mean()
        assert err_on < 0.5 * err_off, (layer, float(err_on), float(err_off))
    conv = on.model.features[4]  # a pruned conv: its removed filters stay exactly zero
    removed = ~conv.weight.flatten(1).ne(0).any(dim=1)
    assert bool(removed.any()) and bool((conv.bias[removed] == 0).all())
    acc_on = on.steps[1]["before_finetune"]["accuracy"]
    assert acc_on > off.steps[1]["before_finetune"]["accuracy"] + 0.1
    texts = [n["text"] for n in on.notes]
    assert any(
        t.startswith("bias correction at step 1: 3 layers (features.4, features.8, classifier)")
        and f"-> {acc_on:.1%}" in t
        for t in texts
    ), texts
    assert not any("bias correction" in n["text"] for n in off.notes)


def test_bias_correction_at_channel_level_corrects_the_layers_that_lost_inputs() -> None:
    channel = {**FILTER_MASKS, "granularity": "channel"}
    dense = _folded()
    on = _prune(_folded(), channel)
    off = _prune(_folded(), {**channel, "bias_correction": False})
    want = _channel_means(dense, "features.8")
    err_on = (_channel_means(on.model, "features.8") - want).abs().mean()
    err_off = (_channel_means(off.model, "features.8") - want).abs().mean()
    assert err_on < 0.5 * err_off, (float(err_on), float(err_off))
    assert any("bias correction at step 1" in n["text"] for n in on.notes)


def test_bias_correction_keeps_physical_removal_exact() -> None:
    masked = _prune(_folded(), FILTER_MASKS)
    physical = _prune(_folded(), {**FILTER_MASKS, "physical": True})
    assert physical.physical
    x = load_digits().sample_batch(64, split="test")
    with torch.no_grad():
        assert torch.allclose(physical.model.eval()(x), masked.model.eval()(x), atol=1e-4)


@pytest.mark.parametrize(
    ("build", "pruning"),
    [
        (lambda: trained("cnn_small"), FILTER_MASKS),  # BatchNorm: re-estimation instead
        (_folded, {"granularity": "element", "criterion": "l1", "sparsity": 0.5}),
    ],
    ids=["with-bn", "element-level"],
)
def test_bias_correction_leaves_nets_where_it_does_not_apply_alone(build, pruning) -> None:
    on = _prune(build(), pruning)
    off = _prune(build(), {**pruning, "bias_correction": False})
    for name, t in on.model.state_dict().items():
        assert torch.equal(t, off.model.state_dict()[name]), name
    assert not any("bias correction" in n["text"] for n in on.notes)


class _Residual(nn.Module):
    """BN-free: ``head(relu(a(x) + b(relu(a(x)))))``; a and b feed the same stream."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.head(torch.relu(y + self.b(torch.relu(y))))


def test_bias_correction_follows_a_residual_add_to_the_consumer() -> None:
    model = _Residual()
    x = torch.randn(256, 6) + 0.5
    dense = model(x).mean(0).detach()
    before = capture_means(model, [x])
    masks = {
        n: torch.ones(8, *model.get_submodule(n).weight.shape[1:], dtype=torch.bool)
        for n in ("a", "b")
    }
    for m in masks.values():
        m[:3] = False  # the same three channels of the coupled stream, in both producers
    with torch.no_grad():
        for n in ("a", "b"):
            model.get_submodule(n).weight.mul_(masks[n])
    zero_removed_units(model, masks, x[:4], granularity="filter")
    assert bool((model.head.weight[:, :3] == 0).all())
    drifted = (model(x).mean(0) - dense).abs().max()
    done = correct_biases(model, before, [x])
    assert done.layers == ["b", "head"]  # b lost inputs too: a's removed channels fed it
    assert float((model(x).mean(0) - dense).abs().max()) < 1e-4 < float(drifted)


def _traced() -> nn.Module:
    return torch.jit.trace(trained("cnn_small").eval(), load_digits().sample_batch(2))


def _exported() -> nn.Module:
    batch = ({0: torch.export.Dim("batch")},)
    x = load_digits().sample_batch(2)
    program = torch.export.export(trained("cnn_small").eval(), (x,), dynamic_shapes=batch)
    return make_trainable(program.module())


@pytest.mark.parametrize("build", [_traced, _exported], ids=["torchscript", "pt2"])
def test_bn_of_a_torchscript_or_pt2_model_is_left_alone_with_a_note(build) -> None:
    model = build()
    result = _prune(
        model, {"granularity": "element", "criterion": "l1", "sparsity": 0.5}, rebuildable=False
    )
    assert any(n["text"] == FROZEN_BN_NOTE for n in result.notes)
    assert "accuracy_before_bn_recalibration" not in result.steps[1]


def test_switches_are_booleans() -> None:
    assert PruningSpec().bn_recalibrate and PruningSpec().bias_correction
    for key in ("bn_recalibrate", "bias_correction"):
        with pytest.raises(ValueError, match=f"pruning.{key} must be true or false"):
            PruningSpec.from_dict({key: "yes"})
        assert PruningSpec.from_dict({key: False}).to_dict()[key] is False
