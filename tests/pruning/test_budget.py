"""Prune to a budget: malformed budgets refused, params/FLOPs budgets met, the run reports it."""

from __future__ import annotations

import pytest
import torch

from app.modelio.dataset_files import load_digits
from app.pruning.budget_spec import check_budget
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from app.zoo import build

FAST = {"epochs": 1, "lr": 0.05, "optimizer": "sgd", "batch_size": 64}
FILTER = {"granularity": "filter", "criterion": "l1", "physical": True}


def _recipe(target: dict, **pruning: object) -> Recipe:
    p = {**FILTER, "target": target, **pruning}
    return Recipe.from_dict({"kind": "prune", "name": "b", "pruning": p, "finetune": FAST})


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ({"params": 0}, "greater than 0"),
        ({"params": 10, "flops": 10}, "exactly one of"),
        ({"flops": 10, "batch": 4}, "exactly one of"),
        ({"latency_ms": 1.0, "batch": 0}, "batch must be an integer"),
        ({"latency_ms": "fast"}, "latency_ms must be a number"),
        ([1], "must be an object"),
    ],
)
def test_malformed_budgets_are_refused_with_a_sentence(target: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_budget(target)


def test_a_budget_replaces_the_sparsity_and_needs_physical_channel_pruning() -> None:
    with pytest.raises(ValueError, match="exactly one of pruning.sparsity"):
        _recipe({"params": 100}, sparsity=0.5)
    with pytest.raises(ValueError, match="pruning.physical true"):
        _recipe({"params": 100}, physical=False)
    r = _recipe({"latency_ms": 2, "batch": 32})
    assert Recipe.from_dict(r.to_dict()) == r


def test_a_params_budget_is_met_and_reported(tmp_path) -> None:
    torch.manual_seed(0)
    model = build("cnn_small")
    dense = sum(p.numel() for p in model.parameters())
    budget = int(dense * 0.6)
    cache = tmp_path / "table.json"
    result = run_recipe(
        _recipe({"params": budget}, exclude=["classifier"]),
        model,
        load_digits(),
        latency=False,
        budget_cache=cache,
    )
    report = result.final["budget"]
    assert result.physical and report["kind"] == "params" and report["asked"] == {"params": budget}
    assert report["reached"] == result.final["n_params"] <= budget * 1.1
    assert report["within_10pct"] and report["latency_ms"]["pruned"]["median_ms"] > 0
    assert result.allocation and cache.is_file()  # the lookup table is kept


def test_an_impossible_budget_fails_with_what_can_be_reached() -> None:
    with pytest.raises(ValueError, match="cannot be reached"):
        run_recipe(
            _recipe({"params": 10}, exclude=["classifier"]),
            build("cnn_small"),
            load_digits(),
            latency=False,
        )


def test_a_latency_budget_run_reports_the_batch_and_both_measured_timings() -> None:
    torch.manual_seed(0)
    result = run_recipe(
        _recipe({"latency_ms": 1000.0, "batch": 16}, exclude=["classifier"]),
        build("cnn_small"),
        load_digits(),
        latency=False,
    )
    report = result.final["budget"]
    assert report["kind"] == "latency_ms" and report["asked"] == {"latency_ms": 1000.0, "batch": 16}
    timing = report["latency_ms"]
    assert timing["batch"] == 16 and report["reached"] == timing["pruned"]["median_ms"]
    assert timing["original"]["repeats"] >= 7 and timing["pruned"]["iqr_ms"] >= 0
    assert "latency <= 1000 ms at batch 16" in " ".join(n["text"] for n in result.notes)
