"""Schemathesis against the app's own OpenAPI schema: no 5xx, responses match their schemas,
with a valid token and without one. The budget is bounded so `make test` stays fast."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlmodel import Session

from app.config import Settings
from app.main import create_app
from tests.factories import make_user

_state: dict = {}


def _app(tmp_path_factory):
    if "app" not in _state:
        data = tmp_path_factory.mktemp("fuzz")
        app = create_app(Settings(data_dir=data, max_upload_mb=2, preflight_timeout_s=30))
        client = TestClient(app)
        client.__enter__()  # run the lifespan once: engine, migrations, dispatcher
        with Session(app.state.engine) as s:
            _, headers = make_user(s, "fuzzer", role="admin")
        _state.update(app=app, client=client, headers=headers)
    return _state


@pytest.fixture(scope="module")
def fuzz_state(tmp_path_factory):
    state = _app(tmp_path_factory)
    yield state
    state["client"].__exit__(None, None, None)
    _state.clear()


def _schema():
    app = create_app(Settings(data_dir="/tmp/prunelab-schema-only"), migrate=False)
    return schemathesis.openapi.from_dict(app.openapi())


schema = _schema()


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_answers_5xx_and_matches_its_schema(case, fuzz_state) -> None:
    client: TestClient = fuzz_state["client"]
    for headers in (fuzz_state["headers"], {}):
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
        allowed = ("headers", "params", "json", "content", "files", "data", "cookies")
        response = client.request(
            kwargs["method"], kwargs["url"], **{k: v for k, v in kwargs.items() if k in allowed}
        )
        where = (case.method, case.path, response.status_code, response.text[:300])
        assert response.status_code < 500, where
        if response.status_code >= 400:
            assert "detail" in response.json(), where
        elif response.headers.get("content-type", "").startswith("application/json"):
            case.validate_response(response, checks=[response_schema_conformance])
        if not headers and case.path != "/api/health":
            assert not 200 <= response.status_code < 300, where  # nothing without a token
