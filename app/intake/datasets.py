"""Dataset intake: uploaded ``.npz``/``.csv``/image ``.zip`` files and ``.txt``/``.jsonl`` text
corpora entering the lab.

An upload is decoded and validated in a limited child process
(``app.modelio.dataset_preflight``), which writes it normalised as ``dataset.npz``; this module
moves that file into the artifact store and records it (:func:`ingest_dataset`, which the
upload route calls). It imports neither numpy, nor the decoders, nor the engine: the web
process stays small and torch-free.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session

from app import store
from app.artifacts import ArtifactStore
from app.config import Settings
from app.errors import Invalid
from app.modelio.dataset_preflight import decode_dataset
from app.models import DatasetRecord, User


def check_fits(
    ds_input_shape: Sequence[int],
    ds_classes: int,
    model_input_shape: Sequence[int] | None,
    model_classes: int | None,
) -> None:
    """Refuse a run whose dataset does not fit the model (shapes are per sample, no batch).

    Raises:
        Invalid: naming both shapes, or both class counts.
    """
    ds_shape = [int(d) for d in ds_input_shape]
    if model_input_shape is not None:
        m_shape = [int(d) for d in model_input_shape]
        if m_shape != ds_shape and not (
            len(m_shape) == len(ds_shape) + 1 and m_shape[1:] == ds_shape
        ):
            raise Invalid(
                f"the dataset's samples have shape {ds_shape} but the model expects input "
                f"shape {m_shape}"
            )
    if model_classes is not None and int(model_classes) != int(ds_classes):
        raise Invalid(f"the dataset has {ds_classes} classes but the model outputs {model_classes}")


def ingest_dataset(
    settings: Settings,
    session: Session,
    user: User,
    path: Path,
    *,
    filename: str,
    name: str,
    sha256: str,
    tokenizer: str | None = None,
    seq_len: int | None = None,
) -> DatasetRecord:
    """Decode and validate the file in a limited child, store it normalised, add the row
    (``tokenizer`` and ``seq_len``: how a ``.txt``/``.jsonl`` corpus is tokenised and cut)."""
    ds_id = "ds_" + secrets.token_hex(5)
    key = f"datasets/{ds_id}/dataset.npz"
    artifacts = ArtifactStore(settings.artifacts)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        ds = decode_dataset(
            path,
            name=name,
            out_dir=Path(work),
            settings=settings,
            filename=filename,
            tokenizer=tokenizer,
            seq_len=seq_len,
        )
        artifacts.put_file(ds.path, key)
    try:
        row = store.add_dataset(
            session,
            id=ds_id,
            name=name,
            format=_format_of(path, filename),
            n_train=ds.n_train,
            n_test=ds.n_test,
            input_shape=ds.input_shape,
            n_classes=ds.n_classes,
            task=ds.task,
            input_dtype=ds.input_dtype,
            text=ds.text,
            sha256=sha256,
            storage_key=key,
            owner_id=user.id,
        )
        session.commit()
    except Exception:
        session.rollback()
        artifacts.delete_prefix(f"datasets/{ds_id}")
        raise
    return row


def _format_of(path: Path, filename: str) -> str:
    for suffix in ("txt", "jsonl"):
        if filename.lower().endswith("." + suffix):
            return suffix
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK"):
        return "npz" if filename.lower().endswith(".npz") else "zip"
    return "csv"
