"""Does physical filter pruning buy the speed-up its FLOPs promise? (CPU, batch 256)

Prunes 50% of the filters of ``cnn_small`` and ``resnet20`` by group L1 norm (the coupled
producers of a residual stream are ranked and cut together, kept channels rounded to 8),
removes them with ``app.pruning.structural.physical_prune``, and times dense and pruned models
side by side, interleaved, under ``torch.inference_mode`` with the same inference set-up
(BN folded into the convolutions, channels_last). Prints latencies, FLOPs and

    efficiency = measured speed-up / theoretical FLOPs reduction   (target >= 0.8)

Run: ``.venv/bin/python benchmarks/physical_speedup.py [--threads 1] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch_pruning as tp
from torch import nn
from torch.fx.experimental.optimization import fuse

from app import zoo
from app.pruning.counts import count_flops
from app.pruning.structural.remove import physical_prune

SHAPE = (3, 32, 32)


def group_l1_masks(
    model: nn.Module, x: torch.Tensor, ratio: float, round_to: int
) -> dict[str, torch.Tensor]:
    """Filter masks removing ``ratio`` of every coupled group by the summed L1 of its filters."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
    names = {m: n for n, m in model.named_modules()}
    masks: dict[str, torch.Tensor] = {}
    for group in dg.get_all_groups(root_module_types=(nn.Conv2d,)):
        producers = [
            it
            for it in group
            if isinstance(it.dep.target.module, nn.Conv2d)
            and dg.is_out_channel_pruning_fn(it.dep.handler)
        ]
        n = len(group[0].idxs)
        score = torch.zeros(n)
        for it in producers:
            w = it.dep.target.module.weight.detach()
            score[it.root_idxs] += w[it.idxs].abs().flatten(1).sum(1)
        keep_n = max(round_to, round(n * (1 - ratio) / round_to) * round_to)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[score.argsort(descending=True)[:keep_n]] = True
        for it in producers:
            m = it.dep.target.module
            rows = torch.ones(m.out_channels, dtype=torch.bool)
            rows[it.idxs] = keep[it.root_idxs]
            masks[names[m]] = rows.view(-1, 1, 1, 1).expand_as(m.weight).clone()
    model.eval()
    return masks


def for_inference(model: nn.Module, channels_last: bool) -> nn.Module:
    """Eval mode, BN folded into the preceding conv, optionally NHWC memory format."""
    fused = fuse(model.eval())
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


def interleaved_ms(models: list[nn.Module], x: torch.Tensor, rounds: int) -> list[float]:
    """Median ms per model, alternating models every round so drift hits them alike."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for m in models:
            m(x)
            m(x)
        for _ in range(rounds):
            for i, m in enumerate(models):
                start = time.perf_counter()
                m(x)
                times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]


def run(arch: str, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    dense = zoo.build(arch, input_shape=SHAPE).eval()
    x_small = torch.randn(8, *SHAPE)
    masks = group_l1_masks(dense, x_small, args.ratio, args.round_to)
    with torch.no_grad():
        for name, module in dense.named_modules():
            if name in masks:
                module.weight.mul_(masks[name])
    pruned = physical_prune(dense, masks, x_small, granularity="filter")
    _, f_dense = count_flops(dense, x_small)
    _, f_pruned = count_flops(pruned, x_small)
    reduction = f_dense / f_pruned
    x = torch.randn(args.batch, *SHAPE)
    for channels_last in (False, True):
        xin = x.to(memory_format=torch.channels_last) if channels_last else x
        models = [for_inference(dense, channels_last), for_inference(pruned, channels_last)]
        t_dense, t_pruned = interleaved_ms(models, xin, args.rounds)
        speedup = t_dense / t_pruned
        print(
            f"{arch:10s} channels_last={channels_last!s:5s} batch={args.batch} "
            f"threads={torch.get_num_threads()}  dense {t_dense:8.1f} ms  pruned {t_pruned:8.1f} ms"
            f"  MACs {f_dense / 1e6:7.2f}M -> {f_pruned / 1e6:6.2f}M ({reduction:4.2f}x)"
            f"  speed-up {speedup:4.2f}x  efficiency {speedup / reduction:4.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["cnn_small", "resnet20"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for arch in args.archs:
        run(arch, args)


if __name__ == "__main__":
    main()
