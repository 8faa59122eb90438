"""``prunelab serve --demo``: make sure a trained demo model and two finished demo runs exist.

On first start it queues a ``train`` run of cnn_small on digits, and when that succeeds, an
iterative L1 filter-pruning run (physical removal) and an element-level AGP magnitude run on the
trained model. Later starts find them and queue nothing. All of it goes through the ordinary
runner (worker processes): the web process only writes rows and waits.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from app import store
from app.config import Settings
from app.models import ModelRecord, Run, User

log = logging.getLogger(__name__)

TRAIN = {
    "kind": "train",
    "name": "demo: train cnn_small on digits",
    "finetune": {"epochs": 6, "lr": 0.05, "optimizer": "sgd", "batch_size": 64},
    "seed": 0,
}
PRUNE_RUNS = (
    {
        "kind": "prune",
        "name": "demo: iterative L1 filter pruning, physically removed",
        "pruning": {
            "granularity": "filter",
            "criterion": "l1",
            "scope": "layerwise",
            "sparsity": 0.5,
            "physical": True,
            "exclude": ["classifier"],
        },
        "schedule": {"kind": "iterative", "steps": 3},
        "finetune": {"epochs": 2, "lr": 0.02, "optimizer": "sgd", "batch_size": 64},
        "seed": 0,
    },
    {
        "kind": "prune",
        "name": "demo: element-level global magnitude (AGP to 90%)",
        "pruning": {
            "granularity": "element",
            "criterion": "l1",
            "scope": "global",
            "sparsity": 0.9,
        },
        "schedule": {"kind": "agp", "steps": 4},
        "finetune": {"epochs": 4, "lr": 0.02, "optimizer": "sgd", "batch_size": 64},
        "seed": 0,
    },
)
FAILED = ("failed", "cancelled")


def _demo_run(session: Session, name: str) -> Run | None:
    query = select(Run).where(Run.name == name, col(Run.status).not_in(FAILED))
    return session.exec(query.order_by(col(Run.id).desc())).first()


def _untrained_model(settings: Settings, session: Session, owner: User) -> ModelRecord:
    from app.intake.models import create_from_architecture

    return create_from_architecture(
        settings,
        session,
        owner,
        arch="cnn_small",
        name="demo cnn_small (untrained)",
        num_classes=10,
        input_shape=[1, 8, 8],
    )


class DemoSeeder(threading.Thread):
    """Queues the demo runs in order, waiting (by polling rows) for the training run."""

    def __init__(self, settings: Settings, engine: Engine, wake=None, poll_s: float = 2.0) -> None:  # noqa: ANN001
        super().__init__(name="prunelab-demo", daemon=True)
        self.settings, self.engine, self.wake, self.poll_s = settings, engine, wake, poll_s
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        try:
            self._seed()
        except Exception:  # noqa: BLE001 (the demo must never take the server down)
            log.exception("demo: could not prepare the demo runs")

    def _queue(self, session: Session, recipe: dict, model_id: int, owner_id: int) -> Run:
        run = store.create_run(
            session, owner_id=owner_id, recipe=recipe, model_id=model_id, dataset_id="digits"
        )
        session.commit()
        if self.wake is not None:
            self.wake()
        log.info("demo: queued run %s (%s)", run.id, recipe["name"])
        return run

    def _seed(self) -> None:
        with Session(self.engine, expire_on_commit=False) as session:
            admin = store.ensure_admin_user(session)
            session.commit()
            if all(_demo_run(session, r["name"]) for r in PRUNE_RUNS):
                log.info("demo: the demo runs exist already")
                return
            train = _demo_run(session, TRAIN["name"])
            if train is None:
                model = _untrained_model(self.settings, session, admin)
                train = self._queue(session, TRAIN, model.id, admin.id)
            train_id = train.id
        trained_id = self._wait_for(train_id)
        if trained_id is None:
            return
        with Session(self.engine, expire_on_commit=False) as session:
            for recipe in PRUNE_RUNS:
                if _demo_run(session, recipe["name"]) is None:
                    self._queue(session, recipe, trained_id, admin.id)

    def _wait_for(self, run_id: int) -> int | None:
        """The trained model's id once the run succeeds; None if it failed or we stop."""
        while not self._stop.wait(self.poll_s):
            with Session(self.engine) as session:
                run = session.get(Run, run_id)
                if run is None or run.status in FAILED:
                    log.error(
                        "demo: training run %s ended %s; demo stopped",
                        run_id,
                        getattr(run, "status", "deleted"),
                    )
                    return None
                if run.status == "succeeded":
                    return run.result_model_id
                if run.status == "interrupted":
                    store.queue_resume(session, run_id=run_id)
                    session.commit()
                    if self.wake is not None:
                        self.wake()
        return None
