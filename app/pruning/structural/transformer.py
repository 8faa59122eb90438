"""Transformer blocks: attention heads and MLP neurons, found and removed physically.

Linear-based blocks are recognised by their layer names (``transformers``' BERT/ViT
``query/key/value`` + ``attention.output.dense`` and ``intermediate.dense`` +
``output.dense``; Llama's ``q/k/v/o_proj`` and ``gate/up/down_proj``; the zoo's ``q/k/v/proj``
and ``fc1/fc2``). Only the *inner* dimensions are cut: whole heads (q/k/v output rows and the
output projection's input columns) and MLP neurons (up/gate rows and down columns). The
residual stream (the hidden size), LayerNorm/RMSNorm and embeddings are never touched.

With grouped-query attention (fewer key/value heads than query heads) one unit is a whole
KV group: a key/value head with the query heads that share it.

Example:
    >>> from app import zoo
    >>> model = zoo.build("transformer")
    >>> [(a.q, a.groups, a.head_dim) for a in attention_layers(model)][:1]
    [('blocks.0.attn.q', 4, 8)]
    >>> small = remove_heads(model, {"blocks.0.attn.q": [0, 1]})
    >>> small.blocks[0].attn.q.out_features, small(torch.randn(2, 1, 8, 8)).shape
    (16, torch.Size([2, 10]))
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

# (q, k, v, output projection) names inside an attention module, and where o lives.
_ATTN_STYLES = (
    (("q_proj", "k_proj", "v_proj", "o_proj"), ""),
    (("q", "k", "v", "proj"), ""),
    (("query", "key", "value", "dense"), "..output"),  # BERT/ViT: o is <parent>.output.dense
)
_HEAD_COUNTS = ("num_heads", "num_attention_heads", "heads", "n_heads")
_KV_COUNTS = ("num_key_value_heads", "num_kv_heads")
_WIDTHS = ("all_head_size", "inner_dim")


@dataclass(frozen=True)
class Attention:
    """One attention module: its layer names and head layout (``groups`` units of
    ``per_group`` query heads each, one key/value head per group)."""

    module: str
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    groups: int
    per_group: int

    @property
    def layers(self) -> tuple[str, str, str, str]:
        return (self.q, self.k, self.v, self.o)

    def rows(self, group: int, layer: str) -> torch.Tensor:
        """Output rows of ``layer`` (q, k or v) — or input columns of o — of one KV group."""
        size = self.head_dim * (1 if layer in (self.k, self.v) else self.per_group)
        return torch.arange(group * size, (group + 1) * size)


@dataclass(frozen=True)
class Mlp:
    """One MLP: the producers of its hidden neurons (up, and gate when gated) and the consumer."""

    producers: tuple[str, ...]
    down: str


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _head_dim(module: nn.Module, q: nn.Linear, k: nn.Linear) -> int | None:
    for attr in ("head_dim", "attention_head_size"):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    heads = next((getattr(module, a) for a in _HEAD_COUNTS if hasattr(module, a)), None)
    return q.out_features // heads if isinstance(heads, int) and heads > 0 else None


def attention_layers(model: nn.Module) -> list[Attention]:
    """Every attention module with separate q/k/v/output Linear layers, in model order."""
    modules = dict(model.named_modules())
    found = []
    for name, m in modules.items():
        for names, o_at in _ATTN_STYLES:
            lins = [getattr(m, n, None) for n in names[:3]]
            if not all(isinstance(lin, nn.Linear) for lin in lins):
                continue
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            o = _join(parent, "output", names[3]) if o_at else _join(name, names[3])
            q, k, v = lins
            hd = _head_dim(m, q, k)
            o_mod = modules.get(o)
            if not isinstance(o_mod, nn.Linear) or o_mod.in_features != q.out_features or not hd:
                continue
            heads, kv = q.out_features // hd, k.out_features // hd
            if kv < 1 or heads % kv or v.out_features != k.out_features:
                continue
            layers = [_join(name, n) for n in names[:3]]
            found.append(Attention(name, *layers, o, hd, kv, heads // kv))
    return found


def mlp_layers(model: nn.Module) -> list[Mlp]:
    """The MLPs of the transformer blocks (none when the model has no attention layers)."""
    if not attention_layers(model):
        return []
    modules, found = dict(model.named_modules()), []
    for name in modules:
        pairs = (
            (("gate_proj", "up_proj"), _join(name, "down_proj")),
            (("fc1",), _join(name, "fc2")),
            (("intermediate.dense",), _join(name, "output.dense")),
        )
        for producers, down in pairs:
            prods = [_join(name, p) for p in producers]
            lins = [modules.get(p) for p in prods]
            d = modules.get(down)
            if not all(isinstance(x, nn.Linear) for x in (*lins, d)):
                continue
            if all(x.out_features == d.in_features for x in lins):
                found.append(Mlp(tuple(prods), down))
    return found


def _cut(layer: nn.Linear, idx: torch.Tensor, dim: int) -> None:
    """Keep only ``idx`` along ``dim`` (0: output rows with bias, 1: input columns)."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight.index_select(dim, idx.to(layer.weight.device)))
        if dim == 0 and layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.index_select(0, idx.to(layer.bias.device)))
    if dim == 0:
        layer.out_features = len(idx)
    else:
        layer.in_features = len(idx)


def remove_heads(model: nn.Module, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A smaller copy of ``model`` keeping, per attention module (keyed by its q layer), only
    the KV groups listed; head-count attributes (``num_heads``, ``all_head_size``, ...) follow.

    Raises:
        ValueError: a module would lose every head.
    """
    small = copy.deepcopy(model)
    modules = dict(small.named_modules())
    for att in attention_layers(small):
        if att.q not in keep:
            continue
        groups = sorted(set(int(g) for g in keep[att.q]))
        if not groups:
            raise ValueError(f"attention '{att.module}' would lose every head; keep at least one.")
        for layer in att.layers:
            idx = torch.cat([att.rows(g, layer) for g in groups])
            _cut(modules[layer], idx, 1 if layer == att.o else 0)
        _recount(modules[att.module], att, len(groups))
    return small


def _recount(module: nn.Module, att: Attention, groups: int) -> None:
    heads = groups * att.per_group
    for attr, value in [(a, heads) for a in _HEAD_COUNTS] + [(a, groups) for a in _KV_COUNTS]:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, value)
    for attr in _WIDTHS:
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, heads * att.head_dim)


def remove_neurons(model: nn.Module, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """A smaller copy of ``model`` keeping, per MLP (keyed by its down layer), only the hidden
    neurons listed: up/gate rows (and biases) and down columns go together."""
    small = copy.deepcopy(model)
    modules = dict(small.named_modules())
    for mlp in mlp_layers(small):
        if mlp.down not in keep:
            continue
        idx = torch.as_tensor(sorted(set(int(i) for i in keep[mlp.down])), dtype=torch.long)
        if not len(idx):
            raise ValueError(f"MLP '{mlp.down}' would lose every neuron; keep at least one.")
        for p in mlp.producers:
            _cut(modules[p], idx, 0)
        _cut(modules[mlp.down], idx, 1)
    return small


def dead_neurons(masks: Mapping[str, torch.Tensor], mlp: Mlp) -> torch.Tensor:
    """Bool per hidden neuron: True when a producer's mask row is all False (its activation,
    with the bias zeroed too, is then exactly 0: act(0) = 0 and a gate of 0 zeroes the product)."""
    rows = [~masks[p].bool().any(dim=1) for p in mlp.producers if p in masks]
    if not rows:
        return torch.zeros(0, dtype=torch.bool)
    return torch.stack(rows).any(dim=0)


def dead_groups(masks: Mapping[str, torch.Tensor], att: Attention) -> list[int]:
    """The KV groups whose q, k and v rows are all masked out."""
    if not all(n in masks for n in (att.q, att.k, att.v)):
        return []
    return [
        g
        for g in range(att.groups)
        if all(not bool(masks[n].bool()[att.rows(g, n)].any()) for n in (att.q, att.k, att.v))
    ]


def shrink(
    model: nn.Module, masks: Mapping[str, torch.Tensor], granularity: str
) -> tuple[nn.Module, list[str]] | None:
    """The physically smaller copy for ``head`` or ``filter`` masks on a transformer, with
    sentences saying what went; None when the model has no such blocks (or nothing to cut).

    Heads go when their q/k/v rows are all masked; MLP neurons when an up/gate row is (its
    bias is masked with it). Other masked weights stay in place as zeros.
    """
    if granularity == "head":
        cut = {}
        for a in attention_layers(model):
            dead = set(dead_groups(masks, a))
            if dead and len(dead) < a.groups:
                cut[a.q] = [g for g in range(a.groups) if g not in dead]
        if not cut:
            return None
        n = sum(a.groups - len(cut[a.q]) for a in attention_layers(model) if a.q in cut)
        return remove_heads(model, cut), [f"{n} heads (KV groups) in {len(cut)} attention layers"]
    if granularity != "filter":
        return None
    cut, n = {}, 0
    for mlp in mlp_layers(model):
        dead = dead_neurons(masks, mlp)
        if bool(dead.any()) and not bool(dead.all()):
            cut[mlp.down] = torch.nonzero(~dead).flatten().tolist()
            n += int(dead.sum())
    if not cut:
        return None
    return remove_neurons(model, cut), [f"{n} MLP neurons in {len(cut)} blocks"]
