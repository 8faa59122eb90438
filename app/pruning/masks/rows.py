"""Cuts inside each output row: N:M groups of consecutive input weights, and Wanda's equal share
per row (``pruning.wanda_group: "row"``). :class:`~app.pruning.masks.select.Selection` uses
them in place of a ranking across the layer.

Example:
    >>> scores = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]])
    >>> nm_mask(scores, 2, 4).int().tolist()
    [[1, 0, 1, 0], [0, 0, 1, 1]]
    >>> row_pruned(scores, 0.25, transposed=False).int().tolist()
    [[0, 1, 0, 0], [1, 0, 0, 0]]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from app.pruning.granularity import canonical
from app.pruning.layers import is_transposed
from app.pruning.notes import Note, info


def nm_dense_reason(layer: nn.Module, m: int) -> str | None:
    """Why N:M cannot cut ``layer`` (its reduction dimension is not a multiple of ``m``), or None.

    The reduction dimension is the input channels per group of a conv (``weight.shape[1]``; 1
    for a depthwise kernel) and ``in_features`` of a Linear.
    """
    weight = layer.weight
    inputs = weight.shape[0] if is_transposed(layer) else weight.shape[1]
    if inputs % m == 0:
        return None
    what = "input features" if weight.dim() == 2 else "input channels"
    if getattr(layer, "groups", 1) > 1:
        what += " per group"
    return f"its {what} ({inputs}) are not a multiple of M={m}"


def nm_mask(scores: Tensor, n: int, m: int, *, transposed: bool = False) -> Tensor:
    """Keep the ``n`` best of every ``m`` consecutive weights along the reduction dimension.

    Grouped in the order sparse kernels (NVIDIA 2:4 tensor cores, ASP) read them: a Linear's
    consecutive input features of a row; a conv weight laid out as ``[out, *kernel, in]``, i.e.
    ``m`` consecutive input channels at a fixed kernel position. The input channels must be a
    multiple of ``m`` (:func:`nm_dense_reason`). Returns a bool keep-mask shaped like ``scores``.

    Raises:
        ValueError: the input channels are not a multiple of ``m``.
    """
    c = canonical(scores, transposed)
    if c.shape[1] % m:
        raise ValueError(f"N:M needs input channels in multiples of {m}, got {c.shape[1]}.")
    last = c.movedim(1, -1)  # (out, *kernel, in)
    groups = last.reshape(-1, m).float()
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(min(n, m), dim=1).indices, True)
    keep = keep.reshape(last.shape).movedim(-1, 1)
    return canonical(keep, transposed).contiguous()


def nm_pruned(
    name: str, layer: nn.Module, ranking: Tensor, nm: tuple[int, int]
) -> tuple[Tensor, float, str | None]:
    """One layer's N:M cut: (pruned weights, requested sparsity, why it stays dense or None)."""
    n_keep, m = nm
    reason = nm_dense_reason(layer, m)
    if reason is not None:
        dense = torch.zeros(ranking.shape, dtype=torch.bool)
        return dense, 0.0, f"'{name}' left dense by {n_keep}:{m} sparsity: {reason}"
    keep = nm_mask(ranking, n_keep, m, transposed=is_transposed(layer))
    return ~keep, 1.0 - n_keep / m, None


def row_pruned(ranking: Tensor, share: float, *, transposed: bool) -> Tensor:
    """Wanda as published: the lowest ``round(share * row length)`` scores of every output row."""
    rank = canonical(ranking, transposed)
    rows = rank.reshape(rank.shape[0], -1)
    k = round(share * rows.shape[1])
    pruned = torch.zeros(rows.shape, dtype=torch.bool)
    pruned.scatter_(1, rows.sort(dim=1, stable=True).indices[:, :k], True)
    return canonical(pruned.reshape(rank.shape), transposed).contiguous()


def row_note(scope_global: bool) -> Note:
    """The note of a per-row Wanda step (global scope ranks nothing across layers there)."""
    scope = "; scope 'global' ranks nothing across layers here" if scope_global else ""
    return info(
        "wanda compared weights within each output row (pruning.wanda_group 'row', as "
        f"published): every row of a layer keeps the same share{scope}; "
        "wanda_group 'layer' ranks each layer as a whole"
    )
