"""Which units a weight tensor is cut into (PRUNING.md section 3).

Every prunable weight is seen in a canonical layout ``(out, in, *kernel)``:
Linear is ``(out, in)`` (a conv with no kernel dims), Conv1d/2d/3d are as
stored, ConvTranspose (stored ``(in, out, *k)``) is transposed. A
:class:`UnitView` reduces an element-wise score tensor to one score per unit
and expands a unit mask back to an element mask shaped like the weight.

Example:
    >>> import torch
    >>> w = torch.randn(8, 4, 3, 3)
    >>> view = unit_view(w, "filter")
    >>> view.unit_shape
    (8,)
    >>> view.expand(view.reduce(w.abs()) > 0.5).shape
    torch.Size([8, 4, 3, 3])
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from app.catalogue import GRANULARITIES
from app.pruning.layers import is_transposed


def check_layer(name: str, layer: nn.Module, granularity: str) -> None:
    """Raise ValueError when ``granularity`` cannot cut this layer.

    Raises:
        ValueError: grouped ConvTranspose, or channel pruning of a grouped conv
            (its input channel index differs per group).
    """
    groups = getattr(layer, "groups", 1)
    if is_transposed(layer) and groups > 1:
        raise ValueError(
            f"layer '{name}' is a grouped ConvTranspose, which PruneLab cannot prune; exclude it."
        )
    if granularity == "channel" and groups > 1:
        raise ValueError(
            f"granularity 'channel' cannot cut grouped/depthwise conv '{name}' (groups={groups}): "
            "its input channels differ per group; exclude it or prune filters."
        )


def canonical(weight: Tensor, transposed: bool = False) -> Tensor:
    """The ``(out, in, *kernel)`` view of a weight (a transpose view for ConvTranspose)."""
    return weight.transpose(0, 1) if transposed else weight


@dataclass(frozen=True)
class UnitView:
    """How one weight is cut into units of one granularity.

    ``reduce`` maps a tensor shaped like the weight to ``unit_shape``;
    ``expand`` maps a unit tensor back to the weight's shape.
    """

    granularity: str
    weight_shape: tuple[int, ...]
    transposed: bool
    unit_shape: tuple[int, ...]
    reduce_dims: tuple[int, ...]  # canonical dims folded into one unit

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        s = self.weight_shape
        return (s[1], s[0], *s[2:]) if self.transposed else s

    @property
    def unit_size(self) -> int:
        """Weights per unit."""
        n = 1
        for d in self.reduce_dims:
            n *= self.canonical_shape[d]
        return n

    def reduce(self, elem: Tensor, how: str = "sum") -> Tensor:
        """Fold an element-wise tensor into units with ``sum``, ``mean``, ``l2``, ``rms``,
        ``max`` or ``min``."""
        if not self.reduce_dims:
            return elem
        c = canonical(elem, self.transposed)
        dims = self.reduce_dims
        if how == "sum":
            out = c.sum(dim=dims)
        elif how == "mean":
            out = c.mean(dim=dims)
        elif how in ("l2", "rms"):
            out = c.pow(2).sum(dim=dims)
            out = (out / self.unit_size if how == "rms" else out).sqrt()
        elif how == "max":
            out = c.amax(dim=dims)
        elif how == "min":
            out = c.amin(dim=dims)
        else:
            raise ValueError(f"unknown reduction {how!r}.")
        return out.reshape(self.unit_shape)

    def expand(self, units: Tensor) -> Tensor:
        """A unit tensor broadcast back to the weight's (stored) shape, contiguous."""
        if not self.reduce_dims:
            return units.reshape(self.weight_shape).contiguous()
        cshape = list(self.canonical_shape)
        keep = [1 if d in self.reduce_dims else n for d, n in enumerate(cshape)]
        full = units.reshape(keep).expand(cshape)
        return canonical(full, self.transposed).contiguous()


def unit_view(
    weight: Tensor, granularity: str, nm: tuple[int, int] = (2, 4), *, transposed: bool = False
) -> UnitView:
    """Describe how ``weight`` is cut into ``granularity`` units.

    Args:
        weight: a Linear/Conv weight (ConvTranspose with ``transposed=True``).
        granularity: a name of :data:`app.catalogue.GRANULARITIES`.
        nm: (N, M) for ``nm``; its units are elements, selected by :func:`~app.pruning.masks.rows.nm_mask`.
        transposed: the weight is stored ``(in, out, *k)``.

    Returns:
        A :class:`UnitView`. Linear weights have no kernel dims, so ``vector`` and
        ``kernel`` units of a Linear layer are single weights and ``group`` units are columns.

    Raises:
        ValueError: unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is not one of: {', '.join(GRANULARITIES)}.")
    if granularity == "head":
        raise ValueError("granularity 'head' cuts whole attention heads, not units of one weight.")
    shape = tuple(weight.shape)
    cshape = (shape[1], shape[0], *shape[2:]) if transposed else shape
    nd = len(cshape)
    dims: tuple[int, ...] = {
        "element": (),
        "nm": (),
        "vector": (nd - 1,) if nd > 2 else (),
        "kernel": tuple(range(2, nd)),
        "group": (0,),
        "filter": tuple(range(1, nd)),
        "channel": (0, *range(2, nd)),
        "layer": tuple(range(nd)),
    }[granularity]
    unit_shape = tuple(n for d, n in enumerate(cshape) if d not in dims) or (1,)
    if not dims:
        unit_shape = shape
    return UnitView(granularity, shape, transposed, unit_shape, dims)
