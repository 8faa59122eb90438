"""The run page's speed claims: spreads shown, overlap is 'no measurable speed-up', masks 1.0x."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.models import Run
from app.web import charts, charts_sweep
from app.web.latency_view import NO_SPEEDUP, budget_line, deploy_rows
from app.web.page_data import run_summary
from tests.browser import seed
from tests.factories import make_user


def _t(median: float, iqr: float) -> dict:
    return {
        "median_ms": median,
        "q1_ms": median - iqr / 2,
        "q3_ms": median + iqr / 2,
        "iqr_ms": iqr,
        "repeats": 20,
        "threads": 1,
    }


def _block(runtime: str, rows: list[tuple[int, float, float, float | None, str]]) -> dict:
    return {
        "runtime": runtime,
        "threads": 1,
        "rows": [
            {"batch": b, "dense": _t(d, 0.1), "pruned": _t(p, 0.1), "speedup": s, "verdict": v}
            for b, d, p, s, v in rows
        ],
    }


FINAL = {
    "accuracy": 0.9,
    "n_params": 10,
    "speedup": _block(
        "pytorch", [(1, 0.2, 0.19, None, NO_SPEEDUP), (256, 9.0, 4.0, 2.25, "2.25x faster")]
    ),
    "speedup_onnx": _block(
        "onnxruntime", [(1, 0.1, 0.1, None, NO_SPEEDUP), (256, 8.0, 5.0, 1.6, "1.60x faster")]
    ),
}


BUDGET = {
    "kind": "latency_ms",
    "asked": {"latency_ms": 5.0, "batch": 256},
    "described": "latency <= 5 ms at batch 256",
    "reached": 4.6,
    "within_10pct": True,
    "latency_ms": {"batch": 256, "original": _t(9.0, 0.2), "pruned": _t(4.6, 0.2)},
}


def test_the_budget_line_says_asked_reached_and_measured() -> None:
    line = budget_line({"budget": BUDGET})
    assert line.startswith("Budget latency <= 5 ms at batch 256: reached 4.6 ms (met)")
    assert "4.600 ± 0.100 ms (original 9.000 ± 0.100 ms)" in line
    missed = budget_line({"budget": {**BUDGET, "reached": 6.0, "within_10pct": False}})
    assert "missed by more than 10%" in missed
    under = {**BUDGET, "reached": 2.0, "reached_vs_original": 3.1, "within_10pct": False}
    assert "(more than 10% under the budget; 3.1 ms against the original side by side)" in (
        budget_line({"budget": under})
    )
    assert budget_line({"accuracy": 0.9}) == ""


def test_deploy_rows_show_both_runtimes_both_batches_with_spread() -> None:
    rows = deploy_rows(FINAL)
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        ("PyTorch", 1),
        ("PyTorch", 256),
        ("ONNX Runtime", 1),
        ("ONNX Runtime", 256),
    ]
    assert rows[0]["verdict"] == NO_SPEEDUP and rows[1]["verdict"] == "2.25x faster"
    assert rows[1]["dense"] == "9.000 ± 0.050 ms"
    assert deploy_rows({"accuracy": 0.9}) == []  # older runs: nothing to show


def _steps(lat: tuple[float, float], iqr: tuple[float, float] | None = None) -> list[dict]:
    def m(acc: float, n: float, i: float | None) -> dict:
        out = {"accuracy": acc, "latency_ms_batch": n, "n_params": 100}
        return out if i is None else {**out, "latency_ms_batch_iqr": i}

    iq = iqr or (None, None)
    return [
        {
            "step": 0,
            "before_finetune": m(0.9, lat[0], iq[0]),
            "after_finetune": m(0.9, lat[0], iq[0]),
        },
        {
            "step": 1,
            "before_finetune": m(0.8, lat[1], iq[1]),
            "after_finetune": m(0.85, lat[1], iq[1]),
        },
    ]


def test_a_masks_only_run_never_plots_a_speed_up_other_than_one() -> None:
    fig = charts.tradeoff_figure(_steps((1016.0, 83.0)), axis="speedup", masks_only=True)
    assert fig["data"][0]["x"] == [1.0, 1.0] and fig["data"][1]["x"] == [1.0, 1.0]


def test_a_masks_only_sweep_run_plots_at_one_x_from_its_typed_flag() -> None:
    final = {"accuracy": 0.9, "compression": 2.0, "latency_ms": 1.0}
    run = Run(name="m", kind="prune", status="succeeded", final=final, masks_only=True)
    run.baseline = {"latency_ms": 4.0}  # the timer saw 4x; the zeros are still computed
    row = {**run_summary(run), "id": 1, "criterion": "l1"}
    assert row["masks_only"] is True
    fig = charts_sweep.sweep_figure([row], axis="speedup")
    assert fig["data"][0]["x"] == [1.0]
    fig = charts_sweep.sweep_figure([{**row, "masks_only": False}], axis="speedup")
    assert fig["data"][0]["x"] == [4.0]


def test_overlapping_spreads_plot_at_one_x() -> None:
    fig = charts.tradeoff_figure(_steps((10.0, 9.0), (3.0, 3.0)), axis="speedup", masks_only=False)
    assert fig["data"][1]["x"] == [1.0, 1.0]
    apart = charts.tradeoff_figure(
        _steps((10.0, 5.0), (0.5, 0.5)), axis="speedup", masks_only=False
    )
    assert apart["data"][1]["x"] == [1.0, 2.0]


def test_the_final_point_uses_the_interleaved_comparison_or_says_none() -> None:
    final = {**FINAL, "n_params": 50}
    fig = charts.tradeoff_figure(
        _steps((10.0, 10.0)), axis="speedup", masks_only=False, final=final
    )
    assert fig["data"][-1]["x"] == [2.25]
    rows = [{**r, "speedup": None, "verdict": NO_SPEEDUP} for r in FINAL["speedup"]["rows"]]
    none = {**final, "speedup": {"runtime": "pytorch", "rows": rows}}
    fig = charts.tradeoff_figure(_steps((10.0, 10.0)), axis="speedup", masks_only=False, final=none)
    assert len(fig["data"]) == 2  # no star at a made-up number
    assert fig["layout"]["annotations"][0]["text"] == f"final model: {NO_SPEEDUP}"


def test_the_run_page_shows_the_latency_table(
    client: TestClient, db_session: Session, settings
) -> None:
    _, headers = make_user(db_session, "viewer1")
    model = seed.seed_model(db_session)
    run = seed.seed_run(db_session, model=model, name="r", artifacts_dir=Path(settings.artifacts))
    run.final = {**(run.final or {}), **FINAL, "budget": BUDGET}
    db_session.add(run)
    db_session.commit()
    r = client.get(f"/runs/{run.id}", headers=headers)
    assert r.status_code == 200
    assert 'id="deploy-latency"' in r.text and "ONNX Runtime" in r.text
    assert "2.25x faster" in r.text and NO_SPEEDUP in r.text
    assert "Budget latency &lt;= 5 ms at batch 256: reached 4.6 ms (met)" in r.text


def test_a_timing_with_its_median_interval_shows_it_and_the_repeats() -> None:
    row = FINAL["speedup"]["rows"][-1]
    timed = {**row, "dense": {**row["dense"], "ci_rel": 0.042, "repeats": 31}}
    rows = deploy_rows({"speedup": {**FINAL["speedup"], "rows": [timed]}})
    assert rows[0]["dense"] == "9.000 ± 0.050 ms (median ±4.2% at 95%, 31 repeats)"
