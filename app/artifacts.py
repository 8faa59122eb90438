"""THE artifact store: every file a run, an upload or a page reads or writes goes through it.

``settings.artifacts`` is a local folder or an fsspec URL.

Keys are ``/``-separated paths relative to that root (``runs/7/artifacts/pruned.onnx``,
``runs/7/checkpoints/checkpoint.pt``, ``models/run-7.safetensors``). Workers write to a local
folder first and ``put`` the finished files, so a reader never sees half a file. This module
imports neither torch nor the engine: the web process streams downloads and reads the masks its
pages draw through it; nothing else builds file paths from storage keys.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
CHUNK = 1 << 20


def run_prefix(run_id: int) -> str:
    return f"runs/{int(run_id)}"


def artifact_key(run_id: int, name: str) -> str:
    """The key of a run's artifact ``name`` (a plain file name, checked)."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ValueError(f"artifact name {name!r} must be a plain file name")
    return f"{run_prefix(run_id)}/artifacts/{name}"


def checkpoint_key(run_id: int) -> str:
    return f"{run_prefix(run_id)}/checkpoints/checkpoint.pt"


def log_path(data_dir: Path, run_id: int) -> Path:
    """The worker's log file on the machine that runs it (local runner: the server's)."""
    return Path(data_dir) / "logs" / f"run-{int(run_id)}.log"


def is_remote(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


class ArtifactStore:
    """A root folder or fsspec URL and the few operations runs need."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.remote = is_remote(root)
        self._fs: Any = None

    @property
    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            self._fs = fsspec.core.url_to_fs(self.root)[0]
        return self._fs

    def _check(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"storage key {key!r} is not a relative path")
        return key

    def url(self, key: str) -> str:
        """The full path (local) or URL (remote) of ``key``."""
        return f"{self.root}/{self._check(key)}"

    def local_path(self, key: str) -> Path:
        """The file of ``key`` on a local store (``ValueError`` for a remote one)."""
        if self.remote:
            raise ValueError(f"artifact store {self.root!r} is remote; use open() instead")
        return Path(self.root.removeprefix("file://")) / self._check(key)

    def put_file(self, src: Path, key: str) -> None:
        """Copy a finished local file under ``key`` (atomically on a local store)."""
        if self.remote:
            self.fs.put_file(str(src), self.url(key))
            return
        dest = self.local_path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)

    def get_file(self, key: str, dest: Path) -> bool:
        """Copy ``key`` to a local file; False when it does not exist."""
        if not self.exists(key):
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.remote:
            self.fs.get_file(self.url(key), str(dest))
        else:
            shutil.copyfile(self.local_path(key), dest)
        return True

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """A local path holding ``key``: the file itself, or a temporary copy of a remote one."""
        if not self.remote:
            yield self.local_path(key)
            return
        with tempfile.TemporaryDirectory(prefix="prunelab-read-") as tmp:
            dest = Path(tmp) / key.rsplit("/", 1)[-1]
            self.fs.get_file(self.url(key), str(dest))
            yield dest

    def exists(self, key: str) -> bool:
        if self.remote:
            return bool(self.fs.exists(self.url(key)))
        return self.local_path(key).is_file()

    def size(self, key: str) -> int:
        if self.remote:
            return int(self.fs.size(self.url(key)))
        return self.local_path(key).stat().st_size

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        """Stream a stored file in 1 MiB chunks."""
        if self.remote:
            opener = self.fs.open(self.url(key), "rb")
        else:
            opener = open(self.local_path(key), "rb")  # noqa: SIM115 - closed by the with below
        with opener as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under ``prefix`` (a run's folder when the run is deleted)."""
        if self.remote:
            if self.fs.exists(self.url(prefix)):
                self.fs.rm(self.url(prefix), recursive=True)
            return
        shutil.rmtree(self.local_path(prefix), ignore_errors=True)


def content_disposition(name: str) -> str:
    """A safe ``attachment`` header: ASCII fallback plus RFC 5987 UTF-8 name."""
    from urllib.parse import quote

    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
