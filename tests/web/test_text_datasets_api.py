"""Token-id and text datasets over HTTP: integer x stays int64, a .txt corpus becomes a byte-level
language-modelling dataset, a .jsonl one a char-level dataset whose vocabulary is stored with it;
bad corpora are refused with a sentence and nothing left behind."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.modelio.dataset_files import load_saved_dataset, read_text_meta

SENTENCES = ("the cat sat on the mat. ", "a dog ran in the park. ", "birds sing at dawn. ")


def _text(n: int = 200) -> str:
    rng = np.random.default_rng(0)
    return "".join(SENTENCES[i] for i in rng.integers(0, len(SENTENCES), n))


def _post(client, headers, content: bytes, filename: str, **fields):
    return client.post(
        "/api/datasets",
        headers=headers,
        data={"name": "mine", **fields},
        files={"file": (filename, io.BytesIO(content))},
    )


def _stored(settings, row: dict) -> Path:
    return Path(settings.artifacts) / "datasets" / row["id"] / "dataset.npz"


def _files(settings) -> set[Path]:
    roots = [Path(settings.artifacts), settings.data_dir / "tmp"]
    return {p for r in roots if r.exists() for p in r.rglob("*") if p.is_file()}


def test_token_id_npz_keeps_integer_x(client: TestClient, member_headers, settings) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.integers(0, 100, (60, 12)).astype(np.int32), y=np.arange(60) % 3)
    r = _post(client, member_headers, buf.getvalue(), "ids.npz")
    assert r.status_code == 201, r.text
    row = r.json()
    assert (row["task"], row["input_dtype"], row["input_shape"], row["n_classes"]) == (
        "classification",
        "int64",
        [12],
        3,
    )
    ds = load_saved_dataset(_stored(settings, row))
    assert ds.x_train.dtype == np.int64 and ds.x_test.dtype == np.int64
    assert ds.sample_batch(2).dtype.is_floating_point is False  # fed as token ids
    assert client.get(f"/api/datasets/{row['id']}", headers=member_headers).json() == row


def test_txt_corpus_is_byte_level_with_a_held_out_tail(
    client: TestClient, member_headers, settings
) -> None:
    text = _text()
    r = _post(client, member_headers, text.encode(), "corpus.txt", seq_len="32")
    assert r.status_code == 201, r.text
    row = r.json()
    assert (row["format"], row["task"], row["input_dtype"]) == ("txt", "language_model", "int64")
    assert (row["input_shape"], row["n_classes"]) == ([32], 256)
    assert row["text"] == {"tokenizer": "byte", "seq_len": 32, "vocab_size": 256, "vocab": None}
    ds = load_saved_dataset(_stored(settings, row))
    tail = text.encode()[int(len(text) * 0.9) :]  # the held-out last 10% of the text
    assert bytes(ds.x_test[0].astype(np.uint8)) == tail[:32]
    assert bytes(ds.y_test[0].astype(np.uint8)) == tail[1:33]  # the next byte at every position
    assert row["n_train"] == (int(len(text) * 0.9) - 1) // 32 and ds.task == "language_model"
    page = client.get("/datasets", headers=member_headers)
    assert page.status_code == 200 and "language model (byte, seq 32)" in page.text


def test_jsonl_corpus_is_char_level_with_its_vocabulary_stored(
    client: TestClient, member_headers, settings
) -> None:
    lines = [json.dumps({"text": s.strip()}) for s in _text(150).split(". ") if s]
    content = "\n".join(lines).encode()
    r = _post(client, member_headers, content, "corpus.jsonl", tokenizer="char", seq_len="16")
    assert r.status_code == 201, r.text
    row = r.json()
    text = "\n".join(json.loads(line)["text"] for line in lines)
    vocab = "".join(sorted(set(text)))
    assert row["format"] == "jsonl" and row["n_classes"] == len(vocab) < 30
    assert row["text"] == {
        "tokenizer": "char",
        "seq_len": 16,
        "vocab_size": len(vocab),
        "vocab": vocab,
    }
    path = _stored(settings, row)
    assert read_text_meta(path)["vocab"] == vocab  # the mapping travels with the data
    ds = load_saved_dataset(path)
    assert "".join(vocab[i] for i in ds.x_train[0]) == text[:16]


def test_bad_corpora_get_a_sentence_and_leave_nothing(
    client: TestClient, member_headers, settings
) -> None:
    ok = _text().encode()
    cases = [
        (b"\xff\xfe\x00bad" * 100, "c.txt", {}, "not UTF-8"),
        (b'{"text": "fine"}\nnot json\n', "c.jsonl", {}, "JSONL line 2"),
        (b'{"body": "no text field"}\n', "c.jsonl", {}, '"text"'),
        (b"too short", "c.txt", {}, "too few"),
        (ok, "c.txt", {"tokenizer": "bpe"}, "tokenizer must be one of byte, char"),
        (ok, "c.txt", {"seq_len": "1"}, "seq_len must be between 2"),
        (ok, "c.txt", {"seq_len": "sixty"}, "seq_len must be a positive integer"),
        (ok, "c.txt", {"seq_len": "0"}, "seq_len must be a positive integer"),  # not the default
        (ok, "c.txt", {"seq_len": "-3"}, "seq_len must be a positive integer"),
        (b"a,label\n1,0\n2,1\n", "c.csv", {"tokenizer": "char"}, ".txt or .jsonl"),
    ]
    for content, filename, fields, words in cases:
        r = _post(client, member_headers, content, filename, **fields)
        assert 400 <= r.status_code < 500, (filename, fields, r.text)
        assert r.status_code == 422 or "seq_len" not in fields, (fields, r.status_code)
        assert words in r.json()["detail"], (words, r.json()["detail"])
    assert _files(settings) == set()
    listed = client.get("/api/datasets", headers=member_headers).json()
    assert [d["id"] for d in listed] == ["digits"]
    assert listed[0]["task"] == "classification" and listed[0]["input_dtype"] == "float32"
