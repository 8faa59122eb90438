"""Criteria rank a planted useless unit lowest and a planted important unit highest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from app.pruning.criteria import CRITERIA
from app.pruning.criteria.magnitude import bn_l1_penalty
from app.pruning.criteria.reconstruction import reconstruct_next_layer
from app.pruning.data import ArrayDataset
from app.pruning.layers import prunable_layers
from app.pruning.masks.compute import compute_masks
from app.pruning.pipeline import run_recipe
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe
from tests.pruning.conftest import make_cnn, make_data, make_mlp

USELESS, IMPORTANT = 3, 5


def _ranks(scores: torch.Tensor) -> tuple[int, int]:
    return int(scores.argmin()), int(scores.argmax())


def _planted_mlp() -> nn.Sequential:
    model = make_mlp()
    with torch.no_grad():
        model[0].weight[USELESS] *= 1e-3
        model[0].bias[USELESS] = 0.0
        model[0].weight[IMPORTANT] *= 10.0
        model[0].bias[IMPORTANT] = 1.0
    return model


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor", "snip"])
def test_filter_criteria_rank_planted_units(criterion, vector_data) -> None:
    model = _planted_mlp()
    scores = CRITERIA[criterion].score(model, {"0": model[0]}, "filter", data=vector_data)
    assert _ranks(scores["0"]) == (USELESS, IMPORTANT)


def test_apoz_ranks_a_dead_neuron_lowest_and_an_always_active_one_highest(vector_data) -> None:
    model = make_mlp()
    with torch.no_grad():
        model[0].bias[USELESS], model[0].bias[IMPORTANT] = -100.0, 100.0
    scores = CRITERIA["apoz"].score(model, {"0": model[0]}, "filter", data=vector_data)["0"]
    assert _ranks(scores) == (USELESS, IMPORTANT)
    assert float(scores[USELESS]) == 0.0 and float(scores[IMPORTANT]) == 1.0


@pytest.mark.parametrize("criterion", ["bn_gamma", "synaptic"])
def test_bn_criteria_rank_by_gamma(criterion) -> None:
    model = make_cnn()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
        model[1].weight[USELESS], model[1].weight[IMPORTANT] = 1e-3, 10.0
    scores = CRITERIA[criterion].score(model, prunable_layers(model), "filter")
    assert _ranks(scores["0"]) == (USELESS, IMPORTANT)
    assert "8" not in scores  # the classifier has no BN after it: left out, not guessed


def test_fpgm_ranks_the_geometric_median_filter_lowest() -> None:
    model = make_mlp()
    with torch.no_grad():
        w = model[0].weight
        w[USELESS] = 0.0
        w[USELESS] = w.median(dim=0).values  # the centre of the others: most replaceable
        w[IMPORTANT] = 10.0 * w[IMPORTANT] + 5.0
    scores = CRITERIA["fpgm"].score(model, {"0": model[0]}, "filter")["0"]
    assert _ranks(scores) == (USELESS, IMPORTANT)


def test_wanda_weighs_columns_by_input_norms() -> None:
    model = make_mlp()
    data = make_data((12,))
    x = data.x_train.copy()
    x[:, IMPORTANT] *= 20.0
    loud = ArrayDataset("loud", x, data.y_train, data.x_test, data.y_test, 4)
    with torch.no_grad():
        model[0].weight[:, USELESS] *= 1e-3
    scores = CRITERIA["wanda"].score(model, {"0": model[0]}, "channel", data=loud)["0"]
    assert _ranks(scores) == (USELESS, IMPORTANT)
    elem = CRITERIA["wanda"].score(model, {"0": model[0]}, "element", data=loud)["0"]
    expected = model[0].weight.abs() * torch.from_numpy(np.linalg.norm(x[:64], axis=0))
    assert torch.allclose(elem, expected.float(), rtol=1e-3)


def test_reconstruction_removes_a_disconnected_input_channel_first(vector_data) -> None:
    model = make_mlp()
    with torch.no_grad():
        model[2].weight[:, USELESS] = 0.0
        model[2].weight[:, IMPORTANT] *= 10.0
    scores = CRITERIA["reconstruction"].score(model, {"2": model[2]}, "channel", data=vector_data)
    assert _ranks(scores["2"]) == (USELESS, IMPORTANT)


def test_reconstruct_next_layer_refits_better_than_zeroing(vector_data) -> None:
    model = make_mlp()
    x = vector_data.tensors("train")[0]
    hidden = model[1](model[0](x))
    target = hidden @ model[2].weight.T
    keep = torch.ones(16, dtype=torch.bool)
    keep[:6] = False
    zeroed = (hidden[:, keep] @ model[2].weight[:, keep].T - target).norm() / target.norm()
    err = reconstruct_next_layer(model, "2", keep, vector_data, batches=2)
    refit = (hidden @ model[2].weight.T - target).norm() / target.norm()
    assert bool((model[2].weight[:, ~keep] == 0).all())
    assert err < 0.9 * float(zeroed)
    assert abs(float(refit) - err) < 0.05


def test_reconstruction_run_refits_the_next_layer_and_reports_the_error(vector_data) -> None:
    model, original = make_mlp(), make_mlp()
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "thinet",
            "pruning": {
                "granularity": "channel",
                "criterion": "reconstruction",
                "scope": "layerwise",
                "sparsity": 0.4,
                "exclude": ["0", "4"],
            },
            "finetune": {"epochs": 0},
        }
    )
    result = run_recipe(recipe, model, vector_data, latency=False)
    pruned = model[2].weight.detach()
    keep = pruned.abs().sum(0) > 0
    assert 0 < int(keep.sum()) < 16
    assert not torch.equal(pruned[:, keep], original[2].weight[:, keep])  # re-fit, not just zeroed
    x = vector_data.tensors("train")[0]
    hidden = original[1](original[0](x))  # layer '0' is excluded: the same input in both models
    target = hidden @ original[2].weight.T
    zeroed = (hidden[:, keep] @ original[2].weight[:, keep].T - target).norm() / target.norm()
    refit = (hidden @ pruned.T - target).norm() / target.norm()
    assert float(refit) < 0.9 * float(zeroed)
    rows = {r["layer"]: r for r in result.steps[1]["reconstruction"]}
    assert set(rows) == {"2"}
    assert rows["2"]["error_after"] < rows["2"]["error_before"]
    assert abs(rows["2"]["error_before"] - float(zeroed)) < 0.05
    assert [n for n in result.notes if "re-fit" in n["text"] and "'2'" in n["text"]]


def test_reconstruction_refits_a_conv_fed_by_a_conv(image_data) -> None:
    model, original = make_cnn(bn=False), make_cnn(bn=False)
    pruning = {"granularity": "channel", "criterion": "reconstruction", "sparsity": 0.5}
    pruning |= {"scope": "layerwise", "exclude": ["0", "8"]}
    recipe = Recipe.from_dict(
        {"kind": "prune", "name": "c", "pruning": pruning, "finetune": {"epochs": 0}}
    )
    result = run_recipe(recipe, model, image_data, latency=False)
    keep = model[3].weight.detach().abs().sum(dim=(0, 2, 3)) > 0
    assert int(keep.sum()) == 4
    assert not torch.equal(model[3].weight[:, keep], original[3].weight[:, keep])
    (row,) = result.steps[1]["reconstruction"]
    assert row["layer"] == "3" and row["error_after"] < 0.9 * row["error_before"]


def test_wanda_compares_weights_within_each_output_row(vector_data) -> None:
    model = make_mlp()
    with torch.no_grad():
        model[0].weight[:8] *= 10.0  # loud rows: a layer-wide ranking prunes the quiet rows
    per_row = compute_masks(model, PruningSpec("element", "wanda", sparsity=0.5), data=vector_data)
    for name, mask in per_row.masks.items():
        kept = mask.sum(1)
        assert int(kept.max() - kept.min()) <= 1, name
        assert abs(per_row.achieved[name] - 0.5) < 0.05, name
    spec = PruningSpec("element", "wanda", sparsity=0.5, wanda_group="layer")
    kept = compute_masks(model, spec, data=vector_data).masks["0"].sum(1)
    assert int(kept.max() - kept.min()) > 1


def test_wanda_per_row_is_the_reference_selection(vector_data) -> None:
    """locuslab/wanda: sort |W| * ||X||_2 along each row, prune the lowest share of it."""
    model = make_mlp(seed=3)
    spec = PruningSpec("element", "wanda", scope="layerwise", sparsity=0.25)
    mask = compute_masks(model, spec, data=vector_data).masks["0"]
    x = vector_data.tensors("train")[0][:64]
    metric = model[0].weight.detach().abs() * x.norm(dim=0)
    reference = torch.ones_like(mask)
    reference.scatter_(1, metric.sort(dim=-1, stable=True).indices[:, :3], False)
    assert torch.equal(mask, reference)


def test_random_is_seeded() -> None:
    model = make_mlp()
    a = CRITERIA["random"].score(model, {"0": model[0]}, "filter", seed=1)["0"]
    b = CRITERIA["random"].score(model, {"0": model[0]}, "filter", seed=1)["0"]
    c = CRITERIA["random"].score(model, {"0": model[0]}, "filter", seed=2)["0"]
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("criterion", "granularity"), [("fpgm", "element"), ("apoz", "nm"), ("threshold", "filter")]
)
def test_unsupported_pairs_raise_a_sentence_naming_both(criterion, granularity) -> None:
    model = make_mlp()
    with pytest.raises(
        ValueError, match=f"criterion '{criterion}' does not support granularity '{granularity}'"
    ):
        CRITERIA[criterion].score(model, {"0": model[0]}, granularity)


def test_bn_criterion_on_a_model_without_bn_raises() -> None:
    model = make_cnn(bn=False)
    with pytest.raises(ValueError, match="criterion 'bn_gamma' needs BatchNorm"):
        compute_masks(model, PruningSpec("filter", "bn_gamma", sparsity=0.5))


def test_data_criterion_without_data_raises() -> None:
    model = make_mlp()
    with pytest.raises(ValueError, match="criterion 'taylor' needs calibration data"):
        compute_masks(model, PruningSpec("filter", "taylor", sparsity=0.5))


def test_bn_l1_penalty_sums_gammas_and_has_gradients() -> None:
    model = make_cnn()
    penalty = bn_l1_penalty(model, 1e-2)
    expected = 1e-2 * (model[1].weight.abs().sum() + model[4].weight.abs().sum())
    assert torch.allclose(penalty, expected)
    penalty.backward()
    assert model[1].weight.grad is not None
    assert float(bn_l1_penalty(make_cnn(bn=False), 1.0)) == 0.0
