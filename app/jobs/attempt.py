"""What one attempt of a run needs besides the engine: its stop flag and its checkpoint.

``StopFlag`` is the engine's ``should_stop`` (the worker raises it); ``checkpoint_dir`` says where
the pipeline checkpoints and whether an earlier attempt left a step to resume;
``CheckpointSync`` copies that checkpoint into a remote artifact store. No engine, no database.
"""

from __future__ import annotations

import threading
from pathlib import Path

from app.artifacts import ArtifactStore, checkpoint_key


class StopFlag:
    """``should_stop`` for the engine, raised by the worker with a reason (cancel or interrupt)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._lock = threading.Lock()

    def set(self, reason: str) -> None:
        with self._lock:
            if self.reason is None or reason == "cancel":
                self.reason = reason

    def __call__(self) -> bool:
        return self.reason is not None


def checkpoint_dir(
    artifacts: ArtifactStore, run_id: int, attempt: int, tmp: Path
) -> tuple[Path, bool]:
    """Where the pipeline checkpoints, and whether an earlier attempt left a step to resume.

    A local store is written directly (the pipeline replaces ``checkpoint.pt`` atomically);
    a remote one gets a copy after each step and when the attempt stops.
    """
    key = checkpoint_key(run_id)
    if not artifacts.remote:
        path = artifacts.local_path(key)
        return path.parent, attempt > 1 and path.is_file()
    local = tmp / "checkpoints"
    return local, attempt > 1 and artifacts.get_file(key, local / "checkpoint.pt")


class CheckpointSync:
    """Copies the pipeline's checkpoint into the artifact store when it changed.

    The pipeline writes ``checkpoint.pt`` atomically after each completed step (and, for agp,
    at_init and retrain, each epoch); the copy is made when the next step or epoch is reported
    (only if the file changed) and when the attempt ends.
    """

    def __init__(self, artifacts: ArtifactStore, run_id: int, path: Path) -> None:
        self.artifacts, self.key, self.path = artifacts, checkpoint_key(run_id), path
        self._seen: float | None = None

    def sync(self) -> None:
        if not self.artifacts.remote or not self.path.exists():
            return
        mtime = self.path.stat().st_mtime
        if mtime != self._seen:
            self.artifacts.put_file(self.path, self.key)
            self._seen = mtime
