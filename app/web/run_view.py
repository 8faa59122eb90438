"""What the run page shows: its figures, tables and notes, and one layer's histogram or mask.

No torch here: masks are read from the run's exported safetensors (or ``masks.npz``) with
numpy only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlmodel import Session

from app import store
from app.artifacts import ArtifactStore
from app.models import FINISHED_STATUSES, Run
from app.pruning.notes import Note, as_note
from app.store import views
from app.web import chart_style, charts, charts_layers, charts_runs, charts_sweep, latency_view
from app.web.page_data import run_metric, run_summary, run_task

MASK_ARTIFACTS = ("masks.npz", "masks.safetensors")


def run_notes(run: Run) -> list[Note]:
    """The run's notes as structured notes (older runs stored plain sentences)."""
    return [as_note(n) for n in run.notes or []]


def masks_only(run: Run) -> bool:
    return bool(run.masks_only)


def final_layer_rows(layers: list[dict]) -> list[dict]:
    last = max((int(r["step"]) for r in layers), default=0)
    return [r for r in layers if int(r["step"]) == last]


def run_figures(
    session: Session,
    run: Run,
    *,
    steps: list[dict] | None = None,
    layers: list[dict] | None = None,
) -> dict[str, dict]:
    """Every chart of the run page that comes from rows (the live refresh re-sends these)."""
    steps = views.run_steps(session, run_id=run.id) if steps is None else steps
    layers = views.run_layers(session, run_id=run.id) if layers is None else layers
    mo = masks_only(run)
    fin = run.final if run.status == "succeeded" else None
    quality = run_metric(run) or "accuracy"

    def tradeoff(axis: str) -> dict:
        return charts.tradeoff_figure(steps, axis=axis, masks_only=mo, final=fin, metric=quality)

    figs = {
        "sparsity": charts_layers.sparsity_heatmap(layers),
        "tradeoff_compression": tradeoff("compression"),
        "tradeoff_flops": tradeoff("flops"),
        "tradeoff_speedup": tradeoff("speedup"),
        "curve": charts.curve_figure(
            views.run_curve(session, run_id=run.id), metric=quality, empty=curve_empty(run)
        ),
    }
    if run.kind == "sensitivity":
        rows = views.run_sensitivity(session, run_id=run.id)
        figs["sensitivity"] = charts_sweep.sensitivity_figure(rows, baseline=run.baseline or {})
    return figs


def curve_empty(run: Run) -> str:
    """What an empty fine-tuning chart says: a finished run with ``epochs: 0`` had none."""
    epochs = ((run.recipe or {}).get("finetune") or {}).get("epochs")
    if epochs == 0:
        return charts.NO_FINETUNE
    if run.status in FINISHED_STATUSES:
        return "This run recorded no fine-tuning epoch."
    return charts.NO_EPOCHS_YET


def metric_keys(run: Run) -> list[str]:
    """The run page's metric columns; ``val_accuracy`` next to (test) accuracy when the run
    chose on a validation split; a language model's ``perplexity`` first."""
    keys = [k for k, _, _ in charts_runs.FINAL_COLUMNS]
    measured = {**(run.baseline or {}), **(run.final or {})}
    if "val_accuracy" in measured:
        keys.insert(keys.index("accuracy") + 1, "val_accuracy")
    if "perplexity" in measured:
        keys.insert(0, "perplexity")
        if "val_perplexity" in measured:
            keys.insert(1, "val_perplexity")
    return keys


def metric_labels(run: Run) -> dict[str, str]:
    """Column headings that differ from the key: a language model's accuracy is per token."""
    if run_task(run) != "language_model":
        return {}
    return {
        "perplexity": "perplexity (lower is better)",
        "val_perplexity": "val perplexity",
        "accuracy": "next-token accuracy",
        "val_accuracy": "val next-token accuracy",
        "loss": "loss (mean token NLL)",
    }


def run_context(session: Session, run: Run) -> dict:
    layers = views.run_layers(session, run_id=run.id)
    names = views.run_layer_names(session, run_id=run.id)
    steps = views.run_steps(session, run_id=run.id)
    ctx = {
        "run": run,
        "summary": run_summary(run),
        "finished": run.status in FINISHED_STATUSES,
        "figures": run_figures(session, run, steps=steps, layers=layers),
        "layer_names": names,
        "layer_empty": chart_style.empty_figure(
            "Weights and mask", "Histograms and masks appear once the run has measured its layers."
        ),
        "layer_rows": final_layer_rows(layers),
        "steps": steps,
        "masks_only": masks_only(run),
        "deploy_rows": latency_view.deploy_rows(run.final),
        "budget_line": latency_view.budget_line(run.final),
        "notes": run_notes(run),
        "artifacts": store.list_artifacts(session, run_id=run.id),
        "recipe_json": json.dumps(run.recipe or {}, indent=2),
        "last_event_id": views.latest_event_id(session, run_id=run.id),
        "metric_keys": metric_keys(run),
        "metric_labels": metric_labels(run),
        "task": run_task(run),
    }
    if run.kind == "sensitivity":
        rows = views.run_sensitivity(session, run_id=run.id)
        stored = run.allocation or (run.final or {}).get("allocation")
        ctx["allocation"] = stored or charts_sweep.suggest_allocation(
            rows, (run.baseline or {}).get("accuracy")
        )
    return ctx


def histogram_figure(session: Session, run: Run, layer: str) -> dict:
    rows = views.run_histograms(session, run_id=run.id, layer=layer)
    return charts_layers.histogram_figure(rows, layer=layer)


def load_mask(session: Session, run: Run, layer: str, artifacts_root: str) -> np.ndarray | None:
    """The kept-weights mask of ``layer``: from ``masks.npz`` or the masked safetensors export."""
    artifacts = ArtifactStore(artifacts_root)
    arts = {a.name: a for a in store.list_artifacts(session, run_id=run.id)}
    for name in MASK_ARTIFACTS:
        if name in arts and artifacts.exists(key := arts[name].storage_key):
            with artifacts.local_file(key) as path:
                found = _read_tensor(path, (layer, f"{layer}.weight"))
            if found is not None:
                return found.astype(bool)
    art = arts.get("pruned.safetensors")
    if art is None or run.physical or not artifacts.exists(art.storage_key):
        return None
    with artifacts.local_file(art.storage_key) as path:
        weight = _read_tensor(path, (f"{layer}.weight",))
    return None if weight is None else weight != 0


def _read_tensor(path: Path, keys: tuple[str, ...]) -> np.ndarray | None:
    if path.suffix == ".npz":
        with np.load(path) as z:
            return next((z[k] for k in keys if k in z.files), None)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        have = set(f.keys())
        return next((f.get_tensor(k) for k in keys if k in have), None)


def mask_figure(session: Session, run: Run, layer: str, artifacts_root: str) -> dict:
    granularity = ((run.recipe or {}).get("pruning") or {}).get("granularity", "element")
    try:
        mask = load_mask(session, run, layer, artifacts_root)
    except (OSError, ValueError, KeyError):
        mask = None
    if mask is None:
        why = (
            "This run removed units physically: the pruned model is smaller and dense, so "
            "there is no mask to draw."
            if not masks_only(run) and run.status == "succeeded"
            else "The mask is drawn from the exported weights once the run has finished."
        )
        return chart_style.empty_figure(f"Mask of {layer}", why)
    return charts_layers.mask_heatmap(mask, layer=layer, granularity=granularity)
