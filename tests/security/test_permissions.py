"""Issue 7: who may change what, for every mutating /api endpoint.

Roles x ownership: members change only what they own, admins everything, viewers nothing
(403 with a sentence). Creating counts as changing the lab (viewers may not); the one thing a
viewer changes is their own API tokens, the credential they read the API with.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from sqlmodel import Session

from app import store, zoo
from app.jobs.runner import FakeRunner
from app.models import User
from tests.factories import make_dataset_record, make_model_record, make_run, make_token, make_user
from tests.jobs.conftest import job_settings, tiny_recipe

torch.set_num_threads(1)
ROLES = ("admin", "member", "viewer")


@dataclass
class Lab:
    client: TestClient
    headers: dict[str, dict[str, str]]  # "admin", "member" (the owner), "other", "viewer"
    ids: dict[str, int]  # user ids by the same keys


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:
    from app.main import create_app

    settings = job_settings(tmp_path / "data")
    with TestClient(create_app(settings, runner=FakeRunner(), dispatch_thread=False)) as client:
        with Session(client.app.state.engine, expire_on_commit=False) as s:
            made = {
                key: make_user(s, name, role)
                for key, name, role in (
                    ("admin", "root", "admin"),
                    ("member", "alice", "member"),
                    ("other", "bob", "member"),
                    ("viewer", "vera", "viewer"),
                )
            }
        yield Lab(
            client,
            {k: h for k, (_, h) in made.items()},
            {k: int(u.id) for k, (u, _) in made.items()},
        )


def _session(lab: Lab) -> Session:
    return Session(lab.client.app.state.engine, expire_on_commit=False)


# ---------------------------------------------------------------- owned resources
def _model(lab: Lab, owner: int) -> str:
    with _session(lab) as s:
        model = make_model_record(s, lab.client.app.state.settings, owner_id=owner)
        return f"/api/models/{model.id}"


def _dataset(lab: Lab, owner: int) -> str:
    with _session(lab) as s:
        make_dataset_record(s, id=f"ds{owner}", name="mine", owner_id=owner)
    return f"/api/datasets/ds{owner}"


def _run(lab: Lab, owner: int) -> int:
    """An interrupted run: it may be cancelled, resumed or deleted."""
    with _session(lab) as s:
        run = make_run(s, owner_id=owner, recipe={"kind": "prune", "name": "r"})
        assert store.transition(s, run_id=run.id, from_=("queued",), to="interrupted")
        s.commit()
        return int(run.id)


def _token(lab: Lab, owner: int) -> str:
    with _session(lab) as s:
        row, _ = make_token(s, s.get(User, owner), name="spare")
        return f"/api/tokens/{row.id}"


OWNED: dict[str, tuple[str, Callable[[Lab, int], str]]] = {
    "models delete": ("DELETE", _model),
    "datasets delete": ("DELETE", _dataset),
    "runs cancel": ("POST", lambda lab, o: f"/api/runs/{_run(lab, o)}/cancel"),
    "runs resume": ("POST", lambda lab, o: f"/api/runs/{_run(lab, o)}/resume"),
    "runs delete": ("DELETE", lambda lab, o: f"/api/runs/{_run(lab, o)}"),
    "tokens revoke": ("DELETE", _token),
}
# (caller, whose resource) -> allowed; a viewer's own resources are those of a demoted member
OWNED_CASES = [
    ("admin", "member", True),
    ("member", "member", True),
    ("other", "member", False),
    ("viewer", "member", False),
    ("viewer", "viewer", False),
]


def _allowed_owned(endpoint: str, caller: str, owner: str, allowed: bool) -> bool:
    if endpoint == "tokens revoke" and caller == owner == "viewer":
        return True  # one's own credential
    return allowed


def _owned_params() -> list:
    out = []
    for endpoint in OWNED:
        for caller, owner, allowed in OWNED_CASES:
            out.append(
                pytest.param(
                    endpoint,
                    caller,
                    owner,
                    _allowed_owned(endpoint, caller, owner, allowed),
                    id=f"{endpoint}-{caller}-of-{owner}",
                )
            )
    return out


def _assert_outcome(r, allowed: bool) -> None:
    if allowed:
        assert 200 <= r.status_code < 300, r.text
        return
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and len(detail.split()) >= 4, detail


@pytest.mark.parametrize(("endpoint", "caller", "owner", "allowed"), _owned_params())
def test_owned_resources_change_only_by_their_owner_or_an_admin(
    lab: Lab, endpoint: str, caller: str, owner: str, allowed: bool
) -> None:
    method, make = OWNED[endpoint]
    path = make(lab, lab.ids[owner])
    r = lab.client.request(method, path, headers=lab.headers[caller])
    _assert_outcome(r, allowed)
    if not allowed:  # and nothing changed
        again = lab.client.request(method, path, headers=lab.headers["admin"])
        assert 200 <= again.status_code < 300, again.text


# ---------------------------------------------------------------- creating
def _mlp_bytes() -> bytes:
    torch.manual_seed(0)
    model = zoo.build("mlp", num_classes=10, input_shape=(1, 8, 8))
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 10)
    return buf.getvalue()


def _create(lab: Lab, endpoint: str, headers: dict) -> object:
    c = lab.client
    if endpoint == "models upload":
        return c.post(
            "/api/models",
            headers=headers,
            data={"arch": "mlp", "name": "m"},
            files={"file": ("m.safetensors", io.BytesIO(_mlp_bytes()))},
        )
    if endpoint == "models from-architecture":
        return c.post("/api/models/from-architecture", json={"arch": "mlp"}, headers=headers)
    if endpoint == "datasets upload":
        return c.post(
            "/api/datasets",
            headers=headers,
            data={"name": "d"},
            files={"file": ("d.npz", io.BytesIO(_npz()))},
        )
    model_path = _model(lab, lab.ids["member"])
    model_id = int(model_path.rsplit("/", 1)[1])
    if endpoint == "runs create":
        return c.post("/api/runs", json=tiny_recipe(model_id), headers=headers)
    if endpoint == "sweeps create":
        body = {"recipe": tiny_recipe(model_id), "sparsities": [0.5], "criteria": ["l1"]}
        return c.post("/api/sweeps", json=body, headers=headers)
    return c.post("/api/tokens", json={"name": "more"}, headers=headers)


CREATE = (
    "models upload",
    "models from-architecture",
    "datasets upload",
    "runs create",
    "sweeps create",
    "tokens create",
)


@pytest.mark.slow
@pytest.mark.parametrize("caller", ROLES)
@pytest.mark.parametrize("endpoint", CREATE)
def test_members_and_admins_create_viewers_do_not(lab: Lab, endpoint: str, caller: str) -> None:
    allowed = caller != "viewer" or endpoint == "tokens create"
    _assert_outcome(_create(lab, endpoint, lab.headers[caller]), allowed)


# ---------------------------------------------------------------- users
@pytest.mark.parametrize("caller", ROLES)
def test_only_admins_create_and_disable_users(lab: Lab, caller: str) -> None:
    c, headers = lab.client, lab.headers[caller]
    _assert_outcome(
        c.post("/api/users", json={"name": "newbie"}, headers=headers), caller == "admin"
    )
    r = c.patch(f"/api/users/{lab.ids['other']}", json={"disabled": True}, headers=headers)
    _assert_outcome(r, caller == "admin")


def test_the_matrix_covers_every_mutating_api_route(lab: Lab) -> None:
    """A new POST/PATCH/PUT/DELETE under /api must be added to this file."""
    covered = {
        ("DELETE", "/api/models/{model_id}"),
        ("DELETE", "/api/datasets/{dataset_id}"),
        ("POST", "/api/runs/{run_id}/cancel"),
        ("POST", "/api/runs/{run_id}/resume"),
        ("DELETE", "/api/runs/{run_id}"),
        ("DELETE", "/api/tokens/{token_id}"),
        ("POST", "/api/models"),
        ("POST", "/api/models/from-architecture"),
        ("POST", "/api/datasets"),
        ("POST", "/api/runs"),
        ("POST", "/api/sweeps"),
        ("POST", "/api/tokens"),
        ("POST", "/api/users"),
        ("PATCH", "/api/users/{user_id}"),
    }
    found = {
        (m, route.path)
        for route in lab.client.app.routes
        for m in getattr(route, "methods", set()) & {"POST", "PATCH", "PUT", "DELETE"}
        if getattr(route, "path", "").startswith("/api")
    }
    assert found <= covered, sorted(found - covered)


# ---------------------------------------------------------------- no credentials
def test_no_api_route_answers_2xx_without_valid_credentials_even_for_real_ids(lab: Lab) -> None:
    """Like test_auth's check, but every id in the path exists, so a 404 cannot hide a hole."""
    owner = lab.ids["member"]
    real = {
        "model_id": _model(lab, owner).rsplit("/", 1)[1],
        "run_id": str(_run(lab, owner)),
        "dataset_id": "digits",
        "token_id": _token(lab, owner).rsplit("/", 1)[1],
        "user_id": str(owner),
        "name": "recipe.json",
        "sweep_id": "1",
    }
    bad = [{}, {"Authorization": "Bearer pl_not-a-real-token"}, {"Authorization": "Basic eDp5"}]
    for route in lab.client.app.routes:
        path = getattr(route, "path", "")
        if not path.startswith("/api") or path == "/api/health":
            continue
        concrete = re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: real.get(m.group(1), "1"), path)
        for method in getattr(route, "methods", set()) - {"HEAD", "OPTIONS"}:
            for headers in bad:
                r = lab.client.request(method, concrete, headers=headers)
                assert r.status_code == 401, (method, concrete, headers, r.status_code)
