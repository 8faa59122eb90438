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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from torch import nn

from app.catalogue import CHANNEL_LEVELS
from app.pruning.bn_reinsert import reinserted_batchnorm
from app.pruning.criteria.context import calibration_batches
from app.pruning.data import ArrayDataset
from app.pruning.distill import NOTE_PREFIX, Distiller, frozen_teacher
from app.pruning.lr_range import range_test
from app.pruning.masks.keeper import MaskKeeper
from app.pruning.notes import Note, add_notes, info
from app.pruning.spec import STEPWISE, DistillSpec, FinetuneSpec, Recipe

# granularities where distillation from the dense model is on by default ("auto"): measured
# 2026-12-01 on the filter rows of benchmarks/quality_vs_anchors.py (seeds 0-3, lab - the
# anchor, off -> on): cnn_small 30% -0.1 -> +0.1, 50% +0.3 -> +0.6; onnx_cnn +1.6 -> +1.9,
# +6.4 -> +6.9; resnet20 +0.4 -> +0.9, +2.1 -> +1.8; the transformers ResNet +1.6 -> +1.5,
# +1.8 -> +2.3. Element rows were not measured better with it (issue 13), so it stays off there.
DISTILL_AUTO = frozenset({"filter", "channel"})


def resolve_distill(recipe: Recipe) -> tuple[FinetuneSpec, Note | None]:
    """The recipe's fine-tuning spec with ``distill: "auto"`` resolved, and the note saying so.

    Example:
        >>> r = Recipe.from_dict({"kind": "prune", "name": "x",
        ...     "pruning": {"granularity": "filter", "criterion": "l1", "sparsity": 0.5}})
        >>> spec, note = resolve_distill(r)
        >>> spec.distill, note["text"][:33]
        (DistillSpec(weight=0.5, temperature=2.0), 'distillation auto: on for filter ')
        >>> r = Recipe.from_dict({"kind": "prune", "name": "x",
        ...     "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.5}})
        >>> spec, note = resolve_distill(r)
        >>> spec.distill, note
        (None, None)
    """
    spec = recipe.finetune
    if spec.distill != "auto":
        return spec, None
    pruning = recipe.pruning
    on = recipe.kind == "prune" and pruning is not None and pruning.granularity in DISTILL_AUTO
    if not on or int(spec.epochs) <= 0:
        return replace(spec, distill=None), None
    d = DistillSpec()
    note = info(
        f"distillation auto: on for {pruning.granularity} pruning (weight {d.weight:g}, "
        f"temperature {d.temperature:g}; the dense model as uploaded is the teacher): measured "
        "to recover 0.2 points more on average than without, against Torch-Pruning at the same "
        "budget; set finetune.distill to null to turn it off"
    )
    return replace(spec, distill=d), note


# BatchNorm re-insertion "auto": on for channel levels with a step-wise schedule. Measured
# 2026-12-01 on benchmarks/quality_vs_anchors.py --granularity filter (seeds 0-3, median lab -
# dense, off -> on): onnx_cnn (BN folded) 30% -0.9 -> -0.2, 50% -1.7 -> -0.5; cnn_small,
# resnet20 and the transformers ResNet have BN after every conv: nothing inserted, same results.
REINSERT_BATCHES = 8  # calibration batches of 64 for the inserted statistics


def resolve_reinsert_bn(recipe: Recipe) -> FinetuneSpec:
    """The fine-tuning spec with ``reinsert_bn: "auto"`` resolved to True or False.

    Example:
        >>> r = Recipe.from_dict({"kind": "prune", "name": "x",
        ...     "pruning": {"granularity": "filter", "criterion": "l1", "sparsity": 0.5}})
        >>> resolve_reinsert_bn(r).reinsert_bn
        True
        >>> r = Recipe.from_dict({"kind": "prune", "name": "x", "schedule": {"kind": "agp"},
        ...     "pruning": {"granularity": "filter", "criterion": "l1", "sparsity": 0.5}})
        >>> resolve_reinsert_bn(r).reinsert_bn
        False
    """
    spec = recipe.finetune
    if spec.reinsert_bn != "auto":
        return spec
    pruning = recipe.pruning
    on = (
        recipe.kind == "prune"
        and pruning is not None
        and pruning.granularity in CHANNEL_LEVELS
        and recipe.schedule.kind in STEPWISE
    )
    return replace(spec, reinsert_bn=on)


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
        d = spec.distill if isinstance(spec.distill, DistillSpec) else None  # "auto": resolved
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

    @contextlib.contextmanager
    def batchnorm(
        self,
        model: nn.Module,
        data: ArrayDataset,
        *,
        device: str,
        seed: int,
        step: int,
        notes: list[Note],
    ) -> Iterator[None]:
        """Around one fine-tuning: the BN-free convs get a temporary BatchNorm (when the spec's
        ``reinsert_bn`` is on), folded back at the end; a note names them."""
        if self.spec.reinsert_bn is not True or int(self.spec.epochs) <= 0:
            yield
            return
        batches = calibration_batches(data, REINSERT_BATCHES, device=device, seed=seed + step)
        with reinserted_batchnorm(model, [x for x, _ in batches]) as inserted:
            yield
        if inserted.names:
            add_notes(
                notes,
                [
                    info(
                        f"batchnorm re-insertion at step {step}: {len(inserted.names)} "
                        f"convolutions without BatchNorm ({', '.join(inserted.names)}) were "
                        "fine-tuned with a temporary BatchNorm, folded back into their weights "
                        "and biases afterwards (the model keeps its structure); set "
                        "finetune.reinsert_bn to false to turn it off"
                    )
                ],
            )

    def timed(self, seconds: float, notes: list[Note]) -> None:
        """Add ``seconds`` of fine-tuning; the distillation note is replaced by the new totals."""
        if self.distiller is None:
            return
        self.seconds += seconds
        notes[:] = [n for n in notes if not n["text"].startswith(NOTE_PREFIX)]
        notes.append(self.distiller.note(self.seconds))
