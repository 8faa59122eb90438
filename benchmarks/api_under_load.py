"""Does the web stay fast while a job trains? p50/p95 of the runs API, idle vs. under load.

Starts ``prunelab serve`` on loopback with a fresh data dir, fires ``--clients`` concurrent
clients at ``GET /api/runs`` and ``GET /api/runs/{id}`` while the server is idle, then again
while a training run works in its worker process, and prints both. Target: p95 ratio <= 2 and
zero errors (exit code 1 otherwise).

    .venv/bin/python benchmarks/api_under_load.py [--clients 50] [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare(data_dir: Path) -> tuple[str, int]:
    """A user token and one finished run row to read, written before the server starts."""
    from sqlmodel import Session

    from app import db, store
    from app.config import Settings

    settings = Settings(data_dir=data_dir)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with Session(engine, expire_on_commit=False) as s:
        user = store.create_user(s, name="bench")
        _, token = store.create_token(s, user=user, name="bench")
        run = store.create_run(
            s,
            owner_id=user.id,
            recipe={"kind": "train", "name": "seed"},
            model_id=None,
            dataset_id="digits",
        )
        store.transition(s, run_id=run.id, from_=("queued",), to="cancelled")
        s.commit()
    engine.dispose()
    return token, int(run.id)


async def _client(base: str, headers: dict, run_id: int, n: int, out: list, errors: list) -> None:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
        for i in range(n):
            url = "/api/runs" if i % 2 == 0 else f"/api/runs/{run_id}"
            t0 = time.perf_counter()
            try:
                r = await c.get(url)
                if r.status_code != 200:
                    errors.append(r.status_code)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
            out.append((time.perf_counter() - t0) * 1000)


def _load(base: str, headers: dict, run_id: int, clients: int, n: int) -> tuple[list, list]:
    times: list[float] = []
    errors: list = []

    async def main() -> None:
        await asyncio.gather(
            *[_client(base, headers, run_id, n, times, errors) for _ in range(clients)]
        )

    asyncio.run(main())
    return times, errors


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _wait(predicate, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("timed out waiting for the server or the run")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="per client and phase")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="prunelab-bench-"))
    token, seed_run = _prepare(data_dir)
    headers = {"Authorization": f"Bearer {token}"}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PRUNELAB_DATA_DIR": str(data_dir)}
    exe = Path(sys.executable).parent / "prunelab"
    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115 - closed at the end
    server = subprocess.Popen(
        [str(exe), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        _wait(lambda: httpx.get(f"{base}/api/health").status_code == 200, 60)
        _load(base, headers, seed_run, 5, 4)  # warm-up
        idle, idle_err = _load(base, headers, seed_run, args.clients, args.requests)
        body = {
            "kind": "train",
            "name": "bench",
            "arch": "mlp",
            "dataset_id": "digits",
            "finetune": {"epochs": 200, "batch_size": 16},
        }
        run = httpx.post(f"{base}/api/runs", json=body, headers=headers).json()
        _wait(
            lambda: (
                httpx.get(f"{base}/api/runs/{run['id']}", headers=headers).json()["progress"] > 0
            ),
            120,
        )
        busy, busy_err = _load(base, headers, run["id"], args.clients, args.requests)
        still = httpx.get(f"{base}/api/runs/{run['id']}", headers=headers).json()["status"]
        httpx.post(f"{base}/api/runs/{run['id']}/cancel", headers=headers)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
        log.close()
    p50i, p95i, p50b, p95b = (_pct(idle, 50), _pct(idle, 95), _pct(busy, 50), _pct(busy, 95))
    ratio = p95b / p95i
    print(f"clients={args.clients} requests/client={args.requests} cpus={os.cpu_count()}")
    print(f"idle:     p50 {p50i:7.1f} ms  p95 {p95i:7.1f} ms  errors {len(idle_err)}")
    print(
        f"training: p50 {p50b:7.1f} ms  p95 {p95b:7.1f} ms  errors {len(busy_err)}"
        f"  (run {still} during the load)"
    )
    print(f"p95 ratio {ratio:.2f} (target <= 2)")
    return 0 if ratio <= 2 and not idle_err and not busy_err and still == "running" else 1


if __name__ == "__main__":
    sys.exit(main())
