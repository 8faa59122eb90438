"""`prunelab run`: a recipe file, a model file and digits in; every result file out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.spec import FinetuneSpec
from app.pruning.train import train
from app.runs.cli import parse_shape, run_command
from app.runs.inputs import load_recipe, model_format
from app.runs.outfolder import claim_out_dir, file_digest

torch.set_num_threads(1)
RECIPE = {
    "kind": "prune",
    "name": "cli filter",
    "expected": {"note": "ignored by the loader"},
    "pruning": {
        "granularity": "filter",
        "criterion": "l1",
        "scope": "layerwise",
        "sparsity": 0.5,
        "physical": True,
        "exclude": ["classifier"],
    },
    "schedule": {"kind": "oneshot"},
    "finetune": {"epochs": 1, "lr": 0.02, "optimizer": "sgd", "batch_size": 64},
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = zoo.build("cnn_small")
    train(model, load_digits(), FinetuneSpec(epochs=2, lr=0.05, optimizer="sgd", batch_size=64))
    path = tmp_path_factory.mktemp("m") / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_run_command_writes_summary_histograms_curve_and_artifacts(tmp_path, weights) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    summary = run_command(recipe, weights, "digits", out, arch="cnn_small", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "summary.json",
        "histograms.json",
        "curve.json",
        "pruned.pt",
        "pruned.onnx",
        "pruned.safetensors",
        "recipe.json",
    } <= names
    body = json.loads((out / "summary.json").read_text())
    assert body == json.loads(json.dumps(summary))
    assert {
        "name",
        "kind",
        "status",
        "recipe",
        "baseline",
        "final",
        "steps",
        "layers",
        "notes",
    } <= set(body)
    assert body["status"] == "succeeded" and body["physical"] is True and body["batch_size"] == 64
    assert body["final"]["n_params"] < body["baseline"]["n_params"]
    assert body["recipe"]["pruning"]["granularity"] == "filter"
    assert json.loads((out / "curve.json").read_text())[0]["epoch"] == 1
    assert {h["phase"] for h in json.loads((out / "histograms.json").read_text())} == {
        "before",
        "after_prune",
        "after_finetune",
    }
    assert {a["name"] for a in body["artifacts"]} >= {
        "pruned.pt",
        "pruned.onnx",
        "pruned.safetensors",
    }
    assert "masks.npz" in names and "masks.npz" in {a["name"] for a in body["artifacts"]}
    with np.load(out / "masks.npz") as masks:
        assert {"features.0", "features.4", "features.8"} <= set(masks.files)
        assert masks["features.0"].dtype == bool and masks["features.0"].shape[0] == 16


def test_yaml_recipes_load_like_json(tmp_path) -> None:
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert load_recipe(path).pruning.sparsity == 0.5


def test_bad_recipe_field_is_a_value_error_naming_it(tmp_path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**RECIPE, "schedule": {"kind": "sometimes"}}))
    with pytest.raises(ValueError, match="schedule.kind"):
        load_recipe(path)


def test_input_shape_drops_a_leading_batch_of_one() -> None:
    assert parse_shape("1,1,8,8") == (1, 8, 8)
    assert parse_shape("3,32,32") == (3, 32, 32)
    with pytest.raises(ValueError, match="--input-shape"):
        parse_shape("a,b")


@pytest.mark.slow
def test_prunelab_run_from_the_command_line(tmp_path, weights) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "run",
            str(recipe),
            "--model",
            str(weights),
            "--data",
            "digits",
            "--out",
            str(out),
            "--arch",
            "cnn_small",
            "--input-shape",
            "1,1,8,8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["baseline"]["n_params"], summary["final"]["n_params"]
    assert after < before  # physically removed filters: the parameter count says how much
    assert f"parameters {before:,} -> {after:,}" in proc.stdout, proc.stdout
    assert (out / "summary.json").exists() and (out / "pruned.onnx").exists()


MLP_RECIPE = {
    "kind": "prune",
    "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5},
    "schedule": {"kind": "oneshot"},
    "finetune": {"epochs": 1, "lr": 0.003, "optimizer": "adam", "batch_size": 128},
}


def _mlp_recipe(tmp_path: Path, name: str, sparsity: float) -> Path:
    path = tmp_path / f"{name}.json"
    body = {**MLP_RECIPE, "pruning": {**MLP_RECIPE["pruning"], "sparsity": sparsity}}
    path.write_text(json.dumps(body))
    return path


def test_a_finished_run_leaves_no_checkpoint_for_the_next_recipe_in_the_same_out(tmp_path) -> None:
    out = tmp_path / "out"
    first = _mlp_recipe(tmp_path, "half", 0.5)
    run_command(first, None, "digits", out, arch="mlp", progress=False)
    assert not (out / "checkpoints").exists()
    second = run_command(
        _mlp_recipe(tmp_path, "most", 0.8), None, "digits", out, arch="mlp", progress=False
    )
    assert not any(n["text"].startswith("resumed") for n in second["notes"])
    assert abs(second["final"]["sparsity"] - 0.8) < 0.01


def _leave_unfinished_checkpoint(recipe_path: Path, out: Path) -> None:
    """What an interrupted ``prunelab run`` of ``recipe_path`` leaves in ``out``."""
    recipe = load_recipe(recipe_path)
    identity = {
        "recipe": recipe.to_dict(),
        "model": file_digest(None, "mlp"),
        "data": "digits",
        "arch": "mlp",
    }
    assert claim_out_dir(out, identity, resume=False) is False
    model = zoo.build("mlp")
    run_recipe(recipe, model, load_digits(), checkpoint_dir=out / "checkpoints", latency=False)


def test_an_out_holding_another_recipes_checkpoint_is_refused(tmp_path) -> None:
    out = tmp_path / "out"
    half = _mlp_recipe(tmp_path, "half", 0.5)
    _leave_unfinished_checkpoint(half, out)
    other = _mlp_recipe(tmp_path, "most", 0.8)
    for resume in (False, True):
        with pytest.raises(ValueError, match="checkpoint of another run .its recipe differs"):
            run_command(other, None, "digits", out, arch="mlp", progress=False, resume=resume)
    with pytest.raises(ValueError, match="checkpoint of another run .its model differs"):
        run_command(half, None, "digits", out, arch="lenet5", progress=False, resume=True)


def test_the_same_recipe_resumes_only_with_resume(tmp_path) -> None:
    out = tmp_path / "out"
    half = _mlp_recipe(tmp_path, "half", 0.5)
    _leave_unfinished_checkpoint(half, out)
    with pytest.raises(ValueError, match="pass --resume"):
        run_command(half, None, "digits", out, arch="mlp", progress=False)
    summary = run_command(half, None, "digits", out, arch="mlp", progress=False, resume=True)
    assert "resumed after step 1" in [n["text"] for n in summary["notes"]]
    assert (out / "masks.npz").exists() and not (out / "checkpoints").exists()


def test_a_cli_train_run_leaves_rewind_weights_that_a_retrain_of_its_model_uses(tmp_path) -> None:
    train_recipe = tmp_path / "train.json"
    train_recipe.write_text(json.dumps({"kind": "train", "finetune": {"epochs": 2}}))
    trained = tmp_path / "trained"
    run_command(train_recipe, None, "digits", trained, arch="mlp", progress=False)
    assert {"init.safetensors", "rewind.safetensors"} <= {p.name for p in trained.iterdir()}
    body = {**MLP_RECIPE, "schedule": {"kind": "retrain"}, "finetune": {"epochs": 0}}
    lottery = tmp_path / "lottery.json"
    lottery.write_text(json.dumps(body))
    model = trained / "pruned.safetensors"
    summary = run_command(lottery, model, "digits", tmp_path / "o", arch="mlp", progress=False)
    assert summary["final"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    (trained / "rewind.safetensors").unlink()
    (trained / "init.safetensors").unlink()
    with pytest.raises(ValueError, match='use "retrain_init": "reinit"'):
        run_command(lottery, model, "digits", tmp_path / "o2", arch="mlp", progress=False)


def test_allocation_from_a_server_run_is_refused_by_the_cli_with_what_to_use(tmp_path) -> None:
    path = tmp_path / "r.json"
    body = {**MLP_RECIPE, "pruning": {**MLP_RECIPE["pruning"], "allocation_from": 3}}
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="summary.json as pruning.overrides"):
        load_recipe(path)


def test_prunelab_run_shapes_widths_for_the_deploy_runtime_as_a_server_run_does(
    tmp_path, weights, monkeypatch
) -> None:
    """The measured round_to default reaches `prunelab run` too (the table cached per user):
    shaped for ONNX Runtime, every kept width is a multiple of its block or the whole layer."""
    import re

    monkeypatch.setenv("PRUNELAB_SHAPE_CACHE", str(tmp_path / "shapes"))
    body = {**RECIPE, "pruning": {**RECIPE["pruning"], "deploy_runtime": "onnxruntime"}}
    body["finetune"] = {"epochs": 0}
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(body))
    out = tmp_path / "out"
    summary = run_command(
        recipe, weights, "digits", out, arch="cnn_small", progress=False, latency=False
    )
    said = [n["text"] for n in summary["notes"] if "deploy_runtime 'onnxruntime'" in n["text"]]
    assert said, summary["notes"]
    multiple = int(re.search(r"defaulted to (\d+) on every layer", said[0]).group(1))
    assert list((tmp_path / "shapes").glob("*.json")), "the table is kept for the next run"
    with np.load(out / "masks.npz") as masks:
        kept = {n: int(masks[n].reshape(masks[n].shape[0], -1).any(1).sum()) for n in masks.files}
        widths = {n: masks[n].shape[0] for n in masks.files}
    convs = ("features.0", "features.4", "features.8")
    assert all(kept[n] == widths[n] or kept[n] % multiple == 0 for n in convs), kept
    assert any(kept[n] < widths[n] for n in convs), kept


def test_an_onnx_model_file_defaults_the_deploy_runtime_as_the_server_does(
    tmp_path, weights
) -> None:
    """`prunelab run --model m.onnx` shapes a physical filter run for ONNX Runtime unless the
    recipe names the runtime; a weights file keeps PyTorch."""
    model = zoo.build("cnn_small").eval()
    onnx_path = tmp_path / "m.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(onnx_path), dynamo=False, opset_version=17
    )
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(RECIPE))
    assert load_recipe(recipe, model_format(onnx_path)).pruning.deploy_runtime == "onnxruntime"
    assert load_recipe(recipe, model_format(weights)).pruning.deploy_runtime == "pytorch"
    assert load_recipe(recipe).pruning.deploy_runtime == "pytorch"
    named = {**RECIPE, "pruning": {**RECIPE["pruning"], "deploy_runtime": "pytorch"}}
    recipe.write_text(json.dumps(named))
    assert load_recipe(recipe, model_format(onnx_path)).pruning.deploy_runtime == "pytorch"
