"""Issue 14, item 9 (part): token secrets are never cached; partial uploads go at start."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def test_token_creation_is_not_cacheable(client: TestClient, member_headers) -> None:
    r = client.post("/api/tokens", json={"name": "ci"}, headers=member_headers)
    assert r.status_code == 201
    assert r.headers["cache-control"] == "no-store"


def test_partial_uploads_are_removed_at_start(tmp_path) -> None:
    tmp = tmp_path / "data" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "upload-0123456789abcdef.part").write_bytes(b"half a model")
    (tmp / "keep.txt").write_text("not an upload")
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))):
        assert not (tmp / "upload-0123456789abcdef.part").exists()
        assert (tmp / "keep.txt").exists()


def _orphan(data_dir) -> tuple[int, dict[str, str]]:
    """A run left ``running`` by a server that died (its worker is gone)."""
    from sqlmodel import Session

    from app import db, store
    from app.models import Run
    from tests.factories import make_user

    settings = Settings(data_dir=data_dir)
    db.upgrade(settings)
    engine = db.make_engine(settings)
    with Session(engine) as s:
        user, headers = make_user(s, "alice")
        run = store.create_run(s, owner_id=user.id, recipe={}, model_id=None, dataset_id="digits")
        run_id = run.id
        store.claim_run(s, run_id=run_id)
        s.commit()
        assert s.get(Run, run_id).status == "running"
    engine.dispose()
    return run_id, headers


def test_an_interrupted_run_shows_why_and_when(tmp_path) -> None:
    run_id, headers = _orphan(tmp_path / "data")
    settings = Settings(data_dir=tmp_path / "data", auto_resume=False)
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/api/runs/{run_id}", headers=headers).json()
        assert body["status"] == "interrupted"
        assert "worker process is gone" in body["interrupted_reason"]
        assert body["interrupted_at"].startswith(body["finished_at"][:16])
        page = client.get(f"/runs/{run_id}", headers={**headers, "accept": "text/html"})
        assert page.status_code == 200
        assert "Interrupted " in page.text and "worker process is gone" in page.text


def test_interrupted_runs_are_resumed_at_start_for_the_local_runner(tmp_path) -> None:
    from sqlmodel import Session, col, select

    from app.models import RunEvent

    run_id, headers = _orphan(tmp_path / "data")
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.resumes_automatically
    with TestClient(create_app(settings)) as client:
        with Session(client.app.state.engine) as s:
            events = s.exec(
                select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.id))
            )
            statuses = [e.data["status"] for e in events if e.type == "status"]
        body = client.get(f"/api/runs/{run_id}", headers=headers).json()
    assert statuses[:4] == ["queued", "running", "interrupted", "queued"], statuses
    assert body["status"] != "interrupted" and body["interrupted_at"] is not None
    assert "worker process is gone" in body["interrupted_reason"]


def test_auto_resume_defaults_on_for_local_and_off_for_ray() -> None:
    assert Settings().resumes_automatically
    assert not Settings(auto_resume=False).resumes_automatically
    ray = {"runner": "ray", "ray_address": "http://10.0.0.5:8265"}
    assert not Settings(**ray).resumes_automatically
    assert Settings(**ray, auto_resume=True).resumes_automatically
