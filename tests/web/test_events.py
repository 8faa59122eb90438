"""SSE of a run: progress/metric/status events from run_events, Last-Event-ID, pings, close."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app import store
from app.jobs.runner import FakeRunner
from tests.factories import make_run, make_user
from tests.jobs.conftest import job_settings


@pytest.fixture
def api(tmp_path) -> Iterator[TestClient]:
    from app.main import create_app

    settings = job_settings(tmp_path / "data", sse_poll_s=0.05, sse_ping_s=0.2)
    with TestClient(create_app(settings, runner=FakeRunner(), dispatch_thread=False)) as client:
        yield client


def _parse(text: str) -> list[dict]:
    events, current = [], {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line:
            if current:
                events.append(current)
            current = {}
        elif line.startswith(":"):
            current.setdefault("comment", line)
        else:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    return events


def _run_with_events(api) -> tuple[int, dict]:
    with Session(api.app.state.engine, expire_on_commit=False) as s:
        _, headers = make_user(s, "alice")
        run = make_run(s)
        store.claim_run(s, run_id=run.id)
        store.add_event(s, run_id=run.id, type="progress", data={"fraction": 0.5, "message": "x"})
        store.add_event(s, run_id=run.id, type="metric", data={"epoch": 0, "loss": 1.5})
        store.transition(s, run_id=run.id, from_=("running",), to="succeeded")
        s.commit()
        return run.id, headers


def test_a_finished_run_streams_all_its_events_in_order_then_closes(api) -> None:
    run_id, headers = _run_with_events(api)
    r = api.get(f"/api/runs/{run_id}/events", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in _parse(r.text) if "event" in e]
    assert [e["event"] for e in events] == ["status", "status", "progress", "metric", "status"]
    assert [json.loads(e["data"]).get("status") for e in events if e["event"] == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert json.loads(events[3]["data"]) == {"epoch": 0, "loss": 1.5}
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)


def test_last_event_id_resumes_after_what_the_client_saw(api) -> None:
    run_id, headers = _run_with_events(api)
    first = [
        e
        for e in _parse(api.get(f"/api/runs/{run_id}/events", headers=headers).text)
        if "event" in e
    ]
    seen = first[2]["id"]
    again = api.get(f"/api/runs/{run_id}/events", headers={**headers, "Last-Event-ID": seen})
    rest = [e for e in _parse(again.text) if "event" in e]
    assert [e["id"] for e in rest] == [e["id"] for e in first[3:]]
    bad = api.get(f"/api/runs/{run_id}/events", headers={**headers, "Last-Event-ID": "x"})
    assert bad.status_code == 422


def test_a_live_stream_sends_keepalives_and_closes_when_the_run_ends(api) -> None:
    with Session(api.app.state.engine, expire_on_commit=False) as s:
        _, headers = make_user(s, "bob")
        run = make_run(s)

    def finish_later() -> None:
        # 3 s of pings at 0.2 s: the stream must be open before the run ends, even when a
        # loaded machine takes a second or two to start the request (1 s failed under load)
        time.sleep(3.0)
        with Session(api.app.state.engine) as s:
            store.add_event(s, run_id=run.id, type="progress", data={"fraction": 1.0})
            store.transition(s, run_id=run.id, from_=("queued",), to="cancelled")
            s.commit()

    threading.Thread(target=finish_later).start()
    started = time.monotonic()
    r = api.get(f"/api/runs/{run.id}/events", headers=headers)
    assert time.monotonic() - started < 10
    parsed = _parse(r.text)
    assert any(e.get("comment", "").startswith(": ping") for e in parsed)
    events = [e for e in parsed if "event" in e]
    assert events[-1]["event"] == "status"
    assert json.loads(events[-1]["data"])["status"] == "cancelled"


def test_events_need_a_known_run_and_a_token(api) -> None:
    _, headers = _run_with_events(api)
    assert api.get("/api/runs/999/events", headers=headers).status_code == 404
    assert api.get("/api/runs/1/events").status_code == 401
