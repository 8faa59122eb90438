"""A model's outputs are never pruned, whatever the format (issue 11, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.modelio.detect import detect_format
from app.modelio.load import load_model
from app.pruning.masks.compute import compute_masks
from app.pruning.outputs import output_layers
from app.pruning.pipeline import run_recipe
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe
from tests.pruning.conftest import make_cnn, make_data, make_mlp


def _weak_classifier(model: nn.Module) -> nn.Module:
    """The classifier's rows get the smallest norms of the model: a plain filter ranking
    would cut them first."""
    with torch.no_grad():
        model[-1].weight.mul_(1e-3)
    return model.eval()


@pytest.fixture
def onnx_cnn(tmp_path: Path) -> Path:
    """A user's upload: a CNN exported to ONNX from eval mode, BatchNorm folded into the convs."""
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(
        _weak_classifier(make_cnn()),
        torch.randn(1, 1, 8, 8),
        str(path),
        do_constant_folding=True,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    return path


def test_filter_pruning_leaves_the_classifier_of_an_uploaded_onnx_cnn_whole(onnx_cnn) -> None:
    loaded = load_model(onnx_cnn, detect_format(onnx_cnn))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in loaded.module.modules())  # folded
    data = make_data((1, 8, 8))
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "onnx filter",
            "finetune": {"epochs": 0},
            "pruning": {"granularity": "filter", "criterion": "l1", "sparsity": 0.5},
        }
    )
    result = run_recipe(recipe, loaded.module, data, latency=False, rebuildable=True)
    (head,) = output_layers(loaded.module, data.sample_batch(2))
    assert head not in result.masks or bool(result.masks[head].all())
    assert bool(dict(loaded.module.named_modules())[head].weight.ne(0).any(dim=1).all())
    assert any(n["layer"] == head and "model's outputs" in n["text"] for n in result.notes), (
        result.notes
    )
    assert result.final["sparsity"] > 0.3  # the other layers were pruned


def _scripted() -> nn.Module:
    return torch.jit.script(_weak_classifier(make_mlp()))


def _exported() -> nn.Module:
    model = _weak_classifier(make_mlp())
    return torch.export.export(model, (torch.randn(2, 12),)).module()


@pytest.mark.parametrize("build", [_scripted, _exported], ids=["torchscript", "pt2"])
def test_element_pruning_keeps_every_output_row_of_torchscript_and_pt2(build) -> None:
    model = build()
    plan = compute_masks(model, PruningSpec("element", "l1", sparsity=0.9), data=None)
    assert output_layers(model, torch.randn(2, 12)) == {"4"}
    assert bool(plan.masks["4"].any(dim=1).all())  # every class keeps a weight
    assert any(n["level"] == "warning" and n["layer"] == "4" for n in plan.notes)


def test_filter_ranking_skips_the_output_layer_of_a_plain_module() -> None:
    model = _weak_classifier(make_mlp())
    plan = compute_masks(model, PruningSpec("filter", "l1", sparsity=0.5), data=None)
    assert bool(plan.masks["4"].all())
    assert plan.achieved["4"] == 0.0 and plan.achieved["0"] > 0.0
