"""The files a finished run leaves (part of ``tasks``): exports, ``masks.npz``, the result model.

Nothing here writes the database: :func:`store_files` puts the files in the artifact store and
returns the artifact rows and the ``ModelRecord`` columns that ``tasks`` records in the one
transaction that also marks the run ``succeeded``.

The result model is what a later run prunes next, so it stays weights + architecture whenever
the model came from a built-in arch: plain safetensors when only masks were applied, and
safetensors with the pruned architecture in its header (``modelio.rebuilt``) when units were
physically removed. Only a model without a built-in arch (TorchScript, ``.pt2``, ONNX) is
registered as TorchScript, which can be pruned with masks only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.jobs.artifacts import ArtifactStore, artifact_key

log = logging.getLogger(__name__)
MASKS_NAME = "masks.npz"


@dataclass
class RunFiles:
    """Artifact rows (with ``storage_key``), the result model's columns (or None), and the
    ONNX Runtime timing of ``pruned.onnx`` against the original (or None)."""

    artifacts: list[dict] = field(default_factory=list)
    model_fields: dict | None = None
    onnx_latency: dict | None = None
    notes: list[str] = field(default_factory=list)


def jsonable(value: Any) -> Any:
    """Tensors, numpy scalars and tuples as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
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
    arch: str | None,
    tmp: Path,
) -> RunFiles:
    """Export, write the masks, save the result model; put every file in the artifact store."""
    if recipe.kind == "sensitivity":
        return RunFiles()
    out = tmp / "export"
    config = _arch_config(result, data, arch)
    example = data.sample_batch(8)
    from app.modelio.export import export_all

    rows = export_all(
        result.model.cpu().eval(), example, out, recipe=recipe.to_dict(), arch_config=config
    )
    rows += write_masks(result.masks, out / MASKS_NAME)
    for row in rows:
        row["storage_key"] = artifact_key(run_id, row["name"])
        if (out / row["name"]).is_file():  # a failed export removed its file
            artifacts.put_file(out / row["name"], row["storage_key"])
    fields = _result_model(artifacts, run_id, recipe, result, data, arch, config, tmp)
    timing = _onnx_latency(result, out / "pruned.onnx", example, tmp)
    notes = []
    if timing is not None:
        from app.pruning.speedup import slower_note

        notes = [n for n in (slower_note(timing, "ONNX Runtime"),) if n]
    return RunFiles(rows, fields, timing, notes)


def _onnx_latency(result: Any, pruned_onnx: Path, example: Any, tmp: Path) -> dict | None:
    """``pruned.onnx`` timed against the original in ONNX Runtime (when latency was timed)."""
    if result.original is None or not pruned_onnx.is_file():
        return None
    from app.modelio.ort_latency import onnx_latency

    try:
        return onnx_latency(
            result.original.cpu(),
            pruned_onnx,
            example[:1],
            tmp,
            large_batch=int(result.final.get("batch") or 256),
            masks_only=result.masks_only,
        )
    except Exception as exc:  # noqa: BLE001 - the timing is extra; the run still succeeds
        log.warning("ONNX Runtime timing failed: %s", exc)
        return {"runtime": "onnxruntime", "error": str(exc).splitlines()[0][:300], "rows": []}


def _arch_config(result: Any, data: Any, arch: str | None) -> dict | None:
    """How to rebuild a physically pruned built-in architecture from its weights. Models that
    came without a built-in arch (ONNX) have none: their rebuildable exports are pruned.onnx and
    pruned.pt, and pruned.safetensors is checked by loading it into the pruned module."""
    if not result.physical or arch is None:
        return None
    from app.pruning.structural.rebuild import architecture_config

    return architecture_config(
        result.model, arch=arch, num_classes=data.n_classes, input_shape=data.input_shape
    )


def write_masks(masks: dict | None, path: Path) -> list[dict]:
    """``masks.npz``: one boolean keep-mask per prunable layer, keyed by layer name.

    The masks are the final plan's, taken before physical removal, so they have the original
    weight shapes: the dashboard draws them for physically pruned runs too. Read back and
    compared before the row says ``verified``.
    """
    if not masks:
        return []
    import numpy as np

    arrays = {str(name): m.detach().cpu().numpy().astype(bool) for name, m in masks.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    with np.load(path) as z:
        same = set(z.files) == set(arrays) and all(
            np.array_equal(z[k], v) for k, v in arrays.items()
        )
    return [
        {
            "name": path.name,
            "kind": "masks",
            "size_bytes": path.stat().st_size,
            "verified": same,
            "max_abs_diff": 0.0 if same else None,
            "sha256": sha256_of(path),
        }
    ]


def _result_model(
    artifacts: ArtifactStore,
    run_id: int,
    recipe: Any,
    result: Any,
    data: Any,
    arch: str | None,
    config: dict | None,
    tmp: Path,
) -> dict | None:
    """Store the result as a model users can prune next: weights + arch, else TorchScript."""
    path = tmp / "result.safetensors"
    fmt = "safetensors" if arch and _save_weights(result.model, path, config, data) else None
    if fmt is None:
        path, fmt = tmp / "export" / "pruned.pt", "torchscript"
        if not path.exists():
            return None
    key = f"models/run-{run_id}{path.suffix}"
    artifacts.put_file(path, key)
    return module_record_fields(
        result.model,
        path,
        fmt=fmt,
        key=key,
        arch=arch,
        input_shape=list(data.input_shape),
        num_classes=data.n_classes,
        name=f"{recipe.name or recipe.kind} (run {run_id})",
    )


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
) -> dict:
    """The ``ModelRecord`` columns of a module saved at ``path`` under ``key``; ``layers`` lists
    every module holding parameters, as the upload preflight does (BatchNorm included)."""
    from app.pruning.granularity import layer_kinds, prunable_layers

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
        "num_classes": num_classes,
        "n_params": sum(p.numel() for p in module.parameters()),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_of(path),
        "storage_key": key,
        "structured_ok": fmt == "safetensors",
        "layers": layers,
    }


def sha256_of(path: Path) -> str:
    from app.modelio.export import file_sha256

    return file_sha256(path)
