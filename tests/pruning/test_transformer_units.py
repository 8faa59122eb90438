"""Structured pruning of transformer blocks: whole attention heads (granularity ``head``) and
MLP neurons (``filter``), physically removed from tiny random BERT, Llama and the zoo's ViT;
the hidden size (residual stream, LayerNorm/RMSNorm) is never cut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from app import catalogue, zoo
from app.pruning.criteria import CRITERIA
from app.pruning.data import ArrayDataset
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.pipeline import run_recipe
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe
from app.pruning.structural.rebuild import architecture_config, rebuild
from app.pruning.structural.transformer import attention_layers, mlp_layers, shrink
from tests.hf_models import Logits

VOCAB, HIDDEN = 32, 16


def _bert(labels: int = 3) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=labels,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return Logits(BertForSequenceClassification(cfg)).eval()


def _llama(kv_heads: int = 4) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=16,
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return Logits(LlamaForCausalLM(cfg)).eval()


MODELS = {"bert": _bert, "llama": _llama}
TOKENS = torch.randint(0, VOCAB, (3, 8), generator=torch.Generator().manual_seed(0))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _masked_and_small(model: nn.Module, spec: PruningSpec) -> nn.Module:
    plan = compute_masks(model, spec, example=TOKENS)
    apply_masks(model, plan)
    cut = shrink(model, plan.masks, spec.granularity)
    assert cut is not None
    return cut[0]


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_half_the_heads_go_and_the_smaller_model_equals_the_masked_one(arch, criterion) -> None:
    model = MODELS[arch]()
    dense = _params(model)
    spec = PruningSpec("head", criterion, sparsity=0.5, scope="layerwise")
    small = _masked_and_small(model, spec)
    hd = 4  # 16 / 4 heads
    for att in attention_layers(small):
        mods = dict(small.named_modules())
        assert mods[att.q].out_features == mods[att.k].out_features == 2 * hd
        assert mods[att.o].in_features == 2 * hd and mods[att.o].out_features == HIDDEN
        attrs = vars(mods[att.module])
        assert attrs.get("num_attention_heads", attrs.get("num_heads", 2)) == 2
    with torch.no_grad():
        assert torch.allclose(small(TOKENS), model(TOKENS), atol=1e-5)
    bias = 3 * 2 * hd if arch == "bert" else 0  # q/k/v biases of the removed heads
    assert dense - _params(small) == 2 * (4 * HIDDEN * 2 * hd + bias)  # 2 layers, 2 heads each
    assert small.model.config.hidden_size == HIDDEN
    assert all(p.shape[-1] == HIDDEN for n, p in small.named_parameters() if "norm" in n)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_a_global_ranking_removes_half_of_all_heads(arch) -> None:
    model = MODELS[arch]()
    small = _masked_and_small(model, PruningSpec("head", "l1", sparsity=0.5))
    mods = dict(small.named_modules())
    kept = [mods[a.q].out_features // 4 for a in attention_layers(small)]
    assert sum(kept) == 4 and min(kept) >= 1  # of 2 x 4 heads; every layer keeps one
    with torch.no_grad():
        assert torch.allclose(small(TOKENS), model(TOKENS), atol=1e-5)


def test_grouped_query_attention_loses_whole_kv_groups() -> None:
    model = _llama(kv_heads=2)
    small = _masked_and_small(model, PruningSpec("head", "l2", sparsity=0.5, scope="layerwise"))
    attn = small.model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (8, 4)  # 2 q heads, 1 kv
    assert attn.num_key_value_groups == 2
    with torch.no_grad():
        assert torch.allclose(small(TOKENS), model(TOKENS), atol=1e-5)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_filter_level_cuts_mlp_neurons_only_and_keeps_the_hidden_size(arch) -> None:
    model = MODELS[arch]()
    spec = PruningSpec("filter", "l1", sparsity=0.5, scope="layerwise")
    plan = compute_masks(model, spec, example=TOKENS)
    mlps = mlp_layers(model)
    cut = {n for n, k in plan.masks.items() if not bool(k.all())}
    assert cut == {n for m in mlps for n in (*m.producers, m.down)}  # no q/k/v/o, classifier
    for m in mlps:  # down loses the removed neurons' columns, never a hidden-size row
        rows_gone = ~plan.masks[m.producers[0]].any(dim=1)
        assert torch.equal(~plan.masks[m.down].any(dim=0), rows_gone) and rows_gone.sum() == 16
        assert all(torch.equal(plan.masks[p], plan.masks[m.producers[0]]) for p in m.producers)
    apply_masks(model, plan)
    small = shrink(model, plan.masks, "filter")[0]
    for mlp in mlp_layers(small):
        mods = dict(small.named_modules())
        assert mods[mlp.down].in_features == 16 and mods[mlp.down].out_features == HIDDEN
        assert all(mods[p].out_features == 16 for p in mlp.producers)  # gate and up together
    with torch.no_grad():
        assert torch.allclose(small(TOKENS), model(TOKENS), atol=1e-5)
    assert _params(small) < _params(model)


def test_the_zoo_transformer_loses_heads_and_rebuilds_from_its_config() -> None:
    torch.manual_seed(0)
    model = zoo.build("transformer").eval()
    x = torch.randn(4, 1, 8, 8)
    plan = compute_masks(model, PruningSpec("head", "l1", sparsity=0.5), example=x)
    apply_masks(model, plan)
    small = shrink(model, plan.masks, "head")[0]
    config = architecture_config(small, arch="transformer", num_classes=10, input_shape=(1, 8, 8))
    again = rebuild(config)
    again.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.allclose(again(x), model(x), atol=1e-5)
    assert sum(b.attn.q.out_features for b in small.blocks) == 32  # 4 of 8 heads of 8 dims


def test_head_is_in_the_catalogue_and_the_engine_agrees() -> None:
    assert catalogue.GRANULARITIES["head"].structured
    scoring = {c for c, info in CRITERIA.items() if "head" in info.granularities}
    assert {"l1", "l2", "random"} <= scoring and "taylor" not in scoring
    assert scoring == {c for c, g in catalogue.VALID_PAIRS.items() if "head" in g}
    with pytest.raises(ValueError, match="needs attention layers"):
        compute_masks(zoo.build("cnn_small"), PruningSpec("head", "l1", sparsity=0.5))
    with pytest.raises(ValueError, match="not a threshold, per-layer overrides"):
        PruningSpec.from_dict({"granularity": "head", "criterion": "l1", "threshold": 0.1})
    with pytest.raises(ValueError, match="sweeps one layer at a time"):
        Recipe.from_dict({"kind": "sensitivity", "pruning": {"granularity": "head"}})
    with pytest.raises(ValueError, match="does not support granularity 'head'"):
        compute_masks(_bert(), PruningSpec("head", "taylor", sparsity=0.5), example=TOKENS)


def _token_classes() -> ArrayDataset:
    """Sequences of 8 tokens labelled by whether token 5 appears, fewer or more than twice."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (96, 8))
    y = np.minimum((ids == 5).sum(axis=1), 2).astype(np.int64)
    return ArrayDataset("tokens", ids[:64], y[:64], ids[64:], y[64:], n_classes=3)


@pytest.mark.parametrize("granularity", ["head", "filter"])
def test_a_run_removes_units_of_a_bert_classifier_and_reports_the_sparsity(granularity) -> None:
    model = _bert()
    dense = _params(model)
    pruning = {"granularity": granularity, "criterion": "l1", "physical": True, "sparsity": 0.5}
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "t",
            "pruning": pruning,
            "finetune": {"epochs": 1, "lr": 0.01, "optimizer": "adam", "batch_size": 32},
        }
    )
    result = run_recipe(recipe, model, _token_classes(), latency=False)
    assert result.physical and not result.masks_only
    assert _params(result.model) == result.final["n_params"] < result.baseline["n_params"] == dense
    pruned = result.steps[-1]["before_finetune"]  # the masked model, before the cut
    assert 0.1 < pruned["sparsity"] < 0.5  # half the heads / neurons of the prunable weights
    assert any("requested -> achieved" in n["text"] for n in result.notes)
    assert not any("far from" in n["text"] for n in result.notes)
    assert any("physically removed" in n["text"] for n in result.notes)
    print(
        granularity, dense, result.final["n_params"], pruned["sparsity"], result.final["accuracy"]
    )
    with torch.no_grad():
        assert result.model(TOKENS).shape == (3, 3)


def test_traced_uploads_are_refused_heads_and_keep_masks_at_filter_level() -> None:
    model = _bert()
    traced = torch.jit.trace(model, TOKENS, check_trace=False)
    with pytest.raises(ValueError, match="lose that structure"):
        compute_masks(traced, PruningSpec("head", "l1", sparsity=0.5), example=TOKENS)
    pruning = {"granularity": "head", "criterion": "l1", "physical": True, "sparsity": 0.5}
    recipe = Recipe.from_dict({"kind": "prune", "name": "t", "pruning": pruning})
    result = run_recipe(recipe, model, _token_classes(), latency=False, rebuildable=False)
    assert result.masks_only and not result.physical
    assert any("cannot be rebuilt" in n["text"] for n in result.notes)


@pytest.mark.parametrize("granularity", ["head", "filter"])
def test_a_transformers_vit_loses_heads_or_mlp_neurons_exactly(granularity) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=32,
        num_labels=3,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Logits(ViTForImageClassification(cfg)).eval()
    x = torch.randn(2, 1, 8, 8)
    spec = PruningSpec(granularity, "l1", sparsity=0.5, scope="layerwise")
    plan = compute_masks(model, spec, example=x)
    apply_masks(model, plan)
    small = shrink(model, plan.masks, granularity)[0]
    assert small.model.vit.layers[0].layernorm_before.weight.shape == (HIDDEN,)
    assert _params(small) < _params(model)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)
