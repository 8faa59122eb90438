"""How the engine talks back: a ``report(event, payload)`` callback and a ``should_stop()`` poll.

The engine never knows who listens. A test passes nothing (``NULL_REPORT``, ``NEVER``), the
worker writes events to the database, the CLI draws a progress bar (``ProgressBar``).

Events (payloads are plain JSON-able dicts):
    ``"progress"`` ``{"fraction": 0..1, "message": str}``  (throttled by the sender)
    ``"metric"``   a curve point ``{"epoch", "step", "loss", "accuracy", "lr"}``
    ``"step"``     a steps item ``{"step", "target_sparsity", "before_finetune", "after_finetune"}``
    ``"status"``   ``{"status": "running" | ...}``

Example:
    >>> events = []
    >>> fine_tune(model, data, spec, report=lambda e, p: events.append(e))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

Report = Callable[[str, dict], None]
ShouldStop = Callable[[], bool]


class Cancelled(Exception):
    """Raised inside the engine when ``should_stop()`` turned true; the caller marks the run."""


def NULL_REPORT(event: str, payload: dict) -> None:  # noqa: N802 - a constant-like callable
    """Report nothing."""


def NEVER() -> bool:  # noqa: N802 - a constant-like callable
    """Never ask to stop."""
    return False


def check_cancelled(should_stop: ShouldStop) -> None:
    """Raise :class:`Cancelled` when ``should_stop()`` is true (call between batches)."""
    if should_stop():
        raise Cancelled("the run was cancelled")


class ProgressThrottle:
    """Forward ``"progress"`` events at most every ``interval_s`` seconds (and always at 0 and 1)."""

    def __init__(self, report: Report, interval_s: float = 0.5) -> None:
        self.report = report
        self.interval_s = interval_s
        self._last = -float("inf")

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        fraction = min(max(float(fraction), 0.0), 1.0)
        if fraction in (0.0, 1.0) or now - self._last >= self.interval_s:
            self._last = now
            self.report("progress", {"fraction": fraction, "message": message})


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class ProgressBar:
    """A ``report`` callable that draws a tqdm bar on stderr for ``prunelab run``.

    Use as a context manager; ``"step"`` events are printed as one line each above the bar.
    """

    def __init__(self, total: int = 1000, enabled: bool = True, desc: str = "prunelab") -> None:
        self.total = total
        self.enabled = enabled
        self.desc = desc
        self._bar = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="‰", leave=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, event: str, payload: dict) -> None:
        bar = self._bar
        if bar is None:
            return
        if event == "progress":
            target = int(round(float(payload.get("fraction", 0.0)) * self.total))
            if target > bar.n:
                bar.update(target - bar.n)
            if payload.get("message"):
                bar.set_description_str(f"{self.desc}: {payload['message']}", refresh=False)
        elif event == "metric":
            keys = ("step", "epoch", "loss", "accuracy")
            bar.set_postfix({k: _fmt(payload[k]) for k in keys if k in payload}, refresh=True)
        elif event == "step":
            after = payload.get("after_finetune") or {}
            bar.write(
                f"step {payload.get('step')}: target {_fmt(payload.get('target_sparsity'))} "
                f"sparsity {_fmt(after.get('sparsity'))} accuracy {_fmt(after.get('accuracy'))}"
            )
        elif event == "status":
            bar.set_description_str(f"{self.desc}: {payload.get('status')}", refresh=True)
