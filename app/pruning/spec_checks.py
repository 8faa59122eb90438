"""The checks every recipe section shares: known keys, choices, numbers in range.

Each raises ValueError naming the recipe field (``pruning.sparsity``) in user terms. No torch.

Example:
    >>> number(0.5, "pruning.sparsity", 0.0, 1.0)
    0.5
    >>> optional(None, integer, "pruning.round_to", 1) is None
    True
    >>> choice("bogus", ("oneshot", "iterative"), "schedule.kind")
    Traceback (most recent call last):
    ...
    ValueError: schedule.kind 'bogus' is not one of: oneshot, iterative.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any


def check_keys(d: Any, cls: type, section: str, ignore: frozenset[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{section} must be a JSON object, got {type(d).__name__}.")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - allowed - ignore)
    if unknown:
        raise ValueError(
            f"unknown key '{unknown[0]}' in {section}; allowed keys: {', '.join(sorted(allowed))}."
        )
    return d


def choice(value: Any, options: tuple[str, ...], name: str) -> str:
    if value not in options:
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(options)}.")
    return value


def number(value: Any, name: str, lo: float, hi: float, *, hi_open: bool = True) -> float:
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    bad = not ok_type or not math.isfinite(value) or value < lo
    bad = bad or (value >= hi if hi_open else value > hi)
    if bad:
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}{right}, got {value!r}.")
    return float(value)


def integer(value: Any, name: str, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}.")
    return int(value)


def optional(value: Any, check: Any, *args: Any, **kw: Any) -> Any:
    return None if value is None else check(value, *args, **kw)
