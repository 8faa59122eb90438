"""Knowledge distillation from the dense model during fine-tuning (Hinton et al. 2015).

The teacher is a frozen eval-mode copy of the model as it was before pruning; each batch's
loss becomes ``(1 - w) * CE(labels) + w * T^2 * KL(p_teacher || p_student)`` with both
distributions softened by the temperature ``T`` (``F.kl_div(log_softmax(s / T),
log_softmax(t / T))``, the usual form). The teacher's forward passes are timed, so the run can
say what distillation cost (:meth:`Distiller.note`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from app.pruning.spec import DistillSpec
    >>> torch.manual_seed(0) is not None
    True
    >>> teacher = nn.Linear(4, 3)
    >>> d = Distiller(teacher, DistillSpec(weight=1.0, temperature=2.0))
    >>> x = torch.randn(8, 4)
    >>> float(d.loss(teacher(x), x, torch.tensor(5.0))) < 1e-6  # a student equal to its teacher
    True
    >>> d.batches
    1
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.pruning.notes import Note, info
from app.pruning.spec import DistillSpec
from app.pruning.task import logits_of

NOTE_PREFIX = "distillation:"


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``model`` (no gradients, its own BN statistics)."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class Distiller:
    """The distillation loss of one run, with the time its teacher's forward passes took."""

    def __init__(self, teacher: nn.Module, spec: DistillSpec) -> None:
        self.teacher = teacher
        self.weight, self.temperature = float(spec.weight), float(spec.temperature)
        self.seconds = 0.0
        self.batches = 0

    def teacher_logits(self, x: Tensor) -> Tensor:
        start = time.perf_counter()
        with torch.no_grad():
            out = self.teacher(x)
        self.seconds += time.perf_counter() - start
        self.batches += 1
        return out

    def loss(self, student: Tensor, x: Tensor, hard: Tensor) -> Tensor:
        """``(1 - w) * hard + w * T^2 * KL`` for the student's logits on ``x``."""
        t = self.temperature
        s_logits = logits_of(student)
        t_logits = logits_of(self.teacher_logits(x)).float()
        vocab = s_logits.shape[-1]  # a language model's [B, L, V]: one distribution per token
        soft = F.kl_div(
            F.log_softmax(s_logits.reshape(-1, vocab) / t, dim=-1),
            F.log_softmax(t_logits.reshape(-1, vocab) / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        return (1.0 - self.weight) * hard + self.weight * t * t * soft

    def note(self, finetune_seconds: float) -> Note:
        """An info note: the teacher's forward time and its share of the fine-tuning time."""
        share = self.seconds / finetune_seconds if finetune_seconds > 0 else 0.0
        return info(
            f"{NOTE_PREFIX} weight {self.weight:g}, temperature {self.temperature:g}; the dense "
            f"teacher's forward passes took {self.seconds:.2f} s over {self.batches} batches, "
            f"{share:.0%} of the {finetune_seconds:.2f} s of fine-tuning"
        )
