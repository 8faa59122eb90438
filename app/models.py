"""SQLModel tables and their API shapes (XBase / X(table=True) / XCreate / XPublic).

Metric dicts, recipes and per-layer lists are JSON columns: they are written
once by a job and read whole by the pages, never queried inside.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("admin", "member", "viewer")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


# ---------------------------------------------------------------- accounts
class User(SQLModel, table=True):
    __tablename__ = "users"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True, max_length=64)
    role: str = Field(default="member", max_length=16)
    password_hash: str | None = Field(default=None, max_length=255)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow)


class UserPublic(SQLModel):
    id: int
    name: str
    role: str
    disabled: bool
    created_at: datetime


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"
    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    name: str = Field(default="token", max_length=64)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    prefix: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked: bool = False


class ApiTokenPublic(SQLModel):
    id: int
    user_id: int
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool


class WebSession(SQLModel, table=True):
    """A browser session; the cookie holds a random key, the row its SHA-256."""

    __tablename__ = "web_sessions"
    id: int | None = Field(default=None, primary_key=True)
    key_hash: str = Field(index=True, unique=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", index=True, ondelete="CASCADE")
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked: bool = False


class LoginLink(SQLModel, table=True):
    """A one-time login link printed by ``prunelab serve`` (like Jupyter's token URL)."""

    __tablename__ = "login_links"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE")
    expires_at: datetime
    used_at: datetime | None = None


# ---------------------------------------------------------------- models and datasets
class ModelRecord(SQLModel, table=True):
    __tablename__ = "models"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    format: str = Field(max_length=32)
    arch: str | None = Field(default=None, max_length=64)
    input_shape: list[int] | None = _json()
    input_dtype: str = Field(default="float32", max_length=16)  # or int64 (token ids)
    num_classes: int | None = None
    n_params: int = 0
    size_bytes: int = 0
    sha256: str = Field(index=True, max_length=64)
    storage_key: str = Field(max_length=255)
    structured_ok: bool = False
    layers: list[dict] | None = _json()
    preflight: dict | None = _json()
    owner_id: int | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    source_run_id: int | None = None
    created_at: datetime = Field(default_factory=utcnow, index=True)


class DatasetRecord(SQLModel, table=True):
    __tablename__ = "datasets"
    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=200)
    format: str = Field(max_length=16)
    n_train: int
    n_test: int
    input_shape: list[int] | None = _json()
    n_classes: int  # a language-modelling dataset's vocabulary size
    task: str = Field(default="classification", max_length=16)  # or language_model
    input_dtype: str = Field(default="float32", max_length=16)  # or int64 (token ids)
    text: dict | None = _json()  # a corpus's tokenizer, seq_len, vocab_size, vocab (char)
    sha256: str | None = Field(default=None, max_length=64)
    storage_key: str | None = Field(default=None, max_length=255)
    owner_id: int | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- runs
class Sweep(SQLModel, table=True):
    __tablename__ = "sweeps"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    recipe: dict | None = _json()
    sparsities: list[float] | None = _json()
    criteria: list[str] | None = _json()
    owner_id: int | None = Field(default=None, foreign_key="users.id", ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_status_created_at", "status", "created_at"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(default="", max_length=200)
    kind: str = Field(default="prune", max_length=16)
    status: str = Field(default="queued", max_length=16, index=True)
    progress: float = 0.0
    message: str | None = Field(default=None, max_length=500)
    error: str | None = Field(default=None, max_length=2000)
    recipe: dict | None = _json()
    model_id: int | None = Field(default=None, foreign_key="models.id", index=True)
    dataset_id: str = Field(default="digits", max_length=32)
    owner_id: int | None = Field(default=None, foreign_key="users.id", index=True)
    sweep_id: int | None = Field(default=None, foreign_key="sweeps.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    cancel_requested: bool = False
    attempt: int = 0
    worker_pid: int | None = None
    runner_ref: str | None = Field(default=None, max_length=128)
    last_step: int | None = None
    baseline: dict | None = _json()
    final: dict | None = _json()
    notes: list[str] | None = _json()
    physical: bool | None = None
    """Units were physically removed (the result model is smaller); None until a run succeeds."""
    masks_only: bool | None = None
    """Pruned with masks only: weights zeroed in place, no speed-up expected."""
    result_model_id: int | None = None
    interrupted_at: datetime | None = None
    interrupted_reason: str | None = Field(default=None, max_length=500)
    allocation: dict[str, float] | None = _json()  # a sensitivity run's per-layer sparsity


class RunStep(SQLModel, table=True):
    __tablename__ = "run_steps"
    __table_args__ = (UniqueConstraint("run_id", "step"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    step: int
    target_sparsity: float = 0.0
    before_finetune: dict | None = _json()
    after_finetune: dict | None = _json()
    extra: dict | None = _json()


class LayerStat(SQLModel, table=True):
    __tablename__ = "layer_stats"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    step: int
    layer: str = Field(max_length=200)
    kind: str | None = Field(default=None, max_length=64)
    shape: list[int] | None = _json()
    sparsity: float = 0.0
    requested: float | None = None
    n_params: int = 0
    n_nonzero: int = 0
    threshold: float | None = None
    flops: float | None = None


class Histogram(SQLModel, table=True):
    __tablename__ = "histograms"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    layer: str = Field(max_length=200)
    phase: str = Field(max_length=32)
    edges: list[float] | None = _json()
    counts: list[int] | None = _json()
    threshold: Any = _json()


class CurvePoint(SQLModel, table=True):
    __tablename__ = "curve_points"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    epoch: int
    step: int = 0
    loss: float | None = None
    accuracy: float | None = None
    lr: float | None = None
    test_loss: float | None = None  # held-out loss: a language model's perplexity is exp() of it


class SensitivityRow(SQLModel, table=True):
    __tablename__ = "sensitivity_rows"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    layer: str = Field(max_length=200)
    sparsity: float
    accuracy: float
    perplexity: float | None = None  # language models: what the sweep is read in


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    name: str = Field(max_length=100)
    kind: str = Field(max_length=32)
    size_bytes: int = 0
    verified: bool = False
    max_abs_diff: float | None = None
    sha256: str | None = Field(default=None, max_length=64)
    storage_key: str = Field(max_length=255)
    # why the export failed its reload check (one sentence); None when it passed
    error: str | None = Field(default=None, max_length=500)


class RunEvent(SQLModel, table=True):
    """Progress, metric and status events; the id is the SSE event id (Last-Event-ID)."""

    __tablename__ = "run_events"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="runs.id", index=True, ondelete="CASCADE")
    type: str = Field(max_length=16)
    data: dict | None = _json()
    created_at: datetime = Field(default_factory=utcnow)
