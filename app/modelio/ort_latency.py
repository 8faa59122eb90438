"""Latency in the deployment runtime: the exported ``pruned.onnx`` vs the original in ONNX Runtime.

The original model is exported to ONNX the same way (opset 17, dynamic batch); both files are
loaded into CPU sessions with the same fixed intra-op thread count (threads that do not
spin between runs, :func:`session`) and timed interleaved at
batch 1 and at a large batch (``app.pruning.latency.time_interleaved``), each row with both
spreads and a speed-up only when the interquartile intervals do not overlap. A masks-only
model has the original's shapes, and ONNX Runtime's dense kernels compute the zeros: its
rows say 1.0x whatever the timer saw (the timings are kept to show it).

Example:
    >>> import tempfile
    >>> from torch import nn
    >>> tmp = Path(tempfile.mkdtemp())
    >>> small = export_onnx(nn.Linear(8, 2), torch.zeros(1, 8), tmp / "small.onnx")
    >>> out = onnx_latency(nn.Linear(8, 4), small, torch.zeros(1, 8), tmp, large_batch=4)
    >>> out["runtime"], [r["batch"] for r in out["rows"]]
    ('onnxruntime', [1, 4])
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.modelio.export import ONNX_OPSET
from app.modelio.export_input import traceable
from app.pruning.latency import Timing, time_interleaved
from app.pruning.speedup import MASKS_ONLY_VERDICT, latency_row

SPINNING = "session.intra_op.allow_spinning"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``model`` as ONNX (opset 17, dynamic batch axis ``input`` -> ``output``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            traceable(model.cpu().eval()),
            (example.cpu(),),
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            external_data=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    return path


def session(path: Path, threads: int):  # noqa: ANN201 - onnxruntime has no stubs
    """A CPU session as deployed (every graph optimisation, NCHWc layout included) with
    ``threads`` intra-op threads that do not spin between runs.

    ONNX Runtime's worker threads busy-wait after a run by default; with two sessions timed
    in turn, the idle one's threads then spin on the cores the timed one needs (and on a
    shared machine, on everyone's). Without spinning each session has the cores to itself.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry(SPINNING, "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_onnx_pair(
    dense_path: Path,
    pruned_path: Path,
    sample: np.ndarray,
    *,
    large_batch: int = 256,
    budget_s: float = 0.5,
    threads: int | None = None,
    masks_only: bool = False,
) -> dict:
    """``{"runtime": "onnxruntime", "threads", "rows": [batch 1, large batch]}``.

    ``sample`` is one input with its batch dimension of 1 (float32, or int64 token ids); each
    file is fed it in the dtype its input declares.
    """
    n_threads = int(threads or torch.get_num_threads())
    sessions = [session(dense_path, n_threads), session(pruned_path, n_threads)]
    rows = []
    for batch in (1, int(large_batch)):
        x = np.ascontiguousarray(np.repeat(sample, batch, axis=0))
        fns = [(lambda s=s, f=_feed(s, x): s.run(None, f)) for s in sessions]
        timings: list[Timing] = time_interleaved(fns, budget_s=budget_s, threads=n_threads)
        row = latency_row(batch, timings[0], timings[1])
        if masks_only:
            row.update(speedup=1.0, verdict=MASKS_ONLY_VERDICT)
        rows.append(row)
    return {"runtime": "onnxruntime", "threads": n_threads, "rows": rows}


def _feed(session, x: np.ndarray) -> dict[str, np.ndarray]:  # noqa: ANN001 - no stubs
    """``x`` under the session's first input name, in the dtype that input declares."""
    first = session.get_inputs()[0]
    dtype = np.int64 if first.type == "tensor(int64)" else np.float32
    return {first.name: x.astype(dtype, copy=False)}


def onnx_latency(
    original: nn.Module,
    pruned_onnx: Path,
    sample: torch.Tensor,
    work_dir: Path,
    *,
    large_batch: int = 256,
    masks_only: bool = False,
    budget_s: float = 0.5,
) -> dict:
    """Export ``original`` next to ``pruned_onnx`` and time both (see :func:`time_onnx_pair`)."""
    dense_path = export_onnx(original, sample, Path(work_dir) / "original.onnx")
    try:
        return time_onnx_pair(
            dense_path,
            Path(pruned_onnx),
            sample[:1].cpu().numpy(),
            large_batch=large_batch,
            masks_only=masks_only,
            budget_s=budget_s,
        )
    finally:
        dense_path.unlink(missing_ok=True)
