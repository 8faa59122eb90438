"""Wanda on language models as Sun et al. (2023) define it: ``|W_ij| * ||X_j||_2`` with the norm
over every token of every calibration batch, and the case its mechanism predicts, an input
feature with outlier activations (small weights, large inputs), where it beats magnitude."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.pruning.criteria import CRITERIA
from app.pruning.criteria.context import calibration_batches
from app.pruning.data import ArrayDataset
from app.pruning.layers import prunable_layers
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.masks.tied import tied_weights
from app.pruning.measure import evaluate
from app.pruning.pruning_spec import PruningSpec

VOCAB, WIDTH, SEQ = 32, 16, 8


class TinyLM(nn.Module):
    """Token ids ``[batch, length]`` -> next-token logits ``[batch, length, vocab]``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.up = nn.Linear(WIDTH, 64)
        self.down = nn.Linear(64, WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.down(F.gelu(self.up(self.embed(x)))))


def _corpus(n: int = 600, seed: int = 0) -> ArrayDataset:
    """Sequences where the next token is a fixed function of the current one (10% noise)."""
    rng = np.random.default_rng(seed)
    rule = rng.permutation(VOCAB)
    ids = np.empty((n, SEQ + 1), np.int64)
    ids[:, 0] = rng.integers(0, VOCAB, n)
    for t in range(SEQ):
        noise = rng.random(n) < 0.1
        ids[:, t + 1] = np.where(noise, rng.integers(0, VOCAB, n), rule[ids[:, t]])
    x, y = ids[:, :-1], ids[:, 1:]
    cut = int(0.8 * n)
    return ArrayDataset("rule", x[:cut], y[:cut], x[cut:], y[cut:], n_classes=VOCAB)


def _trained(data: ArrayDataset) -> TinyLM:
    torch.manual_seed(0)
    model = TinyLM()
    x, y = data.tensors("train")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(150):
        idx = torch.arange(step * 32, step * 32 + 32) % len(x)
        loss = F.cross_entropy(model(x[idx]).reshape(-1, VOCAB), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_wanda_norms_cover_every_token_of_every_calibration_batch() -> None:
    data = _corpus()
    model = _trained(data)
    scores = CRITERIA["wanda"].score(model, {"up": model.up}, "element", data=data, batches=3)
    batches = calibration_batches(data, 3, seed=0)
    assert len(batches) == 3 and sum(len(x) for x, _ in batches) == 192
    with torch.no_grad():
        tokens = torch.cat([model.embed(x).reshape(-1, WIDTH) for x, _ in batches])
    expected = model.up.weight.detach().abs() * tokens.norm(dim=0)
    assert torch.allclose(scores["up"], expected, rtol=1e-4)
    first_only = model.up.weight.detach().abs() * tokens[: 64 * SEQ].norm(dim=0)
    assert not torch.allclose(scores["up"], first_only, rtol=1e-2)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_wanda_beats_magnitude_on_an_outlier_feature(scope: str) -> None:
    """One embedding feature carries activations 50x larger and the layers reading it weights
    50x smaller (the function is unchanged): magnitude cuts that feature's weights, Wanda's
    ``|W| * ||X||`` is blind to the rescaling and keeps them, as the paper's mechanism says."""
    data = _corpus()
    model = _trained(data)
    loud, before = [0, 1, 2, 3], evaluate(model, data)["loss"]
    with torch.no_grad():
        model.embed.weight[:, loud] *= 50.0
        model.up.weight[:, loud] /= 50.0
    dense = evaluate(model, data)["loss"]
    assert dense == pytest.approx(before, rel=1e-4)  # the same function
    loss = {}
    for criterion in ("l1", "wanda"):
        pruned = copy.deepcopy(model)
        spec = PruningSpec("element", criterion, scope=scope, sparsity=0.5, exclude=("lm_head",))
        apply_masks(pruned, compute_masks(pruned, spec, data=data))
        loss[criterion] = evaluate(pruned, data)["loss"]
    assert dense < loss["wanda"] < loss["l1"] - 0.1, (dense, loss)


@pytest.mark.parametrize("criterion", ["l1", "wanda", "sparsegpt"])
def test_a_head_tied_to_the_embedding_stays_dense_unless_overridden(criterion: str) -> None:
    data = _corpus(n=200)
    model = TinyLM()
    model.lm_head.weight = model.embed.weight  # tie_word_embeddings, as GPT-2 or OPT
    spec = PruningSpec("element", criterion, scope="layerwise", sparsity=0.5)
    plan = compute_masks(model, spec, data=data)
    assert bool(plan.masks["lm_head"].all()) and plan.achieved["lm_head"] == 0.0
    assert plan.achieved["up"] == pytest.approx(0.5)
    (note,) = [n for n in plan.notes if n["layer"] == "lm_head" and "tied" in n["text"]]
    assert "'embed.weight'" in note["text"] and "pruning.overrides" in note["text"]
    spec = PruningSpec(
        "element", criterion, scope="layerwise", sparsity=0.5, overrides={"lm_head": 0.5}
    )
    assert compute_masks(model, spec, data=data).achieved["lm_head"] == pytest.approx(0.5)


def test_global_magnitude_on_a_language_model_points_to_the_papers_baseline() -> None:
    data, model = _corpus(n=200), TinyLM()

    def said(scope: str) -> bool:
        spec = PruningSpec("element", "l1", scope=scope, sparsity=0.5)
        return any(
            "layer-wise magnitude" in n["text"] for n in compute_masks(model, spec, data=data).notes
        )

    assert said("global") and not said("layerwise")


def test_a_layer_reachable_under_two_names_is_not_tied() -> None:
    model = TinyLM()
    model.alias = model.up  # one module, two paths: nothing else shares its weight
    assert tied_weights(model, prunable_layers(model)) == {}
