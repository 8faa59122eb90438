"""Page scale check: a 100-layer model with 20 steps; server time per page and chart payloads.

Run from the repository root: ``.venv/bin/python -m benchmarks.pages_scale``. Prints one line per
page (median of 5 requests, bytes) and exits non-zero past the budget (300 ms, 2 MB).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.config import Settings
from app.main import create_app
from app.models import Run
from tests.browser import seed
from tests.factories import make_user

BUDGET_S, BUDGET_BYTES = 0.300, 2 * 1024 * 1024


def _populate(session: Session, artifacts: Path) -> dict[str, int]:
    model = seed.seed_model(session, n_layers=100, name="deep100")
    a = seed.seed_run(session, model=model, n_steps=20, artifacts_dir=artifacts, name="deep a")
    b = seed.seed_run(
        session,
        model=model,
        n_steps=20,
        artifacts_dir=artifacts,
        name="deep b",
        criterion="l2",
        granularity="kernel",
    )
    for i in range(300):  # a long run list
        session.add(Run(name=f"bulk {i}", status="queued", model_id=model.id))
    session.commit()
    return {"a": a.id, "b": b.id, "model": model.id}


def main() -> int:
    data = Path(tempfile.mkdtemp()) / "data"
    app = create_app(Settings(data_dir=data))
    failed = False
    with TestClient(app) as client:
        with Session(app.state.engine, expire_on_commit=False) as s:
            _, headers = make_user(s, "bench")
            ids = _populate(s, Path(app.state.settings.artifacts))
        pages = [
            "/",
            "/runs",
            f"/runs/{ids['a']}",
            f"/runs/{ids['a']}/figures.json",
            f"/runs/{ids['a']}/charts/histogram?layer=conv50",
            f"/runs/{ids['b']}/charts/mask?layer=conv50",
            f"/compare?runs={ids['a']},{ids['b']}",
            f"/models/{ids['model']}",
            "/runs/new",
        ]
        for url in pages:
            times, size = [], 0
            for _ in range(5):
                t0 = time.perf_counter()
                r = client.get(url, headers=headers)
                times.append(time.perf_counter() - t0)
                size = len(r.content)
                assert r.status_code == 200, (url, r.status_code)
            med = statistics.median(times)
            ok = med < BUDGET_S and size < BUDGET_BYTES
            failed |= not ok
            print(f"{'ok ' if ok else 'SLOW'} {med * 1000:7.1f} ms {size / 1024:8.1f} KiB  {url}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
