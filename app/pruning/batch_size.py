"""``finetune.batch_size: "auto"``: a batch size that gives every fine-tuning epoch enough steps.

A fixed 128 starves small datasets of optimizer steps: digits' ~1.4k training samples make 12
batches an epoch, 60 steps for a 5-epoch filter prune, and a BatchNorm-folded CNN pruned to 50%
of its filters ends that budget underfitted (training loss 0.38, 4.6 points under dense).
``"auto"`` takes the power of two nearest to ``n_train / STEPS`` (an epoch of about
:data:`STEPS` steps, 28 to 57), between :data:`SMALLEST` and :data:`LARGEST`: 32 on digits'
1,257 training samples (40 steps an epoch), 128 from 3,621 training samples on. The choice
depends only on the number of training samples, so a resumed run chooses the same.

Example:
    >>> [auto_batch_size(n) for n in (100, 1257, 2560, 3620, 3621, 60000)]
    [16, 32, 64, 64, 128, 128]
    >>> spec, note = resolve_batch_size(FinetuneSpec(), 1257)
    >>> spec.batch_size, note["text"][:45]
    (32, 'batch size auto: 32 for 1257 training samples')
    >>> resolve_batch_size(FinetuneSpec(batch_size=100), 1257)[0].batch_size
    100
"""

from __future__ import annotations

import math
from dataclasses import replace

from app.pruning.notes import Note, info
from app.pruning.spec import FinetuneSpec

STEPS = 40  # optimizer steps an epoch aims at
SMALLEST = 16  # below this, batches are noisy and slow per sample on any device
LARGEST = 128  # the old fixed default: "auto" never goes above it


def auto_batch_size(n_train: int) -> int:
    """The power of two nearest to ``n_train / STEPS`` (in log scale), within
    ``[SMALLEST, LARGEST]``."""
    exact = max(int(n_train), 1) / STEPS
    size = 2 ** round(math.log2(exact)) if exact >= 1 else 1
    return min(max(size, SMALLEST), LARGEST)


def resolve_batch_size(spec: FinetuneSpec, n_train: int) -> tuple[FinetuneSpec, Note | None]:
    """``spec`` with an integer batch size, and the note saying what ``"auto"`` chose (None
    when the recipe gave a number).

    Args:
        spec: the recipe's fine-tuning section.
        n_train: the training samples fine-tuning draws from (after any validation carve).

    Returns:
        ``(spec, note)``.
    """
    if spec.batch_size != "auto":
        return spec, None
    size = auto_batch_size(int(n_train))
    steps = -(-int(n_train) // size)
    note = info(
        f"batch size auto: {size} for {n_train} training samples ({steps} optimizer steps an "
        f"epoch; the power of two from {SMALLEST} to {LARGEST} nearest to {STEPS} steps)"
    )
    return replace(spec, batch_size=size), note
