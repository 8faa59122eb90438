"""Shapes that run fast: which channel multiples this machine's kernels like, measured once.

:func:`channel_table` times a 3x3 convolution with ``c`` input and output channels for every
``c`` in ``WIDTHS`` (interleaved, fixed threads) in PyTorch, and in every other runtime it is
given a timer for (``app.modelio.ort_channels``: ONNX Runtime, whose NCHWc kernels want a
multiple of their 8- or 16-channel block), and keeps each runtime's milliseconds per ``c * c``
MACs relative to its best width. :func:`preferred_multiple` picks the smallest multiple whose
widths cost, on average and in the runtime where it does worst, within ``TOLERANCE`` of the
best multiple's: a default for ``pruning.round_to``, capped per layer
(:func:`with_default_round_to`). :func:`cached_round_to` measures once per machine, torch
version, thread count and set of runtimes, and keeps the table as JSON in a cache directory
(a few seconds of CPU time, then free).

Example:
    >>> table = {"widths": {"62": 1.0, "63": 1.0, "64": 0.5}}
    >>> preferred_multiple(table)
    4
    >>> both = {"runtimes": {"pytorch": {"56": 1.0, "60": 1.0, "64": 1.0},
    ...                      "onnxruntime": {"56": 2.0, "60": 2.0, "64": 1.0}}}
    >>> preferred_multiple(both), per_runtime(both)
    (16, {'pytorch': 1, 'onnxruntime': 16})
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.latency import fixed_threads, time_interleaved
from app.pruning.notes import Note, info, warning
from app.pruning.spec import Recipe

WIDTHS = tuple(range(56, 73))
MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
TOLERANCE = 0.03
SPATIAL = 8
BATCH = 16
RUNTIME_NAMES = {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime"}

# widths, threads=, budget_s= -> median milliseconds per width, in one runtime
Timer = Callable[..., list[float]]


def torch_conv_timer(widths: tuple[int, ...], *, threads: int, budget_s: float) -> list[float]:
    """Median milliseconds of a ``c -> c`` 3x3 convolution at each width, in PyTorch."""
    with fixed_threads(threads) as n, torch.inference_mode():
        convs = [nn.Conv2d(c, c, 3, padding=1, bias=False).eval() for c in widths]
        xs = [torch.randn(BATCH, c, SPATIAL, SPATIAL) for c in widths]
        fns = [(lambda m=m, x=x: m(x)) for m, x in zip(convs, xs, strict=True)]
        return [t.median_ms for t in time_interleaved(fns, budget_s=budget_s, threads=n)]


def _relative(widths: tuple[int, ...], ms: list[float]) -> dict[str, float]:
    per_mac = {str(c): v / (c * c) for c, v in zip(widths, ms, strict=True)}
    best = min(per_mac.values())
    return {c: round(v / best, 4) for c, v in per_mac.items()}


def channel_table(
    *,
    threads: int | None = None,
    budget_s: float = 1.5,
    timers: Mapping[str, Timer] | None = None,
) -> dict:
    """``{"runtimes": {name: {c: ms per c*c MACs, relative}}, "widths", "threads", "torch"}``
    measured here: PyTorch, and each of ``timers`` (``"widths"`` is PyTorch's row)."""
    n = int(threads or torch.get_num_threads())
    runtimes = {}
    for name, timer in {"pytorch": torch_conv_timer, **(timers or {})}.items():
        runtimes[name] = _relative(WIDTHS, timer(WIDTHS, threads=n, budget_s=budget_s))
    return {
        "runtimes": runtimes,
        "widths": runtimes["pytorch"],
        "threads": n,
        "torch": torch.__version__,
    }


def _means(widths: Mapping[str, float]) -> dict[int, float]:
    """Mean relative cost of the widths divisible by each multiple, over the best multiple's."""
    costs = {int(c): float(v) for c, v in widths.items()}
    means = {}
    for m in MULTIPLES:
        of_m = [v for c, v in costs.items() if c % m == 0]
        if of_m:
            means[m] = sum(of_m) / len(of_m)
    best = min(means.values())
    return {m: v / best for m, v in means.items()}


def _smallest_within(scores: Mapping[int, float]) -> int:
    best = min(scores.values())
    return min(m for m, v in scores.items() if v <= best * (1 + TOLERANCE))


def per_runtime(table: dict) -> dict[str, int]:
    """Each measured runtime's own preferred multiple."""
    rows = table.get("runtimes") or {"pytorch": table["widths"]}
    return {name: _smallest_within(_means(w)) for name, w in rows.items()}


def preferred_multiple(table: dict) -> int:
    """The smallest multiple whose widths' mean relative cost is within ``TOLERANCE`` of the
    best in every measured runtime (a multiple is scored by the runtime where it does worst)."""
    rows = table.get("runtimes") or {"pytorch": table["widths"]}
    means = [_means(w) for w in rows.values()]
    common = set.intersection(*(set(m) for m in means))
    return _smallest_within({m: max(r[m] for r in means) for m in common})


def _key(threads: int, runtimes: tuple[str, ...]) -> str:
    machine = f"{platform.machine()}-{os.cpu_count()}cpu"
    names = "+".join(("pytorch", *sorted(runtimes)))
    key = f"channels-v2-{machine}-torch{torch.__version__}-t{threads}-{names}"
    return key.replace("/", "_")


def cached_round_to(
    cache_dir: Path, *, threads: int | None = None, timers: Mapping[str, Timer] | None = None
) -> tuple[int, dict]:
    """``(preferred multiple, table)``; the table is measured once and kept in ``cache_dir``.

    ``timers`` are the runtimes measured next to PyTorch (``ort_channels.runtime_timers()``).
    """
    n = int(threads or torch.get_num_threads())
    path = Path(cache_dir) / f"{_key(n, tuple(timers or ()))}.json"
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        table = channel_table(threads=n, timers=timers)
        try:  # an unwritable cache (a read-only home) only costs the next run a measurement
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(table, f)
            os.replace(tmp, path)
        except OSError:
            pass
    return preferred_multiple(table), table


def with_default_round_to(
    recipe: Recipe,
    cache_dir: Path | None,
    timers: Mapping[str, Timer] | None = None,
) -> tuple[Recipe, Note | None]:
    """A physical channel-level recipe without ``round_to`` gets a measured multiple, shaped
    for ``pruning.deploy_runtime``, and a note.

    PyTorch (the default): the multiple every measured runtime (PyTorch and ``timers``) runs
    within ``TOLERANCE`` of its best, capped per layer (``round_to_cap`` "layer") at the
    largest power of two at most a quarter of the layer's (or coupled group's) width
    (``pruning_spec.layer_multiple``): wide layers, where most MACs are, get the fast shapes
    and narrow ones can still lose three quarters (PyTorch runs an 8-wide layer cut from 16
    faster). One multiple for the whole net was first capped at the narrowest layer (16 on
    the zoo's CNNs: a 30% filter run kept their 16- and 32-filter layers whole and removed a
    tenth of resnet20's channels), then at a quarter of it (4: the wide layers too).

    ONNX Runtime: its own measured multiple (its NCHWc block, 16 on AVX-512, 8 on AVX2) on
    every layer, uncapped: ORT pads a layer cut below its block back to a whole block and
    reorders around it, so those cuts buy nothing there; layers at or under one block stay
    whole and the budget-aware rounding cuts the others deeper to reach the sparsity asked.
    Without ONNX Runtime on the worker the PyTorch default is used and the note says so.

    Anything else (or no cache directory) is returned unchanged, without a note.

    Example (a table already measured, in ``cache``):
        >>> import tempfile
        >>> from app.pruning.spec import Recipe
        >>> cache = Path(tempfile.mkdtemp())
        >>> table = {"runtimes": {"pytorch": {"56": 1.0, "60": 1.0, "64": 1.0},
        ...                       "onnxruntime": {"56": 2.0, "60": 2.0, "64": 1.0}}}
        >>> _ = (cache / f"{_key(torch.get_num_threads(), ('onnxruntime',))}.json").write_text(
        ...     json.dumps(table))
        >>> timers = {"onnxruntime": torch_conv_timer}  # not called: the table is cached
        >>> r = Recipe.from_dict({"kind": "prune", "name": "x", "pruning": {
        ...     "granularity": "filter", "criterion": "l1", "sparsity": 0.5, "physical": True,
        ...     "deploy_runtime": "onnxruntime"}})
        >>> p = with_default_round_to(r, cache, timers)[0].pruning
        >>> p.round_to, p.round_to_cap
        (16, 'none')
    """
    spec = recipe.pruning
    if cache_dir is None or spec.round_to is not None or not spec.physical:
        return recipe, None
    if recipe.kind != "prune" or spec.granularity not in CHANNEL_LEVELS:
        return recipe, None
    measured, table = cached_round_to(cache_dir, timers=timers)
    each, runtime = per_runtime(table), spec.deploy_runtime
    missing = None  # the runtime asked for could not be measured here
    if runtime != "pytorch":
        if runtime in each:
            return _for_runtime(recipe, runtime, each)
        missing = (
            f"pruning.deploy_runtime '{runtime}': {RUNTIME_NAMES.get(runtime, runtime)} is not "
            "installed on this worker, so its shapes could not be measured; the PyTorch "
            "default was used"
        )
    if measured <= 1:
        return recipe, None if missing is None else warning(missing)
    listed = ", ".join(f"{RUNTIME_NAMES.get(k, k)} {v}" for k, v in each.items())
    text = (
        f"pruning.round_to defaulted to {measured}, capped per layer (pruning.round_to_cap "
        f"'layer'): each layer's (or coupled group's) kept filter/channel count is a multiple of "
        f"{measured} or of the largest power of two at most a quarter of its width, whichever "
        f"is smaller, so the wide layers get the shapes this machine's convolution kernels run "
        f"fastest (measured once; preferred multiple by runtime: {listed}) and the narrow ones "
        f"can still be cut to the sparsity asked (set round_to for one multiple everywhere: "
        f"layers of {measured} channels or fewer then stay whole and the others are cut "
        f"deeper; kept counts are rounded up or down so the sparsity asked is reached; "
        f"deploying in ONNX Runtime? set pruning.deploy_runtime 'onnxruntime')"
    )
    note = info(text) if missing is None else warning(f"{text} ({missing})")
    return replace(recipe, pruning=replace(spec, round_to=measured, round_to_cap="layer")), note


def _for_runtime(recipe: Recipe, runtime: str, each: Mapping[str, int]) -> tuple[Recipe, Note]:
    multiple = each[runtime]
    name = RUNTIME_NAMES.get(runtime, runtime)
    note = info(
        f"pruning.round_to defaulted to {multiple} on every layer for pruning.deploy_runtime "
        f"'{runtime}' (measured once: {name} runs widths that are multiples of {multiple} "
        f"fastest per MAC, and pads a layer cut to fewer back to its next multiple, so such "
        f"cuts would buy nothing there): layers of {multiple} filters/channels or fewer stay "
        f"whole, the others keep multiples of {multiple}, rounded up or down so the sparsity "
        f"asked is reached over the whole net (the server and prunelab run choose this runtime "
        f"for a model given as ONNX unless the recipe names one; 'pytorch' shapes for PyTorch)"
    )
    spec = replace(recipe.pruning, round_to=multiple, round_to_cap="none")
    return replace(recipe, pruning=spec), note
