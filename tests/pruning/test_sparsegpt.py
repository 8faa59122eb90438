"""SparseGPT: exact sparsity and N:M patterns, a smaller output error than magnitude on the same
calibration data, updated weights that a run keeps, and data criteria on exported programs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from app.modelio.pt2 import make_trainable
from app.pruning.criteria.sparsegpt import sparsegpt_update
from app.pruning.data import ArrayDataset
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.pipeline import run_recipe
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec import Recipe
from tests.pruning.conftest import make_mlp


def _correlated(n: int = 256, d: int = 32, seed: int = 0) -> ArrayDataset:
    """Inputs with correlated features and a few large ones (where OBS beats magnitude)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)) @ rng.standard_normal((8, d)) + 0.3 * rng.standard_normal(
        (n, d)
    )
    x[:, :4] *= 5.0
    x = x.astype(np.float32)
    y = (x[:, :4].sum(1) > 0).astype(np.int64)
    return ArrayDataset("corr", x, y, x, y, 2)


def _stack(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 2)
    )


def _recipe(pruning: dict, epochs: int = 0) -> Recipe:
    return Recipe.from_dict(
        {
            "kind": "prune",
            "name": "sparsegpt",
            "pruning": {"criterion": "sparsegpt", "scope": "layerwise", **pruning},
            "finetune": {"epochs": epochs},
        }
    )


def _zeros(w: torch.Tensor) -> float:
    return float((w == 0).float().mean())


def test_sparsegpt_reaches_exactly_the_asked_sparsity_with_updated_weights() -> None:
    model, original, data = _stack(), _stack(), _correlated()
    run_recipe(_recipe({"granularity": "element", "sparsity": 0.5}), model, data, latency=False)
    for i in (0, 2, 4):
        w, w0 = model[i].weight.detach(), original[i].weight.detach()
        assert _zeros(w) == 0.5
        kept = w != 0
        assert not torch.allclose(w[kept], w0[kept])  # updated, not only masked


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_sparsegpt_nm_keeps_n_of_every_m_consecutive_input_features(nm) -> None:
    n, m = nm
    model, data = _stack(), _correlated()
    run_recipe(_recipe({"granularity": "nm", "nm": list(nm)}), model, data, latency=False)
    for i in (0, 2, 4):
        w = model[i].weight.detach()
        nonzero = (w != 0).reshape(w.shape[0], -1, m).sum(-1)
        assert bool((nonzero == n).all()), f"layer {i}: {nonzero.unique().tolist()}"


@pytest.mark.parametrize("criterion", ["l1", "wanda"])
def test_magnitude_and_wanda_nm_on_linear_cut_consecutive_input_features(criterion) -> None:
    model, data = _stack(), _correlated()
    plan = compute_masks(model, PruningSpec("nm", criterion, nm=(2, 4)), data=data)
    for name in ("0", "2", "4"):
        kept = plan.masks[name].reshape(plan.masks[name].shape[0], -1, 4).sum(-1)
        assert bool((kept == 2).all())


@pytest.mark.parametrize("granularity", ["element", "nm"])
def test_sparsegpt_output_error_is_below_magnitude_on_the_calibration_data(granularity) -> None:
    data = _correlated()
    x = data.tensors("train")[0]
    spec = {"granularity": granularity, "sparsity": 0.5 if granularity == "element" else None}
    magnitude, sgpt, original = nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 16)
    for layer in (magnitude, sgpt):
        layer.load_state_dict(original.state_dict())
    plan = compute_masks(magnitude, PruningSpec(criterion="l1", **spec))
    apply_masks(magnitude, plan)
    sgpt_plan = compute_masks(sgpt, PruningSpec(criterion="sparsegpt", **spec), data=data)
    sparsegpt_update(sgpt, sgpt_plan.masks, data, nm=(2, 4) if granularity == "nm" else None)
    assert _zeros(sgpt.weight) == _zeros(magnitude.weight) == 0.5
    target = x @ original.weight.T

    def error(layer: nn.Linear) -> float:
        return float((x @ layer.weight.T - target).norm() / target.norm())

    assert error(sgpt) < 0.7 * error(magnitude)


def test_a_sparsegpt_run_reports_the_error_and_keeps_zeros_through_fine_tuning(vector_data):
    model = make_mlp()
    recipe = _recipe({"granularity": "element", "sparsity": 0.5}, epochs=1)
    result = run_recipe(recipe, model, vector_data, latency=False)
    rows = result.steps[1]["reconstruction"]
    assert {r["layer"] for r in rows} == {"0", "2", "4"}
    assert all(r["error_after"] < r["error_before"] for r in rows)
    assert [n for n in result.notes if "SparseGPT weight update" in n["text"]]
    for i in (0, 2, 4):
        assert _zeros(model[i].weight) == 0.5  # fine-tuning kept the zeros SparseGPT chose


def _exported(kind: str, model: nn.Module, x: torch.Tensor) -> nn.Module:
    if kind == "pt2":
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        return make_trainable(program.module())
    return torch.jit.trace(model, x)


@pytest.mark.parametrize("kind", ["pt2", "torchscript"])
@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("granularity", ["element", "nm"])
def test_data_criteria_prune_exported_programs(kind, criterion, granularity) -> None:
    data = _correlated()
    model = _exported(kind, _stack().eval(), data.tensors("train")[0][:4])
    spec = PruningSpec(granularity, criterion, scope="layerwise", sparsity=0.5)
    plan = compute_masks(model, spec, data=data)
    if criterion == "sparsegpt":
        sparsegpt_update(model, plan.masks, data, nm=(2, 4) if granularity == "nm" else None)
    apply_masks(model, plan)
    layers = dict(model.named_modules())
    assert len(plan.masks) == 3
    for name in plan.masks:
        w = layers[name].weight.detach()
        assert _zeros(w) == pytest.approx(0.5, abs=0.02)
        if granularity == "nm":
            assert bool(((w != 0).reshape(w.shape[0], -1, 4).sum(-1) <= 2).all())


def test_sensitivity_with_sparsegpt_updates_each_layer_and_restores_the_model() -> None:
    from app.pruning.sensitivity import run_sensitivity
    from app.pruning.spec import SensitivitySpec

    model, data = _stack(), _correlated()
    with torch.no_grad():  # labels = the dense model's answers: accuracy measures fidelity
        y = model(data.tensors("train")[0]).argmax(1).numpy()
    data = ArrayDataset("own", data.x_train, y, data.x_train, y, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = {}
    for criterion in ("l1", "sparsegpt"):
        rows, _ = run_sensitivity(
            model,
            data,
            SensitivitySpec(sparsities=(0.75,)),
            pruning=PruningSpec("element", criterion, sparsity=0.5),
        )
        accuracy[criterion] = sum(r["accuracy"] for r in rows if r["sparsity"] == 0.75)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert accuracy["sparsegpt"] > accuracy["l1"]  # summed over the three layers at 75%
