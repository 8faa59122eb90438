"""Streaming multipart uploads: the file goes to disk as it arrives, the size limit is enforced
while streaming, and it is hashed on the way. Nothing large ever sits in the web process.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import BadRequest, TooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 20


@dataclass
class Upload:
    """A received multipart body: text fields and one file (``file``), on disk, plus the
    ``extra`` files (a second ``file`` or a ``data`` part) where the route allows them."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    extra: list[tuple[str, Path]] = field(default_factory=list)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        for _, path in self.extra:
            path.unlink(missing_ok=True)
        self.extra = []


class _Receiver:
    """python-multipart callbacks writing the ``file`` part straight to a temporary file."""

    def __init__(self, tmp_dir: Path, max_bytes: int, max_extra: int = 0) -> None:
        self.tmp_dir, self.max_bytes, self.max_extra = tmp_dir, max_bytes, max_extra
        self._main = False
        self.upload = Upload()
        self._headers: dict[str, str] = {}
        self._hname = b""
        self._hvalue = b""
        self._name: str | None = None
        self._buf = bytearray()
        self._fh = None
        self._hash = hashlib.sha256()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: setattr(self, "_hname", self._hname + d[s:e]),
            "on_header_value": lambda d, s, e: setattr(self, "_hvalue", self._hvalue + d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._name, self._buf = {}, None, bytearray()

    def _header_end(self) -> None:
        self._headers[self._hname.decode("latin-1").lower()] = self._hvalue.decode("latin-1")
        self._hname, self._hvalue = b"", b""

    def _headers_finished(self) -> None:
        _, opts = parse_options_header(self._headers.get("content-disposition", ""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        self._name = name
        if b"filename" in opts:
            filename = opts[b"filename"].decode("utf-8", "replace")[:255]
            path = self.tmp_dir / f"upload-{secrets.token_hex(8)}.part"
            if name == "file" and self.upload.path is None and self._fh is None:
                self.upload.filename, self.upload.path, self._main = filename, path, True
            elif name in ("file", "data") and len(self.upload.extra) < self.max_extra:
                self.upload.extra.append((filename, path))
                self._main = False
            else:
                raise BadRequest("send exactly one file, in the form field 'file'")
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "wb")  # noqa: SIM115 (closed in _part_end/abort)
        elif len(self.upload.fields) >= MAX_FIELDS:
            raise BadRequest("too many form fields")

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._fh is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise TooLarge(_too_large(self.max_bytes))
            if self._main:
                self._hash.update(chunk)
            self._fh.write(chunk)
        else:
            self._buf += chunk
            if len(self._buf) > MAX_FIELD_BYTES:
                raise BadRequest(f"form field {self._name!r} is too long")

    def _part_end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            if self._main:
                self.upload.sha256 = self._hash.hexdigest()
        elif self._name:
            self.upload.fields[self._name] = self._buf.decode("utf-8", "replace")

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.upload.discard()


def _too_large(max_bytes: int) -> str:
    return (
        f"the upload is larger than this server's limit of {max_bytes // (1024 * 1024)} MB "
        "(PRUNELAB_MAX_UPLOAD_MB)"
    )


async def receive_upload(
    request: Request, *, tmp_dir: Path, max_bytes: int, max_extra: int = 0
) -> Upload:
    """Stream a ``multipart/form-data`` body to ``tmp_dir`` (``max_extra`` more file parts
    named ``file`` or ``data`` are kept in ``Upload.extra``; the size limit covers them all).

    Raises:
        TooLarge: the declared or streamed size exceeds ``max_bytes`` (before reading it all).
        BadRequest: not multipart, no file, a broken body.
    """
    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in opts:
        raise BadRequest("send the file as multipart/form-data in a field named 'file'")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 1024 * 1024:
        raise TooLarge(_too_large(max_bytes))
    receiver = _Receiver(tmp_dir, max_bytes, max_extra)
    parser = MultipartParser(opts[b"boundary"], receiver.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except (TooLarge, BadRequest):
        receiver.abort()
        raise
    except Exception as exc:  # noqa: BLE001 (any parser or client error: a broken body)
        receiver.abort()
        raise BadRequest(
            f"the upload could not be read ({type(exc).__name__}); send it again"
        ) from None
    if receiver.upload.path is None or receiver.upload.size == 0:
        receiver.abort()
        raise BadRequest("no file received: send it in the multipart field 'file'")
    return receiver.upload


def remove_partial_uploads(tmp_dir: Path) -> int:
    """At start: delete ``upload-*.part`` files an interrupted upload left; returns how many."""
    removed = 0
    for part in Path(tmp_dir).glob("upload-*.part"):
        part.unlink(missing_ok=True)
        removed += 1
    return removed


def move_into_place(src: Path, dest: Path) -> None:
    """Atomically move a received file under DATA_DIR (same filesystem: os.replace)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
