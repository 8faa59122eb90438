"""The task a dataset implies: classifiers keep their accuracy and cross-entropy; language models
train on the shifted next token and report perplexity = exp(mean token NLL) on held-out text."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from app.modelio.text_corpus import text_dataset
from app.pruning.data import ArrayDataset
from app.pruning.measure import evaluate, measure
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec, Recipe
from app.pruning.task import logits_of, token_loss
from app.pruning.train import fine_tune
from app.pruning.validation import carve_validation
from app.runs.inputs import as_fed

TEXT = "the cat sat on the mat. a dog ran in the park. " * 30


class Bigram(nn.Module):
    """A tiny causal LM: token ids [B, L] -> logits [B, L, V], returned as transformers do."""

    def __init__(self, vocab: int, as_dict: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.hidden = nn.Linear(16, 32)
        self.head = nn.Linear(32, vocab)
        self.as_dict = as_dict

    def forward(self, x: torch.Tensor):
        logits = self.head(torch.relu(self.hidden(self.embed(x))))
        return {"logits": logits, "aux": logits.sum()} if self.as_dict else logits


def _corpus(seq_len: int = 16):
    return text_dataset(TEXT, name="t", tokenizer="char", seq_len=seq_len)


def test_classifier_loss_and_accuracy_are_unchanged() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(8, 3), torch.arange(8) % 3
    assert torch.allclose(token_loss(logits, y), F.cross_entropy(logits, y))
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    data = ArrayDataset("toy", x, np.arange(20) % 2, x, np.arange(20) % 2, 2)
    result = evaluate(nn.Linear(4, 2), data)
    assert set(result) == {"accuracy", "loss"} and data.task == "classification"


def test_language_model_trains_on_next_tokens_and_reports_perplexity() -> None:
    data = _corpus().dataset
    assert (data.task, data.metric, data.input_dtype) == ("language_model", "perplexity", "int64")
    assert (data.x_train[:, 1:] == data.y_train[:, :-1]).all()  # y is x shifted by one token
    torch.manual_seed(0)
    model = Bigram(data.n_classes, as_dict=True)
    before = evaluate(model, data)
    assert before["perplexity"] == pytest.approx(math.exp(before["loss"]))
    curve = fine_tune(model, data, FinetuneSpec(epochs=8, lr=0.05, optimizer="adam"))
    after = evaluate(model, data)
    assert after["perplexity"] < before["perplexity"] / 2 and after["perplexity"] < 4
    assert curve[-1]["accuracy"] == pytest.approx(after["accuracy"])  # next-token accuracy
    assert after["accuracy"] > 0.5


def test_a_prune_run_on_a_language_model_reports_dense_and_pruned_perplexity() -> None:
    data = _corpus().dataset
    torch.manual_seed(0)
    model = Bigram(data.n_classes)
    fine_tune(model, data, FinetuneSpec(epochs=8, lr=0.05, optimizer="adam"))
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "lm",
            "finetune": {"epochs": 0},
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.9},
        }
    )
    result = run_recipe(recipe, model, data, latency=False)
    base, final = result.baseline, result.final
    assert result.summary()["task"] == "language_model"
    assert result.summary()["metric"] == "perplexity"
    assert base["perplexity"] < final["perplexity"] < float("inf")
    assert result.layers and all("flops" in row for row in result.layers)


def test_a_language_model_fine_tunes_on_the_defaults_with_lr_auto_and_distillation() -> None:
    # The default lr "auto" range test and the distillation loss both read per-token logits.
    data = _corpus().dataset
    torch.manual_seed(0)
    model = Bigram(data.n_classes, as_dict=True)
    fine_tune(model, data, FinetuneSpec(epochs=8, lr=0.05, optimizer="adam"))
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "lm-defaults",
            "finetune": {"epochs": 1, "distill": {"weight": 0.5, "temperature": 2}},
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.7},
        }
    )
    result = run_recipe(recipe, model, data, latency=False)
    texts = [n["text"] for n in result.notes]
    assert any(t.startswith("lr auto") for t in texts), texts
    assert any(t.startswith("distillation") for t in texts), texts
    assert math.isfinite(result.final["perplexity"])


def test_outputs_that_do_not_fit_the_targets_are_named() -> None:
    with pytest.raises(ValueError, match=r"output has shape \[2, 5\] but the targets"):
        token_loss(torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.long))
    assert logits_of((torch.ones(1, 2), torch.zeros(1))).sum() == 2  # a tuple's first tensor


def test_validation_split_of_a_text_is_its_last_training_sequences() -> None:
    data = _corpus().dataset
    part = carve_validation(data, seed=3)
    n_val = round(data.n_train * 0.1)
    assert (part.x_val == data.x_train[-n_val:]).all() and part.n_train == data.n_train - n_val
    assert "val_perplexity" in measure(Bigram(data.n_classes), part, latency=False)


def test_integer_inputs_reach_token_models_as_int64_and_float_models_as_float32() -> None:
    ids = np.arange(60).reshape(10, 6) % 5
    data = ArrayDataset("ids", ids, np.arange(10) % 2, ids[:4], np.arange(4) % 2, 2)
    assert data.sample_batch(2).dtype == torch.int64
    assert as_fed(data, "int64") is data
    floats = as_fed(data, "float32")
    assert floats.sample_batch(2).dtype == torch.float32 and floats.x_train.dtype == np.float32


def test_sensitivity_of_a_language_model_records_perplexity_per_layer() -> None:
    from app.pruning.sensitivity import run_sensitivity
    from app.pruning.spec import SensitivitySpec

    data = _corpus().dataset
    torch.manual_seed(0)
    model = Bigram(data.n_classes)
    fine_tune(model, data, FinetuneSpec(epochs=8, lr=0.05, optimizer="adam"))
    rows, _ = run_sensitivity(model, data, SensitivitySpec(sparsities=(0.5, 0.95)))
    assert {r["layer"] for r in rows} == {"hidden", "head"}
    for layer in ("hidden", "head"):
        ppl = [r["perplexity"] for r in rows if r["layer"] == layer]
        assert ppl[0] < ppl[-1]  # dense, then pruned harder: worse
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
