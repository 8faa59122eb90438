"""The dataset decoding child: ``python -m app.modelio.dataset_worker WORKDIR``.

Reads ``WORKDIR/request.json`` (see :func:`app.modelio.dataset_preflight.decode_dataset`),
writes the normalised ``dataset.npz`` into the request's ``out_dir`` and ``WORKDIR/result.json``:
the dataset's summary or ``{"error": "<LabError subclass>", "message": "<one sentence>"}``.
Started only under the limits ``decode_dataset`` sets.
"""

from __future__ import annotations

import io
import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np

from app.errors import Invalid, LabError
from app.modelio.dataset_files import dataset_summary, save_dataset
from app.modelio.dataset_formats import DecodeLimits, load_dataset_file
from app.modelio.dataset_preflight import memory_sentence
from app.modelio.text_corpus import (
    DEFAULT_SEQ_LEN,
    DEFAULT_TOKENIZER,
    is_text_file,
    load_text_file,
)

MAX_NPY_HEADER = 10_000  # numpy's own bound for headers it loads without allow_pickle


def decode(request: dict) -> dict:
    """Check, load, validate and save one upload; its summary."""
    path = Path(request["path"])
    check_npz_members(path)
    limits = DecodeLimits(
        max_classes=int(request["max_classes"]), max_image_pixels=int(request["max_image_pixels"])
    )
    filename = str(request.get("filename") or path.name)
    if is_text_file(filename):
        corpus = load_text_file(
            path,
            filename=filename,
            name=request["name"],
            tokenizer=str(request.get("tokenizer") or DEFAULT_TOKENIZER),
            seq_len=int(request.get("seq_len") or DEFAULT_SEQ_LEN),
            max_vocab=limits.max_classes,
        )
        save_dataset(corpus.dataset, Path(request["out_dir"]), text=corpus.meta())
        return dataset_summary(corpus.dataset, corpus.meta())
    if request.get("tokenizer") or request.get("seq_len"):
        raise Invalid(
            "tokenizer and seq_len apply to text corpora (.txt or .jsonl files) only; "
            f"{filename!r} is not one"
        )
    ds = load_dataset_file(path, name=request["name"], limits=limits)
    save_dataset(ds, Path(request["out_dir"]))
    return dataset_summary(ds)


def check_npz_members(path: Path) -> None:
    """Every ``.npy`` in an ``.npz``: a sane header and as many bytes as it announces, read
    from the headers before numpy allocates anything. Other files are left to the loader."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        if not infos or not all(i.filename.endswith(".npy") for i in infos):
            return
        for info in infos:
            with zf.open(info) as fh:
                _check_npy(fh, info)


def _check_npy(fh: io.BufferedIOBase, info: zipfile.ZipInfo) -> None:
    name = info.filename.removesuffix(".npy")
    magic = fh.read(8)
    if len(magic) < 8 or not magic.startswith(b"\x93NUMPY"):
        raise Invalid(f"array {name!r} in the .npz is not a numpy array (no .npy header)")
    raw_len = fh.read(2 if magic[6] == 1 else 4)
    header_len = int.from_bytes(raw_len, "little")
    if header_len > MAX_NPY_HEADER:
        raise Invalid(
            f"array {name!r} in the .npz has a {header_len}-byte header, over the "
            f"{MAX_NPY_HEADER} bytes numpy allows; save the arrays again with numpy.savez"
        )
    header = fh.read(header_len)
    reader = np.lib.format.read_array_header_1_0
    if magic[6] != 1:
        reader = np.lib.format.read_array_header_2_0
    try:
        shape, _, dtype = reader(io.BytesIO(raw_len + header), max_header_size=MAX_NPY_HEADER)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise Invalid(f"array {name!r} in the .npz has a damaged header ({exc})") from exc
    if dtype.hasobject:
        raise Invalid(f"array {name!r} in the .npz holds Python objects, which are not allowed")
    needed = math.prod(shape) * dtype.itemsize
    present = info.file_size - len(magic) - len(raw_len) - header_len
    if needed > present:
        raise Invalid(
            f"array {name!r} in the .npz is truncated: its header announces shape "
            f"{list(shape)} of {dtype} ({needed} bytes) but only {max(present, 0)} bytes follow"
        )


def main(argv: list[str]) -> int:
    workdir = Path(argv[1])
    out = workdir / "result.json"
    request: dict = {}
    try:
        request = json.loads((workdir / "request.json").read_text())
        result = decode(request)
    except LabError as exc:
        result = {"error": type(exc).__name__, "message": exc.message}
    except MemoryError:
        result = {"error": "TooLarge", "message": memory_sentence(request.get("memory_mb", 0))}
    except Exception as exc:  # the one catch-all: any other failure is the upload's
        text = " ".join(str(exc).split())[:300]
        result = {
            "error": "Invalid",
            "message": f"the dataset could not be read: {type(exc).__name__}: {text}",
        }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
