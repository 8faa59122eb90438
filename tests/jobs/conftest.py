"""Job fixtures: fast heartbeats and grace periods, a tiny registered model, tiny recipes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes share the test machine's two cores."""
    monkeypatch.setenv("PRUNELAB_WORKER_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def job_settings(data_dir: Path, **over: object) -> Settings:
    values: dict = {
        "data_dir": data_dir,
        "heartbeat_s": 0.25,
        "stale_after_s": 5.0,
        "cancel_grace_s": 3.0,
        "device": "cpu",
    }
    values.update(over)
    return Settings(**values)


def tiny_recipe(model_id: int | None, **over: object) -> dict:
    body: dict = {
        "kind": "prune",
        "name": "tiny",
        "model_id": model_id,
        "dataset_id": "digits",
        "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5},
        "schedule": {"kind": "oneshot"},
        "finetune": {"epochs": 1, "batch_size": 128},
    }
    body.update(over)
    return body


def long_recipe(model_id: int, steps: int = 3, epochs: int = 40) -> dict:
    """Long enough to watch it run, cancel it or kill its server (tens of seconds)."""
    return tiny_recipe(
        model_id,
        name="long",
        schedule={"kind": "iterative", "steps": steps},
        finetune={"epochs": epochs, "batch_size": 16},
    )


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, every: float = 0.1) -> object:
    """Poll until ``predicate()`` is truthy; fail the test with its last value otherwise."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s (last value: {value!r})")


@pytest.fixture
def job_client(tmp_path: Path) -> Iterator[TestClient]:
    """An app with the real local runner and fast heartbeats."""
    from app.main import create_app

    with TestClient(create_app(job_settings(tmp_path / "data"))) as client:
        yield client
