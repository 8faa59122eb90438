"""What the run page says about speed: measured latency with its spread, in both runtimes.

Pure functions over a run's ``final`` dict (no I/O). A speed-up is a number only when the
original's and the pruned model's interquartile intervals do not overlap; otherwise it reads
"no measurable speed-up". Masks-only models read 1.0x (dense kernels compute the zeros).

Example:
    >>> final = {"speedup": {"runtime": "pytorch", "threads": 1, "rows": [{"batch": 1,
    ...     "dense": {"median_ms": 2.0, "iqr_ms": 0.1}, "pruned": {"median_ms": 1.9,
    ...     "iqr_ms": 0.2}, "speedup": None, "verdict": "no measurable speed-up"}]}}
    >>> [(r["runtime"], r["dense"], r["verdict"]) for r in deploy_rows(final)]
    [('PyTorch', '2.000 ± 0.050 ms', 'no measurable speed-up')]
"""

from __future__ import annotations

from typing import Any

RUNTIMES = (("speedup", "PyTorch"), ("speedup_onnx", "ONNX Runtime"))
NO_SPEEDUP = "no measurable speed-up"


def _fmt(timing: dict | None) -> str:
    """Median ± half the IQR; with the median's 95% interval and repeats when recorded.

    >>> _fmt({"median_ms": 2.0, "iqr_ms": 0.1, "ci_rel": 0.031, "repeats": 40})
    '2.000 ± 0.050 ms (median ±3.1% at 95%, 40 repeats)'
    """
    if not timing or timing.get("median_ms") is None:
        return "—"
    half = (timing.get("iqr_ms") or 0.0) / 2
    ci = _num(timing.get("ci_rel"))
    tail = f" (median ±{ci:.1%} at 95%, {timing.get('repeats')} repeats)" if ci is not None else ""
    return f"{timing['median_ms']:.3f} ± {half:.3f} ms{tail}"


def deploy_rows(final: dict | None) -> list[dict]:
    """One row per runtime and batch: original and pruned (median ± half-IQR), verdict."""
    rows: list[dict] = []
    for key, label in RUNTIMES:
        block = (final or {}).get(key)
        if not isinstance(block, dict):
            continue
        if block.get("error"):
            rows.append(
                {
                    "runtime": label,
                    "batch": "",
                    "dense": "—",
                    "pruned": "—",
                    "threads": "",
                    "verdict": f"not timed: {block['error']}",
                }
            )
        for r in block.get("rows") or []:
            rows.append(
                {
                    "runtime": label,
                    "batch": r.get("batch"),
                    "threads": block.get("threads") or "",
                    "dense": _fmt(r.get("dense")),
                    "pruned": _fmt(r.get("pruned")),
                    "verdict": r.get("verdict") or NO_SPEEDUP,
                }
            )
    return rows


def _num(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def step_speedup(metrics: dict, base: dict, key: str) -> float | None:
    """``base / metrics`` latency under ``key``, or 1.0 when both carry a spread that overlaps.

    Rows without a spread (older runs) keep the plain ratio.
    """
    a, b = _num(base.get(key)), _num(metrics.get(key))
    if a is None or not b:
        return None
    ia, ib = _num(base.get(f"{key}_iqr")), _num(metrics.get(f"{key}_iqr"))
    if ia is not None and ib is not None and abs(a - b) <= (ia + ib) / 2:
        return 1.0
    return round(a / b, 4)


def final_speedup(final: dict | None, key: str = "speedup") -> tuple[float | None, str]:
    """The large-batch speed-up of the model handed back in the runtime ``key`` names
    (``"speedup"``: PyTorch, ``"speedup_onnx"``: ONNX Runtime), and its verdict."""
    block = (final or {}).get(key)
    rows = block.get("rows") if isinstance(block, dict) else None
    if not rows:
        return None, ""
    last = rows[-1]
    return _num(last.get("speedup")), str(last.get("verdict") or NO_SPEEDUP)


def budget_line(final: dict | None) -> str:
    """The budget a run was asked to meet, what it reached, and the measured latency."""
    report = (final or {}).get("budget")
    if not isinstance(report, dict) or "reached" not in report:
        return ""
    lat = report.get("latency_ms") or {}
    pruned, original = lat.get("pruned"), lat.get("original")
    unit = " ms" if report.get("kind") == "latency_ms" else ""
    judged = _num(report.get("reached_vs_original", report["reached"]))
    asked = _num((report.get("asked") or {}).get(str(report.get("kind"))))
    met = "met" if report.get("within_10pct") else "missed by more than 10%"
    if not report.get("within_10pct") and judged is not None and asked and judged < asked:
        met = "more than 10% under the budget"
    if "reached_vs_original" in report and judged is not None:
        met += f"; {judged:,.4g} ms against the original side by side"
    return (
        f"Budget {report.get('described', '')}: reached {report['reached']:,.4g}{unit} ({met}); "
        f"measured latency at batch {lat.get('batch', 1)}: {_fmt(pruned)} "
        f"(original {_fmt(original)})."
    )
