"""Rows for tests, built with the store functions: keyword overrides, sensible defaults.

Each factory commits, so the row is visible to the app under test at once.
"""

from __future__ import annotations

import time
from typing import Any

from sqlmodel import Session

from app import store
from app.config import Settings
from app.models import ApiToken, DatasetRecord, ModelRecord, Run, Sweep, User


def make_user(
    session: Session, name: str = "alice", role: str = "member", password: str | None = None
) -> tuple[User, dict[str, str]]:
    """A user and a bearer header for them."""
    user = store.create_user(session, name=name, role=role, password=password)
    _, headers = make_token(session, user)
    return user, headers


def make_token(
    session: Session, user: User, *, name: str = "test"
) -> tuple[ApiToken, dict[str, str]]:
    """An API token of ``user`` and the bearer header that sends it."""
    row, secret = store.create_token(session, user=user, name=name)
    session.commit()
    return row, {"Authorization": f"Bearer {secret}"}


def make_model_record(
    session: Session, settings: Settings, *, arch: str = "mlp", owner_id: int | None = None
) -> ModelRecord:
    """A small untrained zoo model (safetensors file + arch) registered as a model row."""
    import torch
    from safetensors.torch import save_file

    from app import zoo
    from app.artifacts import ArtifactStore
    from app.modelio.dataset_files import load_digits
    from app.runs.results import module_record_fields

    torch.manual_seed(0)
    data = load_digits()
    module = zoo.build(arch, num_classes=10, input_shape=data.input_shape)
    key = f"models/test-{arch}-{time.monotonic_ns()}.safetensors"
    path = ArtifactStore(settings.artifacts).local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    fields = module_record_fields(
        module,
        path,
        fmt="safetensors",
        key=key,
        arch=arch,
        input_shape=[1, 8, 8],
        num_classes=10,
        name=f"test {arch}",
    )
    record = store.add_model_record(session, owner_id=owner_id, **fields)
    session.commit()
    return record


def make_torchscript_record(
    session: Session,
    settings: Settings,
    module: Any,
    *,
    name: str,
    input_dtype: str = "float32",
    owner_id: int | None = None,
) -> ModelRecord:
    """A TorchScript ``module`` (scripted or traced) saved as an artifact and registered as a
    model row on 8x8 digits (10 classes), the way an upload would list it."""
    import torch

    from app.artifacts import ArtifactStore
    from app.runs.results import module_record_fields

    key = f"models/{name.replace(' ', '-')}-{time.monotonic_ns()}.pt"
    path = ArtifactStore(settings.artifacts).local_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(module, str(path))
    fields = module_record_fields(
        module,
        path,
        fmt="torchscript",
        key=key,
        arch=None,
        input_shape=[1, 8, 8],
        num_classes=10,
        name=name,
        input_dtype=input_dtype,
    )
    record = store.add_model_record(session, owner_id=owner_id, **fields)
    session.commit()
    return record


def make_dataset_record(
    session: Session, *, id: str = "ds", owner_id: int | None = None, **over: Any
) -> DatasetRecord:
    """An uploaded-dataset row (8x8 samples, 10 classes; no file behind it)."""
    fields: dict[str, Any] = {
        "name": id,
        "format": "npz",
        "n_train": 4,
        "n_test": 2,
        "input_shape": [1, 8, 8],
        "n_classes": 10,
        "storage_key": f"datasets/{id}",
    }
    row = store.add_dataset(session, id=id, owner_id=owner_id, **(fields | over))
    session.commit()
    return row


def make_run(
    session: Session,
    *,
    owner_id: int | None = None,
    recipe: dict | None = None,
    model_id: int | None = None,
    dataset_id: str = "digits",
    sweep_id: int | None = None,
) -> Run:
    """A queued run (recipe ``{"kind": "prune"}`` unless given)."""
    run = store.create_run(
        session,
        owner_id=owner_id,
        recipe={"kind": "prune"} if recipe is None else recipe,
        model_id=model_id,
        dataset_id=dataset_id,
        sweep_id=sweep_id,
    )
    session.commit()
    return run


def make_sweep(
    session: Session,
    *,
    owner_id: int | None = None,
    name: str = "sweep",
    recipe: dict | None = None,
    sparsities: list[float] | None = None,
    criteria: list[str] | None = None,
) -> Sweep:
    """A sweep row (l1 and random at 50 %, no runs yet)."""
    sweep = store.create_sweep(
        session,
        owner_id=owner_id,
        name=name,
        recipe=recipe or {"kind": "prune"},
        sparsities=sparsities or [0.5],
        criteria=criteria or ["l1", "random"],
    )
    session.commit()
    return sweep


def wait_for_run(client: Any, headers: dict, run_id: int, timeout: float = 240) -> dict:
    """Poll ``GET /api/runs/{id}`` until the run has ended; its body (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = client.get(f"/api/runs/{run_id}", headers=headers).json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {run}")
