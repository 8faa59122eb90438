"""A finished server run's files in the artifact store: exports, ``masks.npz``, a train run's
rewind points, the result model.

Nothing here writes the database: :func:`store_files` puts the files in the artifact store and
returns the artifact rows and the ``ModelRecord`` columns that ``tasks`` records in the one
transaction that also marks the run ``succeeded``.

The result model is what a later run prunes next, so it stays weights + architecture whenever
the model came from a built-in arch: plain safetensors when only masks were applied, and
safetensors with the pruned architecture in its header (``modelio.rebuilt``) when units were
physically removed. Only a model without a built-in arch (TorchScript, ``.pt2``, ONNX) is
registered from the first export that passed its reload check: ``pruned.pt2`` for a ``.pt2``
upload (BatchNorm keeps training), else TorchScript (masks only), else ONNX when ``pruned.pt``
failed its check (a trace that fixed the batch size, say).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.artifacts import ArtifactStore, artifact_key
from app.runs.export import sha256_of, write_run_files
from app.runs.inputs import RunModel
from app.runs.timing import deploy_runtime_of, record_onnx_speedup

log = logging.getLogger(__name__)


@dataclass
class RunFiles:
    """Artifact rows (with ``storage_key``) and the result model's columns, or None."""

    artifacts: list[dict] = field(default_factory=list)
    model_fields: dict | None = None


def jsonable(value: Any) -> Any:
    """Tensors, numpy scalars and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def store_files(
    artifacts: ArtifactStore,
    run_id: int,
    recipe: Any,
    result: Any,
    data: Any,
    source: RunModel,
    tmp: Path,
) -> RunFiles:
    """Export, write the masks, save the result model; put every file in the artifact store.

    Also times ``pruned.onnx`` against the original (``final["speedup_onnx"]``, ``timing``).
    The result model takes the ``source`` model's arch and input dtype (token ids stay int64).
    """
    if recipe.kind == "sensitivity":
        return RunFiles()
    out = tmp / "export"
    rows, config = write_run_files(out, recipe, result, data, source.arch, source.input_dtype)
    for row in rows:
        row["storage_key"] = artifact_key(run_id, row["name"])
        if (out / row["name"]).is_file():  # a failed export removed its file
            artifacts.put_file(out / row["name"], row["storage_key"])
    fields = _result_model(artifacts, run_id, recipe, result, data, source, config, tmp, rows)
    record_onnx_speedup(result, out, data, source.input_dtype, deploy_runtime_of(recipe))
    return RunFiles(rows, fields)


def _result_model(
    artifacts: ArtifactStore,
    run_id: int,
    recipe: Any,
    result: Any,
    data: Any,
    source: RunModel,
    config: dict | None,
    tmp: Path,
    rows: list[dict],
) -> dict | None:
    """Store the result as a model users can prune next: weights + arch, else the first export
    that passed its reload check (``pruned.pt``, then ``pruned.onnx``), else none."""
    arch = source.arch
    path = tmp / "result.safetensors"
    module = result.model
    fmt = "safetensors" if arch and _save_weights(result.model, path, config, data) else None
    if fmt is None:
        found = registrable_export(rows, tmp / "export", source.input_dtype)
        if found is None:
            log.warning("no export passed its reload check: the run registers no result model")
            return None
        path, fmt, loaded = found
        module = result.model if loaded is None else loaded
    key = f"models/run-{run_id}{path.suffix}"
    artifacts.put_file(path, key)
    return module_record_fields(
        module,
        path,
        fmt=fmt,
        key=key,
        arch=arch,
        input_shape=list(data.input_shape),
        num_classes=data.n_classes,
        name=f"{recipe.name or recipe.kind} (run {run_id})",
        input_dtype=source.input_dtype,
    )


def registrable_export(rows: list[dict], out: Path, input_dtype: str) -> tuple | None:
    """``(path, format, module)`` of the first export a later run can load: ``pruned.pt2`` (a
    ``.pt2`` upload's: its BatchNorm keeps training), ``pruned.pt``, else ``pruned.onnx`` (loaded
    back through ``load_model``), each only when its reload check passed at every batch; None
    when none did."""
    from app.modelio.load import load_model

    checked = {r["name"] for r in rows if r.get("verified") and not r.get("error")}
    order = (("pruned.pt2", "pt2"), ("pruned.pt", "torchscript"), ("pruned.onnx", "onnx"))
    for name, fmt in order:
        path = out / name
        if name not in checked or not path.is_file():
            continue
        if fmt == "torchscript":
            return path, fmt, None
        try:
            return path, fmt, load_model(path, fmt, input_dtype=input_dtype).module
        except Exception:  # noqa: BLE001 - the next format, or no result model
            log.warning("%s could not be loaded back as a model", name, exc_info=True)
    return None


def _save_weights(module: Any, path: Path, config: dict | None, data: Any) -> bool:
    """Safetensors of ``module`` (its architecture in the header when pruned physically).

    A physically pruned file is loaded back through ``load_model`` and run on real inputs; if
    that does not give the same outputs the caller falls back to TorchScript.
    """
    if config is None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
        save_file(state, str(path))
        return True
    import torch

    from app.modelio.load import load_model
    from app.modelio.rebuilt import save_pruned

    try:
        save_pruned(module, path, config)
        loaded = load_model(path, "safetensors", arch=config.get("arch"))
        x = data.sample_batch(8).cpu()
        with torch.inference_mode():
            want, got = module.cpu().eval()(x), loaded.module.eval()(x)
        diff = float((want - got).abs().max())
        if diff <= 1e-4 * max(1.0, float(want.abs().max())):
            return True
        log.warning("pruned model reloads with an output difference of %.2e", diff)
    except Exception:  # noqa: BLE001 - TorchScript is the fallback, the run still succeeds
        log.warning("pruned model could not be saved as safetensors + architecture", exc_info=True)
    return False


def module_record_fields(
    module: Any,
    path: Path,
    *,
    fmt: str,
    key: str,
    arch: str | None,
    input_shape: list[int],
    num_classes: int,
    name: str,
    input_dtype: str = "float32",
) -> dict:
    """The ``ModelRecord`` columns of a module saved at ``path`` under ``key``; ``layers`` lists
    every module holding parameters, as the upload preflight does (BatchNorm included)."""
    from app.pruning.layers import layer_kinds, prunable_layers

    prunable, kinds = prunable_layers(module), layer_kinds(module)
    layers = []
    for n, m in module.named_modules():
        params = dict(m.named_parameters(recurse=False))
        if params:
            weight = params.get("weight", next(iter(params.values())))
            layers.append(
                {
                    "name": n,
                    "kind": kinds.get(n, type(m).__name__),
                    "shape": list(weight.shape),
                    "prunable": n in prunable,
                    "n_params": sum(p.numel() for p in params.values()),
                }
            )
    return {
        "name": name[:200],
        "format": fmt,
        "arch": arch,
        "input_shape": input_shape,
        "input_dtype": input_dtype,
        "num_classes": num_classes,
        "n_params": sum(p.numel() for p in module.parameters()),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "storage_key": key,
        "structured_ok": fmt == "safetensors",
        "layers": layers,
    }
