"""Issue 12's language-model path end to end: a text corpus uploaded as .txt, a tiny causal
language model (transformers' Llama from a tiny config, trained a little here on generated
sentences, exported as ``torch.export`` .pt2 with int64 token ids) uploaded through the API, and
a magnitude run at 50% whose dense and pruned perplexities reach the API, summary and run page."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.config import Settings
from app.main import create_app
from app.modelio.text_corpus import text_dataset
from app.pruning.spec import FinetuneSpec
from app.pruning.train import train
from tests.factories import make_user, wait_for_run
from tests.hf_models import Logits

torch.set_num_threads(1)
SENTENCES = ("the cat sat on the mat. ", "a dog ran in the park. ", "birds sing at dawn. ")
SEQ_LEN = 32


def _text() -> str:
    rng = np.random.default_rng(0)
    return "".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), 400))


def _trained_lm_pt2(text: str, path: Path) -> Path:
    """A 2-layer Llama (vocab 256, hidden 32, 2 heads) trained 3 epochs on the byte-level text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=SEQ_LEN,
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Logits(LlamaForCausalLM(cfg))
    data = text_dataset(text, name="t", tokenizer="byte", seq_len=SEQ_LEN).dataset
    train(model, data, FinetuneSpec(epochs=3, lr=0.01, optimizer="adam", batch_size=16))
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = torch.from_numpy(data.x_train[:2])
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


@pytest.mark.slow
def test_magnitude_pruning_a_causal_lm_reports_perplexity(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PRUNELAB_WORKER_THREADS", "1")
    text = _text()
    model_file = _trained_lm_pt2(text, tmp_path / "lm.pt2")
    settings = Settings(
        data_dir=tmp_path / "data", max_concurrent_jobs=1, heartbeat_s=0.5, device="cpu"
    )
    with TestClient(create_app(settings)) as client:
        with Session(client.app.state.engine) as s:
            _, headers = make_user(s, "lm", role="admin")
        ds = client.post(
            "/api/datasets",
            headers=headers,
            data={"name": "sentences", "seq_len": str(SEQ_LEN)},
            files={"file": ("sentences.txt", io.BytesIO(text.encode()))},
        )
        assert ds.status_code == 201, ds.text
        assert (ds.json()["task"], ds.json()["n_classes"]) == ("language_model", 256)
        up = client.post(
            "/api/models",
            headers=headers,
            files={"file": ("lm.pt2", io.BytesIO(model_file.read_bytes()))},
        )
        assert up.status_code == 201, up.text
        assert (up.json()["input_dtype"], up.json()["num_classes"]) == ("int64", 256)
        recipe = {
            "kind": "prune",
            "name": "llama l1 50%",
            "model_id": up.json()["id"],
            "dataset_id": ds.json()["id"],
            "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5},
            "schedule": {"kind": "oneshot"},
            "finetune": {"epochs": 0},
        }
        created = client.post("/api/runs", headers=headers, json=recipe)
        assert created.status_code == 201, created.text
        run = wait_for_run(client, headers, created.json()["id"], timeout=300)
        assert run["status"] == "succeeded", run.get("error")
        base, final = run["baseline"], run["final"]
        assert (run["task"], run["metric"]) == ("language_model", "perplexity")
        assert 1.0 < base["perplexity"] < 8.0, base  # trained: far below 256 (uniform guessing)
        assert base["perplexity"] < final["perplexity"] < 256.0, (base, final)
        assert np.isclose(final["perplexity"], np.exp(final["loss"]))
        assert 0.0 < final["accuracy"] < base["accuracy"] <= 1.0  # next-token accuracy
        assert final["sparsity"] == pytest.approx(0.5, abs=0.05)
        steps = client.get(f"/api/runs/{run['id']}/steps", headers=headers).json()
        assert all("perplexity" in s["after_finetune"] for s in steps)
        page = client.get(f"/runs/{run['id']}", headers=headers)
        assert page.status_code == 200
        html = page.text
        assert "perplexity (lower is better)" in html and "next-token accuracy" in html
        assert f"{base['perplexity']:.4g}" in html and f"{final['perplexity']:.4g}" in html
        assert "Perplexity vs compression" in html
