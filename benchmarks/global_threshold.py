"""Global element-level L1 pruning of a 25.6M-weight ResNet-50-shaped stack: ours vs torch.

Prints, from one run: torch.nn.utils.prune.global_unstructured time, ours
(``compute_masks`` + ``apply_masks``), the speed ratio (target >= 30x), exactness
(same number pruned, identical masks) and the peak extra resident memory of each,
as a multiple of the weights' bytes (target <= 1.5x). Each side runs in a fresh child
process so its RSS peak is its own.

    .venv/bin/python benchmarks/global_threshold.py [--sparsity 0.9] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def resnet50_shapes() -> list[tuple[int, int, int]]:
    """(out, in, k) of every conv of ResNet-50 (+ the 2048->1000 classifier as k=0)."""
    shapes, c_in = [(64, 3, 7)], 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes += [(width, c_in, 1), (width, width, 3), (width * 4, width, 1)]
            if b == 0:
                shapes.append((width * 4, c_in, 1))
            c_in = width * 4
    return [*shapes, (1000, 2048, 0)]


def build() -> nn.Module:
    torch.manual_seed(0)
    layers = nn.ModuleList()
    for o, i, k in resnet50_shapes():
        layer = nn.Linear(i, o, bias=False) if k == 0 else nn.Conv2d(i, o, k, bias=False)
        with torch.no_grad():
            layer.weight.normal_(0.0, (2.0 / (i * max(k, 1) ** 2)) ** 0.5)
        layers.append(layer)
    return layers


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def child(which: str, sparsity: float, out: str) -> None:
    # imports: one-time costs, outside the timing and the memory baseline for both sides
    import torch.nn.utils.prune as tprune

    from app.pruning.masks.compute import compute_masks
    from app.pruning.masks.keeper import apply_masks
    from app.pruning.pruning_spec import PruningSpec

    model = build()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    base = _rss_bytes()
    start = time.perf_counter()
    if which == "torch":
        params = [(m, "weight") for m in model]
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
        masks = {str(i): m.weight_mask.bool() for i, m in enumerate(model)}
    else:
        plan = compute_masks(model, PruningSpec("element", "l1", sparsity=sparsity))
        apply_masks(model, plan)
        masks = plan.masks
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.save(masks, out)
    n_weights = (
        sum(p.numel() for p in model.parameters())
        if which != "torch"
        else sum(m.weight.numel() for m in model)
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "extra_bytes": peak - base,
                "weight_bytes": n_bytes,
                "n_weights": n_weights,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--child", choices=["torch", "ours"])
    parser.add_argument("--out")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs per side")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.sparsity, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        res, masks, runs = {}, {}, {"ours": [], "torch": []}
        for _ in range(args.repeat):  # interleaved: both sides see the same machine load
            for which in ("ours", "torch"):
                out = f"{tmp}/{which}.pt"
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    which,
                    "--sparsity",
                    str(args.sparsity),
                    "--out",
                    out,
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[which].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                masks[which] = torch.load(out, weights_only=True)
        for which, rs in runs.items():  # medians of the times and of the memory peaks
            med = {key: statistics.median(r[key] for r in rs) for key in ("seconds", "extra_bytes")}
            res[which] = {**rs[0], **med}
        print(
            "runs (s): "
            + "; ".join(
                f"{w} " + ", ".join(f"{r['seconds']:.3f}" for r in rs) for w, rs in runs.items()
            )
        )
    pruned = {w: sum(int((~m).sum()) for m in masks[w].values()) for w in masks}
    differ = sum(int((masks["ours"][n] != masks["torch"][n]).sum()) for n in masks["ours"])
    n_w = res["ours"]["n_weights"]
    print(
        f"weights: {n_w / 1e6:.2f}M ({res['ours']['weight_bytes'] / 2**20:.0f} MiB), "
        f"sparsity {args.sparsity}, threads {torch.get_num_threads()}"
    )
    for w in ("torch", "ours"):
        r = res[w]
        print(
            f"{w:>5}: {r['seconds'] * 1000:9.1f} ms   peak extra memory "
            f"{r['extra_bytes'] / 2**20:7.1f} MiB = {r['extra_bytes'] / r['weight_bytes']:.2f}x weights"
        )
    weights = [m.weight.detach().abs() for m in build()]
    diff_vals = {
        float(w[masks["ours"][str(i)] != masks["torch"][str(i)]].max())
        for i, w in enumerate(weights)
        if bool((masks["ours"][str(i)] != masks["torch"][str(i)]).any())
    }
    largest_pruned = max(float(w[~masks["ours"][str(i)]].max()) for i, w in enumerate(weights))
    print(
        f"positions that differ all hold |w| = the cut {largest_pruned:.9g} (a tie torch breaks "
        f"differently): {diff_vals <= {largest_pruned}}"
    )
    ratio = res["torch"]["seconds"] / res["ours"]["seconds"]
    print(f"speed-up: {ratio:.1f}x (target >= 30x; medians of {args.repeat} interleaved runs)")
    print(
        f"pruned: torch {pruned['torch']}, ours {pruned['ours']}, "
        f"same count: {pruned['torch'] == pruned['ours']}, identical masks: {differ == 0} "
        f"({differ} positions differ)"
    )


if __name__ == "__main__":
    main()
