"""What a finished run leaves behind: a result model later runs can prune, and masks.npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlmodel import Session

from app import db, store
from app.artifacts import ArtifactStore
from app.jobs.tasks import execute_run
from app.models import ModelRecord, Run
from app.pruning.spec import Recipe
from app.web import run_view
from tests.factories import make_run, make_torchscript_record
from tests.jobs.conftest import job_settings

torch.set_num_threads(1)


@pytest.fixture
def lab(tmp_path: Path):
    settings = job_settings(tmp_path / "data")
    db.upgrade(settings)
    engine = db.make_engine(settings)
    yield settings, engine
    engine.dispose()


def _execute(lab, body: dict, model_id: int | None = None) -> Run:
    """One run, in this process, from queued to its end."""
    settings, engine = lab
    recipe = Recipe.from_dict({k: v for k, v in body.items() if k != "arch"}).to_dict()
    if "arch" in body:
        recipe["arch"] = body["arch"]
    with Session(engine) as s:
        run_id = int(make_run(s, recipe=recipe, model_id=model_id).id)
        assert store.claim_run(s, run_id=run_id)
        s.commit()
    execute_run(run_id, settings, engine=engine)
    with Session(engine, expire_on_commit=False) as s:
        run = s.get(Run, run_id)
    assert run.status == "succeeded", run.error
    return run


def _prune(granularity: str, sparsity: float, physical: bool) -> dict:
    return {
        "kind": "prune",
        "name": f"{granularity} {sparsity}",
        "pruning": {
            "granularity": granularity,
            "criterion": "l1",
            "sparsity": sparsity,
            "physical": physical,
        },
        "schedule": {"kind": "oneshot"},
        "finetune": {"epochs": 0},
    }


def _model(lab, model_id: int) -> ModelRecord:
    with Session(lab[1]) as s:
        return s.get(ModelRecord, model_id)


@pytest.mark.slow
def test_a_physically_pruned_result_is_safetensors_that_a_second_run_prunes_again(lab) -> None:
    train = _execute(
        lab,
        {
            "kind": "train",
            "name": "t",
            "arch": "cnn_small",
            "finetune": {"epochs": 1, "batch_size": 128},
        },
    )
    trained = _model(lab, train.result_model_id)
    assert trained.format == "safetensors" and trained.arch == "cnn_small"

    filt = _execute(lab, _prune("filter", 0.5, physical=True), trained.id)
    assert any("physically removed" in n["text"] for n in filt.notes)
    small = _model(lab, filt.result_model_id)
    assert small.format == "safetensors" and small.arch == "cnn_small" and small.structured_ok
    assert small.n_params == filt.final["n_params"] < trained.n_params
    assert small.storage_key.endswith(".safetensors")

    again = _execute(lab, _prune("element", 0.5, physical=False), small.id)
    assert again.baseline["n_params"] == small.n_params
    assert again.final["sparsity"] > again.baseline["sparsity"]
    assert _model(lab, again.result_model_id).n_params == small.n_params


@pytest.mark.slow
def test_masks_npz_keeps_the_original_shapes_of_a_physically_pruned_run(lab) -> None:
    settings, engine = lab
    run = _execute(
        lab,
        {**_prune("filter", 0.5, physical=True), "arch": "cnn_small", "finetune": {"epochs": 0}},
    )
    with Session(engine) as s:
        art = store.get_artifact(s, run_id=run.id, name="masks.npz")
        assert art is not None and art.kind == "masks" and art.verified
        layers = {r.layer: r.shape for r in store.list_layers(s, run_id=run.id)}
        path = ArtifactStore(settings.artifacts).local_path(art.storage_key)
        with np.load(path) as z:
            assert set(z.files) == set(layers)
            for name, shape in layers.items():
                mask = z[name]
                assert mask.dtype == bool and list(mask.shape) == list(shape)
        sparsity = {r.layer: r.sparsity for r in store.list_layers(s, run_id=run.id)}
        conv = max((n for n in layers if len(layers[n]) == 4), key=lambda n: sparsity[n])
        drawn = run_view.load_mask(s, run, conv, settings.artifacts)
    assert drawn is not None and drawn.shape == tuple(layers[conv])
    rows = drawn.reshape(drawn.shape[0], -1)
    assert (~rows.any(axis=1)).any(), "whole filters are removed"
    assert np.all(rows.all(axis=1) | ~rows.any(axis=1)), "a filter is kept or removed whole"


def test_prunelab_run_writes_the_same_artifacts_as_a_server_run(lab, tmp_path: Path) -> None:
    import json

    from app.runs.cli import run_command
    from tests.factories import make_model_record

    settings, engine = lab
    with Session(engine) as s:
        model_id = make_model_record(s, settings, arch="cnn_small").id
        key = s.get(ModelRecord, model_id).storage_key
    body = {**_prune("filter", 0.5, physical=True), "arch": "cnn_small"}
    server = _execute(lab, body, model_id)
    assert server.physical is True and server.masks_only is False
    with Session(engine) as s:
        stored = {a.name for a in store.list_artifacts(s, run_id=server.id)}

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({k: v for k, v in body.items() if k != "arch"}))
    out = tmp_path / "cli-out"
    weights = ArtifactStore(settings.artifacts).local_path(key)
    summary = run_command(recipe, weights, "digits", out, arch="cnn_small", progress=False)
    written = {a["name"] for a in summary["artifacts"]}
    assert "masks.npz" in stored and (out / "masks.npz").is_file()
    assert written == stored
    assert all((out / name).is_file() for name in written)


class _TokenClassifier(torch.nn.Module):
    """Token ids in, ten class scores out (the shape of a small text classifier)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(17, 8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).flatten(1, -2).mean(1))


@pytest.mark.slow
def test_the_result_model_of_a_token_id_model_takes_token_ids_too(lab) -> None:
    settings, engine = lab
    torch.manual_seed(0)
    scripted = torch.jit.script(_TokenClassifier())
    with Session(engine) as s:
        model_id = int(
            make_torchscript_record(s, settings, scripted, name="token ids", input_dtype="int64").id
        )
    run = _execute(lab, _prune("element", 0.5, physical=False), model_id)
    assert run.masks_only is True
    result = _model(lab, run.result_model_id)
    assert result.format == "torchscript" and result.input_dtype == "int64"


@pytest.mark.slow
def test_a_run_on_a_trace_with_batchnorm_says_it_stays_in_traced_mode(lab) -> None:
    """Issue 12 item 7: the upload's warning comes back as a note of every run on the trace."""
    from app import zoo
    from app.modelio.load import BN_FROZEN_NOTE

    settings, engine = lab
    torch.manual_seed(0)
    traced = torch.jit.trace(zoo.build("cnn_small").eval(), torch.zeros(2, 1, 8, 8))
    with Session(engine) as s:
        model_id = int(make_torchscript_record(s, settings, traced, name="bn trace").id)
    body = {**_prune("element", 0.5, physical=False), "finetune": {"epochs": 1}}
    run = _execute(lab, body, model_id)
    said = BN_FROZEN_NOTE.format(kinds="BatchNorm2d")
    assert any(n["text"] == said for n in run.notes), run.notes


@pytest.mark.slow
def test_a_run_shaped_for_onnx_runtime_keeps_every_width_at_its_block(lab) -> None:
    """pruning.deploy_runtime "onnxruntime": the default round_to is ONNX Runtime's own measured
    multiple on every layer (uncapped), so no convolution is cut below a whole NCHWc block;
    the run says so, the recipe keeps the choice, and both runtimes' speed-ups are timed."""
    import re

    from safetensors.torch import load_file

    settings, engine = lab
    body = {**_prune("filter", 0.5, physical=True), "arch": "cnn_small"}
    body["pruning"] = {**body["pruning"], "deploy_runtime": "onnxruntime"}
    run = _execute(lab, body)
    said = [n["text"] for n in run.notes if "pruning.deploy_runtime 'onnxruntime'" in n["text"]]
    assert said, run.notes
    multiple = int(re.search(r"round_to defaulted to (\d+) on every layer", said[0]).group(1))
    assert multiple >= 8  # ONNX Runtime's NCHWc block on x86 (8 on AVX2, 16 on AVX-512)
    with Session(engine) as s:
        art = store.get_artifact(s, run_id=run.id, name="pruned.safetensors")
        path = ArtifactStore(settings.artifacts).local_path(art.storage_key)
        recipe = store.get_artifact(s, run_id=run.id, name="recipe.json")
        recipe_path = ArtifactStore(settings.artifacts).local_path(recipe.storage_key)
    widths = {k: v.shape[0] for k, v in load_file(path).items() if v.dim() == 4}
    original = {"features.0.weight": 16, "features.4.weight": 32, "features.8.weight": 64}
    assert set(widths) == set(original), widths
    for name, width in widths.items():
        assert width == original[name] or width % multiple == 0, widths
    assert sum(widths.values()) < sum(original.values()), "something was cut"
    assert '"deploy_runtime": "onnxruntime"' in Path(recipe_path).read_text()
    assert run.final["speedup"]["rows"] and run.final["speedup_onnx"]["rows"]
