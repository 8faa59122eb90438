"""Pages of language-model runs: /compare, the run page and the sensitivity run read in
perplexity; a run without fine-tuning says it had none."""

from __future__ import annotations

import math
import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from app import store
from app.models import Run
from app.store import views
from tests.browser import seed
from tests.factories import make_user


def _as_lm(session: Session, run: Run, *, ppl: float, epochs: int = 0) -> Run:
    """A seeded run turned into a language model's: perplexity measured, ``epochs`` set."""
    run.baseline = {**(run.baseline or {}), "perplexity": 2.6}
    run.final = {**(run.final or {}), "perplexity": ppl}
    run.recipe = {**run.recipe, "finetune": {"epochs": epochs, "lr": 0.01}}
    session.add(run)
    return run


def test_compare_and_run_page_of_lm_runs_without_epochs(
    client: TestClient, db_session: Session, settings
) -> None:
    _, h = make_user(db_session, "lm")
    model = seed.seed_model(db_session)
    art = Path(settings.artifacts)
    runs = [seed.seed_run(db_session, model=model, name=f"r{i}", artifacts_dir=art) for i in (0, 1)]
    for run, ppl in zip(runs, (2.9, 3.4), strict=True):
        store.replace_results(
            db_session, run_id=run.id, steps=[], layers=[], histograms=[], curve=[], sensitivity=[]
        )
        _as_lm(db_session, run, ppl=ppl)
    db_session.commit()
    a, b = runs[0].id, runs[1].id
    r = client.get(f"/compare?runs={a},{b}", headers=h)
    assert r.status_code == 200
    assert r.context["columns"][0][0] == "perplexity" and r.context["best"]["perplexity"] == a
    assert ">perplexity (lower is better)<" in r.text and ">next-token accuracy<" in r.text
    curves = r.context["figures"]["curves"]
    assert curves["data"] == [] and "No fine-tuning in these runs" in str(curves["layout"])
    page = client.get(f"/runs/{a}", headers=h)
    assert "No epochs yet" not in page.text
    assert "No fine-tuning in this run" in str(page.context["figures"]["curve"]["layout"])
    listed = client.get("/runs", headers=h).text
    assert "ppl 2.9" in listed and "ppl 3.4" in listed


def test_lm_curve_and_sensitivity_rows_keep_their_perplexity(
    client: TestClient, db_session: Session
) -> None:
    _, h = make_user(db_session, "lm2")
    model = seed.seed_model(db_session)
    run = seed.seed_run(db_session, model=model, name="ft")
    curve = [{"epoch": 1, "step": 1, "loss": 1.1, "accuracy": 0.6, "test_loss": math.log(3.0)}]
    sens = [
        {"layer": "fc", "sparsity": 0.0, "accuracy": 0.7, "perplexity": 2.6},
        {"layer": "fc", "sparsity": 0.5, "accuracy": 0.6, "perplexity": 3.2},
    ]
    store.replace_results(
        db_session, run_id=run.id, steps=[], layers=[], histograms=[], curve=curve, sensitivity=sens
    )
    _as_lm(db_session, run, ppl=3.0, epochs=1)
    db_session.commit()
    assert views.run_curve(db_session, run_id=run.id)[0]["test_loss"] == math.log(3.0)
    assert [r["perplexity"] for r in views.run_sensitivity(db_session, run_id=run.id)] == [2.6, 3.2]
    page = client.get(f"/runs/{run.id}", headers=h)
    fig = page.context["figures"]["curve"]
    assert fig["data"][1]["name"] == "perplexity"
    assert abs(fig["data"][1]["y"][0] - 3.0) < 1e-9
    run.kind = "sensitivity"
    db_session.add(run)
    db_session.commit()
    sens_fig = client.get(f"/runs/{run.id}", headers=h).context["figures"]["sensitivity"]
    assert sens_fig["data"][0]["y"] == [2.6, 3.2]
    assert re.search("perplexity", sens_fig["layout"]["title"]["text"])


def test_new_run_form_greys_out_datasets_that_cannot_feed_the_model(
    client: TestClient, db_session: Session
) -> None:
    _, h = make_user(db_session, "lm3")
    cnn = seed.seed_model(db_session)
    lm = seed.seed_model(db_session, name="tiny llama")
    lm.input_shape, lm.num_classes, lm.input_dtype, lm.source_run_id = [32], 256, "int64", 7
    db_session.add(lm)
    db_session.commit()
    r = client.get(f"/runs/new?model_id={lm.id}", headers=h)
    unfit = r.context["form_spec"]["unfit"]
    assert "shape [32]" in unfit[lm.id]["digits"] and "digits" not in unfit.get(cnn.id, {})
    assert "tiny llama · result of run #7 · token ids" in r.text
    assert 'name="wanda_group"' in r.text and 'name="calibration_batches"' in r.text
