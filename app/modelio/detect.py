"""Tell an uploaded model file's format from its content, never its name, without running it.

Everything here is static: magic bytes, zip entry names, a safetensors header, a walk over the
top-level protobuf fields of an ONNX file and a ``pickletools`` scan of any pickle
(:mod:`app.modelio.pickle_scan`). Nothing is
unpickled and torch is not imported, so the web process can call :func:`detect_format` on a file
it has just received.

Example:
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = Path(tempfile.mkdtemp()) / "upload.bin"  # the name does not matter
    >>> save_file({"fc.weight": torch.zeros(2, 2)}, str(path))
    >>> detect_format(path)
    'safetensors'
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from app.errors import Forbidden, UnsupportedMedia
from app.modelio.archive import check_zip
from app.modelio.onnx_bundle import is_onnx_zip
from app.modelio.pickle_scan import (
    MAX_PICKLE_BYTES,
    check_legacy_pickle,
    pickle_globals,
    pickle_refusal,
    unsafe_globals,
)

FORMATS = ("safetensors", "state_dict", "onnx", "torchscript", "pt2")
CODE_FORMATS = frozenset({"torchscript", "pt2"})
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
# Top-level field numbers of onnx.ModelProto (onnx/onnx.proto3).
_ONNX_FIELDS = {1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 21, 25}


def detect_format(path: Path) -> str:
    """Name the model format of a file from its content.

    Args:
        path: the uploaded file.

    Returns:
        One of ``FORMATS``: ``safetensors``, ``state_dict`` (a weights-only ``torch.save``),
        ``onnx`` (also a ``.zip`` of one with its external data), ``torchscript``
        (``torch.jit.save``) or ``pt2`` (``torch.export.save``).

    Raises:
        UnsupportedMedia: garbage, a truncated archive, or a pickle that holds more than
            weights (a whole ``nn.Module`` or anything importing code), with a sentence saying
            how to convert it.
        BadRequest, TooLarge: an unsafe zip archive (path traversal, symlinks, a zip bomb).
    """
    path = Path(path)
    with path.open("rb") as fh:
        head = fh.read(16)
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedMedia("the uploaded file is empty; it is not a model file we recognise")
    if head.startswith(b"PK"):
        return _detect_zip(path)
    if head.startswith(_LEGACY_MAGIC):
        check_legacy_pickle(path)
        return "state_dict"
    if _is_safetensors(path, size):
        return "safetensors"
    if _is_onnx(path, size):
        return "onnx"
    if head[:1] == b"\x80":
        names = pickle_globals(path.read_bytes()[:MAX_PICKLE_BYTES])
        raise UnsupportedMedia(pickle_refusal(names))
    raise UnsupportedMedia(
        "not a model file we recognise: expected safetensors, a weights-only torch.save "
        "state_dict, ONNX, a TorchScript archive or a torch.export .pt2 program"
    )


def check_code_format_allowed(fmt: str, policy: str, *, is_admin: bool) -> None:
    """Refuse TorchScript/.pt2 uploads the ``PRUNELAB_CODE_FORMATS`` policy does not allow.

    Raises:
        Forbidden: ``policy`` is ``nobody``, or ``admins`` and the user is not an admin.
    """
    if fmt not in CODE_FORMATS or policy == "everyone" or (policy == "admins" and is_admin):
        return
    who = "no one" if policy == "nobody" else "admins only"
    raise Forbidden(
        f"{fmt} files can run code when loaded and this server accepts them from {who} "
        "(PRUNELAB_CODE_FORMATS); upload ONNX or safetensors weights with a built-in arch instead"
    )


def _detect_zip(path: Path) -> str:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UnsupportedMedia(
            f"the file looks like a zip archive but it is truncated or damaged ({exc})"
        ) from exc
    with zf:
        check_zip(zf)
        names = zf.namelist()
        if any(n.endswith("/archive_format") or "serialized_exported_program" in n for n in names):
            return "pt2"
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if is_onnx_zip(names):
            return "onnx"  # an .onnx with its external-data file(s)
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise UnsupportedMedia(
                "not a model file we recognise: a zip archive that is not a torch.save file, "
                "a TorchScript archive or a torch.export .pt2 program"
            )
        info = zf.getinfo(pickles[0])
        if info.file_size > MAX_PICKLE_BYTES:
            raise UnsupportedMedia("the checkpoint's pickle is too large to be a plain state_dict")
        try:
            data = zf.read(info)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UnsupportedMedia(f"the archive is truncated or damaged ({exc})") from exc
    names_imported = pickle_globals(data)
    if unsafe_globals(names_imported):
        raise UnsupportedMedia(pickle_refusal(names_imported))
    return "state_dict"


def _is_safetensors(path: Path, size: int) -> bool:
    if size < 10:
        return False
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n < 2 or n > min(size - 8, 100 * 1024 * 1024):
            return False
        raw = fh.read(n)
    if raw[:1] != b"{":
        return False
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(header, dict):
        return False
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or {"dtype", "shape", "data_offsets"} - entry.keys():
            return False
        end = max(end, int(entry["data_offsets"][1]))
    if 8 + n + end > size:
        raise UnsupportedMedia(
            "the safetensors file is truncated: its header describes more bytes than it holds"
        )
    return True


def _read_varint(fh) -> int | None:
    shift = result = 0
    for _ in range(10):
        b = fh.read(1)
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    return None


def _is_onnx(path: Path, size: int) -> bool:
    """Walk the top-level protobuf fields: all must be ModelProto fields, with ir_version and graph."""
    seen: set[int] = set()
    with path.open("rb") as fh:
        while fh.tell() < size:
            tag = _read_varint(fh)
            if tag is None:
                return False
            field, wire = tag >> 3, tag & 7
            if field not in _ONNX_FIELDS:
                return False
            if wire == 0:
                if _read_varint(fh) is None:
                    return False
            elif wire == 2:
                length = _read_varint(fh)
                if length is None or fh.tell() + length > size:
                    return _truncated_onnx(seen | {field})
                fh.seek(length, 1)
            elif wire in (1, 5):
                fh.seek(8 if wire == 1 else 4, 1)
            else:
                return False
            seen.add(field)
    return {1, 7} <= seen


def _truncated_onnx(seen: set[int]) -> bool:
    if 1 in seen and 7 in seen:
        raise UnsupportedMedia(
            "the ONNX file is truncated: its graph ends before its declared size"
        )
    return False
