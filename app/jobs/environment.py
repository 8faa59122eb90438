"""The environment a worker gets: what it needs to reach the database and the artifact store,
and nothing secret. ``PRUNELAB_ADMIN_TOKEN`` and ``PRUNELAB_METRICS_TOKEN`` are never passed,
and a database password travels in a file (``PRUNELAB_DATABASE_PASSWORD_FILE``), not in the
URL, so neither ``ps e`` on the machine nor the Ray dashboard shows it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from app.config import Settings

# never handed to a worker: it needs neither, and Ray shows job settings on its dashboard
SECRET_SETTINGS = frozenset({"admin_token", "metrics_token"})
_PLACED = frozenset({"database_url", "database_password_file", "artifact_url", "data_dir"})
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD")


def worker_env(settings: Settings, *, password_file: Path | None = None) -> dict[str, str]:
    """The ``PRUNELAB_*`` environment that points a worker at this server's database and store.

    Without the admin and metrics tokens; a database password is not in the URL but in
    ``password_file`` (``PRUNELAB_DATABASE_PASSWORD_FILE``), a file only the worker reads.
    """
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is not None and name not in SECRET_SETTINGS | _PLACED:
            env[f"PRUNELAB_{name.upper()}"] = str(value)
    env["PRUNELAB_DATA_DIR"] = str(Path(settings.data_dir).resolve())
    url = make_url(settings.db_url)
    bare = URL.create(
        url.drivername, url.username, None, url.host, url.port, url.database, url.query
    )
    env["PRUNELAB_DATABASE_URL"] = bare.render_as_string(hide_password=False)
    if url.password is not None and password_file is not None:
        env["PRUNELAB_DATABASE_PASSWORD_FILE"] = str(password_file)
    env["PRUNELAB_ARTIFACT_URL"] = settings.artifacts
    return env


def inherited_env() -> dict[str, str]:
    """This process's environment without ``PRUNELAB_*`` and anything named like a secret."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PRUNELAB_") and not any(w in k.upper() for w in _SECRET_WORDS)
    }


def write_password_file(settings: Settings) -> Path | None:
    """The database password in ``DATA_DIR/secrets/database-password`` (mode 0600), if any."""
    password = make_url(settings.db_url).password
    if password is None:
        return None
    path = Path(settings.data_dir).resolve() / "secrets" / "database-password"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(str(password))
    return path
