"""Zip safety: check every entry of an archive before anything is extracted.

Refused: absolute paths and ``..`` (zip-slip), symlinks and other non-regular entries, too many
entries, too many expanded bytes, and entries that expand far more than real data does (zip
bombs). The checks read only the central directory; :func:`safe_extract` then writes regular
files under the destination, stopping if an entry expands beyond what its header declared.

Example:
    >>> import io, tempfile
    >>> buf = io.BytesIO()
    >>> with zipfile.ZipFile(buf, "w") as zf:
    ...     zf.writestr("digits/0/a.png", b"...")
    >>> with zipfile.ZipFile(buf) as zf:
    ...     [p.name for p in safe_extract(zf, Path(tempfile.mkdtemp()))]
    ['a.png']
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from app.errors import BadRequest, TooLarge

MAX_ENTRIES = 100_000
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_RATIO = 200
_RATIO_MIN_BYTES = 1024 * 1024  # tiny entries may compress well; only big ones can be bombs


def check_zip(
    zf: zipfile.ZipFile,
    *,
    max_entries: int = MAX_ENTRIES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
) -> list[zipfile.ZipInfo]:
    """Check a zip archive's directory before extracting or reading it.

    Args:
        zf: an open archive.
        max_entries: most entries allowed.
        max_total_bytes: most bytes all entries may expand to.
        max_ratio: largest expanded/compressed ratio for an entry over 1 MiB.

    Returns:
        The archive's entries, in order.

    Raises:
        BadRequest: an entry with an absolute path, ``..``, a drive letter, a symlink or another
            special file.
        TooLarge: too many entries, too many expanded bytes, or a zip bomb.
    """
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise TooLarge(f"the archive holds {len(infos)} entries; at most {max_entries} are allowed")
    total = 0
    for info in infos:
        _check_name(info.filename)
        kind_bits = stat.S_IFMT(info.external_attr >> 16)
        if kind_bits and kind_bits not in (stat.S_IFREG, stat.S_IFDIR):
            mode = info.external_attr >> 16
            kind = "a symlink" if stat.S_ISLNK(mode) else "a special file"
            raise BadRequest(f"the archive entry {info.filename!r} is {kind}, which is not allowed")
        total += info.file_size
        if total > max_total_bytes:
            raise TooLarge(
                f"the archive expands to more than {max_total_bytes // 1024**2} MiB, "
                "which is over the limit"
            )
        if info.file_size > _RATIO_MIN_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise TooLarge(
                f"the archive entry {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}"
                " times its compressed size; it looks like a zip bomb"
            )
    return infos


def _check_name(name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (len(name) > 1 and name[1] == ":"):
        raise BadRequest(
            f"the archive entry {name!r} points outside the archive (absolute path or '..')"
        )
    if "\x00" in name:
        raise BadRequest("an archive entry name holds a NUL byte")


def safe_extract(zf: zipfile.ZipFile, dest: Path, **limits: float) -> list[Path]:
    """Check the archive, then extract its regular files under ``dest``.

    Args:
        zf: an open archive.
        dest: an existing or new directory; nothing is written outside it.
        **limits: ``max_entries``, ``max_total_bytes``, ``max_ratio`` for :func:`check_zip`.

    Returns:
        Paths of the extracted files.

    Raises:
        BadRequest, TooLarge: as :func:`check_zip`, or an entry that expands beyond its header.
    """
    infos = check_zip(zf, **limits)  # type: ignore[arg-type]
    root = Path(dest).resolve()
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for info in infos:
        if info.is_dir():
            continue
        target = (root / info.filename.replace("\\", "/")).resolve()
        if not target.is_relative_to(root):
            raise BadRequest(f"the archive entry {info.filename!r} points outside the archive")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, target.open("wb") as out:
            _copy_limited(src, out, info)
        written.append(target)
    return written


def _copy_limited(src, out, info: zipfile.ZipInfo) -> None:
    budget = info.file_size
    while chunk := src.read(1024 * 1024):
        budget -= len(chunk)
        if budget < 0:
            raise TooLarge(f"the archive entry {info.filename!r} expands beyond its declared size")
        out.write(chunk)


__all__ = ["check_zip", "safe_extract"]
