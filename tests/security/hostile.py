"""Hostile dataset uploads (issue 14, items 1, 2 and 7): each with the 4xx sentence it must get."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Hostile:
    filename: str
    content: bytes
    status: int
    says: tuple[str, ...]


def _npz(y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((len(y), 4), dtype=np.float32), y=y)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def blank_png_bomb() -> bytes:
    """12 blank 4096x4096 PNGs in about 200 KB (each 16 M pixels once decoded)."""
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (4096, 4096)).save(png, format="PNG")
    members = {f"{'ab'[i % 2]}/{i}.png": png.getvalue() for i in range(12)}
    return _zip(members, zipfile.ZIP_DEFLATED)


def huge_npz_header() -> bytes:
    """``x.npy`` whose header is 200 KB of padding."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (6, 4), 'pad': '%s'}" % (
        "x" * 200_000
    )
    raw = header.encode("latin-1")
    x = b"\x93NUMPY\x02\x00" + len(raw).to_bytes(4, "little") + raw + bytes(6 * 4 * 4)
    return _zip({"x.npy": x, "y.npy": _npy(np.array([0, 1, 0, 1, 0, 1]))})


def truncated_npz() -> bytes:
    """``x.npy`` announces 1000 x 1000 float32 values (4 MB) but holds 2000 bytes."""
    x = _npy(np.zeros((1000, 1000), dtype=np.float32))[:2000]
    return _zip({"x.npy": x, "y.npy": _npy(np.array([0, 1] * 500))})


def oversized_csv_field() -> bytes:
    return b"label,a\n0,1\n1," + b"1" * 200_000 + b"\n"


def hostile_uploads() -> dict[str, Hostile]:
    limit = ("PRUNELAB_MAX_CLASSES",)
    return {
        "png-bomb": Hostile(
            "bomb.zip", blank_png_bomb(), 422, ("4096x4096", "PRUNELAB_MAX_IMAGE_PIXELS")
        ),
        "label-1e8": Hostile("y8.npz", _npz(np.array([0, 1, 1e8, 1, 0, 1])), 422, limit),
        "label-1e15": Hostile("y15.npz", _npz(np.array([0, 1, 1e15, 1, 0, 1])), 422, limit),
        "huge-header": Hostile(
            "header.npz", huge_npz_header(), 422, ("'x'", "header", "numpy.savez")
        ),
        "truncated": Hostile("cut.npz", truncated_npz(), 422, ("'x'", "truncated", "[1000, 1000]")),
        "csv-field": Hostile(
            "wide.csv", oversized_csv_field(), 422, ("CSV line 3", "longer than 131072")
        ),
    }
