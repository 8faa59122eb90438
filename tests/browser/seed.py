"""Realistic dashboard rows without the engine: a prune run with steps, layers, histograms,
curve points, artifacts (a real masked ``pruned.safetensors``) and a sensitivity run.

Used by the page tests, the browser tests and ``benchmarks/pages_scale.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlmodel import Session

from app.models import (
    Artifact,
    CurvePoint,
    Histogram,
    LayerStat,
    ModelRecord,
    Run,
    RunStep,
    SensitivityRow,
    Sweep,
)


def layer_shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Conv layers then a linear head, like a small CNN."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(n_layers - 1):
        shapes[f"conv{i + 1}"] = (16, 8 if i else 1, 3, 3)
    shapes["fc"] = (10, 64)
    return shapes


def seed_model(session: Session, *, n_layers: int = 3, name: str = "cnn_small demo") -> ModelRecord:
    shapes = layer_shapes(n_layers)
    layers = [
        {
            "name": k,
            "kind": "Conv2d" if len(s) == 4 else "Linear",
            "shape": list(s),
            "n_params": int(np.prod(s)),
            "prunable": True,
        }
        for k, s in shapes.items()
    ]
    model = ModelRecord(
        name=name,
        format="safetensors",
        arch="cnn_small",
        input_shape=[1, 1, 8, 8],
        num_classes=10,
        n_params=sum(x["n_params"] for x in layers),
        size_bytes=40_000,
        sha256="0" * 64,
        storage_key="models/x.safetensors",
        structured_ok=True,
        layers=layers,
        preflight={
            "ok": True,
            "prunable_fraction": 0.98,
            "groups": [["conv1", "conv2"]],
            "warnings": [],
        },
    )
    session.add(model)
    session.flush()
    return model


def _metrics(acc: float, nonzero: int, total: int, base_nonzero: int, latency: float) -> dict:
    return {
        "accuracy": acc,
        "loss": 2.0 * (1 - acc) + 0.05,
        "sparsity": 1 - nonzero / total,
        "n_params": total,
        "n_nonzero": nonzero,
        "flops": 3.0 * nonzero,
        "size_bytes": 4 * total,
        "sparse_size_bytes": 8 * nonzero,
        "latency_ms": latency,
        "compression": base_nonzero / nonzero,
    }


def seed_run(
    session: Session,
    *,
    model: ModelRecord,
    n_steps: int = 3,
    name: str = "iterative l1",
    criterion: str = "l1",
    granularity: str = "element",
    status: str = "succeeded",
    artifacts_dir: Path | None = None,
    sweep: Sweep | None = None,
    final_sparsity: float = 0.8,
    seed: int = 0,
) -> Run:
    """A prune run with everything the run page draws."""
    rng = np.random.default_rng(seed)
    shapes = {x["name"]: tuple(x["shape"]) for x in model.layers or []}
    total = sum(int(np.prod(s)) for s in shapes.values())
    targets = [1 - (1 - final_sparsity) ** (k / n_steps) for k in range(1, n_steps + 1)]
    run = Run(
        name=name,
        kind="prune",
        status=status,
        progress=1.0 if status == "succeeded" else 0.4,
        model_id=model.id,
        dataset_id="digits",
        sweep_id=sweep.id if sweep else None,
        recipe={
            "kind": "prune",
            "name": name,
            "pruning": {
                "granularity": granularity,
                "criterion": criterion,
                "scope": "global",
                "sparsity": final_sparsity,
            },
            "schedule": {"kind": "iterative", "steps": n_steps},
            "finetune": {"epochs": 2, "lr": 0.01},
        },
        notes=["masks only: no speed-up expected (pruning.physical is false)"],
        physical=False,
        masks_only=True,
    )
    session.add(run)
    session.flush()
    steps = []
    for k, target in enumerate([0.0, *targets]):
        nz = max(1, int(total * (1 - target)))
        acc = 0.97 - 0.05 * target**3 - 0.002 * k * rng.random()
        acc -= 0.3 * target**2 if criterion == "random" else 0.0
        before = _metrics(acc - 0.03 * target, nz, total, total, 0.2)
        after = _metrics(acc, nz, total, total, 0.2 + 0.01 * rng.random())
        steps.append(
            RunStep(
                run_id=run.id,
                step=k,
                target_sparsity=target,
                before_finetune=before,
                after_finetune=after,
            )
        )
        for i, (layer, shape) in enumerate(shapes.items()):
            n = int(np.prod(shape))
            sp = min(0.99, target * (0.6 + 0.8 * i / max(1, len(shapes) - 1)))
            session.add(
                LayerStat(
                    run_id=run.id,
                    step=k,
                    layer=layer,
                    kind="Conv2d" if len(shape) == 4 else "Linear",
                    shape=list(shape),
                    sparsity=sp,
                    requested=target,
                    n_params=n,
                    n_nonzero=int(n * (1 - sp)),
                    threshold=0.02 * k or None,
                    flops=3.0 * n,
                )
            )
        for e in range(2 if k else 0):
            session.add(
                CurvePoint(
                    run_id=run.id,
                    epoch=e,
                    step=k,
                    loss=after["loss"] + 0.1 / (e + 1),
                    accuracy=acc - 0.01 / (e + 1),
                    lr=0.01,
                )
            )
    session.add_all(steps)
    _seed_histograms(session, run, shapes, rng)
    if artifacts_dir is not None and status == "succeeded":
        _seed_artifacts(session, run, shapes, rng, artifacts_dir, final_sparsity)
    run.baseline = steps[0].after_finetune
    run.final = steps[-1].after_finetune if status == "succeeded" else None
    run.last_step = n_steps
    session.add(run)
    session.flush()
    return run


def _seed_histograms(session: Session, run: Run, shapes: dict, rng: np.random.Generator) -> None:
    for layer in shapes:
        edges = np.linspace(-0.5, 0.5, 61)
        w = rng.normal(0, 0.15, 4000)
        for phase, values in (
            ("before", w),
            ("after_prune", w[np.abs(w) > 0.1]),
            ("after_finetune", w[np.abs(w) > 0.1] * 1.1),
        ):
            counts, _ = np.histogram(np.clip(values, -0.5, 0.5), bins=edges)
            session.add(
                Histogram(
                    run_id=run.id,
                    layer=layer,
                    phase=phase,
                    edges=edges.tolist(),
                    counts=counts.tolist(),
                    threshold=0.1 if phase != "before" else None,
                )
            )


def _seed_artifacts(
    session: Session,
    run: Run,
    shapes: dict,
    rng: np.random.Generator,
    artifacts_dir: Path,
    sparsity: float,
) -> None:
    from safetensors.numpy import save_file

    key = f"runs/{run.id}/artifacts/pruned.safetensors"
    path = artifacts_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for layer, shape in shapes.items():
        w = rng.normal(0, 1, shape).astype(np.float32)
        w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0.0
        tensors[f"{layer}.weight"] = w
    save_file(tensors, str(path))
    session.add(
        Artifact(
            run_id=run.id,
            name="pruned.safetensors",
            kind="safetensors",
            size_bytes=path.stat().st_size,
            verified=True,
            max_abs_diff=0.0,
            storage_key=key,
        )
    )
    session.add(
        Artifact(
            run_id=run.id,
            name="recipe.json",
            kind="recipe",
            size_bytes=200,
            verified=True,
            storage_key=f"runs/{run.id}/artifacts/recipe.json",
        )
    )


def seed_sensitivity(session: Session, *, model: ModelRecord) -> Run:
    run = Run(
        name="sensitivity",
        kind="sensitivity",
        status="succeeded",
        progress=1.0,
        model_id=model.id,
        dataset_id="digits",
        baseline={"accuracy": 0.97},
        final={"accuracy": 0.97},
        recipe={"kind": "sensitivity"},
    )
    session.add(run)
    session.flush()
    for i, x in enumerate(model.layers or []):
        for s in (0.25, 0.5, 0.75, 0.9):
            session.add(
                SensitivityRow(
                    run_id=run.id,
                    layer=x["name"],
                    sparsity=s,
                    accuracy=0.97 - (0.02 + 0.05 * i) * s**3,
                )
            )
    session.flush()
    return run


def seed_sweep(session: Session, *, model: ModelRecord, artifacts_dir: Path | None = None) -> Sweep:
    sweep = Sweep(name="l1 vs random", sparsities=[0.5, 0.75, 0.9], criteria=["l1", "random"])
    session.add(sweep)
    session.flush()
    for crit in ("l1", "random"):
        for s in (0.5, 0.75, 0.9):
            seed_run(
                session,
                model=model,
                name=f"{crit} {s}",
                criterion=crit,
                sweep=sweep,
                final_sparsity=s,
                n_steps=1,
            )
    return sweep
