"""BatchNorm re-insertion for BN-free convs during fine-tuning (issue 13: BN-folded ONNX CNN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.pruning.bn_reinsert import CHILD, bn_free_convs, insert_batchnorm, reinserted_batchnorm
from app.pruning.masks.keeper import MaskKeeper, apply_masks
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from tests.pruning.conftest import make_cnn, make_data

NOTE = "batchnorm re-insertion"
FILTER = {"granularity": "filter", "criterion": "l1", "sparsity": 0.5, "physical": True}


def _x(n: int = 32) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def test_only_convs_that_no_batchnorm_follows_get_one() -> None:
    assert bn_free_convs(make_cnn(bn=True), _x()) == []
    assert bn_free_convs(make_cnn(bn=False), _x()) == ["0", "3"]


def test_insertion_keeps_the_eval_function_and_folding_restores_the_structure() -> None:
    model = make_cnn(bn=False).eval()
    keys, before = list(model.state_dict()), model(_x())
    inserted = insert_batchnorm(model, [_x(64)])
    assert all(hasattr(model[int(n)], CHILD) for n in inserted.names)
    assert torch.allclose(model.eval()(_x()), before, atol=1e-5)
    inserted.fold()
    assert list(model.state_dict()) == keys
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(model(_x()), before, atol=1e-5)


def test_the_folded_conv_computes_what_the_trained_batchnorm_did() -> None:
    model = make_cnn(bn=False)
    inserted = insert_batchnorm(model, [_x(64)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(5):  # train: the BatchNorms' affine and statistics move
        model.train()
        opt.zero_grad()
        model(_x(64)).square().mean().backward()
        opt.step()
    with_bn = model.eval()(_x())
    assert not torch.allclose(getattr(model[0], CHILD).weight, torch.ones(8))
    inserted.fold()
    assert torch.allclose(model(_x()), with_bn, atol=1e-4)


def test_pruned_filters_stay_zero_through_training_and_folding() -> None:
    model = make_cnn(bn=False)
    keep = torch.ones(8, 1, 3, 3, dtype=torch.bool)
    keep[:4] = False
    plan = {"0": keep}
    apply_masks(model, plan)
    with torch.no_grad():
        model[0].bias[:4] = 0.0
    keeper = MaskKeeper(model, plan)
    with reinserted_batchnorm(model, [_x(64)]):
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(5):
            model.train()
            opt.zero_grad()
            model(_x(64)).square().mean().backward()
            opt.step()
            keeper.apply()
        inner = model[0](_x())
        assert torch.equal(inner[:, :4], torch.zeros_like(inner[:, :4]))  # BN output masked
    assert torch.equal(model[0].weight[:4], torch.zeros_like(model[0].weight[:4]))
    assert torch.equal(model[0].bias[:4], torch.zeros(4))


def _run(model: nn.Module, finetune: dict, schedule: str = "oneshot"):
    body = {
        "kind": "prune",
        "name": "bn",
        "pruning": FILTER,
        "schedule": {"kind": schedule},
        "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 16, "distill": None, **finetune},
    }
    return run_recipe(Recipe.from_dict(body), model, make_data((1, 8, 8)), latency=False)


def test_a_filter_run_on_a_bn_free_net_reinserts_by_default_and_hands_back_its_structure() -> None:
    on = _run(make_cnn(bn=False), {})
    off = _run(make_cnn(bn=False), {"reinsert_bn": False})
    notes = [n["text"] for n in on.notes if n["text"].startswith(NOTE)]
    assert len(notes) == 1 and "2 convolutions without BatchNorm (0, 3)" in notes[0], notes
    assert not [n for n in off.notes if n["text"].startswith(NOTE)]
    assert on.physical and off.physical
    assert list(on.model.state_dict()) == list(off.model.state_dict())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in on.model.modules())
    assert not torch.allclose(on.model[3].weight, off.model[3].weight)  # the option trained


def test_a_net_with_batchnorm_everywhere_is_left_as_it_was() -> None:
    auto = _run(make_cnn(bn=True), {})
    off = _run(make_cnn(bn=True), {"reinsert_bn": False})
    assert not [n for n in auto.notes if n["text"].startswith(NOTE)]
    for k, v in auto.model.state_dict().items():
        assert torch.equal(v, off.model.state_dict()[k]), k


def test_auto_is_off_for_agp_and_an_explicit_true_there_is_refused() -> None:
    agp = _run(make_cnn(bn=False), {}, schedule="agp")
    assert not [n for n in agp.notes if n["text"].startswith(NOTE)]
    with pytest.raises(ValueError, match="finetune.reinsert_bn works with the oneshot and"):
        _run(make_cnn(bn=False), {"reinsert_bn": True}, schedule="agp")


@pytest.mark.parametrize("value", ["yes", 1, None, 0.5])
def test_reinsert_bn_takes_true_false_or_auto(value) -> None:
    body = {"kind": "prune", "name": "x", "pruning": FILTER, "finetune": {"reinsert_bn": value}}
    with pytest.raises(ValueError, match='finetune.reinsert_bn must be true, false or "auto"'):
        Recipe.from_dict(body)


def test_a_torch_fx_graph_like_onnx2torch_output_gets_and_loses_its_batchnorms() -> None:
    graph = torch.fx.symbolic_trace(make_cnn(bn=False)).eval()
    keys, before = list(graph.state_dict()), graph(_x())
    with reinserted_batchnorm(graph, [_x(64)]) as inserted:
        assert inserted.names == ["0", "3"]
        graph.train()(_x(64)).sum().backward()  # the hook is in the graph's forward
        assert getattr(graph.get_submodule("3"), CHILD).weight.grad is not None
    assert list(graph.state_dict()) == keys
    assert torch.allclose(graph(_x()), before, atol=1e-4)
