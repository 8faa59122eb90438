"""Issue 12's conformance matrix, language-model half: the causal Llama exported the usual ways
(TorchScript trace, ``torch.export`` .pt2, the dynamo ONNX exporter) loads with int64 token ids
and reports the same next-token loss and perplexity as the eager model on a token dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.modelio.detect import detect_format
from app.modelio.load import load_model
from app.pruning.data import ArrayDataset
from app.pruning.measure import evaluate
from tests.conformance.conftest import ARCHS

pytestmark = pytest.mark.slow


def _tokens() -> ArrayDataset:
    """Random token ids (vocab 64) with their next tokens: the Llama's sample is 8 tokens."""
    ids = np.random.default_rng(0).integers(0, 64, (12, 9))
    x, y = ids[:, :-1], ids[:, 1:]
    return ArrayDataset("ids", x[:8], y[:8], x[8:], y[8:], n_classes=64)


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "onnx_dynamo_zip"])
def test_exported_causal_lm_reports_the_eager_perplexity(built, exported, fmt) -> None:
    data = _tokens()
    eager = evaluate(built["llama"], data)
    path = exported("llama", fmt)
    assert not isinstance(path, str), path
    loaded = load_model(path, detect_format(path), input_shape=ARCHS["llama"].sample)
    assert loaded.input_dtype == "int64" or fmt == "torchscript"  # a trace declares no dtype
    got = evaluate(loaded.module, data)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))
    assert got["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    assert got["accuracy"] == eager["accuracy"]
    assert 30 < got["perplexity"] < 130  # random weights: about uniform over 64 tokens
    assert data.sample_batch(1).dtype == torch.int64
