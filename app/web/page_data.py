"""What the overview, compare and sweep pages show, and the helpers every page shares.

Reads rows through :mod:`app.store` and shapes them for templates; the run page is
:mod:`app.web.run_view`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from sqlmodel import Session

from app import catalogue, store
from app.models import FINISHED_STATUSES, Run, Sweep
from app.store import views
from app.web import charts_runs, charts_sweep
from app.web.dataset_fit import dataset_mismatch

PER_PAGE = 25


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


def run_task(run: Run) -> str | None:
    """``"language_model"`` when the run measured a perplexity, ``"classification"`` when it
    measured an accuracy only, None before its first measurement."""
    measured = run.baseline or run.final
    if not measured:
        return None
    return "language_model" if "perplexity" in measured else "classification"


def run_metric(run: Run) -> str | None:
    """The run's headline quality metric: ``"perplexity"`` (lower is better) or ``"accuracy"``."""
    task = run_task(run)
    return None if task is None else ("perplexity" if task == "language_model" else "accuracy")


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
        "masks_only": bool(run.masks_only),
    }


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


def _task_label(task: str, text: dict | None) -> str:
    """``classification`` or ``language model (char, seq 64)``, for the datasets table."""
    if task != "language_model":
        return task
    text = text or {}
    return f"language model ({text.get('tokenizer', '?')}, seq {text.get('seq_len', '?')})"


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
            "task": _task_label(d.task, d.text),
            "task_key": d.task,
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
            "task": "classification",
            "task_key": "classification",
        }
        for d in catalogue.DATASETS.values()
        if not any(r["id"] == d.id for r in rows)
    ]
    return builtins + rows


def run_form_context(session: Session, *, model_id: int | None) -> dict:
    """The new-run form: models (a result model says whose), datasets, and for the script the
    valid criterion/granularity pairs, each model's prunable layers and, per model, the
    datasets that cannot feed it with the reason (greyed out in the form)."""
    models = store.list_models(session, limit=500)
    datasets = dataset_choices(session)
    unfit: dict[int, dict[str, str]] = {}
    for m in models:
        for d in datasets:
            meta = {"input_shape": d["input_shape"], "n_classes": d["n_classes"]}
            if (why := dataset_mismatch(m, meta | {"task": d["task_key"]})) is not None:
                unfit.setdefault(m.id, {})[d["id"]] = why
    return {
        "models": models,
        "model_id": model_id,
        "datasets": datasets,
        "form_spec": {
            "catalogue": catalogue.as_json(),
            "pairs": {
                c.name: [g for g in catalogue.GRANULARITY_NAMES if g in c.granularities]
                for c in catalogue.CRITERIA.values()
            },
            "layers": {
                m.id: [x["name"] for x in m.layers or [] if x.get("prunable", True)] for m in models
            },
            "unfit": unfit,
            "formats": {m.id: m.format for m in models},
        },
    }


def compare_context(session: Session, ids: list[int]) -> dict:
    runs = []
    for run in store.runs_by_ids(session, ids=ids):
        r = run_summary(run)
        r["final"] = charts_runs.with_speedups(r["final"])
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
        "columns": charts_runs.columns_for(runs),
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
            "compression": charts_sweep.sweep_figure(runs, axis="compression"),
            "speedup": charts_sweep.sweep_figure(runs, axis="speedup"),
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
