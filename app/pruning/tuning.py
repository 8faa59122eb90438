"""What a prune run adds to its fine-tuning: the resolved ``"auto"`` LR and the distillation.

One :class:`Tuning` per run (``context.RunContext.tuning``): the LR range test runs before each
fine-tuning (each step of a step-wise schedule: the model after each prune wants its own LR;
once for agp, at_init and retrain, whose one training a resumed run continues with the LR its
checkpoint kept); the teacher is copied from the model before anything is pruned. Both leave a
note on the run.

Example:
    >>> from torch import nn
    >>> from app.pruning.spec import DistillSpec, FinetuneSpec
    >>> tuning = Tuning.for_run(FinetuneSpec(lr=0.01), nn.Linear(2, 2))
    >>> tuning.distiller is None, tuning.spec_for(None, None, device="cpu", keeper=None,
    ...     seed=0, notes=[]).lr
    (True, 0.01)
    >>> Tuning.for_run(FinetuneSpec(distill=DistillSpec()), nn.Linear(2, 2)).distiller.weight
    0.5
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

from app.pruning.data import ArrayDataset
from app.pruning.distill import NOTE_PREFIX, Distiller, frozen_teacher
from app.pruning.lr_range import range_test
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.notes import Note, add_notes
from app.pruning.spec import FinetuneSpec


@dataclass
class Tuning:
    """A run's fine-tuning aids: ``lr`` (what ``"auto"`` resolved to), the ``distiller`` and
    the fine-tuning seconds it was timed against."""

    spec: FinetuneSpec
    distiller: Distiller | None = None
    lr: float | None = None
    seconds: float = 0.0

    @classmethod
    def for_run(cls, spec: FinetuneSpec, model: nn.Module) -> Tuning:
        """Copy ``model`` (still dense) as the teacher when the spec distills."""
        d = spec.distill
        teacher = None if d is None or d.weight <= 0 else Distiller(frozen_teacher(model), d)
        return cls(spec, teacher)

    def spec_for(
        self,
        model: nn.Module | None,
        data: ArrayDataset | None,
        *,
        device: str,
        keeper: MaskKeeper | None,
        seed: int,
        notes: list[Note],
        epochs: int | None = None,
        step: int = 0,
        resuming: bool = False,
    ) -> FinetuneSpec:
        """The spec with a numeric LR: ``"auto"`` runs the range test on ``model`` (not for a
        fine-tuning of no epochs; not when ``resuming`` a training whose LR is known)."""
        n_epochs = self.spec.epochs if epochs is None else epochs
        if self.spec.lr != "auto" or n_epochs <= 0:
            return self.spec
        if self.lr is None or not resuming:
            found = range_test(model, data, self.spec, device=device, keeper=keeper, seed=seed)
            self.lr = found.lr
            add_notes(notes, [found.note(f"step {step}: " if step else "")])
        return replace(self.spec, lr=self.lr)

    def timed(self, seconds: float, notes: list[Note]) -> None:
        """Add ``seconds`` of fine-tuning; the distillation note is replaced by the new totals."""
        if self.distiller is None:
            return
        self.seconds += seconds
        notes[:] = [n for n in notes if not n["text"].startswith(NOTE_PREFIX)]
        notes.append(self.distiller.note(self.seconds))
