"""Shapes that run fast: which channel multiples this machine's CPU kernels like, measured once.

:func:`channel_table` times a 3x3 convolution with ``c`` input and output channels for every
``c`` in ``WIDTHS`` (interleaved, fixed threads) and keeps milliseconds per ``c * c`` MACs.
:func:`preferred_multiple` picks the smallest multiple in ``MULTIPLES`` whose widths cost,
on average, within ``TOLERANCE`` of the best multiple's: a default for ``pruning.round_to``.
:func:`cached_round_to` measures once per machine, torch version and thread count, and keeps
the table as JSON in a cache directory (a second of CPU time, then free).

Example:
    >>> table = {"widths": {"62": 1.0, "63": 1.0, "64": 0.5}}
    >>> preferred_multiple(table)
    4
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.latency import fixed_threads, time_interleaved
from app.pruning.notes import Note, info
from app.pruning.spec import Recipe

WIDTHS = tuple(range(56, 73))
MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
TOLERANCE = 0.03
SPATIAL = 8
BATCH = 16


def channel_table(*, threads: int | None = None, budget_s: float = 0.8) -> dict:
    """``{"widths": {c: ms per c*c MACs, relative}, "threads", "torch"}`` measured here."""
    with fixed_threads(threads) as n, torch.inference_mode():
        convs = [nn.Conv2d(c, c, 3, padding=1, bias=False).eval() for c in WIDTHS]
        xs = [torch.randn(BATCH, c, SPATIAL, SPATIAL) for c in WIDTHS]
        fns = [(lambda m=m, x=x: m(x)) for m, x in zip(convs, xs, strict=True)]
        timings = time_interleaved(fns, budget_s=budget_s, threads=n)
    per_mac = {str(c): t.median_ms / (c * c) for c, t in zip(WIDTHS, timings, strict=True)}
    best = min(per_mac.values())
    widths = {c: round(v / best, 4) for c, v in per_mac.items()}
    return {"widths": widths, "threads": n, "torch": torch.__version__}


def preferred_multiple(table: dict) -> int:
    """The smallest multiple whose widths' mean relative cost is within ``TOLERANCE`` of the best."""
    widths = {int(c): float(v) for c, v in table["widths"].items()}
    means = {}
    for m in MULTIPLES:
        costs = [v for c, v in widths.items() if c % m == 0]
        if costs:
            means[m] = sum(costs) / len(costs)
    best = min(means.values())
    return min(m for m, v in means.items() if v <= best * (1 + TOLERANCE))


def _key(threads: int) -> str:
    machine = f"{platform.machine()}-{os.cpu_count()}cpu"
    return f"channels-{machine}-torch{torch.__version__}-t{threads}".replace("/", "_")


def cached_round_to(cache_dir: Path, *, threads: int | None = None) -> tuple[int, dict]:
    """``(preferred multiple, table)``; the table is measured once and kept in ``cache_dir``."""
    n = int(threads or torch.get_num_threads())
    path = Path(cache_dir) / f"{_key(n)}.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        table = channel_table(threads=n)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(table, f)
        os.replace(tmp, path)
    return preferred_multiple(table), table


def with_default_round_to(
    recipe: Recipe, cache_dir: Path | None, model: nn.Module | None = None
) -> tuple[Recipe, Note | None]:
    """A physical channel-level recipe without ``round_to`` gets the measured multiple, and a note.

    With ``model``, the multiple is capped at a quarter of the narrowest layer that would be cut
    (a power of two), so rounding never hands a small layer back whole: 16 on a 16-filter stem
    would turn "50%" into "keep all 16". Anything else (or no cache directory) is returned
    unchanged, without a note.
    """
    spec = recipe.pruning
    if cache_dir is None or spec.round_to is not None or not spec.physical:
        return recipe, None
    if recipe.kind != "prune" or spec.granularity not in CHANNEL_LEVELS:
        return recipe, None
    measured, _ = cached_round_to(cache_dir)
    multiple = min(measured, _width_cap(model)) if model is not None else measured
    if multiple <= 1:
        return recipe, None
    capped = (
        f" (the measured {measured}, capped for the narrowest layer)" if multiple < measured else ""
    )
    note = info(
        f"pruning.round_to defaulted to {multiple}{capped}: kept channel counts are multiples of "
        f"{multiple}, which this machine's convolution kernels run fastest (measured once)"
    )
    return replace(recipe, pruning=replace(spec, round_to=multiple)), note


def _width_cap(model: nn.Module) -> int:
    """The largest power of two at most a quarter of the narrowest prunable layer's width
    (convolutions when there are any; the last Linear, a classifier, is never cut)."""
    from app.pruning.layers import prunable_layers

    weights = [m.weight for m in prunable_layers(model).values()]
    convs = [w.shape[0] for w in weights if w.dim() > 2]
    widths = convs or [w.shape[0] for w in weights[:-1]]
    if not widths:
        return 1
    cap = max(1, min(widths) // 4)
    return 1 << (cap.bit_length() - 1)
