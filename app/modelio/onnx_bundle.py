"""An ONNX model whose weights live in external-data files, uploaded as one ``.zip``.

``torch.onnx.export`` writes ``model.onnx`` plus ``model.onnx.data`` by default. The two travel
as one zip (or two multipart parts that the web layer zips, see :func:`bundle_files`). Only
files inside the upload are read: the archive is checked and extracted by
:mod:`app.modelio.archive` (no ``..``, absolute paths or symlinks), and every tensor's
``location`` must name a regular file inside the extracted folder.

Example:
    >>> import io, onnx, tempfile, torch
    >>> work, buf = Path(tempfile.mkdtemp()), io.BytesIO()
    >>> net = torch.nn.Linear(4, 2)
    >>> torch.onnx.export(net, (torch.zeros(1, 4),), buf, dynamo=False, opset_version=17)
    >>> onnx.save_model(onnx.load_from_string(buf.getvalue()), work / "model.onnx",
    ...     save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    >>> parts = [(p.name, p) for p in sorted(work.iterdir())]
    >>> [name for name, _ in parts]
    ['model.onnx', 'model.onnx.data']
    >>> path, sha = bundle_files(parts, work / "model.zip")
    >>> model = read_onnx_zip(path, work / "unzipped")
    >>> sorted(i.name for i in model.graph.initializer)
    ['bias', 'weight']
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path, PurePosixPath

from app.errors import BadRequest, Invalid, UnsupportedMedia
from app.modelio.archive import safe_extract

# fixed entry dates make the zip of the same two files byte-identical (same sha256, one model)
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def is_onnx_zip(names: list[str]) -> bool:
    """Whether a zip's entry names look like an ONNX model with its data files."""
    return any(n.lower().endswith(".onnx") for n in names)


def read_onnx_zip(path: Path, workdir: Path):
    """Extract an ONNX zip under ``workdir`` and load its model with its external data.

    Raises:
        BadRequest: an unsafe archive or an external-data location outside it.
        Invalid: not exactly one ``.onnx`` file, or a data file the model names is missing.
        UnsupportedMedia: the ``.onnx`` entry is not readable ONNX.
    """
    import onnx
    from onnx import external_data_helper

    try:
        with zipfile.ZipFile(path) as zf:
            written = safe_extract(zf, workdir)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UnsupportedMedia(f"the zip archive is damaged ({exc})") from exc
    models = [p for p in written if p.suffix.lower() == ".onnx"]
    if len(models) != 1:
        raise Invalid(
            f"the zip holds {len(models)} .onnx files; send exactly one .onnx with its "
            "external-data file(s)"
        )
    try:
        model = onnx.load(str(models[0]), load_external_data=False)
    except Exception as exc:
        raise UnsupportedMedia(f"the .onnx file in the zip is not readable ONNX ({exc})") from exc
    base = models[0].parent
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            _check_location(tensor, base, workdir.resolve())
    external_data_helper.load_external_data_for_model(model, str(base))
    return model


def _check_location(tensor, base: Path, root: Path) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    posix = PurePosixPath(location.replace("\\", "/"))
    if not location or posix.is_absolute() or ".." in posix.parts or ":" in location:
        raise BadRequest(
            f"the ONNX tensor {tensor.name!r} reads its data from {location!r}, outside the "
            "upload; only files inside the zip may be read"
        )
    target = base / posix
    if target.is_symlink() or not target.resolve().is_relative_to(root):
        raise BadRequest(f"the ONNX data file {location!r} points outside the upload")
    if not target.is_file():
        raise Invalid(
            f"the ONNX tensor {tensor.name!r} needs the data file {location!r}, which is not in "
            "the upload; zip the .onnx with every file torch.onnx.export wrote beside it"
        )


def bundle_files(parts: list[tuple[str, Path]], dest: Path) -> tuple[Path, str]:
    """Zip an ``.onnx`` part and its data part(s) (``[(filename, path)]``) into ``dest``.

    Returns:
        ``(dest, sha256 of dest)``; the same files always make the same bytes.

    Raises:
        BadRequest: no ``.onnx`` part, or two parts with the same name.
    """
    names = [PurePosixPath((name or "").replace("\\", "/")).name for name, _ in parts]
    if sum(n.lower().endswith(".onnx") for n in names) != 1:
        raise BadRequest(
            "two files were sent: one must be the .onnx model (e.g. model.onnx) and the other "
            "its external-data file (e.g. model.onnx.data), with their original names"
        )
    if len(set(names)) != len(names) or not all(names):
        raise BadRequest("the uploaded files need distinct names, as torch.onnx.export wrote them")
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for name, (_, src) in sorted(zip(names, parts, strict=True)):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with src.open("rb") as fh, zf.open(info, "w", force_zip64=True) as out:
                while chunk := fh.read(1024 * 1024):
                    out.write(chunk)
    digest = hashlib.sha256()
    with dest.open("rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return dest, digest.hexdigest()
