"""Decode an uploaded dataset in a separate, limited process before it is accepted.

The child (``python -m app.modelio.dataset_worker``) reads the upload (a zip of class folders
of images, an ``.npz`` or a ``.csv``), validates it and writes it normalised as
``dataset.npz``; the web process only moves that file into the artifact store. The child has
the model preflight's limits (address space, CPU time, wall time; ``PRUNELAB_PREFLIGHT_*``), so
no upload can grow the web process or take it down. This module imports neither numpy nor the
decoders.

Example:
    >>> import tempfile
    >>> work = Path(tempfile.mkdtemp())
    >>> rows = [f"{i},{i % 3},{i % 3}" for i in range(30)]
    >>> _ = (work / "upload.csv").write_text(chr(10).join(["a,b,label", *rows]))
    >>> settings = Settings(data_dir=work)
    >>> ds = decode_dataset(work / "upload.csv", name="toy", out_dir=work / "out", settings=settings)
    >>> ds.n_classes, ds.input_shape, ds.path.name
    (3, [2], 'dataset.npz')
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from app import errors
from app.config import Settings
from app.modelio.preflight import run_child

logger = logging.getLogger(__name__)

# Each decoding is a child process: bound how many run at once so a burst of uploads queues.
DECODE_SLOTS = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))

_ERRORS = {
    cls.__name__: cls
    for cls in (errors.BadRequest, errors.Invalid, errors.UnsupportedMedia, errors.TooLarge)
}


@dataclass(frozen=True)
class DecodedDataset:
    """A validated upload: the normalised ``dataset.npz`` and what the API tells about it."""

    path: Path
    n_train: int
    n_test: int
    input_shape: list[int]
    n_classes: int
    task: str = "classification"
    input_dtype: str = "float32"
    text: dict | None = None  # a corpus's tokenizer, seq_len, vocab_size, vocab


def decode_dataset(
    path: Path,
    *,
    name: str,
    out_dir: Path,
    settings: Settings,
    filename: str | None = None,
    tokenizer: str | None = None,
    seq_len: int | None = None,
) -> DecodedDataset:
    """Read and validate ``path`` in a limited child; the result lands in ``out_dir``.

    ``filename`` (the upload's) tells a text corpus (``.txt``, ``.jsonl``) from the other
    formats; ``tokenizer`` and ``seq_len`` say how a corpus is tokenised and cut.

    Raises:
        Invalid, UnsupportedMedia, BadRequest: the upload's own sentence (bad shapes, labels
            over ``PRUNELAB_MAX_CLASSES``, a truncated array, ...).
        TooLarge: an unsafe zip, or decoding needs more memory than the child may use.
    """
    workdir = Path(tempfile.mkdtemp(prefix="prunelab-dataset-"))
    request = {
        "path": str(Path(path).resolve()),
        "name": name,
        "out_dir": str(Path(out_dir).resolve()),
        "max_classes": settings.max_classes,
        "max_image_pixels": settings.max_image_pixels,
        "memory_mb": settings.preflight_memory_mb,
        "filename": filename or Path(path).name,
        "tokenizer": tokenizer,
        "seq_len": seq_len,
    }
    try:
        (workdir / "request.json").write_text(json.dumps(request))
        with DECODE_SLOTS:
            rc, stderr = run_child(
                "app.modelio.dataset_worker",
                workdir,
                settings.preflight_timeout_s,
                settings.preflight_memory_mb,
                what="decoding the dataset",
            )
        out = workdir / "result.json"
        if not out.exists():
            raise _crash_error(rc, stderr, settings)
        result = json.loads(out.read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "error" in result:
        raise _ERRORS.get(result["error"], errors.Invalid)(result["message"])
    return DecodedDataset(
        path=Path(out_dir) / "dataset.npz",
        n_train=int(result["n_train"]),
        n_test=int(result["n_test"]),
        input_shape=[int(d) for d in result["input_shape"]],
        n_classes=int(result["n_classes"]),
        task=str(result.get("task") or "classification"),
        input_dtype=str(result.get("input_dtype") or "float32"),
        text=result.get("text"),
    )


def _crash_error(rc: int, stderr: str, settings: Settings) -> errors.LabError:
    logger.warning("dataset decoding child exited with %s: %s", rc, stderr[-1000:])
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return errors.TooLarge(
            "decoding the dataset used more than its CPU-time limit (about "
            f"{settings.preflight_timeout_s:g} s; PRUNELAB_PREFLIGHT_TIMEOUT_S)"
        )
    if "MemoryError" in stderr or "bad_alloc" in stderr or "out of memory" in stderr:
        return errors.TooLarge(memory_sentence(settings.preflight_memory_mb))
    return errors.Invalid(f"the dataset could not be decoded (the decoder exited with {rc})")


def memory_sentence(memory_mb: int) -> str:
    """What a user reads when decoding their dataset runs out of memory."""
    return (
        f"decoding the dataset needs more than this server's {memory_mb} MB "
        "(PRUNELAB_PREFLIGHT_MEMORY_MB); upload fewer or smaller samples"
    )
