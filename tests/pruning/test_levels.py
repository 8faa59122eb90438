"""Levels 'layer' and 'group' end to end: removed blocks leave the model, group says masks only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe
from app.pruning.structural.rebuild import architecture_config, rebuild

torch.set_num_threads(1)


def _run(pruning: dict, arch: str = "resnet20") -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = zoo.build(arch, input_shape=(1, 8, 8))
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "t",
            "pruning": pruning,
            "schedule": {"kind": "oneshot"},
            "finetune": {"epochs": 0},
        }
    )
    before = sum(p.numel() for p in model.parameters())
    return before, run_recipe(recipe, model, load_digits(), latency=False)


def test_layer_with_physical_removes_the_blocks_and_the_model_shrinks() -> None:
    pruning = {"granularity": "layer", "criterion": "l1", "sparsity": 0.3, "physical": True}
    before, result = _run(pruning)
    small = result.model
    gone = [n for n, m in small.named_modules() if getattr(m, "prunelab_removed_block", False)]
    assert gone and all(isinstance(small.get_submodule(n), nn.Identity) for n in gone)
    assert result.physical and not result.masks_only
    assert sum(p.numel() for p in small.parameters()) < 0.85 * before
    texts = [n["text"] for n in result.notes]
    assert any(t.startswith(f"block {gone[0]} replaced by Identity") for t in texts)
    assert not any(t.startswith("masks only") for t in texts)
    config = architecture_config(small, arch="resnet20", num_classes=10, input_shape=(1, 8, 8))
    assert set(config["removed"]) == set(gone)
    again = rebuild(config)
    again.load_state_dict(small.state_dict(), strict=True)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(again(x), small.eval()(x), atol=1e-5)


def test_layer_without_physical_keeps_the_blocks_as_zeros() -> None:
    pruning = {"granularity": "layer", "criterion": "l1", "sparsity": 0.3}
    _, result = _run(pruning)
    assert not result.physical and result.masks_only
    assert not any(isinstance(m, nn.Identity) for m in result.model.modules())


def test_group_level_with_physical_says_masks_only() -> None:
    pruning = {"granularity": "group", "criterion": "l1", "sparsity": 0.5, "physical": True}
    _, result = _run(pruning, "cnn_small")
    assert result.masks_only and not result.physical
    notes = [n for n in result.notes if n["text"].startswith("masks only")]
    assert notes and notes[0]["level"] == "warning"
    assert "granularity 'group' is masks only" in notes[0]["text"]


def test_nm_pattern_on_another_level_is_refused() -> None:
    with pytest.raises(ValueError, match="pruning.nm applies to granularity 'nm' only"):
        PruningSpec(granularity="element", nm=(1, 4))
    assert PruningSpec(granularity="nm", nm=(1, 4)).nm == (1, 4)
