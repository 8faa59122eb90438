"""Per-step target sparsities of a schedule and the stop-at-accuracy rule (torch-free: the
new-run form previews the targets too).

Example:
    >>> from app.pruning.spec import ScheduleSpec
    >>> schedule_targets(ScheduleSpec(kind="agp", steps=3), 0.9)[-1]
    0.9
    >>> within_drop(0.95, 0.94, 0.01), within_drop(0.95, 0.93, 0.01)
    (True, False)
"""

from __future__ import annotations

from app.catalogue import SCHEDULE_KINDS
from app.pruning.spec import ScheduleSpec


def within_drop(baseline_accuracy: float, accuracy: float, max_drop: float | None) -> bool:
    """True when ``accuracy`` is at most ``max_drop`` below the baseline (always without a rule)."""
    return max_drop is None or baseline_accuracy - accuracy <= max_drop + 1e-9


def agp_sparsity(t: int, n: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta's cubic ramp at update ``t`` of ``n``: ``s_f + (s_i - s_f)(1 - t/n)^3``.

    Example:
        >>> agp_sparsity(4, 4, 0.9)
        0.9
    """
    if n < 1:
        raise ValueError(f"schedule.steps must be at least 1; got {n}")
    frac = min(max(t / n, 0.0), 1.0)
    return float(final + (initial - final) * (1.0 - frac) ** 3)


def schedule_targets(spec: ScheduleSpec, final_sparsity: float) -> list[float]:
    """Per-step target sparsities for a ``ScheduleSpec`` ending at ``final_sparsity``.

    Args:
        spec: a ``ScheduleSpec`` (``kind``, ``steps``).
        final_sparsity: the fraction of prunable weights removed at the end.

    Returns:
        One target per pruning step, non-decreasing, the last equal to ``final_sparsity``.

    Raises:
        ValueError: an unknown schedule kind or a sparsity outside [0, 1).

    Example:
        >>> schedule_targets(ScheduleSpec(kind="iterative", steps=2), 0.75)
        [0.5, 0.75]
    """
    s_f = float(final_sparsity)
    if not 0.0 <= s_f < 1.0:
        raise ValueError(f"pruning.sparsity must be in [0, 1); got {s_f}")
    n = int(spec.steps)
    if spec.kind in ("oneshot", "at_init", "retrain"):
        return [s_f]
    if spec.kind == "iterative":
        return [1.0 - (1.0 - s_f) ** (k / n) if k < n else s_f for k in range(1, n + 1)]
    if spec.kind == "agp":
        return [agp_sparsity(k, n, s_f) for k in range(1, n + 1)]
    raise ValueError(f"schedule.kind must be one of {', '.join(SCHEDULE_KINDS)}; got {spec.kind!r}")
