"""Model intake: detect the format, apply the code-format policy, preflight the file in a
sandboxed child process (the only place torch loads it), store it and add the row.

Torch-free at import: the web process (``app.web.api.models``) and ``prunelab serve --demo``
call it; the heavy work happens in ``app.modelio.preflight``'s child process.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

from sqlmodel import Session

from app import store
from app.artifacts import ArtifactStore
from app.catalogue import ARCHITECTURES, check_arch
from app.config import Settings
from app.errors import Invalid
from app.limits import check_input_shape
from app.modelio.detect import check_code_format_allowed, detect_format
from app.modelio.onnx_bundle import bundle_files
from app.modelio.preflight import run_preflight
from app.models import ModelRecord, User

# Each preflight is a child process that imports torch: bound how many run at once so a burst
# of uploads queues instead of exhausting the server's memory and CPU.
PREFLIGHT_SLOTS = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))

EXTENSIONS = {
    "safetensors": "safetensors",
    "state_dict": "pt",
    "onnx": "onnx",
    "torchscript": "pt",
    "pt2": "pt2",
}
INPUT_DTYPES = ("float32", "int64")
# an ONNX model's external-data files may come as this many more upload parts
MAX_DATA_PARTS = 4


def tmp_dir(settings: Settings) -> Path:
    """Where uploads and intake scratch files live while they are checked."""
    return settings.data_dir / "tmp"


def parse_shape(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        shape = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise Invalid(
            f"input_shape must be comma-separated integers such as 1,8,8; got {text!r}"
        ) from None
    if not 1 <= len(shape) <= 4 or any(d < 1 or d > 65536 for d in shape):
        raise Invalid(f"input_shape must be 1 to 4 positive sizes such as 1,8,8; got {text!r}")
    return shape


def parse_dtype(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    if text.strip().lower() not in INPUT_DTYPES:
        raise Invalid(f"input_dtype must be float32 or int64 (token ids); got {text!r}")
    return text.strip().lower()


def accept_upload(
    settings: Settings,
    session: Session,
    user: User,
    parts: Sequence[tuple[str, Path]],
    sha: str,
    *,
    name: str,
    arch: str | None,
    input_shape: list[int] | None,
    num_classes: int | None,
    input_dtype: str | None = None,
) -> tuple[ModelRecord, bool]:
    """:func:`accept_model` of an uploaded file: ``parts`` are ``(filename, path)``, the model
    first (``sha`` is its hash); an ONNX model with its data file(s) in more parts is stored as
    one zip of them."""
    with contextlib.ExitStack() as stack:
        path = parts[0][1]
        if len(parts) > 1:
            tmp = tmp_dir(settings)
            tmp.mkdir(parents=True, exist_ok=True)
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp)))
            path, sha = bundle_files(list(parts), work / "bundle.zip")
        return accept_model(
            settings,
            session,
            user,
            path,
            sha,
            name=name,
            arch=arch,
            input_shape=input_shape,
            num_classes=num_classes,
            input_dtype=input_dtype,
        )


def accept_model(
    settings: Settings,
    session: Session,
    user: User,
    path: Path,
    sha: str,
    *,
    name: str,
    arch: str | None,
    input_shape: list[int] | None,
    num_classes: int | None,
    input_dtype: str | None = None,
) -> tuple[ModelRecord, bool]:
    """Detect, check policy, preflight, then move the file into place and add the row.

    ``input_dtype`` (``float32`` or ``int64`` token ids) is what the preflight feeds when the
    file does not say; the row records the dtype the preflight found.
    """
    existing = store.model_by_sha(session, sha256=sha)
    if existing is not None:
        return existing, False
    fmt = detect_format(path)
    check_code_format_allowed(fmt, settings.code_formats, is_admin=user.role == "admin")
    if fmt in ("safetensors", "state_dict") and not arch:
        raise Invalid(
            f"a {fmt} file holds only weights: also send 'arch' (one of {', '.join(ARCHITECTURES)})"
        )
    if arch:
        check_arch(arch)
    with PREFLIGHT_SLOTS:  # at most a few model-loading child processes at once
        report = run_preflight(
            path,
            fmt,
            arch=arch,
            input_shape=input_shape,
            input_dtype=input_dtype,
            num_classes=num_classes,
            timeout_s=settings.preflight_timeout_s,
            memory_mb=settings.preflight_memory_mb,
        )
    ext = "zip" if fmt == "onnx" and zipfile.is_zipfile(path) else EXTENSIONS[fmt]
    key = f"models/{sha}.{ext}"
    artifacts = ArtifactStore(settings.artifacts)
    artifacts.put_file(path, key)
    try:
        row = store.add_model(
            session,
            name=name or f"{fmt} model",
            format=fmt,
            arch=arch,
            input_shape=report.get("input_shape"),
            input_dtype=report.get("input_dtype") or "float32",
            num_classes=report.get("num_classes"),
            n_params=int(report.get("n_params", 0)),
            size_bytes=path.stat().st_size,
            sha256=sha,
            storage_key=key,
            structured_ok=bool(report.get("structured_ok")),
            layers=report.get("layers", []),
            preflight=report,
            owner_id=user.id,
        )
        session.commit()
    except Exception:
        session.rollback()
        artifacts.delete_prefix(key)
        raise
    return row, True


def _build_untrained(
    settings: Settings, arch: str, num_classes: int, shape: list[int], out: Path
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.modelio.build_worker",
            arch,
            str(num_classes),
            ",".join(str(d) for d in shape),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=settings.preflight_timeout_s,
        check=False,
    )
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        raise Invalid(lines[-1] if lines else f"building {arch!r} failed")


def create_from_architecture(
    settings: Settings,
    session: Session,
    user: User,
    *,
    arch: str,
    name: str | None = None,
    num_classes: int = 10,
    input_shape: list[int] | None = None,
) -> ModelRecord:
    """Build an untrained built-in architecture in a child process, preflight it, store it."""
    try:
        check_arch(arch)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    shape = input_shape or list(ARCHITECTURES[arch].default_input_shape)
    check_input_shape(shape, settings)
    tmp = tmp_dir(settings)
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp) as work:
        out = Path(work) / "model.safetensors"
        _build_untrained(settings, arch, num_classes, shape, out)
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
        row, _ = accept_model(
            settings,
            session,
            user,
            out,
            sha,
            name=name or f"{arch} (untrained)",
            arch=arch,
            input_shape=shape,
            num_classes=num_classes,
        )
    return row
