"""What a run optimises and reports, by the dataset's task (``ArrayDataset.task``): a
classifier's accuracy, or a causal language model's perplexity.

A classification dataset has labels ``y`` shaped ``(N,)`` and the model returns logits
``(B, C)``; a language-modelling dataset has next-token targets ``y`` shaped ``(N, L)`` (``x``
shifted by one token) and the model returns logits ``(B, L, V)`` (or a tuple/dict whose first
tensor, or ``"logits"``, is that: transformers-style outputs). Both go through the same
cross-entropy, logits flattened to ``(-1, V)`` against the flattened targets: a classifier's loss
and accuracy are unchanged, a language model's are the mean next-token NLL and next-token
accuracy. ``perplexity = exp(mean token NLL)``; lower is better.

Example:
    >>> import torch
    >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])  # B=1, L=2, V=2
    >>> y = torch.tensor([[0, 0]])
    >>> loss = token_loss(logits, y)
    >>> round(float(loss), 4), n_correct(logits, y), round(perplexity(float(loss)), 3)
    (1.1269, 1, 3.086)
    >>> n_correct((torch.tensor([[0.1, 0.9]]), None), torch.tensor([1]))
    1
"""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

TASKS = ("classification", "language_model")
METRIC = {"classification": "accuracy", "language_model": "perplexity"}
MAX_LOG_PERPLEXITY = 700.0  # exp() of more overflows a float: perplexity is capped there


def logits_of(out: object) -> Tensor:
    """The logits tensor of a model's output: the tensor itself, a dict's ``"logits"``, or the
    first tensor of a tuple/list/dict (transformers' ``return_dict=False`` exports)."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        if isinstance(out.get("logits"), Tensor):
            return out["logits"]
        out = list(out.values())
    if isinstance(out, list | tuple) and out:
        return logits_of(out[0])
    raise ValueError(f"the model returned a {type(out).__name__}, not a logits tensor")


def _flat(out: object, y: Tensor) -> tuple[Tensor, Tensor]:
    logits = logits_of(out)
    if tuple(logits.shape[:-1]) != tuple(y.shape):
        raise ValueError(
            f"the model's output has shape {list(logits.shape)} but the targets have shape "
            f"{list(y.shape)}; a classifier returns [batch, classes] and a language model "
            "[batch, length, vocab]"
        )
    return logits.reshape(-1, logits.shape[-1]), y.reshape(-1)


def token_loss(
    out: object, y: Tensor, *, reduction: str = "mean", label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy of the logits against labels (classification) or next tokens (LM).

    Raises:
        ValueError: the output's leading dimensions do not match the targets.
    """
    logits, target = _flat(out, y)
    return F.cross_entropy(logits, target, reduction=reduction, label_smoothing=label_smoothing)


def n_correct(out: object, y: Tensor) -> int:
    """How many labels (or next tokens) the arg-max of the logits gets right."""
    logits, target = _flat(out, y)
    return int((logits.argmax(dim=-1) == target).sum())


def perplexity(mean_nll: float) -> float:
    """``exp(mean token NLL)``, capped at ``exp(MAX_LOG_PERPLEXITY)`` so it stays finite."""
    return math.exp(min(float(mean_nll), MAX_LOG_PERPLEXITY))


class TokenLoss(nn.Module):
    """:func:`token_loss` as a loss module: the training loop's ``loss_fn`` for both tasks."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, out: object, y: Tensor) -> Tensor:
        return token_loss(out, y, label_smoothing=self.label_smoothing)
