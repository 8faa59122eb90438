"""Quality against the anchors at the same budget: the lab's default recipe vs
``torch.nn.utils.prune`` (element) and Torch-Pruning (filter) on digits.

Models (``anchor_models.py``): the zoo's ``mlp``, ``cnn_small`` and ``resnet20``; a ResNet and a
ViT built from ``transformers`` configs (random init, sized for 8x8 one-channel input, as in
``tests/conformance``); and ``onnx_cnn``, the dense cnn_small exported to ONNX with BatchNorm
folded, which the lab loads through its own intake while the anchors get the equivalent torch
module. Dense models are trained once per seed with a plain Adam loop, the same for both sides.

* element: the lab (global L1, ``iterative`` in ``steps`` steps, or ``oneshot`` for one step)
  vs ``torch.nn.utils.prune.global_unstructured`` L1, the same steps (geometric in the kept
  fraction, as the lab's) and total epochs, over the same layers.
* filter: the lab (L1 filter, physical) vs Torch-Pruning's ``MagnitudePruner`` with L1
  magnitude importance, the model's output layers ignored, same epochs, at the lab's budget:
  the lab's level is the share of weights removed, and Torch-Pruning's (per-layer channel)
  ratio is bisected until it keeps no more non-zero parameters than the lab's result.

The lab's recipe sets only granularity, criterion, sparsity, schedule and epochs: every other
fine-tuning setting is the lab's default of the day. The anchors train with a plain loop
(batches of 64, constant LR) and take the better of SGD (0.01, momentum 0.9) and Adam (1e-3)
on test accuracy. Each row is the median over the seeds of the per-seed numbers.

Targets: element at or above the anchor at every level; MLP 95% (20x) within 1 point of dense
in 40 epochs, 97% (33x) within 3 points; filter 50% within 1 point of dense in 5 epochs on
cnn_small and onnx_cnn; filter at or above Torch-Pruning everywhere.

Run: ``PYTHONPATH=. python benchmarks/quality_vs_anchors.py [--quick] [--only MODEL]
[--seeds 0,1] [--granularity filter] [--pruning '{"scope": "layerwise"}']
[--finetune '{"batch_size": 64}']`` (full: about 35 min
on 2 cores shared at load ~8; ``--quick``: 1 seed, 1 level, fewest epochs, 2-3 min).
``--granularity`` runs one level's comparisons only; ``--pruning`` (``--finetune``) adds pruning
(fine-tuning) fields to the lab's recipe, to measure a variant against the same anchors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from app.modelio.dataset_files import load_digits
from benchmarks.anchor_methods import Job, run_anchor, run_lab
from benchmarks.anchor_models import DENSE_OF, DenseCache, evaluate, folded, through_intake

MODELS = ("mlp", "cnn_small", "resnet20", "hf_resnet", "hf_vit", "onnx_cnn")
ELEMENT_LEVELS = {"mlp": (0.9, 0.95, 0.97)}
CONV_ELEMENT_LEVELS = (0.5, 0.7, 0.9)
FILTER_LEVELS = (0.3, 0.5)
NO_FILTER = ("mlp", "hf_vit")  # a ViT's filters are attention heads: not this anchor's job
# (steps, total epochs): the MLP gets the 40 epochs its targets name
ELEMENT_PLAN = {"mlp": (4, 40)}
CONV_ELEMENT_PLAN = (2, 10)
FILTER_PLAN = (1, 5)
DENSE_DROP = {("mlp", 0.95): 0.01, ("mlp", 0.97): 0.03}
FILTER_DROP = {("cnn_small", 0.5): 0.01, ("onnx_cnn", 0.5): 0.01}


def jobs_for(model: str, quick: bool) -> list[Job]:
    """The comparisons run on one model.

    Example:
        >>> [(j.granularity, j.sparsity) for j in jobs_for("cnn_small", quick=True)]
        [('element', 0.7), ('filter', 0.5)]
    """
    levels = ELEMENT_LEVELS.get(model, CONV_ELEMENT_LEVELS)
    steps, epochs = ELEMENT_PLAN.get(model, CONV_ELEMENT_PLAN)
    fsteps, fepochs = FILTER_PLAN
    flevels = () if model in NO_FILTER else FILTER_LEVELS
    if quick:
        levels, flevels = levels[1:2], flevels[-1:]
        steps, epochs, fepochs = 2, 2, 1
    return [Job("element", s, steps, epochs) for s in levels] + [
        Job("filter", s, fsteps, fepochs) for s in flevels
    ]


def compare(
    name: str,
    cache: DenseCache,
    job: Job,
    seed: int,
    tmp: Path,
    extra: dict | None = None,
    finetune: dict | None = None,
) -> dict:
    """One seed of one comparison: dense, lab and anchor outcomes."""
    data = cache.data
    dense = cache.get(name, seed)
    base = evaluate(dense, data)
    if name in DENSE_OF:  # the user's upload: ONNX through the lab's intake
        folder = Path(tempfile.mkdtemp(dir=tmp))
        module, rebuildable = through_intake(dense, folder)
        start = time.perf_counter()
        lab = run_lab(
            module, data, job, seed, rebuildable=rebuildable, extra=extra, finetune=finetune
        )
        lab_s = time.perf_counter() - start
        anchor = run_anchor(folded(dense), data, job, seed, lab)
    else:
        start = time.perf_counter()
        lab = run_lab(cache.get(name, seed), data, job, seed, extra=extra, finetune=finetune)
        lab_s = time.perf_counter() - start
        anchor = run_anchor(dense, data, job, seed, lab)
    return {"dense": base, "lab": lab, "anchor": anchor, "lab_s": lab_s}


def _target(name: str, job: Job, d_anchor: float, d_dense: float) -> str:
    """The verdicts on the median of the per-seed (paired) deltas, the figures the table shows
    (with more than two seeds a median of differences is not the difference of medians)."""
    checks = [("anchor", d_anchor >= -1e-9)]
    goal = (DENSE_DROP if job.granularity == "element" else FILTER_DROP).get((name, job.sparsity))
    if goal is not None:
        checks.append((f"dense-{goal * 100:.0f}pt", -d_dense <= goal + 1e-9))
    return ", ".join(f">= {what} {'PASS' if ok else 'MISS'}" for what, ok in checks)


def _x(runs: list[dict], attr: str, side: str) -> float:
    return statistics.median(getattr(r[side], attr) for r in runs)


def print_table(rows: dict[tuple[str, str, float], list[dict]], seeds: list[int]) -> None:
    """The medians over seeds as a Markdown table (accuracies in %, deltas in points)."""
    med = statistics.median
    print(f"\nmedian of seeds {seeds}; accuracy in %, deltas in points; x = reduction vs dense")
    print(
        "| model | method | level | steps x epochs | dense | lab | anchor (opt) "
        "| lab - anchor | lab - dense | MACs x lab / anchor | params x lab / anchor | target |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, gran, level), runs in rows.items():
        job: Job = runs[0]["job"]
        dense = med(r["dense"] for r in runs)
        lab = med(r["lab"].accuracy for r in runs)
        anchor = med(r["anchor"].accuracy for r in runs)
        d_anchor = med(r["lab"].accuracy - r["anchor"].accuracy for r in runs)
        d_dense = med(r["lab"].accuracy - r["dense"] for r in runs)
        opts = "/".join(sorted({r["anchor"].how for r in runs}))
        method = "element: torch.prune" if gran == "element" else "filter: Torch-Pruning"
        how = runs[0]["lab"].how

        print(
            f"| {name} | {method} | {level:.0%} | {job.steps} x {job.per_step} | "
            f"{dense * 100:.1f} | {lab * 100:.1f} | {anchor * 100:.1f} ({opts}) | "
            f"{d_anchor * 100:+.1f} | {d_dense * 100:+.1f} | "
            f"{_x(runs, 'macs_x', 'lab'):.2f} / {_x(runs, 'macs_x', 'anchor'):.2f} | "
            f"{_x(runs, 'params_x', 'lab'):.1f} / {_x(runs, 'params_x', 'anchor'):.1f} ({how}) | "
            f"{_target(name, job, d_anchor, d_dense)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (medians shown)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 level, fewest epochs")
    parser.add_argument("--only", choices=MODELS, action="append", help="a model (repeatable)")
    parser.add_argument("--granularity", choices=("element", "filter"), help="one level only")
    parser.add_argument("--pruning", default="{}", help="extra pruning fields (JSON) for the lab")
    parser.add_argument("--finetune", default="{}", help="extra finetune fields (JSON), the same")
    parser.add_argument(
        "--levels", help="comma-separated levels to run (e.g. 0.5,0.9); all if unset"
    )
    args = parser.parse_args()
    extra, finetune = json.loads(args.pruning), json.loads(args.finetune)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",")][: 1 if args.quick else None]
    levels = None if args.levels is None else {float(v) for v in args.levels.split(",")}
    models = args.only or list(MODELS)
    data = load_digits()
    start = time.perf_counter()
    rows: dict[tuple[str, str, float], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = DenseCache(Path(tmp), data, 0.3 if args.quick else 1.0)
        for seed in seeds:
            for name in models:
                for job in jobs_for(name, args.quick):
                    if args.granularity not in (None, job.granularity):
                        continue
                    if levels is not None and not any(abs(job.sparsity - v) < 1e-9 for v in levels):
                        continue
                    r = compare(name, cache, job, seed, Path(tmp), extra, finetune)
                    rows.setdefault((name, job.granularity, job.sparsity), []).append(
                        {**r, "job": job}
                    )
                    lab, anchor = r["lab"], r["anchor"]
                    print(
                        f"  seed {seed} {name} {job.granularity} {job.sparsity:.0%}: dense "
                        f"{r['dense']:.4f} lab {lab.accuracy:.4f} anchor {anchor.accuracy:.4f} "
                        f"({anchor.how}) [lab {r['lab_s']:.0f} s; {time.perf_counter() - start:.0f} s]",
                        flush=True,
                    )
    print_table(rows, seeds)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
