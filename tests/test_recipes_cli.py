"""The cheap reference recipes reproduce from the command line alone: `prunelab run --pretrain`
trains the model each recipe names (expected.pretrain) and lands in the documented band."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.runs.cli import run_command
from tests.test_recipes import CHEAP, RECIPES, expected

torch.set_num_threads(1)
FROM_CLI = [*CHEAP, "mlp_agp"]  # mlp_agp: once reproducible only with the tests' pretraining


def _band_failures(name: str, summary: dict, exp: dict) -> list[str]:
    base, final = summary["baseline"], summary["final"]
    failures = []
    drop = base["accuracy"] - final["accuracy"]
    if drop > exp["accuracy_drop_max"]:
        failures.append(f"{name}: accuracy dropped {drop:.4f} > {exp['accuracy_drop_max']}")
    if "sparsity" in exp:
        lo, hi = exp["sparsity"]
        got = summary["steps"][-1]["after_finetune"]["sparsity"]
        if not lo <= got <= hi:
            failures.append(f"{name}: sparsity {got:.4f} outside [{lo}, {hi}]")
    if final["compression"] < exp.get("compression_min", 0.0):
        failures.append(f"{name}: compression {final['compression']:.2f}x")
    if base["flops"] / final["flops"] < exp.get("flops_reduction_min", 0.0):
        failures.append(f"{name}: FLOPs only {base['flops'] / final['flops']:.2f}x fewer")
    if exp.get("physical") and not summary["physical"]:
        failures.append(f"{name}: not physically pruned")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("name", FROM_CLI)
def test_cheap_recipe_reproduces_from_the_cli_with_its_own_pretraining(name, tmp_path) -> None:
    path = next(p for p in RECIPES if p.stem == name)
    exp = expected(path)
    summary = run_command(
        path,
        None,
        exp["data"],
        tmp_path / name,
        arch=exp["arch"],
        progress=False,
        pretrain=True,
        latency=False,
    )
    pretrain = json.loads(path.read_text())["expected"]["pretrain"]
    assert any(f"pre-trained a fresh {exp['arch']}" in n["text"] for n in summary["notes"])
    assert summary["baseline"]["accuracy"] > 0.9, f"pre-training {pretrain} did not train"
    assert _band_failures(name, summary, exp) == []
    assert (tmp_path / name / "masks.npz").exists()


def test_pretrain_needs_an_arch_and_no_model(tmp_path) -> None:
    path = next(p for p in RECIPES if p.stem == "mlp_agp")
    with pytest.raises(ValueError, match="give --arch NAME and no --model"):
        run_command(path, None, "digits", tmp_path / "o", progress=False, pretrain=True)
    bare = tmp_path / "bare.json"
    body = {k: v for k, v in json.loads(path.read_text()).items() if k != "expected"}
    bare.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="needs a 'pretrain' block"):
        run_command(bare, None, "digits", tmp_path / "o", arch="mlp", progress=False, pretrain=True)
    assert not Path(tmp_path / "o" / "checkpoints").exists()
