"""The runs and sweeps API without worker processes (the dispatcher runs a FakeRunner)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from sqlmodel import Session

from app import store
from app.jobs.runner import FakeRunner
from app.models import ModelRecord, Run
from tests.factories import make_dataset_record, make_model_record, make_sweep, make_user
from tests.jobs.conftest import job_settings, tiny_recipe

torch.set_num_threads(1)


@pytest.fixture
def api(tmp_path) -> Iterator[TestClient]:
    from app.main import create_app

    settings = job_settings(tmp_path / "data", max_queued_per_user=5)
    with TestClient(create_app(settings, runner=FakeRunner(), dispatch_thread=False)) as client:
        yield client


@pytest.fixture
def people(api):
    with Session(api.app.state.engine, expire_on_commit=False) as s:
        alice, ha = make_user(s, "alice")
        _, hb = make_user(s, "bob")
        _, hv = make_user(s, "vera", role="viewer")
        _, hadmin = make_user(s, "root", role="admin")
        model_id = make_model_record(s, api.app.state.settings, owner_id=alice.id).id
    return {"alice": ha, "bob": hb, "viewer": hv, "admin": hadmin, "model_id": model_id}


def _detail(r) -> str:
    return r.json()["detail"]


def test_create_persists_a_queued_run_and_the_dispatcher_starts_it(api, people) -> None:
    r = api.post("/api/runs", json=tiny_recipe(people["model_id"]), headers=people["alice"])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "queued" and body["kind"] == "prune" and body["name"] == "tiny"
    assert body["recipe"]["pruning"]["sparsity"] == 0.5 and body["dataset_id"] == "digits"
    api.app.state.dispatcher.tick()
    assert api.get(f"/api/runs/{body['id']}", headers=people["bob"]).json()["status"] == "running"
    assert api.app.state.dispatcher.runner.launched == [(body["id"], 1)]


def test_the_batch_size_defaults_to_auto_and_an_integer_is_kept(api, people) -> None:
    body = tiny_recipe(people["model_id"], finetune={"epochs": 1})
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["recipe"]["finetune"]["batch_size"] == "auto"
    body = tiny_recipe(people["model_id"], finetune={"epochs": 1, "batch_size": 48})
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["recipe"]["finetune"]["batch_size"] == 48


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"pruning": {"granularity": "filter", "criterion": "wanda", "sparsity": 0.5}},
            "criterion 'wanda' does not support granularity 'filter'",
        ),
        (
            {"pruning": {"granularity": "element", "criterion": "l1", "sparsity": 1.5}},
            "pruning.sparsity must be a number in [0, 1)",
        ),
        (
            {
                "pruning": {
                    "granularity": "element",
                    "criterion": "l1",
                    "sparsity": 0.5,
                    "exclude": ["conv9"],
                }
            },
            "pruning.exclude names layer 'conv9'",
        ),
        (
            {
                "pruning": {
                    "granularity": "element",
                    "criterion": "l1",
                    "sparsity": 0.5,
                    "overrides": {"fc9": 0.2},
                }
            },
            "pruning.overrides names layer 'fc9'",
        ),
        (
            {"pruning": {"granularity": "filter", "criterion": "bn_gamma", "sparsity": 0.5}},
            "pruning.criterion 'bn_gamma' needs BatchNorm layers",
        ),
        (
            {
                "pruning": {
                    "granularity": "filter",
                    "criterion": "l1",
                    "physical": True,
                    "target": {"params": -5},
                }
            },
            "pruning.target.params must be a number greater than 0",
        ),
        (
            {
                "pruning": {
                    "granularity": "filter",
                    "criterion": "l1",
                    "physical": True,
                    "target": {"params": 10**9},
                }
            },
            "there is nothing to prune",
        ),
        (
            {
                "pruning": {
                    "granularity": "filter",
                    "criterion": "l1",
                    "physical": True,
                    "target": {"params": 3},
                }
            },
            "pruning.target.params 3 cannot be reached",
        ),
        ({"model_id": 999}, "model_id 999 does not exist"),
        ({"dataset_id": "mnist"}, "dataset_id 'mnist' does not exist"),
        ({"schedule": {"kind": "sometimes"}}, "schedule.kind 'sometimes' is not one of"),
        ({"colour": "red"}, "unknown key 'colour' in the recipe"),
        ({"finetune": {"lr": "fast"}}, 'finetune.lr must be a positive number or "auto", got'),
        (
            {"finetune": {"batch_size": "big"}},
            "finetune.batch_size must be a positive integer or \"auto\", got 'big'",
        ),
        ({"finetune": {"batch_size": 0}}, "finetune.batch_size must be a positive integer or"),
        ({"finetune": {"batch_size": 32.5}}, "finetune.batch_size must be a positive integer or"),
        (
            {"finetune": {"reinsert_bn": "yes"}},
            'finetune.reinsert_bn must be true, false or "auto"',
        ),
        (
            {"finetune": {"reinsert_bn": True}, "schedule": {"kind": "agp"}},
            "finetune.reinsert_bn works with the oneshot and iterative schedules",
        ),
    ],
)
def test_bad_recipes_are_422_sentences_naming_the_field(api, people, change, expected) -> None:
    body = tiny_recipe(people["model_id"])
    body.update(change)
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 422, r.text
    assert expected in _detail(r)
    with Session(api.app.state.engine) as s:
        assert store.count_runs(s) == 0  # nothing queued


def test_a_dataset_that_does_not_fit_the_model_is_refused(api, people) -> None:
    with Session(api.app.state.engine) as s:
        make_dataset_record(
            s,
            id="wide",
            n_train=10,
            n_test=5,
            input_shape=[3, 32, 32],
            storage_key="datasets/wide.npz",
        )
    r = api.post(
        "/api/runs",
        json=tiny_recipe(people["model_id"], dataset_id="wide"),
        headers=people["alice"],
    )
    assert r.status_code == 422
    assert "takes inputs of shape [1, 8, 8]" in _detail(r)


def test_a_language_model_needs_a_vocabulary_as_large_as_the_tokenizer_s(api, people) -> None:
    with Session(api.app.state.engine) as s:
        for ds_id, vocab in (("chars", 8), ("bigchars", 12)):  # the model outputs 10 logits
            make_dataset_record(
                s, id=ds_id, n_classes=vocab, task="language_model", input_dtype="int64"
            )
    fits = tiny_recipe(people["model_id"], dataset_id="chars")
    assert api.post("/api/runs", json=fits, headers=people["alice"]).status_code == 201
    too_small = tiny_recipe(people["model_id"], dataset_id="bigchars")
    r = api.post("/api/runs", json=too_small, headers=people["alice"])
    assert r.status_code == 422
    assert "vocabulary of 10 tokens but the dataset's tokenizer uses 12" in _detail(r)


def _with_preflight_blocks(api, arch: str) -> int:
    """A model record whose preflight lists the residual blocks, as an upload's does."""
    from app import zoo
    from app.modelio.preflight_worker import removable_blocks

    blocks = removable_blocks(zoo.build(arch, input_shape=(1, 8, 8)))
    with Session(api.app.state.engine) as s:
        model_id = make_model_record(s, api.app.state.settings, arch=arch).id
        record = s.get(ModelRecord, model_id)
        record.preflight = {"residual_blocks": blocks}
        s.add(record)
        s.commit()
    return model_id


def test_level_head_needs_attention_layers_in_the_preflight(api, people) -> None:
    from app import zoo
    from app.modelio.preflight_worker import attention_modules

    head = {"granularity": "head", "criterion": "l1", "sparsity": 0.5, "physical": True}
    ids = {}
    for arch in ("cnn_small", "transformer"):
        with Session(api.app.state.engine) as s:
            record = make_model_record(s, api.app.state.settings, arch=arch)
            record.preflight = {"attention_heads": attention_modules(zoo.build(arch))}
            s.add(record)
            s.commit()
            ids[arch] = record.id
    r = api.post(
        "/api/runs", json=tiny_recipe(ids["cnn_small"], pruning=head), headers=people["alice"]
    )
    assert r.status_code == 422, r.text
    assert "lose that structure: try 'filter'" in _detail(r)
    ok = api.post(
        "/api/runs", json=tiny_recipe(ids["transformer"], pruning=head), headers=people["alice"]
    )
    assert ok.status_code == 201, ok.text


def test_level_layer_on_a_model_without_removable_blocks_is_422(api, people) -> None:
    layer = {"granularity": "layer", "criterion": "l1", "sparsity": 0.3, "physical": True}
    mlp = _with_preflight_blocks(api, "mlp")
    r = api.post("/api/runs", json=tiny_recipe(mlp, pruning=layer), headers=people["alice"])
    assert r.status_code == 422, r.text
    assert "has none that can be removed (try 'filter')" in _detail(r)
    resnet = _with_preflight_blocks(api, "resnet20")
    ok = api.post("/api/runs", json=tiny_recipe(resnet, pruning=layer), headers=people["alice"])
    assert ok.status_code == 201, ok.text
    every = [f"layer{stage}.{b}.conv1" for stage in (1, 2, 3) for b in range(3)]
    excluded = {**layer, "exclude": every}
    r = api.post("/api/runs", json=tiny_recipe(resnet, pruning=excluded), headers=people["alice"])
    assert r.status_code == 422 and "outside pruning.exclude" in _detail(r)
    with Session(api.app.state.engine) as s:
        assert store.count_runs(s) == 1


def test_a_train_run_may_name_an_architecture_instead_of_a_model(api, people) -> None:
    body = {
        "kind": "train",
        "name": "fresh",
        "arch": "mlp",
        "dataset_id": "digits",
        "finetune": {"epochs": 1},
    }
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["recipe"]["arch"] == "mlp" and r.json()["model_id"] is None
    missing = api.post(
        "/api/runs", json={"kind": "prune", "pruning": {"sparsity": 0.5}}, headers=people["alice"]
    )
    assert missing.status_code == 422 and "model_id is required" in _detail(missing)


def test_owners_change_their_runs_admins_all_viewers_none(api, people) -> None:
    r = api.post("/api/runs", json=tiny_recipe(people["model_id"]), headers=people["alice"])
    run_id = r.json()["id"]
    viewer = api.post("/api/runs", json=tiny_recipe(people["model_id"]), headers=people["viewer"])
    assert viewer.status_code == 403 and "viewers" in _detail(viewer)
    other = api.post(f"/api/runs/{run_id}/cancel", headers=people["bob"])
    assert other.status_code == 403 and "belongs to another user" in _detail(other)
    assert api.delete(f"/api/runs/{run_id}", headers=people["bob"]).status_code == 403
    assert api.get(f"/api/runs/{run_id}", headers=people["viewer"]).status_code == 200
    r = api.post(f"/api/runs/{run_id}/cancel", headers=people["admin"])
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert api.delete(f"/api/runs/{run_id}", headers=people["alice"]).status_code == 204
    assert api.get(f"/api/runs/{run_id}", headers=people["alice"]).status_code == 404


def test_running_runs_cannot_be_deleted_and_only_interrupted_ones_resume(api, people) -> None:
    run_id = api.post(
        "/api/runs", json=tiny_recipe(people["model_id"]), headers=people["alice"]
    ).json()["id"]
    api.app.state.dispatcher.tick()
    r = api.delete(f"/api/runs/{run_id}", headers=people["alice"])
    assert r.status_code == 409 and "cancel it before deleting" in _detail(r)
    r = api.post(f"/api/runs/{run_id}/resume", headers=people["alice"])
    assert r.status_code == 409 and "only an interrupted run" in _detail(r)
    with Session(api.app.state.engine) as s:
        store.transition(s, run_id=run_id, from_=("running",), to="interrupted")
        s.commit()
    r = api.post(f"/api/runs/{run_id}/resume", headers=people["alice"])
    assert r.status_code == 202 and r.json()["status"] == "queued"
    api.app.state.dispatcher.runner.finish(run_id, 3)
    api.app.state.dispatcher.tick()
    with Session(api.app.state.engine) as s:
        assert s.get(Run, run_id).attempt == 2  # the resumed attempt


def test_queued_runs_per_user_are_capped_with_429(api, people) -> None:
    for _ in range(5):
        assert (
            api.post(
                "/api/runs", json=tiny_recipe(people["model_id"]), headers=people["alice"]
            ).status_code
            == 201
        )
    r = api.post("/api/runs", json=tiny_recipe(people["model_id"]), headers=people["alice"])
    assert r.status_code == 429 and "over the limit of 5" in _detail(r)
    assert (
        api.post(
            "/api/runs", json=tiny_recipe(people["model_id"]), headers=people["bob"]
        ).status_code
        == 201
    )


def test_list_filters_and_paginates_newest_first(api, people) -> None:
    ids = [
        api.post("/api/runs", json=tiny_recipe(people["model_id"]), headers=h).json()["id"]
        for h in (people["alice"], people["bob"])
    ]
    with Session(api.app.state.engine) as s:
        store.request_cancel(s, run_id=ids[0])
        s.commit()
    r = api.get("/api/runs?limit=1", headers=people["alice"])
    assert [b["id"] for b in r.json()] == [ids[1]] and r.headers["x-total-count"] == "2"
    assert [
        b["id"] for b in api.get("/api/runs?limit=1&offset=1", headers=people["alice"]).json()
    ] == [ids[0]]
    assert [
        b["id"] for b in api.get("/api/runs?status=cancelled", headers=people["alice"]).json()
    ] == [ids[0]]
    assert (
        api.get(f"/api/runs?model_id={people['model_id'] + 1}", headers=people["alice"]).json()
        == []
    )
    bad = api.get("/api/runs?status=done", headers=people["alice"])
    assert bad.status_code == 422 and "status must be one of" in _detail(bad)
    assert api.get("/api/runs").status_code == 401


def test_a_sweep_queues_one_run_per_criterion_and_sparsity_with_random(api, people) -> None:
    body = {
        "name": "sw",
        "recipe": tiny_recipe(people["model_id"]),
        "sparsities": [0.5, 0.75],
        "criteria": ["l1"],
    }
    r = api.post("/api/sweeps", json=body, headers=people["bob"])
    assert r.status_code == 201, r.text
    assert len(r.json()["run_ids"]) == 4
    sweep = api.get(f"/api/sweeps/{r.json()['id']}", headers=people["alice"]).json()
    pairs = sorted((x["criterion"], x["sparsity"]) for x in sweep["runs"])
    assert pairs == [("l1", 0.5), ("l1", 0.75), ("random", 0.5), ("random", 0.75)]
    no_base = api.post(
        "/api/sweeps",
        json={**body, "baseline": False, "sparsities": [0.5]},
        headers=people["alice"],
    )
    assert len(no_base.json()["run_ids"]) == 1
    bad = api.post("/api/sweeps", json={**body, "criteria": ["bn_gamma"]}, headers=people["alice"])
    assert bad.status_code == 422 and "bn_gamma" in _detail(bad)


def test_a_sweep_is_read_by_id_and_an_unknown_one_is_404(api, people) -> None:
    with Session(api.app.state.engine, expire_on_commit=False) as s:
        sweep_id = make_sweep(s, name="empty").id
    r = api.get(f"/api/sweeps/{sweep_id}", headers=people["viewer"])
    assert r.status_code == 200 and r.json()["name"] == "empty" and r.json()["runs"] == []
    missing = api.get("/api/sweeps/999", headers=people["viewer"])
    assert missing.status_code == 404 and _detail(missing) == "sweep 999 does not exist"
    assert api.get(f"/api/sweeps/{sweep_id}").status_code == 401


def test_results_of_an_unknown_run_or_artifact_are_404(api, people) -> None:
    assert api.get("/api/runs/77/steps", headers=people["alice"]).status_code == 404
    run_id = api.post(
        "/api/runs", json=tiny_recipe(people["model_id"]), headers=people["alice"]
    ).json()["id"]
    r = api.get(f"/api/runs/{run_id}/artifacts/..%2Fprunelab.db", headers=people["alice"])
    assert r.status_code == 404
    assert api.get(f"/api/runs/{run_id}/layers", headers=people["alice"]).json() == []


def test_null_recipe_sections_mean_the_defaults_not_a_500(api, people) -> None:
    body = {**tiny_recipe(people["model_id"]), "schedule": None, "finetune": None}
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["recipe"]["schedule"]["kind"] == "oneshot"
    r = api.post("/api/runs", json={**body, "pruning": None}, headers=people["alice"])
    assert r.status_code == 422 and "pruning.sparsity" in _detail(r)


def _with_rewind_points(api, model_id: int) -> int:
    """A model record produced by a (finished) train run that stored its rewind weights."""
    with Session(api.app.state.engine) as s:
        run = store.create_run(
            s, owner_id=None, recipe={"kind": "train"}, model_id=None, dataset_id="digits"
        )
        s.flush()
        rows = [
            {"name": n, "kind": "rewind", "storage_key": f"runs/{run.id}/{n}"}
            for n in ("init.safetensors", "rewind.safetensors")
        ]
        store.add_artifacts(s, run_id=int(run.id), items=rows)
        s.get(ModelRecord, model_id).source_run_id = run.id
        s.commit()
    return model_id


def test_retrain_rewind_needs_a_model_trained_here_else_422_saying_what_to_use(api, people) -> None:
    retrain = {"kind": "retrain", "retrain_init": "rewind"}
    r = api.post(
        "/api/runs", json=tiny_recipe(people["model_id"], schedule=retrain), headers=people["alice"]
    )
    assert r.status_code == 422
    assert '"retrain_init": "reinit", or train the model here first' in _detail(r)
    reinit = {"kind": "retrain", "retrain_init": "reinit"}
    r = api.post(
        "/api/runs", json=tiny_recipe(people["model_id"], schedule=reinit), headers=people["alice"]
    )
    assert r.status_code == 201, r.text
    trained = _with_rewind_points(api, people["model_id"])
    for point in (None, "init", "early"):
        schedule = {**retrain, "rewind_from": point}
        r = api.post(
            "/api/runs", json=tiny_recipe(trained, schedule=schedule), headers=people["alice"]
        )
        assert r.status_code == 201, r.text


def _sweep_run(api, of_model: int, **fields: object) -> int:
    row = {
        "kind": "sensitivity",
        "status": "succeeded",
        "model_id": of_model,
        "allocation": {"fc1": 0.9, "fc2": 0.5},
        **fields,
    }
    with Session(api.app.state.engine) as s:
        run = Run(name="sweep", dataset_id="digits", recipe={"kind": row["kind"]}, **row)
        s.add(run)
        s.commit()
        return int(run.id)


def test_allocation_from_a_finished_sweep_of_the_model_becomes_overrides(api, people) -> None:
    model_id = people["model_id"]
    sweep = _sweep_run(api, model_id)
    pruning = {"granularity": "element", "criterion": "l1", "sparsity": 0.5, "exclude": ["fc2"]}
    body = tiny_recipe(model_id, pruning={**pruning, "allocation_from": sweep})
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 201, r.text
    assert r.json()["recipe"]["pruning"]["overrides"] == {"fc1": 0.9}  # fc2 is excluded
    got = api.get(f"/api/runs/{sweep}", headers=people["bob"]).json()
    assert got["allocation"] == {"fc1": 0.9, "fc2": 0.5}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"kind": "prune"}, "is a prune run; name a finished sensitivity run"),
        ({"status": "running"}, "has not succeeded (it is running)"),
        ({"allocation": None}, "has no allocation: run the sweep with a sensitivity.target"),
        ({"model_id": None}, "swept model None, not model_id"),
    ],
)
def test_allocation_from_an_unusable_run_is_422(api, people, fields, expected) -> None:
    model_id = people["model_id"]
    sweep = _sweep_run(api, model_id, **fields)
    pruning = {"granularity": "element", "criterion": "l1", "sparsity": 0.5}
    body = tiny_recipe(model_id, pruning={**pruning, "allocation_from": sweep})
    r = api.post("/api/runs", json=body, headers=people["alice"])
    assert r.status_code == 422 and expected in _detail(r)
    missing = tiny_recipe(model_id, pruning={**pruning, "allocation_from": 9999})
    r = api.post("/api/runs", json=missing, headers=people["alice"])
    assert r.status_code == 422 and "run 9999 does not exist" in _detail(r)


def test_the_app_dispatches_to_the_runner_it_is_given(tmp_path) -> None:
    from app.main import create_app
    from tests.jobs.conftest import wait_for

    fake = FakeRunner()
    settings = job_settings(tmp_path / "data")
    with TestClient(create_app(settings, runner=fake)) as client:
        with Session(client.app.state.engine, expire_on_commit=False) as s:
            alice, headers = make_user(s, "alice")
            model_id = make_model_record(s, settings, owner_id=alice.id).id
        r = client.post("/api/runs", json=tiny_recipe(model_id), headers=headers)
        assert r.status_code == 201, r.text
        wait_for(lambda: fake.launched, timeout=10)
        assert fake.launched == [(r.json()["id"], 1)]


def _record_as(api, arch: str, fmt: str) -> int:
    """A model record of ``arch`` stored as if uploaded in format ``fmt``."""
    with Session(api.app.state.engine) as s:
        model_id = make_model_record(s, api.app.state.settings, arch=arch).id
        record = s.get(ModelRecord, model_id)
        record.format = fmt
        s.add(record)
        s.commit()
    return model_id


def test_an_onnx_upload_is_shaped_for_onnx_runtime_unless_the_recipe_says(api, people) -> None:
    """An ONNX upload ships in ONNX Runtime: its physical filter runs default to widths shaped
    for it (the stored recipe says so); a recipe naming the runtime, a latency budget (timed in
    PyTorch), masks only and other formats keep PyTorch."""
    onnx_id, weights_id = (
        _record_as(api, "cnn_small", "onnx"),
        _record_as(api, "cnn_small", "safetensors"),
    )
    physical = {"granularity": "filter", "criterion": "l1", "sparsity": 0.5, "physical": True}

    def runtime(model_id: int, **pruning: object) -> str:
        body = tiny_recipe(model_id, pruning={**physical, **pruning})
        r = api.post("/api/runs", json=body, headers=people["alice"])
        assert r.status_code == 201, r.text
        return r.json()["recipe"]["pruning"]["deploy_runtime"]

    assert runtime(onnx_id) == "onnxruntime"
    assert runtime(onnx_id, deploy_runtime="pytorch") == "pytorch"
    assert runtime(onnx_id, physical=False) == "pytorch"
    assert runtime(onnx_id, sparsity=None, target={"latency_ms": 1.0, "batch": 8}) == "pytorch"
    assert runtime(weights_id) == "pytorch"
