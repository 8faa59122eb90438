"""One-shot (no fine-tuning) magnitude, Wanda and SparseGPT on two byte-level causal LMs, under
the conditions the papers compare them in, held-out perplexity.

Models (transformers' Llama, vocabulary 256 = UTF-8 bytes, trained here, seeded, CPU):

* ``tiny``: 2 layers, hidden 64, trained on generated sentences (the issue-12 toy);
* ``docs``: 4 layers, hidden 128, intermediate 512, trained on real English: the docstrings of
  Python's standard library (about 1.4 MB of text, read from the interpreter's own sources;
  no download), context 128.

Each row prunes a fresh copy through the engine the runs use (``compute_masks``, then
``sparsegpt_update`` for sparsegpt, ``apply_masks``), calibration as a run's default
(``pruning.calibration_batches`` 4 batches of 64 training sequences), then measures the
held-out perplexity (``measure.evaluate``, the last 10% of the text). Methods: magnitude (l1)
with scope ``global`` (the lab's default) and ``layerwise`` (the papers' baseline: each layer at
50%), wanda per output row (published) and per layer, sparsegpt (each layer at its target). By
default ``lm_head`` is excluded as in both papers; ``--head`` keeps it in scope as a run does
unless told otherwise (its output rows are never emptied).

    .venv/bin/python benchmarks/lm_one_shot.py                 # both, about 12 min on a free core
    .venv/bin/python benchmarks/lm_one_shot.py --only tiny --head  # about 2 min

``--cache DIR`` keeps the trained weights, so a second table (``--head``) skips training.
"""

from __future__ import annotations

import argparse
import ast
import copy
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from app.modelio.text_corpus import text_dataset
from app.pruning import measure
from app.pruning.criteria.sparsegpt import sparsegpt_update
from app.pruning.data import ArrayDataset
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.pruning_spec import PruningSpec
from benchmarks.anchor_models import Logits
from benchmarks.one_shot_quality import _sentences as sentences

METHODS = (  # label, criterion, scope, wanda_group
    ("magnitude global", "l1", "global", "row"),
    ("magnitude layerwise", "l1", "layerwise", "row"),
    ("wanda row", "wanda", "layerwise", "row"),
    ("wanda layer", "wanda", "layerwise", "layer"),
    ("sparsegpt", "sparsegpt", "layerwise", "row"),
)
LEVELS = (("50%", "element", 0.5), ("2:4", "nm", None))
EVAL_SEQUENCES = 256


def stdlib_docstrings() -> str:
    """The module, class and function docstrings (over 80 characters) of the standard library."""
    root = (
        Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    )
    docs = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if path.parent.name in ("test", "idlelib", "site-packages"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    docs.append(doc)
    return "\n\n".join(docs)


CONFIGS = {
    "tiny": dict(layers=2, hidden=64, inter=128, heads=4, seq=32, steps=400, batch=32, lr=3e-3),
    "docs": dict(layers=4, hidden=128, inter=512, heads=4, seq=128, steps=800, batch=16, lr=2e-3),
}


def trained(
    name: str, steps: int | None, cache: Path | None = None
) -> tuple[nn.Module, ArrayDataset]:
    """The model ``name`` trained on its corpus (or its weights from ``cache``), and the corpus
    as a run sees it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = CONFIGS[name]
    text = sentences(6000) if name == "tiny" else stdlib_docstrings()
    data = text_dataset(text, name=name, tokenizer="byte", seq_len=c["seq"]).dataset
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=c["hidden"],
        intermediate_size=c["inter"],
        num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"],
        num_key_value_heads=c["heads"],
        max_position_embeddings=c["seq"],
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Logits(LlamaForCausalLM(cfg))
    x, y = data.tensors("train")
    steps = steps or c["steps"]
    saved = cache / f"lm_one_shot_{name}_{steps}.pt" if cache else None
    if saved is not None and saved.exists():
        model.load_state_dict(torch.load(saved, weights_only=True))
    else:
        _train(model, x, y, c, steps)
        if saved is not None:
            torch.save(model.state_dict(), saved)
    n = min(EVAL_SEQUENCES, data.n_test)
    print(
        f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{data.n_train} training sequences of {c['seq']} bytes, {steps} steps of "
        f"{c['batch']}; held-out perplexity on {n} sequences"
    )
    held = ArrayDataset(
        name, data.x_train, data.y_train, data.x_test[:n], data.y_test[:n], data.n_classes
    )
    return model.eval(), held


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, c: dict, steps: int) -> None:
    opt = torch.optim.AdamW(model.parameters(), c["lr"], weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * t / steps))
    )
    g = torch.Generator().manual_seed(0)
    start = time.time()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (c["batch"],), generator=g)
        loss = F.cross_entropy(model(x[idx]).reshape(-1, 256), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    print(f"trained {steps} steps in {time.time() - start:.0f} s, last loss {loss.item():.3f}")


def outlier_ratio(model: nn.Module, data: ArrayDataset) -> float:
    """Median over the pruned Linear layers of max / median input-feature L2 norm: how far the
    loudest input feature stands out (Wanda's premise, Dettmers et al. 2022's outliers)."""
    from app.pruning.criteria.context import ScoreContext
    from app.pruning.criteria.data import _input_norms
    from app.pruning.layers import prunable_layers

    layers = {n: m for n, m in prunable_layers(model).items() if not n.endswith("lm_head")}
    ctx = ScoreContext(model, layers, "element", data, torch.device("cpu"), (2, 4), 0, 4)
    ratios = sorted(float(v.max() / v.median()) for v in _input_norms(ctx).values())
    return ratios[len(ratios) // 2]


def perplexity(model: nn.Module, data: ArrayDataset) -> float:
    return measure.evaluate(model, data)["perplexity"]


def prune(model: nn.Module, data: ArrayDataset, method: tuple, level: tuple, head: bool):
    _, criterion, scope, group = method
    _, granularity, sparsity = level
    exclude = () if head else tuple(n for n, _ in model.named_modules() if n.endswith("lm_head"))
    pruned = copy.deepcopy(model)
    spec = PruningSpec(
        granularity,
        criterion,
        scope=scope,
        sparsity=sparsity,
        exclude=exclude,
        wanda_group=group,
    )
    plan = compute_masks(pruned, spec, data=data)
    if criterion == "sparsegpt":
        sparsegpt_update(pruned, plan.masks, data, nm=spec.nm if granularity == "nm" else None)
    apply_masks(pruned, plan)
    ws = [m.weight for n, m in pruned.named_modules() if n in plan.masks]
    zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
    return pruned, zeros


def table(name: str, steps: int | None, head: bool, cache: Path | None) -> None:
    torch.manual_seed(0)
    model, data = trained(name, steps, cache)
    dense = perplexity(model, data)
    print(
        f"  outlier ratio (median layer, max/median input-feature norm) {outlier_ratio(model, data):.1f}"
    )
    print(f"  lm_head {'pruned (lab default)' if head else 'excluded (as in the papers)'}")
    print(f"  | {name} | dense {dense:.3f} | " + " | ".join(lv[0] for lv in LEVELS) + " |")
    for method in METHODS:
        cells = []
        for level in LEVELS:
            if level[1] == "nm" and method[0] in ("magnitude global", "wanda layer"):
                cells.append("same")  # N:M ignores scope and wanda_group
                continue
            pruned, zeros = prune(model, data, method, level, head)
            cells.append(f"{perplexity(pruned, data):.3f} (zeros {zeros:.2f})")
        print(f"  | {method[0]} | | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, help="training steps (default per model)")
    parser.add_argument("--head", action="store_true", help="prune lm_head too (a run's default)")
    parser.add_argument("--cache", type=Path, help="folder keeping the trained weights")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for model_name in [args.only] if args.only else list(CONFIGS):
        table(model_name, args.steps, args.head, args.cache)
