"""``prunelab run``: one recipe without a server, with a progress bar, writing what a run writes.

``run_command`` is the implementation; ``register(typer_app)`` adds it to the Typer app as
``prunelab run RECIPE --model FILE --data digits|FILE --out DIR [--arch NAME]
[--input-shape 1,1,8,8] [--device cpu] [--resume] [--pretrain] [--no-latency]``
(``--pretrain --arch NAME`` first trains a fresh model as the recipe file's ``pretrain`` block
says: ``runs.pretrain``). The output folder receives ``summary.json`` (the ``GET /api/runs/{id}``
body plus ``steps``, ``layers`` and ``notes``), ``histograms.json``, ``curve.json``,
``sensitivity.json`` for sensitivity runs, and the same artifacts a server run stores
(``runs.export.write_run_files``: ``pruned.pt``, ``pruned.onnx``, ``pruned.safetensors``,
``recipe.json``, ``masks.npz``; a train run's ``init.safetensors``/``rewind.safetensors``, which
a ``retrain_init: rewind`` run of its ``pruned.safetensors`` finds next to that file).
A checkpoint left in ``--out`` is resumed only with ``--resume`` and only by the same recipe,
model and dataset (``runs.outfolder``). ``final`` has the same PyTorch and ONNX Runtime speed-ups (``runs.timing``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.pruning.notes import info, warning
from app.runs.inputs import (
    as_fed,
    load_data_file,
    load_model_file,
    load_recipe,
    model_format,
    read_recipe_dict,
)

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
        "task": result.task,
        "metric": "perplexity" if result.task == "language_model" else "accuracy",
        "allocation": result.allocation,
        "batch_size": result.batch_size,  # finetune.batch_size "auto" resolved
        "artifacts": [{k: a[k] for k in ARTIFACT_KEYS if k in a} for a in artifacts],
        **extra,
    }


def _starting_model(
    recipe_path: str | Path,
    model_path: str | Path | None,
    dataset: Any,
    *,
    arch: str | None,
    shape: tuple[int, ...] | None,
    device: str,
    pretrain: bool,
    fmt: str | None = None,
) -> tuple[Any, bool, list[str], str, str]:
    """``(module, rebuildable, notes, identity, input dtype)`` of the model the recipe starts
    from (``fmt``: the model file's format, when already detected)."""
    from app.runs.outfolder import file_digest
    from app.runs.pretrain import pretrain_from_recipe

    if pretrain:
        body = read_recipe_dict(recipe_path, annotations=True)
        model, identity, note = pretrain_from_recipe(
            body,
            arch=arch,
            model_given=model_path is not None,
            data=as_fed(dataset, "float32"),  # the zoo's models take floats
            device=device,
        )
        return model, True, [note], identity, "float32"
    model, rebuildable, notes, dtype = load_model_file(
        model_path,
        arch=arch,
        input_shape=shape or dataset.input_shape,
        num_classes=dataset.n_classes,
        fmt=fmt,
    )
    return model, rebuildable, notes, file_digest(model_path, arch), dtype


def shape_cache() -> Path:
    """Where ``prunelab run`` keeps the measured channel-multiple table (``pruning.round_to``'s
    default, as a server run gets it): ``$PRUNELAB_SHAPE_CACHE``, else the user's cache
    directory (``$XDG_CACHE_HOME/prunelab``, ``~/.cache/prunelab``); measured once per machine."""
    if os.environ.get("PRUNELAB_SHAPE_CACHE"):
        return Path(os.environ["PRUNELAB_SHAPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prunelab"


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
    resume: bool = False,
    pretrain: bool = False,
    latency: bool = True,
) -> dict:
    """Run one recipe file on one model and dataset, writing the results into ``out_dir``.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ValueError: a bad recipe, model, dataset or shape, or an ``out_dir`` holding another
            run's checkpoint (or this run's without ``resume``), named in one sentence.
    """
    from app.modelio.ort_channels import runtime_timers
    from app.pruning.pipeline import run_recipe
    from app.pruning.report import ProgressBar
    from app.runs.outfolder import claim_out_dir, release_out_dir
    from app.runs.rewind_files import read_rewind_folder

    started = datetime.now(UTC).isoformat()
    fmt = None if pretrain else model_format(model_path)  # detected once, used twice
    recipe = load_recipe(recipe_path, fmt)
    shape = parse_shape(input_shape) if isinstance(input_shape, str) else input_shape
    dataset = load_data_file(data, seq_len=shape[-1] if shape else None)  # a text's seq_len
    model, rebuildable, notes, model_id, dtype = _starting_model(
        recipe_path,
        model_path,
        dataset,
        arch=arch,
        shape=shape,
        device=device,
        pretrain=pretrain,
        fmt=fmt,
    )
    dataset = as_fed(dataset, dtype)
    out = Path(out_dir)
    identity = {"recipe": recipe.to_dict(), "model": model_id, "data": data, "arch": arch}
    # a train run's --out holds its rewind weights next to its model
    rewind = read_rewind_folder(recipe, Path(model_path).parent if model_path else None)
    resumed = claim_out_dir(out, identity, resume=resume)
    with ProgressBar(enabled=progress, desc=recipe.name or recipe.kind) as bar:
        result = run_recipe(
            recipe,
            model,
            dataset,
            device=device,
            report=bar,
            rebuildable=rebuildable,
            checkpoint_dir=out / "checkpoints",
            resume=resumed,
            initial_state=rewind,
            latency=latency,
            shape_cache=shape_cache(),
            shape_timers=runtime_timers(),
        )
    release_out_dir(out)
    result.notes[:0] = [info(n) for n in notes]
    return _write_folder(
        out, recipe, result, dataset, arch, started, model=str(model_path), dataset_id=data
    )


def _write_folder(
    out: Path, recipe: Any, result: Any, dataset: Any, arch: str | None, started: str, **extra: Any
) -> dict:
    """Write a finished run's files and ``summary.json`` into ``out``; returns the summary."""
    from app.runs.export import write_run_files
    from app.runs.timing import deploy_runtime_of, record_onnx_speedup

    artifacts = []
    if recipe.kind != "sensitivity":
        artifacts, _ = write_run_files(out, recipe, result, dataset, arch)
        record_onnx_speedup(result, out, dataset, deploy_runtime=deploy_runtime_of(recipe))
    result.notes.extend(warning(a["error"]) for a in artifacts if a.get("error"))
    summary = _summary(recipe, result, started, artifacts, **extra)
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
        resume: Annotated[
            bool, typer.Option(help="continue the unfinished run of this recipe in --out")
        ] = False,
        pretrain: Annotated[
            bool, typer.Option(help="first train a fresh --arch as the recipe file's pretrain says")
        ] = False,
        latency: Annotated[bool, typer.Option(help="measure latency at every step")] = True,
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
                resume=resume,
                pretrain=pretrain,
                latency=latency,
            )
        except (ValueError, LabError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"{outcome(summary)}; results in {out}")


def outcome(summary: dict) -> str:
    """The line ``prunelab run`` ends with: the metric before and after, and how much smaller
    the model is (a physically pruned model keeps no zeros: its parameter count says it).

    Example:
        >>> outcome({"name": "r", "metric": "accuracy", "physical": True,
        ...     "baseline": {"accuracy": 0.98, "n_params": 271402},
        ...     "final": {"accuracy": 0.96, "n_params": 70794, "sparsity": 0.0,
        ...               "compression": 3.8337}})
        'r: accuracy 0.9800 -> 0.9600, parameters 271,402 -> 70,794 (3.83x smaller)'
    """
    final, baseline, metric = summary["final"], summary["baseline"], summary["metric"]
    head = f"{summary['name']}: {metric} {baseline[metric]:.4f} -> {final[metric]:.4f}"
    before, after = baseline.get("n_params"), final.get("n_params")
    if summary.get("physical") and before and after:
        return f"{head}, parameters {before:,} -> {after:,} ({final['compression']:.2f}x smaller)"
    return f"{head}, sparsity {final['sparsity']:.4f}, compression {final['compression']:.2f}x"
