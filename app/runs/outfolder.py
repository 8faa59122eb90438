"""Which run an ``--out`` folder of ``prunelab run`` belongs to, so a stale checkpoint is never resumed.

``prunelab run`` checkpoints into ``OUT/checkpoints/``. Next to ``checkpoint.pt`` it writes
``run.json``: the recipe, a digest of the model file (or the untrained arch), the dataset and the
arch. A later call on the same folder resumes only when asked (``--resume``) and only the same
run; a checkpoint of another recipe, model or dataset (or one without ``run.json``) is refused
with a sentence. A finished run removes its checkpoints, like a server run.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> ident = {"recipe": {"name": "a"}, "model": "arch:mlp", "data": "digits", "arch": "mlp"}
    >>> claim_out_dir(out, ident, resume=False)
    False
    >>> (out / "checkpoints" / "checkpoint.pt").write_bytes(b"x") and None
    >>> claim_out_dir(out, ident, resume=True)
    True
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

CHECKPOINTS = "checkpoints"
IDENTITY = "run.json"
CHECKPOINT = "checkpoint.pt"


def file_digest(path: str | Path | None, arch: str | None) -> str:
    """``sha256:...`` of a model file, or ``arch:NAME`` for an untrained built-in model."""
    if path is None:
        return f"arch:{arch}"
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _differs(old: dict, new: dict) -> str | None:
    for key, what in (("recipe", "recipe"), ("model", "model"), ("data", "dataset")):
        if old.get(key) != new.get(key):
            return what
    if old.get("arch") != new.get("arch"):
        return "architecture"
    return None


def claim_out_dir(out: Path, identity: dict, *, resume: bool) -> bool:
    """Check ``out`` before a run; True when its checkpoint is to be resumed.

    Args:
        out: the ``--out`` folder.
        identity: ``{"recipe": dict, "model": digest, "data": str, "arch": str | None}``.
        resume: ``--resume`` was given.

    Raises:
        ValueError: the folder holds a checkpoint of another run, or of this one without
            ``--resume``.
    """
    folder = out / CHECKPOINTS
    if (folder / CHECKPOINT).exists():
        try:
            old = json.loads((folder / IDENTITY).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        what = _differs(old, identity) if old else "run is unknown"
        if what is not None:
            reason = f"its {what} differs" if old else "it does not say which run wrote it"
            raise ValueError(
                f"--out {out} holds a checkpoint of another run ({reason}); choose another "
                f"--out, or delete {folder} to start over."
            )
        if not resume:
            raise ValueError(
                f"--out {out} holds an unfinished run of this recipe; pass --resume to continue "
                f"it, or delete {folder} to start over."
            )
        return True
    folder.mkdir(parents=True, exist_ok=True)
    (folder / IDENTITY).write_text(json.dumps(identity, sort_keys=True), encoding="utf-8")
    return False


def release_out_dir(out: Path) -> None:
    """A finished run leaves no checkpoint to resume (as a server run deletes its own)."""
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
