"""Charts across language-model runs read in perplexity (lower is better), not next-token
accuracy; runs without fine-tuning say so instead of drawing empty axes."""

from __future__ import annotations

import math

import pytest

from app.models import Run
from app.web import charts, charts_runs, charts_sweep, run_view


def _lm(rid: int, ppl: float, comp: float, *, crit: str = "l1", curve=None) -> dict:
    final = {"perplexity": ppl, "accuracy": 0.6, "compression": comp, "loss": math.log(ppl)}
    steps = [{"step": 0, "after_finetune": {"perplexity": 2.6, "compression": 1.0}}]
    steps.append({"step": 1, "after_finetune": final})
    return {
        "id": rid,
        "name": f"lm {rid}",
        "criterion": crit,
        "granularity": "element",
        "final": final,
        "baseline": {"perplexity": 2.6, "accuracy": 0.7},
        "steps": steps,
        "curve": curve or [],
    }


def _cls(rid: int, acc: float, comp: float) -> dict:
    return {**_lm(rid, 1.0, comp), "final": {"accuracy": acc, "compression": comp}, "baseline": {}}


def test_compare_of_language_models_plots_perplexity_lower_is_better() -> None:
    curve = [{"epoch": 1, "step": 1, "loss": 1.2, "accuracy": 0.6, "test_loss": math.log(3.0)}]
    runs = [_lm(1, 2.9, 2.0, curve=curve), _lm(2, 3.4, 2.0, crit="wanda")]
    trade = charts_runs.compare_tradeoff(runs)
    assert trade["data"][0]["y"] == [2.6, 2.9]
    assert trade["layout"]["yaxis"]["title"]["text"] == "test perplexity (lower is better)"
    assert "tickformat" not in trade["layout"]["yaxis"]
    curves = charts_runs.compare_curves(runs)
    assert curves["layout"]["title"]["text"] == "Fine-tuning perplexity"
    assert curves["data"][0]["y"] == [pytest.approx(3.0)]
    cols = charts_runs.columns_for(runs)
    assert cols[0] == ("perplexity", "perplexity (lower is better)", False)
    assert ("accuracy", "next-token accuracy", True) in cols
    best = charts_runs.best_cells(runs)
    assert best["perplexity"] == 1  # the lower one
    assert "compression" not in best  # both 2.0x: no star on a column of equals
    mixed = charts_runs.compare_tradeoff([runs[0], _cls(3, 0.9, 2.0)])
    assert mixed["layout"]["yaxis"]["title"]["text"] == "test accuracy"


def test_compare_of_runs_without_epochs_says_so_instead_of_empty_axes() -> None:
    fig = charts_runs.compare_curves([_lm(1, 2.9, 2.0), _lm(2, 3.4, 2.0)])
    assert fig["data"] == []
    assert fig["layout"]["yaxis"]["visible"] is False
    note = fig["layout"]["annotations"][0]["text"].replace("<br>", " ")
    assert "No fine-tuning in these runs" in note


def test_overview_plots_perplexity_for_language_models_and_leaves_them_out_of_a_mix() -> None:
    runs = [_lm(1, 2.9, 2.0), _lm(2, 3.4, 4.0), _lm(3, 3.1, 1.5)]
    fig = charts_runs.overview_scatter(runs)
    assert fig["layout"]["title"]["text"] == "Perplexity vs compression (all runs)"
    assert "perplexity" in fig["data"][0]["hovertemplate"]
    front = fig["data"][-1]
    assert list(zip(front["x"], front["y"], strict=True)) == [(2.0, 2.9), (4.0, 3.4)]
    mixed = charts_runs.overview_scatter([*runs, _cls(4, 0.9, 2.0)])
    assert mixed["layout"]["yaxis"]["title"]["text"] == "test accuracy"
    assert [p for t in mixed["data"][:-1] for p in t["customdata"]] == [4]
    note = mixed["layout"]["annotations"][0]["text"]
    assert note.startswith("marker: ") and "<br>3 language-model runs not shown" in note
    assert mixed["layout"]["yaxis"]["autorangeoptions"]["minallowed"] < 0.0 < 1.0


def test_pareto_front_with_lower_is_better() -> None:
    pts = [(1, 2.5), (2, 2.4), (2, 3.0), (4, 2.9), (3, 3.5)]
    assert charts_runs.pareto_front(pts, higher=False) == [(2, 2.4), (4, 2.9)]


def test_sweep_and_sensitivity_of_a_language_model_read_in_perplexity() -> None:
    runs = [_lm(1, 2.9, 2.0), _lm(2, 3.4, 4.0), _lm(3, 3.1, 2.0, crit="random")]
    fig = charts_sweep.sweep_figure(runs, axis="compression")
    assert fig["layout"]["title"]["text"] == "Perplexity vs compression"
    assert fig["data"][0]["y"] == [2.9, 3.4]
    rows = [
        {"layer": "q", "sparsity": 0.0, "accuracy": 0.7, "perplexity": 2.6},
        {"layer": "q", "sparsity": 0.5, "accuracy": 0.6, "perplexity": 3.3},
    ]
    sens = charts_sweep.sensitivity_figure(rows, baseline={"accuracy": 0.7, "perplexity": 2.6})
    assert sens["data"][0]["y"] == [2.6, 3.3]
    assert sens["layout"]["shapes"][0]["y0"] == 2.6
    assert sens["layout"]["yaxis"]["title"]["text"] == "test perplexity (lower is better)"
    old = charts_sweep.sensitivity_figure(
        [{k: v for k, v in r.items() if k != "perplexity"} for r in rows], baseline=0.7
    )
    assert old["data"][0]["y"] == [0.7, 0.6] and old["layout"]["yaxis"]["tickformat"] == ".0%"


def test_run_curve_of_a_language_model_is_test_perplexity() -> None:
    pts = [
        {"epoch": 1, "step": 1, "loss": 1.5, "accuracy": 0.5, "test_loss": math.log(4.0)},
        {"epoch": 2, "step": 1, "loss": 1.2, "accuracy": 0.6, "test_loss": math.log(3.0)},
    ]
    fig = charts.curve_figure(pts, metric="perplexity")
    assert [t["name"] for t in fig["data"]] == ["training loss", "perplexity"]
    assert fig["data"][1]["y"] == [pytest.approx(4.0), pytest.approx(3.0)]
    assert fig["layout"]["yaxis2"]["title"]["text"] == "test perplexity (lower is better)"
    assert "range" not in fig["layout"]["yaxis2"]


@pytest.mark.parametrize(
    ("status", "epochs", "says"),
    [
        ("succeeded", 0, "No fine-tuning in this run"),
        ("running", 0, "No fine-tuning in this run"),
        ("running", 2, "No epochs yet"),
        ("succeeded", 2, "recorded no fine-tuning epoch"),
    ],
)
def test_an_empty_run_curve_says_why(status: str, epochs: int, says: str) -> None:
    run = Run(name="r", status=status, recipe={"finetune": {"epochs": epochs}})
    assert says in run_view.curve_empty(run)
