"""Dashboard pages: which template, what context, and what the HTML promises a person."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app import catalogue
from app.models import Run
from tests.browser import seed
from tests.factories import make_user

PAGES = ["/", "/runs", "/runs/new", "/compare", "/models", "/datasets"]


@pytest.fixture
def lab(client: TestClient, db_session: Session, settings) -> dict:
    _, headers = make_user(db_session, "viewer1")
    model = seed.seed_model(db_session)
    art = Path(settings.artifacts)
    a = seed.seed_run(db_session, model=model, name="elem l1", artifacts_dir=art)
    b = seed.seed_run(
        db_session,
        model=model,
        name="kernel l2",
        criterion="l2",
        granularity="kernel",
        artifacts_dir=art,
        final_sparsity=0.6,
    )
    sens = seed.seed_sensitivity(db_session, model=model)
    sweep = seed.seed_sweep(db_session, model=model)
    db_session.commit()
    return {
        "h": headers,
        "model": model.id,
        "a": a.id,
        "b": b.id,
        "sens": sens.id,
        "sweep": sweep.id,
    }


def _figures(html: str) -> dict[str, dict]:
    blocks = re.findall(
        r'<script type="application/json" id="fig-([\w-]+)">(.*?)</script>', html, flags=re.S
    )
    return {name: json.loads(body) for name, body in blocks}


def test_pages_redirect_to_login_without_credentials(client: TestClient) -> None:
    for path in [*PAGES, "/runs/1", "/sweeps/1", "/models/1"]:
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/login?next=")


def test_every_page_renders_without_inline_script(client: TestClient, lab: dict) -> None:
    pages = [
        *PAGES,
        f"/runs/{lab['a']}",
        f"/runs/{lab['sens']}",
        f"/models/{lab['model']}",
        f"/sweeps/{lab['sweep']}",
        f"/compare?runs={lab['a']},{lab['b']}",
    ]
    for path in pages:
        r = client.get(path, headers=lab["h"])
        assert r.status_code == 200, path
        for tag in re.findall(r"<script[^>]*>", r.text):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert "http://" not in r.text.replace("http://localhost", "") or path == "/docs"


def test_overview_plots_finished_runs_and_lists_recent_ones(client: TestClient, lab: dict) -> None:
    r = client.get("/", headers=lab["h"])
    assert r.template.name == "index.html"
    fig = r.context["figure"]
    ids = {i for t in fig["data"] for i in t.get("customdata", [])}
    assert {lab["a"], lab["b"]} <= ids
    assert fig["data"][-1]["name"] == "Pareto front"
    assert any(x["id"] == lab["b"] for x in r.context["recent"])
    assert "kernel l2" in r.text


def test_overview_filters_by_model(client: TestClient, lab: dict) -> None:
    r = client.get("/?model_id=999", headers=lab["h"])
    assert r.context["n_points"] == 0
    assert "No finished prune runs yet" in json.dumps(r.context["figure"])


def test_run_page_context_has_every_chart_and_the_layer_table(
    client: TestClient, lab: dict
) -> None:
    r = client.get(f"/runs/{lab['a']}", headers=lab["h"])
    assert r.template.name == "run.html"
    ctx = r.context
    heat = ctx["figures"]["sparsity"]["data"][0]
    assert heat["type"] == "heatmap" and heat["y"] == ["conv1", "conv2", "fc"]
    assert len(heat["x"]) == 3  # three pruning steps
    assert ctx["figures"]["curve"]["data"][0]["type"] == "scatter"
    assert [row["layer"] for row in ctx["layer_rows"]] == ["conv1", "conv2", "fc"]
    assert ctx["masks_only"] is True
    assert "Masks only: no speed-up expected" in r.text
    assert {a.name for a in ctx["artifacts"]} == {"pruned.safetensors", "recipe.json"}
    assert "✓ reloaded" in r.text
    assert set(_figures(r.text)) >= {
        "sparsity",
        "tradeoff_compression",
        "tradeoff_flops",
        "tradeoff_speedup",
        "curve",
    }
    assert '"criterion": "l1"' in ctx["recipe_json"] and "&#34;criterion&#34;" in r.text


def test_run_chart_endpoints_give_histogram_and_mask(client: TestClient, lab: dict) -> None:
    hist = client.get(f"/runs/{lab['a']}/charts/histogram?layer=conv2", headers=lab["h"]).json()
    assert [t["type"] for t in hist["data"]] == ["bar"] * 3
    assert hist["layout"]["shapes"]  # the threshold lines
    mask = client.get(f"/runs/{lab['b']}/charts/mask?layer=conv2", headers=lab["h"]).json()
    z = mask["data"][0]["z"]
    assert mask["data"][0]["type"] == "heatmap"
    assert (len(z), len(z[0])) == (16 * 3, 8 * 3)  # kernel level: kernel positions as tiles
    assert "40.0% of weights kept" in mask["layout"]["title"]["text"]
    fig = client.get(f"/runs/{lab['a']}/figures.json", headers=lab["h"]).json()
    assert fig["status"] == "succeeded" and "sparsity" in fig["figures"]


def test_mask_of_a_run_without_exports_says_when_it_appears(
    client: TestClient, lab: dict, db_session: Session
) -> None:
    run = db_session.get(Run, lab["a"])
    run.status, run.notes = "running", []
    db_session.add(run)
    db_session.commit()
    run_id = seed.seed_run(db_session, model=seed.seed_model(db_session), status="running").id
    db_session.commit()
    fig = client.get(f"/runs/{run_id}/charts/mask?layer=fc", headers=lab["h"]).json()
    assert fig["data"] == []
    assert "once the run has finished" in fig["layout"]["annotations"][0]["text"].replace(
        "<br>", " "
    )


def test_missing_run_is_404(client: TestClient, lab: dict) -> None:
    r = client.get("/runs/9999", headers=lab["h"])
    assert r.status_code == 404 and "9999" in r.json()["detail"]


def test_missing_run_page_is_an_html_page_for_browsers(client: TestClient, lab: dict) -> None:
    r = client.get("/runs/9999", headers={**lab["h"], "Accept": "text/html,application/xhtml+xml"})
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert "Not found" in r.text and "9999" in r.text and 'href="/runs"' in r.text


def test_sensitivity_run_shows_lines_per_layer_and_an_allocation(
    client: TestClient, lab: dict
) -> None:
    r = client.get(f"/runs/{lab['sens']}", headers=lab["h"])
    fig = r.context["figures"]["sensitivity"]
    assert [t["name"] for t in fig["data"]] == ["conv1", "conv2", "fc"]
    alloc = r.context["allocation"]
    assert alloc["conv1"] > alloc["fc"]  # the robust layer may be pruned harder
    assert "Suggested per-layer sparsity" in r.text


def test_compare_marks_the_best_cell_and_lists_its_runs(client: TestClient, lab: dict) -> None:
    r = client.get(f"/compare?runs={lab['a']},{lab['b']}", headers=lab["h"])
    assert r.template.name == "compare.html"
    assert [x["id"] for x in r.context["runs"]] == [lab["a"], lab["b"]]
    assert r.context["best"]["compression"] == lab["a"]  # 80% sparse beats 60%
    assert r.text.count('class="num best"') >= 3
    bars = r.context["figures"]["layer_sparsity"]["data"]
    assert [t["type"] for t in bars] == ["bar", "bar"]
    assert r.context["layers"] == ["conv1", "conv2", "fc"]
    h = client.get(f"/compare/histogram?runs={lab['a']},{lab['b']}&layer=fc", headers=lab["h"])
    assert len(h.json()["data"]) == 2


def test_compare_shows_each_runs_own_speedup_not_raw_latency_alone(
    client: TestClient, lab: dict, db_session: Session
) -> None:
    """Runs timed at different loads compare by their side-by-side speed-up, and an overlap
    reads as words, never as a number."""
    timed = {"median_ms": 2.0, "iqr_ms": 0.1}
    blocks = {
        lab["a"]: {"batch": 256, "dense": timed, "pruned": timed, "speedup": 2.514, "verdict": ""},
        lab["b"]: {"batch": 256, "speedup": None, "verdict": "no measurable speed-up"},
    }
    for run_id, row in blocks.items():
        run = db_session.get(Run, run_id)
        run.final = {**run.final, "speedup": {"runtime": "pytorch", "rows": [row]}}
        db_session.add(run)
    db_session.commit()
    r = client.get(f"/compare?runs={lab['a']},{lab['b']}", headers=lab["h"])
    labels = [label for _, label, _ in r.context["columns"]]
    assert "speed-up (PyTorch, vs its original)" in labels
    assert "speed-up (ONNX Runtime, vs its original)" not in labels  # no run timed it there
    row_a = r.text.split(f'data-run-id="{lab["a"]}"')[1].split("</tr>")[0]
    row_b = r.text.split(f'data-run-id="{lab["b"]}"')[1].split("</tr>")[0]
    assert "2.51x" in row_a and "no measurable speed-up" in row_b
    assert "measured_speedup" not in r.context["best"]  # one number: no best to mark


@pytest.mark.parametrize("runs", ["1", "1,x", "1,2,3,4,5,6,7"])
def test_compare_refuses_bad_run_lists_with_a_sentence(
    client: TestClient, lab: dict, runs: str
) -> None:
    r = client.get(f"/compare?runs={runs}", headers=lab["h"])
    assert r.status_code == 422
    assert "runs must" in r.context["error"]
    assert r.template.name == "compare_pick.html"


def test_new_run_form_offers_only_valid_pairs(client: TestClient, lab: dict) -> None:
    r = client.get(f"/runs/new?model_id={lab['model']}", headers=lab["h"])
    fs = r.context["form_spec"]
    for criterion, grans in fs["pairs"].items():
        assert set(grans) == set(catalogue.VALID_PAIRS[criterion])
    assert fs["pairs"]["threshold"] == ["element"]
    assert fs["layers"][lab["model"]] == ["conv1", "conv2", "fc"]
    assert f'<option value="{lab["model"]}" selected>' in r.text
    assert 'data-error-for="pruning.sparsity"' in r.text
    assert 'id="sweep-form"' in r.text


def test_runs_list_paginates(client: TestClient, lab: dict, db_session: Session) -> None:
    for i in range(30):
        db_session.add(Run(name=f"bulk {i}", status="queued"))
    db_session.commit()
    first = client.get("/runs", headers=lab["h"])
    assert len(first.context["runs"]) == 25 and first.context["pag"]["pages"] == 2
    second = client.get("/runs?page=2", headers=lab["h"])
    assert second.context["pag"]["page"] == 2 and 'rel="prev"' in second.text
    queued = client.get("/runs?status=queued", headers=lab["h"])
    assert all(x["status"] == "queued" for x in queued.context["runs"])


def test_model_pages_show_layers_and_preflight(client: TestClient, lab: dict) -> None:
    r = client.get("/models", headers=lab["h"])
    assert [m.id for m in r.context["models"]] == [lab["model"]]
    assert 'id="upload-form"' in r.text
    page = client.get(f"/models/{lab['model']}", headers=lab["h"])
    assert page.template.name == "model.html"
    assert "✓ passed" in page.text and "conv2" in page.text
    assert page.context["n_runs"] >= 2


def test_datasets_page_always_lists_digits(client: TestClient, lab: dict) -> None:
    r = client.get("/datasets", headers=lab["h"])
    assert r.context["datasets"][0]["id"] == "digits"


def test_sweep_page_plots_methods_against_random(client: TestClient, lab: dict) -> None:
    r = client.get(f"/sweeps/{lab['sweep']}", headers=lab["h"])
    names = {t["name"] for t in r.context["figures"]["compression"]["data"]}
    assert names == {"l1", "random"}
    assert r.context["n_done"] == 6


def test_empty_lab_pages_tell_the_user_what_to_do(client: TestClient, db_session: Session) -> None:
    _, headers = make_user(db_session, "newbie")
    assert "Start one" in client.get("/runs", headers=headers).text
    assert "No runs yet" in client.get("/", headers=headers).text
    assert "No model to prune yet" in client.get("/runs/new", headers=headers).text
    assert "No models yet" in client.get("/models", headers=headers).text


@pytest.mark.slow
def test_web_pages_do_not_import_torch() -> None:
    code = "import sys, app.web.pages, app.web.page_data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_run_page_shows_validation_and_test_accuracy_side_by_side(
    client: TestClient, lab: dict, db_session: Session
) -> None:
    run = db_session.get(Run, lab["a"])
    run.baseline = {**(run.baseline or {}), "accuracy": 0.95, "val_accuracy": 0.97}
    run.final = {**(run.final or {}), "accuracy": 0.93, "val_accuracy": 0.9612}
    db_session.add(run)
    db_session.commit()
    r = client.get(f"/runs/{lab['a']}", headers=lab["h"])
    keys = r.context["metric_keys"]
    assert keys[keys.index("accuracy") + 1] == "val_accuracy"
    assert ">val accuracy<" in r.text and "96.12%" in r.text and "93.00%" in r.text
    plain = client.get(f"/runs/{lab['b']}", headers=lab["h"])
    assert "val_accuracy" not in plain.context["metric_keys"]


def test_sensitivity_run_page_shows_the_stored_allocation(
    client: TestClient, lab: dict, db_session: Session
) -> None:
    run = db_session.get(Run, lab["sens"])
    run.allocation = {"conv1": 0.8, "conv2": 0.4, "fc": 0.1}
    db_session.add(run)
    db_session.commit()
    r = client.get(f"/runs/{lab['sens']}", headers=lab["h"])
    assert r.context["allocation"] == {"conv1": 0.8, "conv2": 0.4, "fc": 0.1}
    assert '<td>conv2</td><td class="num">40%</td>' in r.text


def test_catalogue_endpoint_lists_every_criterion_and_granularity(
    client: TestClient, member_headers: dict
) -> None:

    assert client.get("/api/catalogue").status_code == 401
    body = client.get("/api/catalogue", headers=member_headers).json()
    assert [c["name"] for c in body["criteria"]] == list(catalogue.CRITERION_NAMES)
    assert [g["name"] for g in body["granularities"]] == list(catalogue.GRANULARITY_NAMES)
    wanda = next(c for c in body["criteria"] if c["name"] == "wanda")
    assert wanda["needs_data"] is True and set(wanda["granularities"]) == {
        "element",
        "nm",
        "channel",
    }
    assert body["max_compare"] == catalogue.MAX_COMPARE
    assert "/api/catalogue" in client.get("/openapi.json", headers=member_headers).json()["paths"]


@pytest.mark.parametrize(("kind", "steps"), [("agp", 5), ("iterative", 3), ("oneshot", 1)])
def test_schedule_preview_equals_the_engine_targets(
    client: TestClient, member_headers: dict, kind: str, steps: int
) -> None:
    from app.pruning.spec import ScheduleSpec
    from app.pruning.targets import schedule_targets

    r = client.get(
        f"/api/schedule/preview?kind={kind}&steps={steps}&sparsity=0.9", headers=member_headers
    )
    assert r.status_code == 200
    assert r.json()["targets"] == schedule_targets(ScheduleSpec(kind=kind, steps=steps), 0.9)


def test_schedule_preview_names_a_bad_kind(client: TestClient, member_headers: dict) -> None:
    r = client.get("/api/schedule/preview?kind=cubic&steps=2&sparsity=0.5", headers=member_headers)
    assert r.status_code == 422 and "schedule.kind" in r.text


def test_run_page_shows_structured_warnings_and_old_sentences(
    client: TestClient, lab: dict, db_session: Session
) -> None:
    run = db_session.get(Run, lab["a"])
    run.notes = [
        "an old plain sentence",
        {"level": "warning", "layer": "fc", "text": "'fc' would have been emptied"},
    ]
    db_session.add(run)
    db_session.commit()
    r = client.get(f"/runs/{lab['a']}", headers=lab["h"])
    assert [n["level"] for n in r.context["notes"]] == ["info", "warning"]
    assert '<li class="warn"><strong>warning</strong>: <code>fc</code>:' in r.text
    assert "an old plain sentence" in r.text
    body = client.get(f"/api/runs/{lab['a']}", headers=lab["h"]).json()
    assert body["notes"][0] == {"level": "info", "layer": None, "text": "an old plain sentence"}
    assert body["notes"][1]["level"] == "warning"


def test_an_export_that_failed_its_check_says_why_beside_it(
    client: TestClient, db_session: Session, lab: dict
) -> None:
    from app import store

    why = "pruned.pt matches the pruned model at the batch of 2 it was exported at but not at 1"
    failed = "onnx export of pruned.onnx failed: UnsupportedOperatorError: aten::diff"
    rows = [
        {"name": "pruned.pt", "kind": "torchscript", "size_bytes": 99, "error": why},
        {"name": "pruned.onnx", "kind": "onnx", "size_bytes": 0, "error": failed},
    ]
    keyed = [{**r, "storage_key": f"runs/{lab['a']}/artifacts/{r['name']}"} for r in rows]
    store.add_artifacts(db_session, run_id=lab["a"], items=keyed)
    db_session.commit()
    listed = client.get(f"/api/runs/{lab['a']}/artifacts", headers=lab["h"]).json()
    errors = {a["name"]: a["error"] for a in listed}
    assert errors["pruned.pt"] == why and errors["pruned.onnx"] == failed
    assert errors["pruned.safetensors"] is None
    page = client.get(f"/runs/{lab['a']}", headers=lab["h"]).text
    row_pt = re.search(r'<tr class="artifact failed">.*?pruned\.pt.*?</tr>', page, flags=re.S)
    assert row_pt is not None and "✗ " + why in row_pt.group(0)
    assert "download>pruned.pt</a>" in row_pt.group(0)  # it runs at its batch: still offered
    row_onnx = re.search(r'<tr class="artifact failed">.*?pruned\.onnx.*?</tr>', page, flags=re.S)
    assert row_onnx is not None and "aten::diff" in row_onnx.group(0)
    assert "artifacts/pruned.onnx" not in row_onnx.group(0)  # no file: no link
