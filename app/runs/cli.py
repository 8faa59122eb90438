"""``prunelab run``: one recipe without a server, with a progress bar, writing what a run writes.

``run_command`` is the implementation; ``register(typer_app)`` adds it to the Typer app as
``prunelab run RECIPE --model FILE --data digits|FILE --out DIR [--arch NAME]
[--input-shape 1,1,8,8] [--device cpu]``. The output folder receives ``summary.json`` (the
``GET /api/runs/{id}`` body plus ``steps``, ``layers`` and ``notes``), ``histograms.json``,
``curve.json``, ``sensitivity.json`` for sensitivity runs, and the same artifacts a server
run stores (``runs.export.write_run_files``: ``pruned.pt``, ``pruned.onnx``,
``pruned.safetensors``, ``recipe.json``, ``masks.npz``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.pruning.notes import info, warning
from app.runs.inputs import load_data_file, load_model_file, load_recipe

ARTIFACT_KEYS = ("name", "kind", "size_bytes", "verified", "max_abs_diff", "error")


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"1,1,8,8"`` -> ``(1, 8, 8)``: a leading batch size of 1 is dropped when four numbers."""
    if not text:
        return None
    try:
        dims = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise ValueError(
            f"--input-shape must be numbers separated by commas; got {text!r}"
        ) from None
    if len(dims) == 4 and dims[0] == 1:
        dims = dims[1:]
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"--input-shape must be positive sizes; got {text!r}")
    return dims


def _write_json(path: Path, body: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    from app.runs.results import jsonable

    tmp.write_text(json.dumps(jsonable(body), indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _summary(recipe: Any, result: Any, started: str, artifacts: list[dict], **extra: Any) -> dict:
    return {
        "name": recipe.name,
        "kind": recipe.kind,
        "status": "succeeded",
        "progress": 1.0,
        "error": None,
        "recipe": recipe.to_dict(),
        "created_at": started,
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "baseline": result.baseline,
        "final": result.final,
        "steps": result.steps,
        "layers": result.layers,
        "notes": result.notes,
        "physical": result.physical,
        "allocation": result.allocation,
        "artifacts": [{k: a[k] for k in ARTIFACT_KEYS if k in a} for a in artifacts],
        **extra,
    }


def run_command(
    recipe_path: str | Path,
    model_path: str | Path | None,
    data: str,
    out_dir: str | Path,
    *,
    arch: str | None = None,
    input_shape: str | tuple[int, ...] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Run one recipe file on one model and dataset, writing the results into ``out_dir``.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ValueError: a bad recipe, model, dataset or shape, named in one sentence.
    """
    from app.pruning.pipeline import run_recipe
    from app.pruning.report import ProgressBar
    from app.runs.export import write_run_files

    started = datetime.now(UTC).isoformat()
    recipe = load_recipe(recipe_path)
    dataset = load_data_file(data)
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else input_shape
    model, rebuildable, notes = load_model_file(
        model_path,
        arch=arch,
        input_shape=shape or dataset.input_shape,
        num_classes=dataset.n_classes,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ProgressBar(enabled=progress, desc=recipe.name or recipe.kind) as bar:
        result = run_recipe(
            recipe,
            model,
            dataset,
            device=device,
            report=bar,
            rebuildable=rebuildable,
            checkpoint_dir=out / "checkpoints",
        )
    result.notes[:0] = [info(n) for n in notes]
    artifacts = []
    if recipe.kind != "sensitivity":
        artifacts, _ = write_run_files(out, recipe, result, dataset, arch)
    result.notes.extend(warning(a["error"]) for a in artifacts if a.get("error"))
    summary = _summary(recipe, result, started, artifacts, model=str(model_path), dataset_id=data)
    _write_json(out / "summary.json", summary)
    _write_json(out / "histograms.json", result.histograms)
    _write_json(out / "curve.json", result.curve)
    if recipe.kind == "sensitivity":
        _write_json(out / "sensitivity.json", result.sensitivity)
    return summary


def register(typer_app: Any) -> None:
    """Add ``run`` to a Typer app (``app.cli`` calls this)."""
    from app.errors import LabError

    @typer_app.command("run")
    def run(
        recipe: Annotated[Path, typer.Argument(help="recipe file (.json or .yaml)")],
        model: Annotated[Path | None, typer.Option(help="model file")] = None,
        data: Annotated[str, typer.Option(help="'digits' or a dataset file")] = "digits",
        out: Annotated[Path, typer.Option(help="output folder")] = Path("prunelab-run"),
        arch: Annotated[
            str | None, typer.Option(help="built-in architecture of a weights file")
        ] = None,
        input_shape: Annotated[str | None, typer.Option(help="e.g. 1,1,8,8")] = None,
        device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1")] = "cpu",
        progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    ) -> None:
        """Run one recipe without a server, writing metrics and artifacts into --out."""
        try:
            summary = run_command(
                recipe,
                model,
                data,
                out,
                arch=arch,
                input_shape=input_shape,
                device=device,
                progress=progress,
            )
        except (ValueError, LabError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        final = summary["final"]
        typer.echo(
            f"{summary['name']}: accuracy {summary['baseline']['accuracy']:.4f} -> "
            f"{final['accuracy']:.4f}, sparsity {final['sparsity']:.4f}, "
            f"compression {final['compression']:.2f}x; results in {out}"
        )
