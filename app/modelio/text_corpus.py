"""Text corpora for language modelling: a plain ``.txt`` or a ``.jsonl`` of ``{"text": ...}``
lines, tokenised and cut into sequences.

Tokenisers: ``byte`` (the UTF-8 bytes, vocabulary 256) or ``char`` (the distinct characters of
the text in code-point order; the vocabulary string is stored with the dataset, so token ``i``
is always ``vocab[i]``). The last :data:`TEST_TEXT_FRACTION` of the tokens is the held-out
test text; each part is cut into non-overlapping windows of ``seq_len + 1`` tokens: ``x`` is
a window's first ``seq_len`` tokens, ``y`` its last ``seq_len`` (the next token at every
position), both int64. Worker side only, like ``dataset_formats``.

Example:
    >>> corpus = text_dataset("abcab" * 40, name="toy", tokenizer="char", seq_len=8)
    >>> corpus.dataset.task, corpus.dataset.input_shape, corpus.vocab, corpus.dataset.n_classes
    ('language_model', (8,), 'abc', 3)
    >>> corpus.dataset.x_train[0].tolist(), corpus.dataset.y_train[0].tolist()
    ([0, 1, 2, 0, 1, 0, 1, 2], [1, 2, 0, 1, 0, 1, 2, 0])
    >>> corpus.dataset.n_train, corpus.dataset.n_test
    (22, 2)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import Invalid
from app.pruning.data import ArrayDataset

TOKENIZERS = ("byte", "char")
TEXT_SUFFIXES = (".txt", ".jsonl")
DEFAULT_TOKENIZER = "byte"
DEFAULT_SEQ_LEN = 64
MAX_SEQ_LEN = 4096
TEST_TEXT_FRACTION = 0.1


@dataclass(frozen=True)
class TextCorpus:
    """A tokenised corpus: the dataset and how it was made (``vocab`` is None for ``byte``)."""

    dataset: ArrayDataset
    tokenizer: str
    seq_len: int
    vocab: str | None

    def meta(self) -> dict:
        """What is stored with the dataset and told by the API."""
        return {
            "tokenizer": self.tokenizer,
            "seq_len": self.seq_len,
            "vocab_size": self.dataset.n_classes,
            "vocab": self.vocab,
        }


def is_text_file(filename: str) -> bool:
    """True for the corpus suffixes (``.txt``, ``.jsonl``)."""
    return filename.lower().endswith(TEXT_SUFFIXES)


def check_options(tokenizer: str, seq_len: int) -> None:
    """Raises Invalid naming the field when ``tokenizer`` or ``seq_len`` is not allowed."""
    if tokenizer not in TOKENIZERS:
        raise Invalid(f"tokenizer must be one of {', '.join(TOKENIZERS)}; got {tokenizer!r}")
    if not 2 <= seq_len <= MAX_SEQ_LEN:
        raise Invalid(f"seq_len must be between 2 and {MAX_SEQ_LEN}; got {seq_len}")


def read_text(path: Path, filename: str) -> str:
    """The corpus text of a ``.txt`` (as it is) or a ``.jsonl`` (its ``text`` fields, one per
    line, joined by newlines).

    Raises:
        Invalid: not UTF-8, a JSONL line that is not an object with a string ``text``, or no
            text at all.
    """
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(
            f"the text corpus is not UTF-8 text (byte {exc.start} cannot be decoded)"
        ) from exc
    if filename.lower().endswith(".jsonl"):
        raw = "\n".join(_jsonl_texts(raw))
    if not raw.strip():
        raise Invalid("the text corpus holds no text")
    return raw


def _jsonl_texts(raw: str) -> list[str]:
    texts = []
    for i, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise Invalid(f"JSONL line {i} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise Invalid(f'JSONL line {i} must be an object with a string "text" field')
        texts.append(row["text"])
    return texts


def tokenise(text: str, tokenizer: str) -> tuple[np.ndarray, str | None, int]:
    """``(int64 ids, vocab or None, vocabulary size)`` of ``text``."""
    if tokenizer == "byte":
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64), None, 256
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one per character
    codes, ids = np.unique(points, return_inverse=True)  # sorted code points: sorted characters
    vocab = "".join(map(chr, codes.tolist()))
    return ids.astype(np.int64).reshape(-1), vocab, len(vocab)


def _windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def text_dataset(
    text: str,
    *,
    name: str,
    tokenizer: str = DEFAULT_TOKENIZER,
    seq_len: int = DEFAULT_SEQ_LEN,
    max_vocab: int | None = None,
) -> TextCorpus:
    """Tokenise ``text`` and cut it into training and held-out test sequences.

    Raises:
        Invalid: a bad tokenizer or seq_len, a vocabulary over ``max_vocab``, or a text too
            short for 2 training sequences and 1 test sequence of ``seq_len + 1`` tokens.
    """
    check_options(tokenizer, seq_len)
    ids, vocab, size = tokenise(text, tokenizer)
    if max_vocab is not None and size > max_vocab:
        raise Invalid(
            f"the text has {size} distinct characters, over this server's limit of {max_vocab} "
            "classes (PRUNELAB_MAX_CLASSES); use tokenizer 'byte'"
        )
    cut = int(len(ids) * (1 - TEST_TEXT_FRACTION))
    x_train, y_train = _windows(ids[:cut], seq_len)
    x_test, y_test = _windows(ids[cut:], seq_len)
    if len(x_train) < 2 or len(x_test) < 1:
        need = int(np.ceil((seq_len + 1) / TEST_TEXT_FRACTION))
        raise Invalid(
            f"the text has {len(ids)} tokens, too few for seq_len {seq_len}: the held-out last "
            f"{TEST_TEXT_FRACTION:.0%} needs one sequence of {seq_len + 1} tokens, so give at "
            f"least {need} tokens or a smaller seq_len"
        )
    ds = ArrayDataset(name, x_train, y_train, x_test, y_test, n_classes=size)
    return TextCorpus(ds, tokenizer, seq_len, vocab)


def load_text_file(
    path: Path, *, filename: str, name: str, tokenizer: str, seq_len: int, max_vocab: int
) -> TextCorpus:
    """Read, tokenise and cut an uploaded ``.txt``/``.jsonl`` corpus (see :func:`text_dataset`)."""
    check_options(tokenizer, seq_len)
    text = read_text(path, filename)
    return text_dataset(text, name=name, tokenizer=tokenizer, seq_len=seq_len, max_vocab=max_vocab)
