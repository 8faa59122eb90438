"""Schemathesis against the app's own OpenAPI schema, over every operation (issue 14, item 7):
no 5xx, every status code declared, every body (errors included) matching its schema, with the
admin token and without one.

Bounded so `make test` stays fast: EXAMPLES generated examples per operation, no shrinking,
derandomized (the same cases every run), and each request must answer within REQUEST_BUDGET_S.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlmodel import Session

from app.config import Settings
from app.main import create_app
from tests.factories import make_user

EXAMPLES = 6
REQUEST_BUDGET_S = 60.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
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


def test_the_fuzz_covers_every_operation() -> None:
    results = list(schema.get_all_operations())
    operations = {(r.ok().method.upper(), r.ok().path) for r in results}
    documented = {
        (method.upper(), path) for path, ops in schema.raw_schema["paths"].items() for method in ops
    }
    assert operations == documented and len(operations) >= 35


def _as_text(files: list[tuple[str, tuple]]) -> list[tuple[str, tuple]]:
    """Multipart values as requests sends them: numbers become their text."""
    out = []
    for name, (filename, value, *rest) in files:
        text = value if isinstance(value, (str, bytes)) else str(value)
        out.append((name, (filename, text, *rest)))
    return out


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_never_answers_5xx_and_matches_its_schema(case, fuzz_state) -> None:
    client: TestClient = fuzz_state["client"]
    for headers in (fuzz_state["headers"], {}):
        kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
        if kwargs.get("files"):
            kwargs["files"] = _as_text(kwargs["files"])
        allowed = ("headers", "params", "json", "content", "files", "data", "cookies")
        started = time.monotonic()
        response = client.request(
            kwargs["method"], kwargs["url"], **{k: v for k, v in kwargs.items() if k in allowed}
        )
        where = (case.method, case.path, response.status_code, response.text[:300])
        assert time.monotonic() - started < REQUEST_BUDGET_S, where
        assert response.status_code < 500, where
        if response.status_code >= 400:
            assert "detail" in response.json(), where
        response.request.read()  # a multipart body is streamed; the checks read it again
        case.validate_response(response, checks=CHECKS, headers=headers)
        if not headers and case.path != "/api/health":
            assert not 200 <= response.status_code < 300, where  # nothing without a token
