"""The dashboard in a real browser: pages load clean, charts hold data, runs update live."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.browser.conftest import ARTIFACTS, Lab, Watched

pytestmark = pytest.mark.browser

TRACE_TYPES = """sel => Array.from(document.querySelectorAll(sel)).map(d => ({
    id: d.id, types: (d.data || []).map(t => t.type),
    points: (d.data || []).reduce((n, t) => n + ((t.z || t.y || []).length), 0)}))"""


def _open(w: Watched, lab: Lab, path: str, shot: str) -> list[dict]:
    w.page.goto(lab.url + path)
    w.page.wait_for_load_state("networkidle")
    w.page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.chart')).every(d => d.dataset.drawn)",
        timeout=15_000,
    )
    w.page.screenshot(path=str(ARTIFACTS / f"{shot}.png"), full_page=True)
    assert w.console_errors == [], (path, w.console_errors)
    assert w.outside == [], (path, w.outside)
    return {c["id"]: c for c in w.page.evaluate(TRACE_TYPES, ".chart")}


def test_every_page_loads_clean_with_charts_of_the_right_type(
    browser_page: Watched, lab: Lab
) -> None:
    ids = lab.ids
    charts = _open(browser_page, lab, "/", "overview")
    assert charts["chart-overview"]["types"][-1] == "scatter"
    assert charts["chart-overview"]["points"] >= 2

    charts = _open(browser_page, lab, f"/runs/{ids['b']}", "run")
    assert charts["chart-sparsity"]["types"] == ["heatmap"]
    assert charts["chart-histogram"]["types"] == ["bar", "bar", "bar"]
    assert charts["chart-mask"]["types"] == ["heatmap"]
    assert set(charts["chart-tradeoff_speedup"]["types"]) == {"scatter"}
    assert charts["chart-curve"]["points"] > 0
    page = browser_page.page
    assert "no speed-up expected" in page.inner_text("body")
    page.select_option("#layer-select", "fc")
    page.wait_for_function(
        "() => document.getElementById('chart-mask').layout.title.text.includes('fc')"
    )

    charts = _open(browser_page, lab, f"/runs/{ids['sens']}", "sensitivity")
    assert len(charts["chart-sensitivity"]["types"]) == 3

    charts = _open(browser_page, lab, f"/compare?runs={ids['a']},{ids['b']}", "compare")
    assert charts["chart-layer_sparsity"]["types"] == ["bar", "bar"]
    assert charts["chart-compare-histogram"]["types"] == ["bar", "bar"]
    listed = page.eval_on_selector_all(
        "#compare-table tbody tr", "rs => rs.map(r => r.dataset.runId)"
    )
    assert listed == [str(ids["a"]), str(ids["b"])]

    charts = _open(browser_page, lab, f"/sweeps/{ids['sweep']}", "sweep")
    assert {"scatter"} == set(charts["chart-compression"]["types"])
    for path, shot in [
        ("/runs", "runs"),
        ("/models", "models"),
        (f"/models/{ids['model']}", "model"),
        ("/datasets", "datasets"),
        ("/compare", "compare-pick"),
    ]:
        _open(browser_page, lab, path, shot)


def test_run_page_reads_on_a_narrow_screen(browser_page: Watched, lab: Lab) -> None:
    page = browser_page.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        _open(browser_page, lab, f"/runs/{lab.ids['a']}", "run-narrow")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        wide = page.evaluate(
            "() => Array.from(document.querySelectorAll('body *')).filter(e => "
            "e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.table-wrap'))"
            ".slice(0, 5).map(e => e.tagName + '.' + e.className)"
        )
        assert overflow <= 1, wide
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def _make_model(lab: Lab) -> int:
    r = httpx.post(
        f"{lab.url}/api/models/from-architecture",
        headers=lab.headers,
        timeout=60,
        json={
            "arch": "mlp",
            "name": "mlp for the browser test",
            "num_classes": 10,
            "input_shape": [1, 1, 8, 8],
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.mark.slow
def test_new_run_form_creates_a_run_that_updates_live(browser_page: Watched, lab: Lab) -> None:
    model_id = _make_model(lab)
    page = browser_page.page
    _open(browser_page, lab, f"/runs/new?model_id={model_id}", "new-run")
    page.select_option("select[name=criterion]", "threshold")
    assert page.eval_on_selector_all(
        "select[name=granularity] option", "os => os.map(o => o.value)"
    ) == ["element"]
    page.select_option("select[name=criterion]", "l1")
    page.fill("input[name=sparsity]", "1.5")
    page.click("#run-submit")
    assert "[0, 1)" in page.inner_text("[data-error-for='pruning.sparsity']")

    page.fill("input[name=name]", "browser live run")
    page.fill("input[name=sparsity]", "0.8")
    page.fill("input[name=steps]", "3")
    page.fill("input[name=epochs]", "3")
    page.click("#run-submit")
    page.wait_for_url("**/runs/*", timeout=15_000)
    page.wait_for_selector("#chart-curve[data-drawn]")
    page.evaluate("() => { window.__sameDocument = true; }")
    seen, deadline = set(), time.monotonic() + 150
    while time.monotonic() < deadline:
        state = page.evaluate(
            "() => [document.getElementById('run').dataset.status, "
            "document.getElementById('run-progress').value]"
        )
        seen.add(round(state[1], 3))
        if state[0] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    page.wait_for_timeout(1500)  # the final refresh
    page.screenshot(path=str(ARTIFACTS / "run-live-finished.png"), full_page=True)
    assert state[0] == "succeeded", page.inner_text("#run-error")
    assert page.evaluate("() => window.__sameDocument === true"), "the page reloaded"
    assert len(seen) >= 3, f"progress did not move live: {sorted(seen)}"
    charts = {c["id"]: c for c in page.evaluate(TRACE_TYPES, ".chart")}
    assert charts["chart-curve"]["points"] >= 2 * 3
    assert charts["chart-sparsity"]["types"] == ["heatmap"]
    assert charts["chart-histogram"]["types"][0] == "bar"
    assert browser_page.console_errors == [] and browser_page.outside == []


def _upload_onnx(lab: Lab, tmp_path) -> int:
    import torch

    from app.zoo import build

    torch.manual_seed(0)
    model = build("cnn_small", num_classes=10, input_shape=(1, 8, 8)).eval()
    path = tmp_path / "cnn.onnx"
    x = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}}
    )
    with path.open("rb") as f:
        r = httpx.post(
            f"{lab.url}/api/models",
            headers=lab.headers,
            timeout=120,
            data={"name": "onnx cnn for the form"},
            files={"file": ("cnn.onnx", f)},
        )
    assert r.status_code == 201, r.text
    assert r.json()["format"] == "onnx"
    return r.json()["id"]


@pytest.mark.slow
def test_the_form_shapes_an_onnx_upload_for_onnx_runtime(
    browser_page: Watched, lab: Lab, tmp_path
) -> None:
    """Deploy runtime shows for physical filter/channel pruning only, is preselected to ONNX
    Runtime for an ONNX upload (PyTorch for the others) and reaches the run's recipe."""
    onnx_id, mlp_id = _upload_onnx(lab, tmp_path), _make_model(lab)
    page = browser_page.page
    _open(browser_page, lab, f"/runs/new?model_id={onnx_id}", "new-run-onnx")
    box = "[data-show=deploy_runtime]"
    assert page.is_hidden(box)  # element granularity, nothing removed physically
    page.select_option("select[name=granularity]", "filter")
    assert page.is_hidden(box)
    page.check("input[name=physical]")
    assert page.is_visible(box)
    assert page.input_value("select[name=deploy_runtime]") == "onnxruntime"
    page.select_option("select[name=model_id]", str(mlp_id))
    assert page.input_value("select[name=deploy_runtime]") == "pytorch"
    page.select_option("select[name=model_id]", str(onnx_id))
    page.fill("input[name=name]", "filter for ONNX Runtime")
    page.fill("input[name=sparsity]", "0.5")
    page.select_option("select[name=schedule_kind]", "oneshot")
    page.fill("input[name=epochs]", "0")
    page.click("#run-submit")
    page.wait_for_url(re.compile(r".*/runs/[0-9]+$"), timeout=15_000)
    run_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    run = httpx.get(f"{lab.url}/api/runs/{run_id}", headers=lab.headers, timeout=30).json()
    assert run["recipe"]["pruning"]["deploy_runtime"] == "onnxruntime", run["recipe"]
    assert browser_page.console_errors == [] and browser_page.outside == []
