"""Does physical filter pruning buy the speed-up its FLOPs promise, in PyTorch and ONNX Runtime?

Prunes 50% of the filters of ``cnn_small``, ``resnet20``, ``vgg11_bn``, a MobileNetV2-like
net (built here) and two conformance architectures, the transformers library's ResNet and
MobileNetV2 built from their configs (``hf_resnet``, ``hf_mobilenetv2``) by group L1 norm (the coupled producers of a residual stream are ranked and
cut together, kept channels rounded to 8), removes them with
``app.pruning.structural.physical_prune``, and times dense and pruned models interleaved
(``app.pruning.latency``: warm-up, fixed threads, median and IQR) with the same inference
set-up: PyTorch with BN folded (contiguous and channels_last), and ONNX Runtime on the
exported files (``app.modelio.ort_latency``). Prints latencies, MACs and

    efficiency = measured speed-up / MAC reduction   (targets: >= 0.8 PyTorch, >= 0.7 ORT)

with "n/m" (no measurable speed-up) when the IQRs overlap.

With ``--profile``, ONNX Runtime's profiler then gives each optimised node's time in both
models: on narrow nets the first convolution (3 input channels: its cost is reading the
input and writing the output, which pruning halves, not quarters), MaxPool (linear in the
channels) and convolutions left with one NCHWc block of 8 channels (slower per MAC) keep
the speed-up under the MAC reduction.

``--round-to 4 default ort 16`` prunes each model once per multiple and prints the rows side by
side: ``ort`` is the default of a run shaped for ONNX Runtime (``pruning.deploy_runtime``
"onnxruntime": ONNX Runtime's own measured multiple on every layer, uncapped); ``default`` is
the lab's default on this machine (``shapes.cached_round_to``: the
smallest multiple PyTorch and ONNX Runtime both run within 3% of their best, measured here,
capped per layer or coupled group at a quarter of its width, ``round_to_cap`` "layer"); a
number is one multiple for every layer. ``--selection global`` takes the masks from the
lab's own selection (global L1 ranking, as a run makes them) instead of cutting every group
by ``--ratio``; ``--widths-only`` prints the kept widths and parameter cut without timing; ``--quick`` times
PyTorch at the large batch only (contiguous).
``--clock cpu`` times the PyTorch rows in the timing thread's CPU time (with one thread:
time other processes, or the hypervisor, take from the core is left out; on this shared VM
the same models' wall-clock medians moved 1.7x within an hour).
``--repeat N`` times the dense model N times over (separate measurements) and prints how far
apart the medians are.

Run: ``nice .venv/bin/python benchmarks/physical_speedup.py [--threads 1] [--budget-s 3]
[--round-to 4 default 16/layer 16] [--selection global] [--quick] [--profile] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn
from torch.fx.experimental.optimization import fuse

from app import zoo
from app.modelio.ort_channels import runtime_timers
from app.modelio.ort_latency import export_onnx, time_onnx_pair
from app.pruning.counts import count_flops
from app.pruning.latency import Timing, speedup, time_models
from app.pruning.masks.compute import compute_masks
from app.pruning.pruning_spec import PruningSpec, layer_multiple
from app.pruning.shapes import cached_round_to, per_runtime
from app.pruning.structural.remove import physical_prune

SHAPE = (3, 32, 32)
HF_ARCHS = ("hf_resnet", "hf_mobilenetv2")  # transformers' ResNet and MobileNetV2 (configs)


def group_l1_masks(
    model: nn.Module, x: torch.Tensor, ratio: float, round_to: int, per_layer: bool = False
) -> dict[str, torch.Tensor]:
    """Filter masks removing ``ratio`` of every coupled group by the summed L1 of its filters
    (``per_layer``: ``round_to`` capped for each group's width, as the lab's default)."""
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
        r = layer_multiple(round_to, n) if per_layer else round_to
        keep_n = max(r, round(n * (1 - ratio) / r) * r)
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
    """Eval mode, BN folded into the preceding conv (when torch.fx can trace the model: the
    transformers models' control flow it cannot, so theirs stay unfolded in PyTorch, for the
    dense and the pruned model alike; ONNX Runtime folds them), optionally NHWC."""
    try:
        fused = fuse(model.eval())
    except Exception:  # noqa: BLE001 - torch.fx TraceError and friends
        fused = model.eval()
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (residual when shapes match)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


def mobilenet_v2_like(num_classes: int = 10) -> nn.Module:
    """A CIFAR-sized MobileNetV2 (width 1.0, fewer repeats)."""
    cfg = [(16, 1, 1), (24, 2, 1), (32, 2, 2), (64, 2, 2), (96, 1, 1), (160, 2, 2)]
    layers: list[nn.Module] = [
        nn.Conv2d(3, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU6(),
    ]
    c = 32
    for c_out, n, stride in cfg:
        for i in range(n):
            layers.append(
                InvertedResidual(c, c_out, stride if i == 0 else 1, 1 if c_out == 16 else 6)
            )
            c = c_out
    layers += [nn.Conv2d(c, 640, 1, bias=False), nn.BatchNorm2d(640), nn.ReLU6()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(640, num_classes)]
    return nn.Sequential(*layers)


def _hf(arch: str) -> nn.Module:
    """A conformance architecture: the transformers library's own model, built from its config
    for 3x32x32 inputs and 10 classes (random weights: speed does not depend on them)."""
    from transformers import (
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
    )

    from benchmarks.anchor_models import Logits

    if arch == "hf_resnet":
        cfg = ResNetConfig(
            num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[2, 2, 2]
        )
        return Logits(ResNetForImageClassification(cfg))
    cfg = MobileNetV2Config(num_channels=3, image_size=32, depth_multiplier=0.5)
    return Logits(MobileNetV2ForImageClassification(cfg))


def build(arch: str) -> nn.Module:
    if arch == "mobilenetv2":
        return mobilenet_v2_like()
    if arch in HF_ARCHS:
        return _hf(arch)
    return zoo.build(arch, input_shape=SHAPE)


def verdict(dense: Timing, pruned: Timing, reduction: float) -> str:
    ratio = speedup(dense, pruned)
    if ratio is None:
        medians = dense.median_ms / pruned.median_ms
        return f"speed-up n/m (IQRs overlap; medians {medians:4.2f}x, {medians / reduction:4.2f})"
    return f"speed-up {ratio:4.2f}x  efficiency {ratio / reduction:4.2f}"


def as_timing(stored: dict) -> Timing:
    return Timing(**{k: v for k, v in stored.items() if k != "iqr_ms"})


def fmt(t: Timing) -> str:
    ci = f" CI±{t.ci_rel:.0%}" if t.ci_rel is not None else ""
    return f"{t.median_ms:8.2f} ms (IQR {t.iqr_ms:5.2f}{ci})"


def _profiled(path: Path, threads: int):  # noqa: ANN202 - onnxruntime has no stubs
    import onnxruntime as ort

    from app.modelio.ort_latency import SPINNING

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry(SPINNING, "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def node_times(
    paths: tuple[Path, Path], x: torch.Tensor, threads: int, runs: int = 9
) -> list[dict[str, float]]:
    """Median milliseconds of each optimised node, both models run in turn (ONNX Runtime's
    profiler, the deployed session options; the first run is a warm-up)."""
    sessions = [_profiled(p, threads) for p in paths]
    for _ in range(runs + 1):
        for sess in sessions:
            sess.run(None, {"input": x.numpy()})
    out = []
    for sess in sessions:
        per_node: dict[str, list[float]] = {}
        for e in json.loads(Path(sess.end_profiling()).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                key = e["name"].removesuffix("_kernel_time")
                per_node.setdefault(key, []).append(e["dur"] / 1000)
        out.append({k: statistics.median(v[1:] or v) for k, v in per_node.items()})
    return out


def print_profile(arch: str, paths: tuple[Path, Path], x: torch.Tensor, threads: int) -> None:
    """Where each model's time goes, node by node, and each node's speed-up."""
    dense, pruned = node_times(paths, x, threads)
    nodes = sorted(set(dense) | set(pruned), key=lambda n: -max(dense.get(n, 0), pruned.get(n, 0)))
    for node in nodes[:10]:
        d_ms, p_ms = dense.get(node, float("nan")), pruned.get(node, float("nan"))
        print(f"{arch:11s}   {node[-48:]:48s} dense {d_ms:8.2f} ms pruned {p_ms:8.2f} ms")
    print(
        f"{arch:11s}   all nodes: dense {sum(dense.values()):.2f} ms pruned {sum(pruned.values()):.2f} ms"
    )


def resolve_round_to(value: str, cache: Path) -> tuple[int, bool, str]:
    """``(multiple, per layer, label)``: an explicit multiple (``16``: one for every layer;
    ``16/layer``: capped per layer), ``default``: the lab's default on this machine (the
    measured multiple, capped per layer), or ``ort``: the default of a run with
    ``pruning.deploy_runtime`` "onnxruntime" (ONNX Runtime's measured multiple, uncapped)."""
    if value.endswith("/layer"):
        return int(value.removesuffix("/layer")), True, value
    if value == "ort":  # pruning.deploy_runtime "onnxruntime": ORT's multiple, every layer
        multiple = per_runtime(cached_round_to(cache, timers=runtime_timers())[1])["onnxruntime"]
        return multiple, False, f"deploy_runtime onnxruntime = {multiple} on every layer"
    if value != "default":
        return int(value), False, value
    measured, table = cached_round_to(cache, timers=runtime_timers())
    return measured, True, f"default={measured} per layer (measured {per_runtime(table)})"


def lab_masks(
    model: nn.Module, x: torch.Tensor, ratio: float, round_to: int, per_layer: bool
) -> dict[str, torch.Tensor]:
    """The lab's own selection, as a run makes it: L1 filters, global ranking over layers and
    coupled groups (mean-normalised, at most 90% of one), then rounding."""
    spec = PruningSpec(
        "filter",
        "l1",
        sparsity=ratio,
        physical=True,
        round_to=round_to,
        round_to_cap="layer" if per_layer else "none",
    )
    plan = compute_masks(model, spec, example=x)
    model.eval()
    total = sum(m.numel() for m in plan.masks.values())
    removed = sum(m.numel() - int(m.sum()) for m in plan.masks.values())
    print(f"selection removed {removed / total:.1%} of the ranked layers' weights for {ratio:.0%}")
    return {n: m for n, m in plan.masks.items() if not bool(m.all())}


def repeat_medians(arch: str, n: int, budget_s: float) -> None:
    """The dense model at batch 256 timed ``n`` times over: how far apart the medians are."""
    model = for_inference(build(arch).eval(), False)
    x = torch.randn(256, *SHAPE)
    timings = [time_models([model], x, budget_s=budget_s)[0] for _ in range(n)]
    medians = [t.median_ms for t in timings]
    spread = max(medians) / min(medians) - 1
    each = ", ".join(fmt(t).strip() + f" x{t.repeats}" for t in timings)
    print(
        f"{arch:11s} repeat x{n}: medians {spread:.1%} apart (max/min - 1; target < 10%): {each}",
        flush=True,
    )


def run(arch: str, args: argparse.Namespace, round_to: int, per_layer: bool, label: str) -> None:
    torch.manual_seed(0)
    dense = build(arch).eval()
    x_small = torch.randn(8, *SHAPE)
    select = lab_masks if args.selection == "global" else group_l1_masks
    masks = select(dense, x_small, args.ratio, round_to, per_layer)
    with torch.no_grad():
        for name, module in dense.named_modules():
            if name in masks:
                module.weight.mul_(masks[name])
    pruned = physical_prune(dense, masks, x_small, granularity="filter")
    _, f_dense = count_flops(dense, x_small)
    _, f_pruned = count_flops(pruned, x_small)
    reduction = f_dense / f_pruned
    x = torch.randn(args.batch, *SHAPE)
    head = f"{arch:11s} r={round_to:<2d} batch={args.batch} threads={torch.get_num_threads()}"
    macs = f"MACs {f_dense / 1e6:7.2f}M -> {f_pruned / 1e6:6.2f}M ({reduction:4.2f}x)"
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    cut = 1 - sum(p.numel() for p in pruned.parameters()) / sum(
        p.numel() for p in dense.parameters()
    )
    print(
        f"{arch:11s} round_to {label} ({args.selection}): conv widths {widths}, "
        f"parameters -{cut:.1%}, MACs {reduction:.2f}x fewer",
        flush=True,
    )
    if args.widths_only:
        return
    rows = ((1, False), (args.batch, False), (args.batch, True))
    for batch, channels_last in rows[1:2] if args.quick else rows:
        xin = x[:batch].to(memory_format=torch.channels_last) if channels_last else x[:batch]
        models = [for_inference(dense, channels_last), for_inference(pruned, channels_last)]
        t_dense, t_pruned = time_models(
            models, xin, budget_s=args.budget_s, cpu=args.clock == "cpu"
        )
        print(
            f"{head.replace(f'batch={args.batch}', f'batch={batch}')} pytorch/{args.clock} "
            f"cl={channels_last!s:5s} dense {fmt(t_dense)} pruned {fmt(t_pruned)}"
            f"  {macs}  {verdict(t_dense, t_pruned, reduction)}",
            flush=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        p_dense = export_onnx(for_inference(dense, False), x_small, Path(tmp) / "d.onnx")
        p_pruned = export_onnx(for_inference(pruned, False), x_small, Path(tmp) / "p.onnx")
        out = time_onnx_pair(
            p_dense, p_pruned, x[:1].numpy(), large_batch=args.batch, budget_s=args.budget_s
        )
        if args.profile:
            print_profile(arch, (p_dense, p_pruned), x, torch.get_num_threads())
    for row in out["rows"]:
        t_dense, t_pruned = (as_timing(row[w]) for w in ("dense", "pruned"))
        print(
            f"{arch:11s} r={round_to:<2d} batch={row['batch']} threads={out['threads']} "
            "onnxruntime       "
            f"dense {fmt(t_dense)} pruned {fmt(t_pruned)}  {macs}  "
            f"{verdict(t_dense, t_pruned, reduction)}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs",
        nargs="+",
        default=["cnn_small", "resnet20", "vgg11_bn", "mobilenetv2", *HF_ARCHS],
    )
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument(
        "--round-to", nargs="+", default=["8"], help="multiples to compare, 'default' or 'ort'"
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=3.0, help="timing seconds per pair")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="ORT time per node, both models")
    parser.add_argument("--repeat", type=int, default=0, help="time the dense model N times")
    parser.add_argument(
        "--selection",
        choices=("uniform", "global"),
        default="uniform",
        help="uniform: every coupled group loses --ratio (group L1); global: the lab's ranking",
    )
    parser.add_argument("--quick", action="store_true", help="PyTorch: the large batch only")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="PyTorch rows: wall time, or the timing thread's CPU time (one thread: what other "
        "processes and the hypervisor take from the core is not counted)",
    )
    parser.add_argument("--widths-only", action="store_true", help="print widths, time nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache:
        for arch in args.archs:
            if args.repeat:
                repeat_medians(arch, args.repeat, args.budget_s)
                continue
            for value in args.round_to:
                run(arch, args, *resolve_round_to(value, Path(cache)))


if __name__ == "__main__":
    main()
