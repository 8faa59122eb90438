"""``execute_run(run_id, settings)``: the only module that joins the store and the engine.

It loads the run's model and dataset, builds the recipe, calls ``pipeline.run_recipe`` with a
reporter that writes throttled progress, curve points, steps and events to the row, and a
``should_stop`` that the worker's heartbeat thread raises. On success ``runs.results.store_files``
exports the model (timing ``pruned.onnx`` in ONNX Runtime), writes ``masks.npz`` and the result
model into the artifact store, and this module writes every result in one transaction,
together with the ``succeeded`` status; a cancelled, interrupted or failed attempt writes
nothing but its status (the per-step checkpoint stays for ``resume``). ``app.runs`` (inputs,
export, timing, results) is shared with ``prunelab run`` and writes no rows.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from app import store
from app.artifacts import ArtifactStore, run_prefix
from app.config import Settings
from app.db import make_engine, session_scope
from app.jobs.attempt import CheckpointSync, StopFlag, checkpoint_dir
from app.jobs.limits import memory_sentence
from app.models import Run
from app.pruning.notes import add_notes, warning
from app.runs.inputs import (
    RunModel,
    StoredModel,
    as_fed,
    build_recipe,
    load_dataset,
    load_model_for,
)
from app.runs.results import jsonable, store_files
from app.runs.rewind_files import rewind_state_for

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 1.0


class RunReporter:
    """The engine's ``report``: progress throttled to one write a second, the rest as it comes."""

    def __init__(self, engine: Engine, run_id: int, interval_s: float = PROGRESS_EVERY_S) -> None:
        self.engine, self.run_id, self.interval_s = engine, run_id, interval_s
        self._last = -float("inf")

    def __call__(self, event: str, payload: dict) -> None:
        try:
            self._write(event, payload)
        except Exception:  # noqa: BLE001 - a lost progress write must not kill the run
            log.warning("run %s: could not record a %s event", self.run_id, event, exc_info=True)

    def _write(self, event: str, payload: dict) -> None:
        rid = self.run_id
        if event == "progress":
            now = time.monotonic()
            final = float(payload.get("fraction", 0.0)) >= 1.0
            if not final and now - self._last < self.interval_s:
                return
            self._last = now
            with session_scope(self.engine) as s:
                store.set_progress(
                    s,
                    run_id=rid,
                    fraction=float(payload.get("fraction", 0.0)),
                    message=payload.get("message"),
                )
                store.add_event(s, run_id=rid, type="progress", data=jsonable(payload))
        elif event == "metric":
            with session_scope(self.engine) as s:
                store.add_curve_point(s, run_id=rid, point=payload)
                store.add_event(s, run_id=rid, type="metric", data=jsonable(payload))
        elif event == "step":
            with session_scope(self.engine) as s:
                store.save_step(s, run_id=rid, item=jsonable(payload))
                store.add_event(s, run_id=rid, type="metric", data={"step": jsonable(payload)})


def resolve_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def execute_run(
    run_id: int,
    settings: Settings,
    *,
    should_stop: StopFlag | None = None,
    engine: Engine | None = None,
) -> str:
    """Run one attempt of a run whose row the dispatcher has set ``running``.

    Args:
        run_id: the run.
        settings: where the database and the artifact store are.
        should_stop: raised by the worker (heartbeat saw ``cancel_requested``, SIGTERM, the
            server went away); the engine checks it between batches.
        engine: an existing SQLAlchemy engine (tests); made from ``settings`` otherwise.

    Returns:
        The status the row ended in: ``succeeded``, ``cancelled``, ``interrupted``, ``failed``,
        or the row's own status when it was no longer ``running`` at the end.
    """
    from app.pruning.report import Cancelled

    own_engine = engine is None
    engine = engine or make_engine(settings)
    stop = should_stop or StopFlag()
    tmp = Path(tempfile.mkdtemp(prefix=f"prunelab-run-{run_id}-"))
    try:
        _run_attempt(run_id, settings, engine, stop, tmp)
        return _final_status(engine, run_id)
    except Cancelled:
        return _end(engine, run_id, _stopped_status(engine, run_id, stop), None)
    except Exception as exc:  # noqa: BLE001 - the one catch-all: a one-line error on the row
        log.exception("run %s failed", run_id)
        return _end(engine, run_id, "failed", memory_sentence(exc, settings) or one_line(exc))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if own_engine:
            engine.dispose()


def one_line(exc: BaseException) -> str:
    """The last line of an error, prefixed by its type unless it is a plain ValueError."""
    text = (str(exc).strip().splitlines() or [""])[-1].strip()
    if isinstance(exc, ValueError) and text:
        return text[:2000]
    return f"{type(exc).__name__}: {text}"[:2000] if text else type(exc).__name__


def _stopped_status(engine: Engine, run_id: int, stop: StopFlag) -> str:
    with Session(engine) as s:
        run = s.get(Run, run_id)
        cancelled = bool(run and run.cancel_requested) or stop.reason == "cancel"
    return "cancelled" if cancelled else "interrupted"


def _end(engine: Engine, run_id: int, status: str, error: str | None) -> str:
    with session_scope(engine) as s:
        store.transition(
            s,
            run_id=run_id,
            from_=("running",),
            to=status,
            error=error,
            message=None if error is None else error[:500],
        )
    return _final_status(engine, run_id)


def _final_status(engine: Engine, run_id: int) -> str:
    with Session(engine) as s:
        run = s.get(Run, run_id)
        return run.status if run else "deleted"


def _run_attempt(
    run_id: int, settings: Settings, engine: Engine, stop: StopFlag, tmp: Path
) -> None:
    from app.modelio.ort_channels import runtime_timers
    from app.pruning.pipeline import run_recipe

    artifacts = ArtifactStore(settings.artifacts)
    with Session(engine, expire_on_commit=False) as s:
        run = store.require_run(s, run_id=run_id)
        recipe = build_recipe(run.recipe or {})
        dataset = store.get_dataset(s, dataset_id=run.dataset_id)
        key = dataset.storage_key if dataset is not None else None
        data = load_dataset(artifacts, run.dataset_id, key, tmp)
        stored = _stored_model(s, run.model_id)
        arch_asked = (run.recipe or {}).get("arch")
        model = load_model_for(artifacts, stored, arch_asked, data, tmp)
        data = as_fed(data, model.input_dtype)
        keys = store.rewind_points(s, model_id=run.model_id)
        rewind = rewind_state_for(artifacts, keys, recipe, tmp)
        attempt = run.attempt
        cache = settings.data_dir / "cache"
        budget_cache = cache / f"budget-model-{run.model_id}.json" if run.model_id else None
    ckpt_dir, resumed = checkpoint_dir(artifacts, run_id, attempt, tmp)
    syncer = CheckpointSync(artifacts, run_id, ckpt_dir / "checkpoint.pt")
    report = RunReporter(engine, run_id)

    def on_event(event: str, payload: dict) -> None:
        report(event, payload)
        if event in ("step", "metric"):  # agp/at_init/retrain checkpoint after every epoch
            syncer.sync()

    try:
        result = run_recipe(
            recipe,
            model.module,
            data,
            device=resolve_device(settings.device),
            report=on_event,
            should_stop=stop,
            checkpoint_dir=ckpt_dir,
            rebuildable=model.rebuildable,
            resume=resumed,
            initial_state=rewind,
            shape_cache=cache,
            budget_cache=budget_cache,
            shape_timers=runtime_timers(),
        )
    finally:
        syncer.sync()  # a stopped attempt leaves its last completed step for resume
    add_notes(result.notes, model.notes)  # e.g. BatchNorm frozen in a TorchScript trace
    _save_success(engine, settings, artifacts, run_id, recipe, result, data, model, tmp)


def _stored_model(session: Session, model_id: int | None) -> StoredModel | None:
    """What the run's model row says about its file (None for a run without a model)."""
    if model_id is None:
        return None
    row = store.get_model(session, model_id=model_id)
    if row is None:
        raise ValueError(f"model_id {model_id} does not exist (any more)")
    fields = {"storage_key", "format", "arch", "input_shape", "num_classes", "input_dtype"}
    return StoredModel(**row.model_dump(include=fields))


def _save_success(
    engine: Engine,
    settings: Settings,
    artifacts: ArtifactStore,
    run_id: int,
    recipe: Any,
    result: Any,
    data: Any,
    model: RunModel,
    tmp: Path,
) -> None:
    files = store_files(artifacts, run_id, recipe, result, data, model, tmp)
    rows = files.artifacts
    with session_scope(engine) as s:
        run = store.require_run(s, run_id=run_id)
        store.replace_results(
            s,
            run_id=run_id,
            steps=jsonable(result.steps),
            layers=jsonable(result.layers),
            histograms=jsonable(result.histograms),
            curve=jsonable(result.curve),
            sensitivity=jsonable(result.sensitivity),
        )
        store.add_artifacts(s, run_id=run_id, items=rows)
        result_id = None
        if files.model_fields is not None:
            record = store.add_model_record(
                s, owner_id=run.owner_id, source_run_id=run_id, **files.model_fields
            )
            result_id = record.id
        notes = list(result.notes) + [warning(r["error"]) for r in rows if r.get("error")]
        ok = store.transition(
            s,
            run_id=run_id,
            from_=("running",),
            to="succeeded",
            progress=1.0,
            message="done",
            baseline=jsonable(result.baseline),
            final=jsonable(result.final),
            notes=notes,
            physical=bool(result.physical),
            masks_only=bool(result.masks_only),
            result_model_id=result_id,
            allocation=jsonable(result.allocation),
        )
        if not ok:
            s.rollback()  # cancelled or taken over meanwhile: write nothing
    if ok:
        artifacts.delete_prefix(f"{run_prefix(run_id)}/checkpoints")  # no resume after success
