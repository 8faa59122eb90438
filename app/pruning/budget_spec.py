"""``pruning.target``: a budget instead of a sparsity, checked without torch.

A budget is ``{"latency_ms": X, "batch": B}`` (median milliseconds of one forward pass at batch
``B`` on the machine that runs the job; ``B`` defaults to 1), ``{"params": N}`` (parameters of
the model handed back) or ``{"flops": N}`` (its MACs per sample). ``budget.py`` finds the
allocation that meets it.

Example:
    >>> check_budget({"latency_ms": 2.5, "batch": 64})
    {'latency_ms': 2.5, 'batch': 64}
    >>> check_budget({"params": 0})
    Traceback (most recent call last):
    ...
    ValueError: pruning.target.params must be a number greater than 0, got 0.
"""

from __future__ import annotations

import math

BUDGET_KINDS = ("latency_ms", "params", "flops")


def _positive(value: object, name: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[operator, arg-type]
        raise ValueError(f"{name} must be a number greater than 0, got {value!r}.")
    return float(value)  # type: ignore[arg-type]


def check_budget(target: object) -> dict[str, float]:
    """The budget as a plain dict; ValueError naming what is wrong with it."""
    if not isinstance(target, dict):
        raise ValueError('pruning.target must be an object such as {"params": 20000}.')
    kinds = [k for k in BUDGET_KINDS if k in target]
    extra = sorted(set(target) - set(BUDGET_KINDS) - {"batch"})
    if len(kinds) != 1 or extra or ("batch" in target and kinds != ["latency_ms"]):
        raise ValueError(
            "pruning.target must give exactly one of latency_ms (with an optional batch), "
            f"params or flops; got keys {sorted(map(str, target))}."
        )
    kind = kinds[0]
    _positive(target[kind], f"pruning.target.{kind}")
    out = {kind: target[kind]}
    if kind == "latency_ms":
        batch = target.get("batch", 1)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"pruning.target.batch must be an integer >= 1, got {batch!r}.")
        out["batch"] = batch
    return out


def describe(target: dict) -> str:
    """The budget in words: ``"latency <= 2.5 ms at batch 64"``."""
    if "latency_ms" in target:
        return f"latency <= {target['latency_ms']:g} ms at batch {int(target.get('batch', 1))}"
    kind = "params" if "params" in target else "flops"
    return f"{'parameters' if kind == 'params' else 'MACs per sample'} <= {target[kind]:,.0f}"
