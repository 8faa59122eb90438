"""What each page shows: reads rows through :mod:`app.store`, shapes them for templates.

No torch here: masks are read from the run's exported safetensors (or ``masks.npz``) with
numpy only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from app import catalogue, store
from app.artifacts import ArtifactStore
from app.models import FINISHED_STATUSES, Run, Sweep
from app.pruning.notes import Note, as_note
from app.store import views
from app.web import charts, charts_runs

PER_PAGE = 25
MASK_ARTIFACTS = ("masks.npz", "masks.safetensors")


def parse_run_ids(text: str | None) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; raises ValueError naming the ``runs`` parameter."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    try:
        ids = list(dict.fromkeys(int(p) for p in parts))
    except ValueError:
        raise ValueError(
            "runs must be a comma-separated list of run ids, e.g. runs=1,2,3."
        ) from None
    if not 2 <= len(ids) <= catalogue.MAX_COMPARE:
        raise ValueError(
            f"runs must name 2 to {catalogue.MAX_COMPARE} runs to compare; got {len(ids)}."
        )
    return ids


def pagination(total: int, page: int, per_page: int = PER_PAGE) -> dict:
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, page), pages)
    return {
        "page": page,
        "pages": pages,
        "total": total,
        "offset": (page - 1) * per_page,
        "per_page": per_page,
    }


def run_summary(run: Run) -> dict:
    """The fields the tables and cross-run charts use."""
    pruning = (run.recipe or {}).get("pruning") or {}
    schedule = (run.recipe or {}).get("schedule") or {}
    return {
        "id": run.id,
        "name": run.name or f"run {run.id}",
        "kind": run.kind,
        "status": run.status,
        "progress": run.progress,
        "model_id": run.model_id,
        "dataset_id": run.dataset_id,
        "created_at": run.created_at,
        "criterion": pruning.get("criterion"),
        "granularity": pruning.get("granularity"),
        "schedule": schedule.get("kind"),
        "final": run.final or {},
        "baseline": run.baseline or {},
    }


def run_notes(run: Run) -> list[Note]:
    """The run's notes as structured notes (older runs stored plain sentences)."""
    return [as_note(n) for n in run.notes or []]


def masks_only(run: Run) -> bool:
    return bool(run.masks_only)


def final_layer_rows(layers: list[dict]) -> list[dict]:
    last = max((int(r["step"]) for r in layers), default=0)
    return [r for r in layers if int(r["step"]) == last]


def overview_context(session: Session, *, model_id: int | None, dataset_id: str | None) -> dict:
    runs = [
        run_summary(r)
        for r in views.finished_runs(session, model_id=model_id, dataset_id=dataset_id)
    ]
    recent = store.list_runs(session, limit=10)
    return {
        "figure": charts_runs.overview_scatter(runs),
        "n_points": len(runs),
        "recent": [run_summary(r) for r in recent],
        "n_runs": store.count_runs(session),
        "models": store.list_models(session, limit=500),
        "datasets": dataset_choices(session),
        "model_id": model_id,
        "dataset_id": dataset_id,
    }


def dataset_choices(session: Session) -> list[dict]:
    """Every dataset, the built-in ones first (from the catalogue)."""
    rows = [
        {
            "id": d.id,
            "name": d.name,
            "n_train": d.n_train,
            "n_test": d.n_test,
            "input_shape": d.input_shape,
            "n_classes": d.n_classes,
            "format": d.format,
        }
        for d in store.list_datasets(session)
    ]
    builtins = [
        {
            "id": d.id,
            "name": d.name,
            "n_train": d.n_train,
            "n_test": d.n_test,
            "input_shape": list(d.input_shape),
            "n_classes": d.n_classes,
            "format": "builtin",
        }
        for d in catalogue.DATASETS.values()
        if not any(r["id"] == d.id for r in rows)
    ]
    return builtins + rows


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
    figs = {
        "sparsity": charts.sparsity_heatmap(layers),
        "tradeoff_compression": charts.tradeoff_figure(
            steps, axis="compression", masks_only=mo, final=fin
        ),
        "tradeoff_flops": charts.tradeoff_figure(steps, axis="flops", masks_only=mo, final=fin),
        "tradeoff_speedup": charts.tradeoff_figure(steps, axis="speedup", masks_only=mo, final=fin),
        "curve": charts.curve_figure(views.run_curve(session, run_id=run.id)),
    }
    if run.kind == "sensitivity":
        rows = views.run_sensitivity(session, run_id=run.id)
        figs["sensitivity"] = charts_runs.sensitivity_figure(
            rows, baseline=(run.baseline or {}).get("accuracy")
        )
    return figs


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
        "layer_empty": charts.empty_figure(
            "Weights and mask", "Histograms and masks appear once the run has measured its layers."
        ),
        "layer_rows": final_layer_rows(layers),
        "steps": steps,
        "masks_only": masks_only(run),
        "notes": run_notes(run),
        "artifacts": store.list_artifacts(session, run_id=run.id),
        "recipe_json": json.dumps(run.recipe or {}, indent=2),
        "last_event_id": views.latest_event_id(session, run_id=run.id),
        "metric_keys": [k for k, _, _ in charts_runs.FINAL_COLUMNS],
    }
    if run.kind == "sensitivity":
        rows = views.run_sensitivity(session, run_id=run.id)
        stored = (run.final or {}).get("allocation")
        ctx["allocation"] = stored or charts_runs.suggest_allocation(
            rows, (run.baseline or {}).get("accuracy")
        )
    return ctx


def histogram_figure(session: Session, run: Run, layer: str) -> dict:
    rows = views.run_histograms(session, run_id=run.id, layer=layer)
    return charts.histogram_figure(rows, layer=layer)


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
        return charts.empty_figure(f"Mask of {layer}", why)
    return charts.mask_heatmap(mask, layer=layer, granularity=granularity)


def compare_context(session: Session, ids: list[int]) -> dict:
    runs = []
    for run in store.runs_by_ids(session, ids=ids):
        r = run_summary(run)
        r["steps"] = views.run_steps(session, run_id=run.id)
        r["layers"] = views.run_layers(session, run_id=run.id)
        r["curve"] = views.run_curve(session, run_id=run.id)
        r["layer_names"] = views.run_layer_names(session, run_id=run.id)
        runs.append(r)
    common = [
        n
        for n in (runs[0]["layer_names"] if runs else [])
        if all(n in r["layer_names"] for r in runs)
    ]
    return {
        "runs": runs,
        "missing": [i for i in ids if i not in {r["id"] for r in runs}],
        "layers": common,
        "figures": {
            "tradeoff": charts_runs.compare_tradeoff(runs),
            "curves": charts_runs.compare_curves(runs),
            "layer_sparsity": charts_runs.compare_layer_sparsity(runs),
        },
        "best": charts_runs.best_cells(runs),
        "columns": charts_runs.FINAL_COLUMNS,
    }


def compare_histogram(session: Session, ids: list[int], layer: str) -> dict:
    runs = [
        {**run_summary(r), "histograms": views.run_histograms(session, run_id=r.id, layer=layer)}
        for r in store.runs_by_ids(session, ids=ids)
    ]
    return charts_runs.compare_histograms(runs, layer=layer)


def sweep_context(session: Session, sweep: Sweep) -> dict:
    rows = store.list_runs(session, sweep_id=sweep.id, limit=500)
    runs = [run_summary(r) for r in rows]
    return {
        "sweep": sweep,
        "runs": runs,
        "n_done": sum(r["status"] in FINISHED_STATUSES for r in runs),
        "figures": {
            "compression": charts_runs.sweep_figure(runs, axis="compression"),
            "speedup": charts_runs.sweep_figure(runs, axis="speedup"),
        },
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def json_block(value: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">`` (no ``</script>``).

    NaN and infinities become null (browsers' JSON.parse refuses them).
    """
    try:
        text = json.dumps(value, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(value), separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
