"""The example batch a pruned model is exported and checked at: its own input dtype, and a
batch it accepts.

A model of token ids (``int64``) is traced on int64 ids, so ``pruned.onnx`` declares an int64
input: the run's real ids where the dataset holds valid ids, else random ids in
``[0, vocab)`` (the vocabulary read from the embedding, or small ids when none is found).
The batch is 2 (two different samples, so a dynamic batch axis is really exercised); a model
that refuses a batch of 2 is traced at 1, else at the dataset's batch it was run on.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2))
    >>> x = export_batch(net, torch.tensor([[1.0, 4.0], [0.0, 2.0], [3.0, 3.0]]), "int64")
    >>> x.dtype, tuple(x.shape)
    (torch.int64, (2, 2))
    >>> vocab_size(net)
    5
"""

from __future__ import annotations

import torch
from torch import fx, nn

from app.modelio.signature import IdsInput, rounds_to_ids

BATCH = 2  # two different samples: a batch axis fixed at 1 shows, a dynamic one is exercised
SMALL_IDS = 2  # ids 0 and 1: valid for any embedding when the vocabulary is unknown
_EMBEDDING_OPS = ("aten.embedding", "embedding")


def traceable(module: nn.Module) -> nn.Module:
    """The module exporters should see: a TorchScript model behind :class:`IdsInput` is
    exported itself (its inputs are already int64 ids), everything else as it is."""
    return module.model if isinstance(module, IdsInput) else module


def vocab_size(module: nn.Module) -> int | None:
    """The smallest embedding table's size (``nn.Embedding``, a TorchScript ``Embedding``, an
    ``aten.embedding`` call in a ``.pt2`` graph), or None when the model shows none."""
    sizes = []
    for sub in module.modules():
        weight = getattr(sub, "weight", None)
        is_embedding = isinstance(sub, nn.Embedding) or (
            getattr(sub, "original_name", "") == "Embedding"
        )
        if is_embedding and isinstance(weight, torch.Tensor) and weight.dim() == 2:
            sizes.append(int(weight.shape[0]))
        if isinstance(sub, fx.GraphModule):
            sizes += _graph_embeddings(sub)
    return min(sizes) if sizes else None


def _graph_embeddings(module: fx.GraphModule) -> list[int]:
    sizes = []
    for node in module.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith(_EMBEDDING_OPS):
            continue
        table = node.args[0] if node.args else None
        if getattr(table, "op", None) == "get_attr":
            try:
                weight = module.get_parameter(str(table.target))
            except AttributeError:
                continue
            sizes.append(int(weight.shape[0]))
    return sizes


def token_ids(x: torch.Tensor, module: nn.Module, *, seed: int = 0) -> torch.Tensor:
    """``x`` as int64 ids when it holds valid ids (whole numbers in ``[0, vocab)``), else
    seeded random ids of its shape in ``[0, vocab)`` (``[0, 2)`` when the vocab is unknown)."""
    vocab = vocab_size(module)
    ids = x.round().long()
    whole = bool(torch.equal(ids.to(x.dtype), x)) if x.is_floating_point() else True
    in_range = ids.numel() > 0 and int(ids.min()) >= 0 and (vocab is None or int(ids.max()) < vocab)
    if whole and in_range:
        return ids
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab or SMALL_IDS, tuple(x.shape), generator=gen)


def accepts(module: nn.Module, x: torch.Tensor) -> bool:
    """True when ``module`` runs on ``x`` and its (first) output has ``x``'s batch size."""
    try:
        with torch.inference_mode():
            out = module(x)
    except Exception:  # noqa: BLE001 - any failure means this batch is not accepted
        return False
    if isinstance(out, tuple | list) and out:
        out = out[0]
    return isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == x.shape[0]


def export_batch(
    module: nn.Module, data_batch: torch.Tensor, dtype: str = "float32"
) -> torch.Tensor:
    """The batch to trace and check ``module`` at: ``data_batch`` (real samples) in the model's
    input ``dtype``, cut to 2 samples, or to 1 or all of them when the model refuses 2."""
    x = data_batch.detach().cpu()
    if dtype == "int64":
        x = token_ids(x, module)
    for n in (BATCH, 1, x.shape[0]):
        if n <= x.shape[0] and accepts(module, x[:n]):
            return x[:n].clone()
    return x[: min(BATCH, x.shape[0])].clone()  # the export reports why it fails


def input_dtype_of(module: nn.Module) -> str:
    """``int64`` for a module ``signature.cast_inputs`` made take token ids, else ``float32``."""
    return "int64" if rounds_to_ids(module) else "float32"
