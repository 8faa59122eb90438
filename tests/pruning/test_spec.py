"""Recipe dataclasses: JSON round-trip, one-sentence validation errors, torch-free tables."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app.catalogue import CRITERION_NAMES, GRANULARITY_NAMES, SCHEDULE_KINDS, VALID_PAIRS
from app.pruning.criteria import CRITERIA
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import FinetuneSpec, Recipe

API_EXAMPLE = {
    "kind": "prune",
    "name": "lenet 90% global l1",
    "model_id": 3,
    "dataset_id": "digits",
    "pruning": {
        "granularity": "element",
        "criterion": "l1",
        "scope": "global",
        "sparsity": 0.9,
        "nm": [2, 4],
        "exclude": ["fc3"],
        "overrides": {"conv1": 0.3},
        "physical": True,
    },
    "schedule": {"kind": "iterative", "steps": 5, "max_accuracy_drop": 0.01},
    "finetune": {"epochs": 2, "lr": 0.01, "optimizer": "sgd", "batch_size": 128},
    "seed": 0,
}


def test_api_example_round_trips_through_json() -> None:
    recipe = Recipe.from_dict(API_EXAMPLE)
    again = Recipe.from_dict(json.loads(json.dumps(recipe.to_dict())))
    assert again == recipe
    assert recipe.pruning.exclude == ("fc3",) and recipe.pruning.overrides == {"conv1": 0.3}
    assert recipe.schedule.steps == 5 and "model_id" not in recipe.to_dict()


def _with(section: str, **changes) -> dict:
    body = json.loads(json.dumps(API_EXAMPLE))
    body[section].update(changes)
    return body


@pytest.mark.parametrize(
    ("section", "changes", "words"),
    [
        ("pruning", {"granularity": "blocky"}, "pruning.granularity 'blocky'"),
        ("pruning", {"criterion": "magic"}, "pruning.criterion 'magic'"),
        ("schedule", {"kind": "sometimes"}, "schedule.kind 'sometimes'"),
        ("pruning", {"sparsity": 1.0}, "pruning.sparsity must be a number in [0, 1)"),
        ("pruning", {"sparsity": -0.1}, "pruning.sparsity"),
        ("pruning", {"threshold": 0.2}, "exactly one of pruning.sparsity and pruning.threshold"),
        ("pruning", {"sparsity": None}, "exactly one of pruning.sparsity and pruning.threshold"),
        ("pruning", {"granularity": "nm", "nm": [4, 4]}, "pruning.nm must be [N, M]"),
        (
            "pruning",
            {"criterion": "fpgm"},
            "criterion 'fpgm' does not support granularity 'element'",
        ),
        ("pruning", {"round_to": 8}, "pruning.round_to applies to granularities"),
        ("pruning", {"round_to_cap": "layer"}, "pruning.round_to_cap applies to granularities"),
        (
            "pruning",
            {"granularity": "filter", "round_to_cap": "net"},
            "pruning.round_to_cap 'net' is not one of",
        ),
        (
            "pruning",
            {"granularity": "filter", "physical": True, "deploy_runtime": "tensorrt"},
            "pruning.deploy_runtime 'tensorrt' is not one of: pytorch, onnxruntime.",
        ),
        (
            "pruning",
            {"granularity": "filter", "physical": False, "deploy_runtime": "onnxruntime"},
            "pruning.deploy_runtime applies to granularities 'filter' and 'channel' with "
            "pruning.physical true",
        ),
        (
            "pruning",
            {
                "granularity": "filter",
                "physical": True,
                "deploy_runtime": "onnxruntime",
                "sparsity": None,
                "target": {"latency_ms": 2.0},
            },
            "budget is timed in PyTorch",
        ),
        ("pruning", {"wanda_group": "column"}, "pruning.wanda_group 'column' is not one of"),
        ("pruning", {"wanda_group": "layer"}, "pruning.wanda_group applies to criterion 'wanda'"),
        ("pruning", {"colour": "red"}, "unknown key 'colour' in pruning"),
        ("finetune", {"epochs": -1}, "finetune.epochs must be an integer >= 0"),
        ("finetune", {"lr": 0}, 'finetune.lr must be a positive number or "auto", got 0.'),
        (
            "finetune",
            {"lr": "fast"},
            "finetune.lr must be a positive number or \"auto\", got 'fast'.",
        ),
        ("finetune", {"warmup": 1.0}, "finetune.warmup must be a number in [0, 1)"),
        ("finetune", {"distill": {"weight": 1.5}}, "finetune.distill.weight must be a number in"),
        (
            "finetune",
            {"distill": {"temperature": 0}},
            "finetune.distill.temperature must be greater",
        ),
        ("finetune", {"distill": {"alpha": 1}}, "unknown key 'alpha' in finetune.distill"),
        ("finetune", {"distill": 0.5}, "finetune.distill must be a JSON object"),
        ("finetune", {"optimizer": "lion"}, "finetune.optimizer 'lion'"),
        ("schedule", {"steps": 0}, "schedule.steps must be an integer >= 1"),
        ("schedule", {"when": 3}, "unknown key 'when' in schedule"),
    ],
)
def test_bad_recipes_raise_one_sentence_naming_the_field(section, changes, words) -> None:
    with pytest.raises(ValueError) as err:
        Recipe.from_dict(_with(section, **changes))
    message = str(err.value)
    assert words in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_threshold_target_and_nm_need_no_sparsity() -> None:
    spec = PruningSpec("element", "threshold", threshold=0.2)
    spec.check_target()
    PruningSpec("nm", "l1", nm=(1, 3)).check_target()
    with pytest.raises(ValueError, match="criterion 'threshold' needs pruning.threshold"):
        PruningSpec("element", "threshold", sparsity=0.5).check_target()


def test_unknown_top_level_key_is_named() -> None:
    with pytest.raises(ValueError, match="unknown key 'pruner' in the recipe"):
        Recipe.from_dict({**API_EXAMPLE, "pruner": {}})


def test_train_recipe_needs_no_pruning_section() -> None:
    recipe = Recipe.from_dict({"kind": "train", "name": "t", "finetune": {"epochs": 3}})
    assert recipe.pruning.sparsity is None and recipe.finetune.epochs == 3


def test_valid_pairs_agree_with_the_criteria_registry() -> None:
    assert tuple(CRITERIA) == CRITERION_NAMES
    for name, crit in CRITERIA.items():
        assert crit.granularities == VALID_PAIRS[name]
        assert crit.granularities <= set(GRANULARITY_NAMES)
    assert SCHEDULE_KINDS == ("oneshot", "iterative", "agp", "at_init", "retrain")


def test_spec_module_does_not_import_torch() -> None:
    code = "import sys, app.pruning.spec; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_threshold_on_the_layer_level_is_refused_not_dropped() -> None:
    with pytest.raises(ValueError, match="threshold does not apply to granularity 'layer'"):
        PruningSpec.from_dict({"granularity": "layer", "criterion": "l1", "threshold": 0.2})


def test_finetune_defaults_are_adamw_with_warmup_and_an_automatic_lr() -> None:
    spec = Recipe.from_dict({"kind": "prune", "name": "x", **_with("finetune")}).finetune
    default = FinetuneSpec()
    assert (default.optimizer, default.lr, default.warmup) == ("adamw", "auto", 0.05)
    assert spec.lr == 0.01  # a number still works as before


def test_distill_round_trips_and_null_turns_it_off() -> None:
    body = _with("finetune", distill={"weight": 1.0, "temperature": 4})
    recipe = Recipe.from_dict(body)
    assert recipe.finetune.distill is not None and recipe.finetune.distill.temperature == 4
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert Recipe.from_dict(_with("finetune", distill=None)).finetune.distill is None


def test_distill_defaults_to_auto_and_refuses_other_words() -> None:
    assert FinetuneSpec().distill == "auto"
    assert Recipe.from_dict(_with("finetune", distill="auto")).finetune.distill == "auto"
    with pytest.raises(ValueError, match='finetune.distill must be an object .*"auto" or null'):
        Recipe.from_dict(_with("finetune", distill="yes"))
