"""The files every finished run leaves in a folder: the exports, ``masks.npz`` and a train
run's rewind points (``rewind_files``).

The worker (through ``results.store_files``) and ``prunelab run`` both call
:func:`write_run_files`, so a server run and a command-line run produce the same file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MASKS_NAME = "masks.npz"


def write_run_files(
    out: Path,
    recipe: Any,
    result: Any,
    data: Any,
    arch: str | None,
    input_dtype: str | None = None,
) -> tuple[list[dict], dict | None]:
    """Export the pruned model and write ``masks.npz`` (and a train run's
    ``init.safetensors``/``rewind.safetensors``) into ``out``.

    The exports are traced on :func:`export_example`: the model's input dtype (``input_dtype``,
    else what the module shows) at a batch it accepts.

    Returns:
        The artifact rows (``name``, ``kind``, ``size_bytes``, ``verified`` ...; a failed export
        has an ``error``, and no file when it could not be written or reloaded) and the
        architecture config of a physically pruned built-in architecture (None otherwise).
    """
    from app.modelio.export import export_all
    from app.runs.rewind_files import write_rewind

    config = arch_config(result, data, arch)
    model = result.model.cpu().eval()
    example = export_example(model, data, input_dtype)
    rows = export_all(model, example, out, recipe=recipe.to_dict(), arch_config=config)
    rows += write_masks(result.masks, out / MASKS_NAME)
    rows += write_rewind(result.rewind, out)
    return rows, config


def export_example(model: Any, data: Any, input_dtype: str | None = None) -> Any:
    """The batch every export of ``model`` is traced and checked at (``modelio.export_input``):
    the dataset's first samples, as int64 ids for a token-id model."""
    from app.modelio.export_input import export_batch, input_dtype_of

    dtype = input_dtype or input_dtype_of(model)
    return export_batch(model, data.sample_batch(8), dtype)


def arch_config(result: Any, data: Any, arch: str | None) -> dict | None:
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


def sha256_of(path: Path) -> str:
    from app.modelio.export import file_sha256

    return file_sha256(path)
