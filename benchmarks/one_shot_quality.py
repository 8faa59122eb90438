"""Post-training (no fine-tuning) quality of magnitude, wanda and sparsegpt at 50%, 2:4 and 70%.

Three tiny models, trained here, seeded: the zoo's MLP and small ViT on digits (test accuracy
and loss), and a tiny Llama (transformers, 2 layers, hidden 64) trained as a character-level
language model on generated sentences (held-out next-character loss and perplexity; every
Linear but ``lm_head`` pruned). Calibration: 4 batches of 64 training samples. Each row is one
criterion on a fresh copy; "zeros" is measured in the pruned weights. About 2 minutes on CPU.

    .venv/bin/python benchmarks/one_shot_quality.py
"""

from __future__ import annotations

import copy
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from app.modelio.dataset_files import load_digits
from app.pruning import measure
from app.pruning.criteria.sparsegpt import sparsegpt_update
from app.pruning.data import ArrayDataset
from app.pruning.masks.compute import compute_masks
from app.pruning.masks.keeper import apply_masks
from app.pruning.pruning_spec import PruningSpec
from app.zoo import build

CRITERIA = ("l1", "wanda", "sparsegpt")
TARGETS = (("element", 0.5, "50%"), ("nm", None, "2:4"), ("element", 0.7, "70%"))


def compare(model: nn.Module, data: ArrayDataset, evaluate, label: str, exclude=()) -> None:
    print(f"\n{label}: dense {evaluate(model)}")
    for granularity, sparsity, name in TARGETS:
        for criterion in CRITERIA:
            pruned = copy.deepcopy(model)
            spec = PruningSpec(
                granularity, criterion, scope="layerwise", sparsity=sparsity, exclude=exclude
            )
            plan = compute_masks(pruned, spec, data=data)
            if criterion == "sparsegpt":
                nm = spec.nm if granularity == "nm" else None
                sparsegpt_update(pruned, plan.masks, data, nm=nm)
            apply_masks(pruned, plan)
            ws = [m.weight for n, m in pruned.named_modules() if n in plan.masks]
            zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
            print(f"  {name:>4} {criterion:<9} {evaluate(pruned)}  (zeros {zeros:.3f})")


def digits() -> None:
    data = load_digits()

    def evaluate(m: nn.Module) -> str:
        out = measure.evaluate(m, data)
        return f"accuracy {out['accuracy']:.4f} loss {out['loss']:.3f}"

    for arch, epochs in (("mlp", 30), ("transformer", 40)):
        torch.manual_seed(0)
        model = build(arch, num_classes=10, input_shape=(1, 8, 8))
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        for epoch in range(epochs):
            model.train()
            for x, y in data.loader("train", 64, shuffle=True, seed=epoch):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        compare(model.eval(), data, evaluate, f"digits {arch}")


class Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.long()).logits


def _sentences(n: int, seed: int = 0) -> str:
    rnd = random.Random(seed)
    subj = ["the cat", "a dog", "my friend", "the old man", "a small bird", "her brother"]
    verb = ["sees", "likes", "finds", "wants", "helps", "calls", "follows"]
    obj = ["the ball", "a red apple", "the green house", "his sister", "a quiet river"]
    adv = ["today", "again", "slowly", "at night", "in the park", "every morning"]
    return "".join(
        f"{rnd.choice(subj)} {rnd.choice(verb)} {rnd.choice(obj)} {rnd.choice(adv)}. "
        for _ in range(n)
    )


def char_lm(steps: int = 400, context: int = 32) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    text = _sentences(6000)
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    seqs = ids[: len(ids) // (context + 1) * (context + 1)].reshape(-1, context + 1)
    cut = int(0.9 * len(seqs))
    train, test = seqs[:cut], seqs[cut:]
    cfg = LlamaConfig(
        vocab_size=len(chars),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = Logits(LlamaForCausalLM(cfg))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    for _ in range(steps):
        b = train[torch.randint(0, len(train), (32,))]
        loss = F.cross_entropy(model(b[:, :-1]).reshape(-1, len(chars)), b[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    def evaluate(m: nn.Module) -> str:
        with torch.no_grad():
            logits = m(test[:, :-1]).reshape(-1, len(chars))
            loss = float(F.cross_entropy(logits, test[:, 1:].reshape(-1)))
        return f"loss {loss:.3f} perplexity {math.exp(loss):.2f}"

    x, y = train[:512, :-1].numpy(), train[:512, -1].numpy()
    data = ArrayDataset("chars", x, y, x, y, len(chars))
    compare(model.eval(), data, evaluate, "tiny Llama char LM", exclude=("model.lm_head",))


if __name__ == "__main__":
    torch.set_num_threads(1)
    digits()
    char_lm()
