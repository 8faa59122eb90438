"""Preflight an uploaded model in a separate, limited process before it is accepted.

The child (``python -m app.modelio.preflight_worker``) loads the file, runs a zero input, lists
the layers, traces the structured-pruning dependency groups and names what blocks physical
removal. It runs in its own session with an address-space and a CPU-time limit, and its whole
process group is killed on timeout, so a hostile or broken file can neither run code in the web
process nor take it down. This module does not import torch.

Example:
    >>> import tempfile
    >>> from safetensors.torch import save_file
    >>> from app import zoo
    >>> path = Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> save_file(zoo.build("cnn_small").state_dict(), str(path))
    >>> report = run_preflight(path, "safetensors", arch="cnn_small", input_shape=(1, 8, 8))
    >>> report["ok"], report["structured_ok"]
    (True, True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from app import errors

logger = logging.getLogger(__name__)

_ERRORS = {
    cls.__name__: cls
    for cls in (errors.BadRequest, errors.Invalid, errors.UnsupportedMedia, errors.TooLarge)
}


def run_preflight(
    path: Path,
    fmt: str,
    *,
    arch: str | None = None,
    input_shape: Sequence[int] | None = None,
    input_dtype: str | None = None,
    num_classes: int | None = None,
    timeout_s: float = 60,
    memory_mb: int = 4096,
    threads: int = 1,
) -> dict:
    """Check a model file in a separate process and describe it.

    Args:
        path: the model file (already detected as ``fmt``).
        fmt: ``safetensors``, ``state_dict``, ``onnx``, ``torchscript`` or ``pt2``.
        arch: built-in architecture for weight files.
        input_shape: one sample's shape, or a full shape with a leading batch of 1; required
            when the file does not tell it (TorchScript).
        input_dtype: ``float32`` or ``int64`` (token ids); the file's own dtype wins.
        num_classes: expected classifier size; checked against the output when given.
        timeout_s: wall-clock limit; the child's process group is killed after it.
        memory_mb: address-space limit of the child.
        threads: torch intra-op threads in the child.

    Returns:
        ``{"ok", "format", "arch", "input_shape", "input_dtype", "output_shape", "num_classes",
        "n_params", "layers": [{"name", "kind", "shape", "n_params", "prunable"}],
        "prunable_fraction", "weights_seen_fraction",
        "groups": [[layer names]], "structured_ok", "rebuildable", "warnings", "seconds"}``.

    Raises:
        Invalid: the model fails to load or run (the reason, e.g. "the model's forward raised
            ..."), cannot take a batch of 2 (with the export call to use), has no prunable
            weights, runs out of time or memory.
        UnsupportedMedia: the file cannot be read as ``fmt``.
    """
    workdir = Path(tempfile.mkdtemp(prefix="prunelab-preflight-"))
    try:
        request = {
            "path": str(Path(path).resolve()),
            "format": fmt,
            "arch": arch,
            "input_shape": list(input_shape) if input_shape else None,
            "input_dtype": input_dtype,
            "num_classes": num_classes,
            "threads": threads,
        }
        (workdir / "request.json").write_text(json.dumps(request))
        out = workdir / "result.json"
        rc, stderr = run_child("app.modelio.preflight_worker", workdir, timeout_s, memory_mb)
        if out.exists():
            result = json.loads(out.read_text())
            if "error" in result:
                cls = _ERRORS.get(result["error"], errors.Invalid)
                raise cls(result["message"])
            return result
        raise errors.Invalid(_crash_message(rc, stderr, timeout_s, memory_mb))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:
        mem = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _child_env(workdir: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        TORCHINDUCTOR_CACHE_DIR=str(workdir / "inductor"),
        # nothing in a preflight needs the network; point proxies nowhere
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        no_proxy="",
    )
    return env


def run_child(
    module: str,
    workdir: Path,
    timeout_s: float,
    memory_mb: int,
    *,
    what: str = "the model's preflight",
) -> tuple[int, str]:
    """Run ``python -m module WORKDIR`` limited in memory, CPU and wall time; its exit code and
    the tail of its stderr. Raises ``Invalid`` naming ``what`` when it runs out of time."""
    cmd = [sys.executable, "-m", module, str(workdir)]
    cpu_s = max(1, int(timeout_s * 2))  # the child may use two threads
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=_child_env(workdir),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_limits(memory_mb, cpu_s),
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise errors.Invalid(
            f"{what} did not finish within {timeout_s:g} s and was stopped"
        ) from None
    finally:
        if proc.poll() is None:
            _kill_group(proc)
    _kill_group(proc)  # leftovers the model may have spawned
    return proc.returncode, err.decode("utf-8", "replace")[-4000:]


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _crash_message(rc: int, stderr: str, timeout_s: float, memory_mb: int) -> str:
    logger.warning("preflight child exited with %s: %s", rc, stderr[-1000:])
    if rc in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"the model's preflight used more than its CPU-time limit (about {timeout_s:g} s)"
    if "MemoryError" in stderr or "std::bad_alloc" in stderr or "out of memory" in stderr:
        return f"the model needs more than the preflight's {memory_mb} MB of memory"
    last = next((ln for ln in reversed(stderr.strip().splitlines()) if ln.strip()), "")
    return f"the model's preflight crashed (exit code {rc}){': ' + last[:300] if last else ''}"
