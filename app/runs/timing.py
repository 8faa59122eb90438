"""The exported ``pruned.onnx`` timed against the original in ONNX Runtime.

The worker (``results.store_files``) and ``prunelab run`` both call
:func:`record_onnx_speedup` after ``export.write_run_files``, so a server run and a
command-line run report the same ``final["speedup_onnx"]`` (``modelio.ort_latency``: batch 1
and the large batch, interleaved, spreads kept; masks only: 1.0x). It runs only when the run
timed latency (``result.original`` is set) and the ONNX export succeeded. The timing is extra:
when it fails the run still succeeds, and the block holds the error instead of rows.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PRUNED_ONNX = "pruned.onnx"


def record_onnx_speedup(
    result: Any,
    out: Path,
    data: Any,
    input_dtype: str | None = None,
    deploy_runtime: str = "pytorch",
) -> None:
    """Put ``speedup_onnx`` in ``result.final``; a measurably slower model, or one whose
    speed-up is far under its MAC reduction, adds a warning note (for a run shaped for PyTorch
    it names ``pruning.deploy_runtime`` "onnxruntime").

    Both files are fed the sample the exports were traced on (token ids stay int64)."""
    pruned_onnx = out / PRUNED_ONNX
    if result.original is None or not pruned_onnx.is_file():
        return
    from app.modelio.ort_latency import onnx_latency
    from app.pruning.speedup import speed_note
    from app.runs.export import export_example

    try:
        with tempfile.TemporaryDirectory(prefix="prunelab-ort-") as work:
            sample = export_example(result.model.cpu().eval(), data, input_dtype)[:1]
            timing = onnx_latency(
                result.original.cpu(),
                pruned_onnx,
                sample,
                Path(work),
                large_batch=int(result.final.get("batch") or 256),
                masks_only=result.masks_only,
            )
    except Exception as exc:  # noqa: BLE001 - the timing is extra; the run still succeeds
        log.warning("ONNX Runtime timing failed: %s", exc)
        timing = {"runtime": "onnxruntime", "error": str(exc).splitlines()[0][:300], "rows": []}
    result.final["speedup_onnx"] = timing
    hint = (
        " (ONNX Runtime pads a layer cut below its 8- or 16-channel block back to a whole "
        "block); deploying there? prune with pruning.deploy_runtime 'onnxruntime', which "
        "keeps widths at its blocks"
        if deploy_runtime == "pytorch"
        else ""
    )
    flops = (0.0, 0.0) if result.masks_only else (_flops(result.baseline), _flops(result.final))
    note = speed_note(timing, flops, "ONNX Runtime", hint)
    if note is not None:
        result.notes.append(note)


def deploy_runtime_of(recipe: Any) -> str:
    """The recipe's ``pruning.deploy_runtime`` ("pytorch" for kinds without a pruning section)."""
    return str(getattr(getattr(recipe, "pruning", None), "deploy_runtime", "pytorch"))


def _flops(metrics: dict) -> float:
    return float(metrics.get("flops") or 0.0)
