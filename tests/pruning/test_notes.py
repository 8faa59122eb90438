"""Every warning reaches the run as a structured note (issue 11, items 2 and 12)."""

from __future__ import annotations

from app.modelio.dataset_files import load_digits
from app.pruning.pipeline import run_recipe
from app.pruning.spec import Recipe
from tests.pruning.test_pipeline import trained


def _run(pruning: dict, epochs: int = 0) -> list[dict]:
    recipe = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "notes",
            "finetune": {"epochs": epochs},
            "pruning": {"criterion": "l1", **pruning},
        }
    )
    model, data = trained("mlp"), load_digits()
    result = run_recipe(recipe, model, data, latency=False)
    assert result.baseline["accuracy"] > 0.8
    return result.notes


def _warnings(notes: list[dict]) -> list[dict]:
    assert all(set(n) == {"level", "layer", "text"} for n in notes), notes
    return [n for n in notes if n["level"] == "warning"]


def test_the_threshold_example_says_it_emptied_layers_and_suggests_what_to_do() -> None:
    notes = _run({"granularity": "element", "criterion": "threshold", "threshold": 0.9})
    emptied = [n for n in _warnings(notes) if "would have been emptied" in n["text"]]
    assert {n["layer"] for n in emptied} >= {"fc1", "fc2"}
    assert all("pruning.overrides" in n["text"] for n in emptied)
    chance = [n for n in _warnings(notes) if "chance level" in n["text"]]
    assert chance and "threshold 0.9" in chance[0]["text"]


def test_a_result_far_from_the_asked_sparsity_carries_a_warning() -> None:
    notes = _run({"granularity": "filter", "sparsity": 0.5, "scope": "layerwise", "round_to": 16})
    far = [n for n in _warnings(notes) if "far from" in n["text"]]
    assert far, notes
    assert any(n["text"].startswith("requested -> achieved") for n in notes)


def test_plan_notes_reach_the_run() -> None:
    notes = _run({"granularity": "filter", "sparsity": 0.5, "round_to": 4})
    texts = [n["text"] for n in notes]
    assert any("a multiple of pruning.round_to 4" in t for t in texts), texts
    assert any("left dense: its outputs are the model's outputs" in t for t in texts), texts
