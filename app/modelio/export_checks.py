"""How a reloaded export is compared with the in-memory pruned model.

Outputs must agree to :data:`RTOL` of their magnitude (at least ``RTOL`` absolute) on the
example batch the file was traced at, and also on a batch of 1 and of one more sample wherever
the in-memory model takes those: a file that runs only at its traced batch gets an ``error``
saying so.

Example:
    >>> from torch import nn
    >>> net = nn.Linear(3, 2)
    >>> x = torch.randn(2, 3)
    >>> others = other_batches(net, x)
    >>> [tuple(b.shape) for b, _ in others]
    [(1, 3), (3, 3)]
    >>> check_batches(net, others, "pruned.pt") is None
    True
    >>> print(check_batches(lambda b: net(b[:2]), others, "pruned.pt"))  # doctest: +ELLIPSIS
    pruned.pt matches the pruned model at the batch of 2 it was exported at but not at a batch of 3 (...
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.modelio.export_input import accepts

logger = logging.getLogger(__name__)
RTOL = 1e-4  # outputs must agree to 1e-4 of their magnitude (at least 1e-4 absolute)


def file_sha256(path: Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tolerance(expected: torch.Tensor) -> float:
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return RTOL * max(1.0, scale)


def first_output(out: object) -> torch.Tensor:
    """The first output of a model returning a tuple/list (the one every export is checked on)."""
    if isinstance(out, tuple | list) and out:
        out = out[0]
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out)
    return out  # type: ignore[return-value]


def max_diff(expected: torch.Tensor, got: object) -> float:
    """The largest absolute difference; a different output shape raises ``ValueError``."""
    got = first_output(got)
    if got.shape != expected.shape:
        raise ValueError(f"output shape {list(got.shape)} differs from {list(expected.shape)}")
    return float((got.float() - expected.float()).abs().max()) if expected.numel() else 0.0


def other_batches(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(batch, expected outputs)`` for a batch of 1 and of one more sample than ``x``, each
    where the in-memory model takes it: an export must then take it too (dynamic batch)."""
    out = []
    for other in (x[:1], torch.cat([x, x[:1]])):
        if other.shape[0] != x.shape[0] and accepts(model, other):
            with torch.inference_mode():
                out.append((other, first_output(model(other))))
    return out


def check_batches(run: Callable, others: list, name: str, batch: int = 2) -> str | None:
    """None when the reloaded file gives the right outputs at every other batch, else why not
    (``batch``: the one it was traced at)."""
    for other, want in others:
        try:
            with torch.inference_mode():
                diff = max_diff(want, run(other))
            if diff <= tolerance(want):
                continue
            why = f"outputs up to {diff:.2e} away"
        except Exception as exc:  # noqa: BLE001 - reported on the row
            why = f"{type(exc).__name__}: {exc}"
        return sentence(
            f"{name} matches the pruned model at the batch of {batch} it was exported at but "
            f"not at a batch of {other.shape[0]} ({why}): its export fixed the batch size, so "
            f"feed it batches of {batch} only"
        )
    return None


def sentence(text: str, limit: int = 400) -> str:
    """One line: a multi-line error joined with '; ' and cut to ``limit`` characters."""
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def passed_row(name: str, kind: str, path: Path, diff: float, tol: float) -> dict:
    row = {
        "name": name,
        "kind": kind,
        "size_bytes": path.stat().st_size,
        "verified": diff <= tol,
        "max_abs_diff": diff,
        "sha256": file_sha256(path),
    }
    if diff > tol:
        row["error"] = (
            f"{name} reloads with outputs up to {diff:.2e} away from the pruned model's "
            f"(tolerance {tol:.1e}); do not deploy it without checking"
        )
    return row


def failed_row(name: str, kind: str, path: Path, exc: Exception) -> dict:
    logger.warning("export of %s failed: %s", name, exc)
    path.unlink(missing_ok=True)  # a stale or unreadable file must not be offered
    return {
        "name": name,
        "kind": kind,
        "size_bytes": 0,
        "verified": False,
        "max_abs_diff": None,
        "sha256": None,
        "error": sentence(f"{kind} export of {name} failed: {type(exc).__name__}: {exc}"),
    }
