"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with an approximate second-order
weight update, layer by layer, from calibration inputs.

For a layer with weight ``W`` (rows = outputs, columns = inputs; a conv's columns are its
unfolded ``(kernel position, input channel)`` pairs) and calibration inputs ``X``:

* ``H = 2 X^T X / n``, dampened by 1% of its mean diagonal; ``U`` = the upper Cholesky factor
  of ``H^-1``;
* the criterion's score of a weight is its OBS saliency ``w^2 / U_jj^2`` (the squared output
  error its removal alone costs): :func:`sparsegpt` ranks with it, so global and layer-wise
  scopes, overrides and N:M all come from the usual selection;
* :func:`sparsegpt_update` then runs the column-wise procedure of the paper on each layer, in
  forward order, each on the inputs of the already pruned earlier layers: columns in blocks of
  128, the weights to prune chosen inside each row's block (each row's group of M for N:M)
  by ``w^2 / U_jj^2`` on the weights updated so far, and every pruned weight's error
  ``(w - 0) / U_jj`` propagated into the remaining columns (``W[:, j:] -= err * U[j, j:]``).
  Each row keeps the plan's count of pruned weights in each block (each N:M group), so the
  achieved sparsity and the N:M pattern are exactly the plan's; the chosen weights are set
  exactly to zero and the mask replaced, so fine-tuning keeps them at zero.

Example:
    >>> _ = torch.manual_seed(0)
    >>> layer = nn.Linear(8, 4)
    >>> x = torch.randn(64, 8)
    >>> h = hessian_of(layer, x)
    >>> keep = torch.ones(4, 8, dtype=torch.bool)
    >>> keep[:, :4] = False  # prune half of every row
    >>> new, mask = obs_prune(layer.weight.detach().double(), h, keep)
    >>> int((new == 0).sum()), int((~mask).sum())
    (16, 16)
    >>> masked = layer.weight.detach() * mask
    >>> bool((x @ new.float().T - x @ layer.weight.T).norm() < (x @ masked.T - x @ layer.weight.T).norm())
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from app.pruning.criteria.capture import StopForward, geometry
from app.pruning.criteria.context import CalibrationData, ScoreContext, Scores, forward_hooked
from app.pruning.criteria.reconstruction import RefitError, _conv_rows
from app.pruning.layers import PRUNABLE_TYPES, is_linear, is_transposed

BLOCK = 128  # columns per block (the paper's B)
DAMP = 0.01  # of the mean diagonal of H


def supported(layer: nn.Module) -> bool:
    """Linear, and Conv1d/Conv2d with groups=1 and numeric padding (unfolded to a GEMM); a conv
    inside a TorchScript/.pt2 graph is judged by its :func:`~.capture.geometry` once seen."""
    if is_linear(layer):
        return True
    if not isinstance(layer, PRUNABLE_TYPES):
        layer = geometry(layer)
        if not isinstance(layer, PRUNABLE_TYPES):
            return layer.weight.dim() in (3, 4)  # not seen yet
    return (
        type(layer) in (nn.Conv1d, nn.Conv2d)
        and layer.groups == 1
        and not isinstance(layer.padding, str)
        and not is_transposed(layer)
    )


def _rows(layer: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as GEMM rows ``(N, columns)`` in the weight's ``(in, k)`` order."""
    x = x.detach().double()
    if is_linear(layer):
        return x.reshape(-1, x.shape[-1])
    return _conv_rows(geometry(layer), x, "").flatten(1)


def hessian_of(layer: nn.Module, x: Tensor) -> Tensor:
    """``2 X^T X / n`` of one batch of inputs ``x`` of ``layer`` (float64, undampened)."""
    r = _rows(layer, x)
    return 2.0 * r.T @ r / max(1, r.shape[0])


def _hessians(ctx: ScoreContext, stop: bool = False) -> dict[str, Tensor]:
    """Each layer's ``2 X^T X / n`` over the calibration batches (``stop``: one layer, whose
    first call ends each batch's forward pass)."""
    acc: dict[str, Tensor] = {}
    rows: dict[str, int] = {}

    def hook_for(name: str, layer: nn.Module):
        def hook(_m, inp):
            if not supported(layer):  # a grouped or padding='same' conv seen in a graph
                return
            r = _rows(layer, inp[0]).cpu()
            acc[name] = acc[name] + r.T @ r if name in acc else r.T @ r
            rows[name] = rows.get(name, 0) + r.shape[0]
            if stop:
                raise StopForward

        return hook

    forward_hooked(ctx, {m: hook_for(n, m) for n, m in ctx.layers.items()}, pre=True)
    return {n: 2.0 * h / max(1, rows[n]) for n, h in acc.items()}


def _order(layer: nn.Module) -> Tensor | None:
    """Column order ``(kernel position, input channel)`` for a conv, so that N:M groups
    (M consecutive input channels at one kernel position) are consecutive columns."""
    w = layer.weight
    if w.dim() == 2:
        return None
    k = w[0, 0].numel()
    return torch.arange(w.shape[1] * k).reshape(w.shape[1], k).T.flatten()


def _inverse_factor(h: Tensor) -> Tensor:
    """Upper Cholesky factor of the dampened ``H^-1`` (more damping when H is singular)."""
    h = h.clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    damp = DAMP * float(h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(6):
        try:
            hinv = torch.cholesky_inverse(torch.linalg.cholesky(h + damp * eye))
            return torch.linalg.cholesky(hinv, upper=True)
        except torch.linalg.LinAlgError:
            damp *= 10.0
    raise ValueError("criterion 'sparsegpt' could not invert a layer's input Hessian.")


def sparsegpt(ctx: ScoreContext) -> Scores:
    """OBS saliency ``w^2 / U_jj^2`` of every weight (Linear, Conv1d/2d with groups=1; other
    layers are left out, i.e. dense)."""
    ctx = ScoreContext(
        ctx.model,
        {n: m for n, m in ctx.layers.items() if supported(m)},
        ctx.granularity,
        ctx.data,
        ctx.device,
        ctx.nm,
        ctx.seed,
        ctx.batches,
        ctx.name,
    )
    out = {}
    for n, h in _hessians(ctx).items():
        layer = ctx.layers[n]
        w = layer.weight.detach().double().cpu().reshape(layer.weight.shape[0], -1)
        order = _order(layer)
        d = _inverse_factor(h if order is None else h[order][:, order]).diagonal()
        if order is not None:  # back to the weight's (in, k) column order
            d = torch.empty_like(d).index_put_((order,), d)
        out[n] = (w.pow(2) / d.pow(2)).float().reshape(layer.weight.shape)
    return out


def obs_prune(w: Tensor, h: Tensor, keep: Tensor, nm_m: int = 0) -> tuple[Tensor, Tensor]:
    """SparseGPT's blockwise OBS pruning of one weight matrix ``w`` ``(rows, columns)``.

    Args:
        w: float64 weights; h: ``2 X^T X / n`` of its inputs (undampened).
        keep: the plan's keep-mask; each row prunes as many weights as it prunes there in each
            block of ``BLOCK`` columns (each group of ``nm_m`` columns when ``nm_m``); weights
            pruned there that are already zero stay pruned.
        nm_m: M of an N:M pattern (0: element sparsity).

    Returns:
        The updated weights (pruned ones exactly zero) and the new keep-mask.
    """
    w = w.clone()
    cols = w.shape[1]
    u = _inverse_factor(h)
    seg = nm_m or BLOCK
    block = seg * max(1, BLOCK // seg)
    planned, forced = ~keep, (~keep) & (w == 0)
    pruned = torch.zeros_like(keep)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        d = u1.diagonal()
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            if i % seg == 0:
                s, e = i1 + i, min(i1 + i + seg, i2)
                tmp = w1[:, i : i + e - s].pow(2) / d[i : i + e - s].pow(2)
                tmp[forced[:, s:e]] = -1.0
                k = planned[:, s:e].sum(1, keepdim=True)
                ranks = tmp.argsort(dim=1, stable=True).argsort(dim=1)
                pruned[:, s:e] = ranks < k
            q = torch.where(pruned[:, i1 + i], torch.zeros_like(w1[:, i]), w1[:, i])
            err = (w1[:, i] - q) / d[i]
            w1[:, i:] -= err.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w, ~pruned


def relative_error(w: Tensor, new: Tensor, h: Tensor) -> float:
    """``||X W'^T - X W^T|| / ||X W^T||`` on the inputs whose ``2 X^T X / n`` is ``h``."""
    diff = new - w
    num = float(torch.einsum("oi,ij,oj->", diff, h, diff).clamp_min(0))
    den = float(torch.einsum("oi,ij,oj->", w, h, w).clamp_min(1e-24))
    return (num / den) ** 0.5


def sparsegpt_update(
    model: nn.Module,
    masks: dict[str, Tensor],
    data: CalibrationData,
    *,
    nm: tuple[int, int] | None = None,
    batches: int = 4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[RefitError]:
    """Prune and update every layer of ``masks`` that loses weights, in forward order.

    Call it on the unpruned weights, before the masks are applied. Each layer's Hessian comes
    from its inputs with the earlier layers already pruned and updated. ``masks`` entries are
    replaced by the masks SparseGPT chose (same count per row and block, or the same N:M).

    Args:
        model: the model (its layers' weights are updated in place).
        masks: layer -> the plan's keep-mask.
        data: calibration data; nm: the N:M pattern of an ``nm`` plan (None: element).
        batches, device, seed: calibration budget.
        progress: called as ``progress(done, total, layer)`` before each layer (one
            calibration pass each: minutes on a large model), and ``(total, total, "")`` at
            the end.

    Returns:
        One :class:`RefitError` per layer: the relative output error on calibration inputs
        with the weights only masked (``before``) and after the update (``after``).
    """
    done = []
    todo = [
        (name, layer)
        for name, layer in model.named_modules()
        if masks.get(name) is not None and not bool(masks[name].all()) and supported(layer)
    ]
    for i, (name, layer) in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), name)
        keep = masks[name]
        ctx = ScoreContext(
            model, {name: layer}, "element", data, torch.device(device), (2, 4), seed, batches
        )
        h = _hessians(ctx, stop=True).get(name)
        if h is None:
            continue
        shape = layer.weight.shape
        w = layer.weight.detach().double().cpu().reshape(shape[0], -1)
        flat_keep = keep.cpu().bool().reshape(shape[0], -1)
        order = _order(layer)
        if order is not None:
            w, h, flat_keep = w[:, order], h[order][:, order], flat_keep[:, order]
        new, new_keep = obs_prune(w, h, flat_keep, nm[1] if nm else 0)
        before = relative_error(w, w * new_keep, h)
        after = relative_error(w, new, h)
        if order is not None:
            back = torch.argsort(order)
            new, new_keep = new[:, back], new_keep[:, back]
        with torch.no_grad():
            layer.weight.copy_(new.reshape(shape).to(layer.weight))
        masks[name] = new_keep.reshape(shape).contiguous()
        done.append(RefitError(name, before, after))
    if progress is not None:
        progress(len(todo), len(todo), "")
    return done


def update_note(step: int, errors: list[RefitError]) -> str:
    """The run's note for one step's SparseGPT updates."""
    return (
        f"step {step}: SparseGPT weight update, layer by layer in forward order on the inputs of "
        "the already pruned layers; relative output error on calibration data, masked only -> "
        "updated: " + ", ".join(f"'{e.layer}' {e.before:.3f} -> {e.after:.3f}" for e in errors)
    )
