"""Issue 12 in the browser: a person uploads a text corpus and a tiny causal LM (int64 token ids,
``.pt2``), starts a SparseGPT 2:4 run from the new-run form, and the run page shows the dense
and the pruned perplexity side by side, with no console error on the way."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import ARTIFACTS, Lab, Watched

pytestmark = [pytest.mark.browser, pytest.mark.slow]
RUN_PAGE = re.compile(r".*/runs/(\d+)$")


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.e2e.test_language_model_run import _text, _trained_lm_pt2

    d = tmp_path_factory.mktemp("lm")
    text = _text()
    corpus = d / "sentences.txt"
    corpus.write_text(text)
    return corpus, _trained_lm_pt2(text, d / "tiny-llama.pt2")


def _upload(w: Watched, lab: Lab, page_path: str, file: Path, fields: dict, next_url) -> None:
    page = w.page
    page.goto(lab.url + page_path)
    page.set_input_files("#upload-form input[name=file]", str(file))
    for name, value in fields.items():
        page.fill(f"#upload-form input[name={name}]", value)
    page.click("#upload-form button[type=submit]")
    page.wait_for_url(next_url, timeout=120_000)
    page.wait_for_load_state("networkidle")


def _wait_finished(w: Watched, lab: Lab, run_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = w.page.request.get(f"{lab.url}/api/runs/{run_id}").json()
        if run["status"] in ("succeeded", "failed", "cancelled"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s}s")


def test_a_causal_lm_runs_sparsegpt_2_4_from_the_form_and_shows_perplexity(
    browser_page: Watched, lab: Lab, lm_files: tuple[Path, Path]
) -> None:
    corpus, model_file = lm_files
    page = browser_page.page
    _upload(browser_page, lab, "/datasets", corpus, {"seq_len": "32"}, f"{lab.url}/datasets")
    assert "language model (byte, seq 32)" in page.inner_text("#datasets-table")
    _upload(
        browser_page,
        lab,
        "/models",
        model_file,
        {"name": "tiny llama"},
        re.compile(r".*/models/\d+$"),
    )
    model_id = page.url.rsplit("/", 1)[1]

    page.goto(f"{lab.url}/runs/new?model_id={model_id}")
    page.wait_for_load_state("networkidle")
    options = page.eval_on_selector_all(
        "select[name=dataset_id] option",
        "os => os.map(o => ({id: o.value, off: o.disabled, why: o.title}))",
    )
    digits = next(o for o in options if o["id"] == "digits")
    assert digits["off"] and "shape" in digits["why"]  # 1x8x8 images do not feed token ids
    text_ds = [o["id"] for o in options if not o["off"]]
    assert len(text_ds) == 1 and page.input_value("select[name=dataset_id]") == text_ds[0]
    assert "none" in page.inner_text("#exclude-count")  # nothing left dense unless picked

    page.select_option("select[name=criterion]", "wanda")
    assert page.is_visible("select[name=wanda_group]")
    page.select_option("select[name=criterion]", "sparsegpt")
    grans = page.eval_on_selector_all(
        "select[name=granularity] option", "os => os.map(o => o.value)"
    )
    assert grans == ["element", "nm"]
    page.select_option("select[name=granularity]", "nm")
    assert page.is_visible("input[name=nm]") and not page.is_visible("input[name=sparsity]")
    assert not page.is_visible("select[name=wanda_group]")
    assert page.is_visible("input[name=calibration_batches]")
    page.fill("input[name=name]", "llama sparsegpt 2:4")
    assert page.is_visible("input[name=steps]")  # iterative: several prune steps
    page.select_option("select[name=schedule_kind]", "oneshot")
    assert not page.is_visible("input[name=steps]")  # one step: the field would mean nothing
    page.fill("input[name=epochs]", "0")
    page.click("#run-submit")
    page.wait_for_url(RUN_PAGE, timeout=20_000)
    run_id = RUN_PAGE.match(page.url).group(1)

    run = _wait_finished(browser_page, lab, run_id)
    assert run["status"] == "succeeded", run.get("error")
    assert run["recipe"]["pruning"]["granularity"] == "nm"
    assert run["recipe"]["pruning"]["criterion"] == "sparsegpt"
    assert (run["task"], run["metric"]) == ("language_model", "perplexity")
    base, final = run["baseline"]["perplexity"], run["final"]["perplexity"]
    assert 1.0 < base < final < 256.0

    page.reload()
    page.wait_for_load_state("networkidle")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.chart')).every(d => d.dataset.drawn)",
        timeout=15_000,
    )
    table = page.inner_text("table.metrics")
    assert "perplexity (lower is better)" in table and "next-token accuracy" in table
    rows = {r.split("\t")[0].strip(): r for r in table.splitlines()}
    assert f"{base:.4g}" in rows["baseline"] and f"{final:.4g}" in rows["final"]
    body = page.inner_text("body")
    assert "No epochs yet" not in body
    curve_note = page.evaluate(
        "() => document.getElementById('chart-curve').layout.annotations[0].text"
    )
    assert "No fine-tuning in this run" in curve_note.replace("<br>", " ")
    page.screenshot(path=str(ARTIFACTS / "run-lm.png"), full_page=True)
    assert browser_page.console_errors == [], browser_page.console_errors
    assert browser_page.outside == []
