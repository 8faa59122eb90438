"""Layers whose weight is also another module's: a language model's output head tied to its
input embedding (GPT-2, OPT, small Llama/Qwen configs with ``tie_word_embeddings``).

Masking such a layer zeroes the shared tensor, so it would prune the token embedding too, which
neither Wanda (Sun et al. 2023) nor SparseGPT (Frantar & Alistarh 2023) does: both leave the
embedding and the head dense. :func:`untie_scope` leaves these layers out of a step (with a
note) unless ``pruning.overrides`` gives them their own sparsity.

Example:
    >>> from torch import nn
    >>> class LM(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed, self.mlp, self.head = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10)
    ...         self.head.weight = self.embed.weight
    >>> lm = LM()
    >>> tied_weights(lm, {"mlp": lm.mlp, "head": lm.head})
    {'head': ['embed.weight']}
"""

from __future__ import annotations

from torch import nn

from app.pruning.notes import Note, info
from app.pruning.pruning_spec import PruningSpec


def tied_weights(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, list[str]]:
    """Layer -> the names its weight also has outside ``layers`` (empty layers left out)."""
    names: dict[int, list[str]] = {}
    tensors = [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]
    for name, t in tensors:
        if t.numel() and t.device.type != "meta":
            names.setdefault(t.data_ptr(), []).append(name)
    modules = dict(model.named_modules(remove_duplicate=False))
    found = {}
    for n, m in layers.items():
        weight = m.weight
        if not weight.numel() or weight.device.type == "meta":
            continue
        others = [  # another path to the same module (an alias) is not a tie
            o
            for o in names.get(weight.data_ptr(), [])
            if o.rpartition(".")[0] not in layers and modules.get(o.rpartition(".")[0]) is not m
        ]
        if others:
            found[n] = others
    return found


def untie_scope(
    model: nn.Module, spec: PruningSpec, targets: dict[str, nn.Module]
) -> tuple[dict[str, nn.Module], list[Note]]:
    """``targets`` without the layers tied to a non-prunable module's weight (unless
    ``pruning.overrides`` names them), and a note per layer left out."""
    tied = {n: o for n, o in tied_weights(model, targets).items() if n not in spec.overrides}
    notes = [
        info(
            f"'{n}' left dense: its weight is also '{others[0]}' (tied), which pruning it "
            "would cut too; Wanda and SparseGPT leave embeddings and the output head dense. "
            "Give it its own sparsity in pruning.overrides to prune both",
            layer=n,
        )
        for n, others in tied.items()
    ]
    return {n: m for n, m in targets.items() if n not in tied}, notes
