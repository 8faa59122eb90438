"""Training and fine-tuning: accuracy, determinism, masks kept, cancellation, LR schedules."""

from __future__ import annotations

import copy

import pytest
import torch

from app import zoo
from app.modelio.dataset_files import load_digits
from app.pruning.optim import lr_factor
from app.pruning.report import Cancelled
from app.pruning.spec import FinetuneSpec
from app.pruning.train import fine_tune, train

torch.set_num_threads(1)


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return zoo.build("mlp", input_shape=(1, 8, 8))


def test_train_gets_the_digits_mlp_above_90_percent_in_a_few_epochs() -> None:
    model = _mlp()
    curve = train(
        model, load_digits(), FinetuneSpec(epochs=4, lr=0.003, optimizer="adam", batch_size=64)
    )
    assert [p["epoch"] for p in curve] == [1, 2, 3, 4]
    assert curve[-1]["accuracy"] > 0.90
    assert curve[-1]["loss"] < curve[0]["loss"]


def test_training_is_deterministic_on_cpu() -> None:
    spec = FinetuneSpec(epochs=1, lr=0.05, optimizer="sgd", batch_size=64)
    a, b = _mlp(), _mlp()
    ca, cb = train(a, load_digits(), spec, seed=3), train(b, load_digits(), spec, seed=3)
    assert ca == cb
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_learns(optimizer: str) -> None:
    lr = 0.05 if optimizer == "sgd" else 0.003
    curve = train(
        _mlp(), load_digits(), FinetuneSpec(epochs=2, lr=lr, optimizer=optimizer, batch_size=64)
    )
    assert curve[-1]["accuracy"] > 0.6


def test_cosine_lr_decays_to_zero_and_step_divides_by_ten() -> None:
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert [lr_factor("step", i, 100) for i in (0, 60, 80)] == [1.0, 0.1, pytest.approx(0.01)]
    assert lr_factor("constant", 99, 100) == 1.0
    curve = train(
        _mlp(), load_digits(), FinetuneSpec(epochs=3, lr=0.05, optimizer="sgd", batch_size=128)
    )
    assert curve[0]["lr"] > curve[1]["lr"] > curve[2]["lr"]


def test_masked_weights_stay_zero_through_fine_tuning() -> None:
    from app.pruning.masks.keeper import MaskKeeper, apply_masks

    model = _mlp()
    masks = {
        n: torch.rand_like(m.weight) > 0.7
        for n, m in model.named_modules()
        if n in ("fc1", "fc2", "fc3")
    }
    apply_masks(model, masks)
    fine_tune(
        model,
        load_digits(),
        FinetuneSpec(epochs=1, lr=0.05, optimizer="sgd"),
        keeper=MaskKeeper(model, masks),
    )
    for name, mask in masks.items():
        weight = dict(model.named_modules())[name].weight
        assert (weight[~mask] == 0).all()
        assert (weight[mask] != 0).float().mean() > 0.99


def test_should_stop_raises_cancelled_before_the_next_batch() -> None:
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        fine_tune(
            _mlp(), load_digits(), FinetuneSpec(epochs=5, batch_size=16), should_stop=should_stop
        )
    assert len(calls) == 4  # three batches ran, the fourth poll stopped the run


def test_one_metric_event_per_epoch_and_progress_reaches_one() -> None:
    events: list[tuple[str, dict]] = []
    fine_tune(
        _mlp(),
        load_digits(),
        FinetuneSpec(epochs=2),
        report=lambda e, p: events.append((e, p)),
        step=2,
    )
    metrics = [p for e, p in events if e == "metric"]
    assert [(p["epoch"], p["step"]) for p in metrics] == [(1, 2), (2, 2)]
    progress = [p["fraction"] for e, p in events if e == "progress"]
    assert progress[-1] == 1.0 and progress == sorted(progress)


def test_early_stop_restores_the_best_weights() -> None:
    model = _mlp()
    spec = FinetuneSpec(
        epochs=30, lr=2.0, optimizer="sgd", lr_schedule="constant", early_stop_patience=2
    )
    curve = fine_tune(model, load_digits(), spec)
    assert len(curve) < 30
    from app.pruning.measure import evaluate

    best = max(p["accuracy"] for p in curve)
    assert evaluate(model, load_digits())["accuracy"] == pytest.approx(best)


def test_bn_l1_sparsity_training_shrinks_bn_gammas() -> None:
    spec = FinetuneSpec(epochs=2, lr=0.05, optimizer="sgd")
    torch.manual_seed(0)
    plain, slim = zoo.build("cnn_small"), zoo.build("cnn_small")
    slim.load_state_dict(plain.state_dict())
    train(plain, load_digits(), spec)
    train(slim, load_digits(), spec, bn_l1=0.1)

    def gammas(m: torch.nn.Module) -> torch.Tensor:
        return torch.cat(
            [b.weight.abs() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
        )

    assert gammas(slim).sum() < 0.85 * gammas(plain).sum()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_after_an_epoch_continues_exactly_as_the_uninterrupted_run(optimizer: str) -> None:
    spec = FinetuneSpec(epochs=3, lr=0.01, optimizer=optimizer, batch_size=64)
    saved: dict = {}

    def keep_epoch_one(point: dict, state: dict) -> None:
        if point["epoch"] == 1:
            saved.update(state=copy.deepcopy(state), weights=copy.deepcopy(full.state_dict()))

    full = _mlp()
    curve = fine_tune(full, load_digits(), spec, seed=2, on_epoch=keep_epoch_one)
    resumed = _mlp(seed=9)
    resumed.load_state_dict(saved["weights"])
    rest = fine_tune(resumed, load_digits(), spec, seed=2, resume=saved["state"])
    assert saved["state"]["epoch"] == 1
    assert saved["state"]["it"] == -(-load_digits().n_train // 64)  # one epoch of batches
    assert rest == curve[1:]
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
