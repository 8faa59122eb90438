"""Settings from the environment (prefix ``PRUNELAB_``), validated with clear messages.

Nothing here runs at import time: ``load_settings()`` is called by the CLI and
by ``create_app``; tests build their own ``Settings(...)``.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class SettingsError(ValueError):
    """The environment holds an invalid ``PRUNELAB_*`` value; the message names each one."""


class Settings(BaseSettings):
    """Every ``PRUNELAB_*`` variable of API.md, plus a few operational knobs."""

    model_config = SettingsConfigDict(env_prefix="PRUNELAB_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path("./prunelab-data"), description="uploads, artifacts, DB")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL")
    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    artifact_url: str | None = None
    code_formats: Literal["admins", "everyone", "nobody"] = "admins"
    max_concurrent_jobs: int = Field(default=1, ge=1, le=256)
    max_upload_mb: int = Field(default=1024, ge=1, le=1_048_576)
    admin_token: str | None = None
    device: str = "auto"

    # Beyond API.md's table (documented in the README).
    max_queued_per_user: int = Field(default=20, ge=1)
    session_hours: float = Field(default=24 * 7, gt=0)
    login_link_minutes: float = Field(default=60 * 24, gt=0)
    secure_cookies: bool = False
    heartbeat_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    cancel_grace_s: float = Field(default=10.0, ge=0)
    sse_ping_s: float = Field(default=15.0, gt=0)
    sse_poll_s: float = Field(default=0.5, gt=0)
    preflight_timeout_s: float = Field(default=120.0, gt=0)
    preflight_memory_mb: int = Field(default=8192, ge=256)
    ray_num_gpus: float = Field(default=0.0, ge=0)
    ray_num_cpus: float = Field(default=1.0, ge=0)
    metrics_token: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError("must be one of auto, cpu, mps, cuda or cuda:N")
        return value

    @field_validator("admin_token", "metrics_token")
    @classmethod
    def _check_token(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 16:
            raise ValueError("must be at least 16 characters long (use a random string)")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError("must be a SQLAlchemy URL such as postgresql+psycopg://user@host/db")
        return value

    @model_validator(mode="after")
    def _check_ray(self) -> Settings:
        if self.runner == "ray" and not self.ray_address:
            raise ValueError(
                "PRUNELAB_RUNNER=ray needs PRUNELAB_RAY_ADDRESS (the Ray job API, "
                "e.g. http://10.0.0.5:8265)"
            )
        return self

    @cached_property
    def db_url(self) -> str:
        """The effective database URL (SQLite file under DATA_DIR by default)."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{(self.data_dir / 'prunelab.db').resolve()}"

    @cached_property
    def artifacts(self) -> str:
        """Where models, checkpoints and exports live (a path or an fsspec URL)."""
        return self.artifact_url or str((self.data_dir / "artifacts").resolve())

    @property
    def is_sqlite(self) -> bool:
        return self.db_url.startswith("sqlite")


def load_settings(**overrides: object) -> Settings:
    """Read the environment; raise :class:`SettingsError` naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            name = f"PRUNELAB_{field.upper()}" if field else "settings"
            msg = str(err["msg"]).removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            lines.append(f"{name}: {msg}{shown}")
        raise SettingsError("invalid configuration: " + "; ".join(lines)) from None
