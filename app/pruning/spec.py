"""A pruning recipe as frozen dataclasses that round-trip through JSON.

The recipe and its schedule, fine-tuning and sensitivity sections; the ``pruning`` section is
:class:`app.pruning.pruning_spec.PruningSpec`, the shared field checks
:mod:`app.pruning.spec_checks`. No torch import here: the web layer validates recipes without
loading torch. The names it accepts come from :mod:`app.catalogue`.

Example:
    >>> r = Recipe.from_dict({"kind": "prune", "name": "x",
    ...     "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.9}})
    >>> Recipe.from_dict(r.to_dict()) == r
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from app.catalogue import (
    LR_SCHEDULES,
    OPTIMIZERS,
    RECIPE_KINDS,
    RETRAIN_INITS,
    REWIND_POINTS,
    SCHEDULE_KINDS,
)
from app.pruning.pruning_spec import PruningSpec
from app.pruning.spec_checks import check_keys, choice, integer, number, optional

# the schedules whose fine-tunings run between prune steps, with no mid-training checkpoint or
# prune: the ones a temporary BatchNorm (finetune.reinsert_bn) can be folded back after
STEPWISE = ("oneshot", "iterative")

# Keys of the POST /api/runs body that belong to the run row, not to the recipe.
ENVELOPE_KEYS: frozenset[str] = frozenset({"model_id", "dataset_id"})


@dataclass(frozen=True)
class ScheduleSpec:
    """When to prune: oneshot, iterative, agp, at_init or retrain, in ``steps`` steps."""

    kind: str = "oneshot"
    steps: int = 1
    max_accuracy_drop: float | None = None
    retrain_init: str = "rewind"
    rewind_from: str | None = None  # "init" | "early" (default: early when the model has it)

    def __post_init__(self) -> None:
        choice(self.kind, SCHEDULE_KINDS, "schedule.kind")
        integer(self.steps, "schedule.steps", 1)
        optional(
            self.max_accuracy_drop, number, "schedule.max_accuracy_drop", 0.0, 1.0, hi_open=False
        )
        choice(self.retrain_init, RETRAIN_INITS, "schedule.retrain_init")
        optional(self.rewind_from, choice, REWIND_POINTS, "schedule.rewind_from")

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleSpec:
        return cls(**check_keys(d, cls, "schedule"))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DistillSpec:
    """Knowledge distillation from the dense model: ``weight`` of the soft loss, ``temperature``."""

    weight: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        number(self.weight, "finetune.distill.weight", 0.0, 1.0, hi_open=False)
        if number(self.temperature, "finetune.distill.temperature", 0.0, 100.0) == 0.0:
            raise ValueError("finetune.distill.temperature must be greater than 0.")

    @classmethod
    def from_dict(cls, d: dict) -> DistillSpec:
        return cls(**check_keys(d, cls, "finetune.distill"))


def check_lr(value: object) -> float | str:
    """A positive learning rate or ``"auto"`` (an LR range test chooses it before training).

    >>> check_lr("auto"), check_lr(0.01)
    ('auto', 0.01)
    >>> check_lr("fast")
    Traceback (most recent call last):
    ...
    ValueError: finetune.lr must be a positive number or "auto", got 'fast'.
    """
    if value == "auto":
        return "auto"
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 < value <= 10.0:
        raise ValueError(f'finetune.lr must be a positive number or "auto", got {value!r}.')
    return float(value)


def check_batch_size(value: object) -> int | str:
    """A positive integer or ``"auto"`` (``batch_size.py`` chooses it from the dataset's size).

    >>> check_batch_size("auto"), check_batch_size(64)
    ('auto', 64)
    >>> check_batch_size(0.5)
    Traceback (most recent call last):
    ...
    ValueError: finetune.batch_size must be a positive integer or "auto", got 0.5.
    """
    if value == "auto":
        return "auto"
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f'finetune.batch_size must be a positive integer or "auto", got {value!r}.'
        )
    return int(value)


@dataclass(frozen=True)
class FinetuneSpec:
    """How to (re)train between and after pruning steps.

    ``lr="auto"`` (the default) runs an LR range test before the first fine-tuning
    (``lr_range.py``); ``batch_size="auto"`` (the default) gives an epoch at least 40 steps,
    at most 128 a batch (``batch_size.py``); ``warmup`` is the share of the iterations over which the LR ramps up
    linearly before ``lr_schedule`` takes over; ``distill`` adds a loss toward the dense
    model's outputs (prune runs; null turns it off; ``"auto"``, the default, turns it on with
    the default weight and temperature for filter/channel pruning, where it was measured to
    help, and off elsewhere: ``tuning.resolve_distill``); ``reinsert_bn`` fine-tunes each
    convolution without BatchNorm with a temporary one, folded back after (``bn_reinsert.py``;
    ``"auto"``, the default: on for filter/channel pruning with a oneshot or iterative
    schedule, ``tuning.resolve_reinsert_bn``).
    """

    epochs: int = 2
    lr: float | str = "auto"
    optimizer: str = "adamw"
    batch_size: int | str = "auto"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup: float = 0.05
    label_smoothing: float = 0.0
    early_stop_patience: int | None = None
    distill: DistillSpec | str | None = "auto"
    reinsert_bn: bool | str = "auto"

    def __post_init__(self) -> None:
        integer(self.epochs, "finetune.epochs", 0)
        check_lr(self.lr)
        choice(self.optimizer, OPTIMIZERS, "finetune.optimizer")
        check_batch_size(self.batch_size)
        number(self.momentum, "finetune.momentum", 0.0, 1.0)
        number(self.weight_decay, "finetune.weight_decay", 0.0, math.inf)
        choice(self.lr_schedule, LR_SCHEDULES, "finetune.lr_schedule")
        number(self.warmup, "finetune.warmup", 0.0, 1.0)
        number(self.label_smoothing, "finetune.label_smoothing", 0.0, 1.0)
        optional(self.early_stop_patience, integer, "finetune.early_stop_patience", 1)
        if self.distill not in (None, "auto") and not isinstance(self.distill, DistillSpec):
            raise ValueError(
                'finetune.distill must be an object {weight, temperature}, "auto" or null.'
            )
        if not (isinstance(self.reinsert_bn, bool) or self.reinsert_bn == "auto"):
            raise ValueError(
                f'finetune.reinsert_bn must be true, false or "auto"; got {self.reinsert_bn!r}.'
            )

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneSpec:
        d = dict(check_keys(d, cls, "finetune"))
        if isinstance(d.get("distill"), str) and d["distill"] != "auto":
            raise ValueError(
                'finetune.distill must be an object {weight, temperature}, "auto" or null; '
                f"got {d['distill']!r}."
            )
        if d.get("distill") not in (None, "auto"):
            d["distill"] = DistillSpec.from_dict(d["distill"])
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SensitivitySpec:
    """Per-layer sweep: prune each layer alone at each of ``sparsities``."""

    sparsities: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
    target: float | None = None

    def __post_init__(self) -> None:
        if not self.sparsities:
            raise ValueError("sensitivity.sparsities must list at least one sparsity.")
        for s in self.sparsities:
            number(s, "sensitivity.sparsities[]", 0.0, 1.0)
        optional(self.target, number, "sensitivity.target", 0.0, 1.0)

    @classmethod
    def from_dict(cls, d: dict) -> SensitivitySpec:
        d = dict(check_keys(d, cls, "sensitivity"))
        if "sparsities" in d:
            if not isinstance(d["sparsities"], list | tuple):
                raise ValueError("sensitivity.sparsities must be a list of numbers.")
            d["sparsities"] = tuple(d["sparsities"])
        return cls(**d)

    def to_dict(self) -> dict:
        return {"sparsities": list(self.sparsities), "target": self.target}


@dataclass(frozen=True)
class Recipe:
    """A whole run: what kind, what to prune, when, and how to fine-tune."""

    kind: str = "prune"
    name: str = ""
    pruning: PruningSpec = field(default_factory=PruningSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    seed: int = 0
    sensitivity: SensitivitySpec | None = None

    def __post_init__(self) -> None:
        choice(self.kind, RECIPE_KINDS, "kind")
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a string, got {self.name!r}.")
        integer(self.seed, "seed", 0)
        if self.kind == "prune":
            self.pruning.check_target()
        if self.kind == "sensitivity" and self.pruning.granularity == "head":
            raise ValueError(
                "sensitivity analysis sweeps one layer at a time and granularity 'head' cuts "
                "q/k/v and the output projection together; choose another granularity."
            )
        if self.finetune.reinsert_bn is True and self.schedule.kind not in STEPWISE:
            raise ValueError(
                "finetune.reinsert_bn works with the oneshot and iterative schedules (their "
                f"fine-tunings end between prune steps); schedule.kind is '{self.schedule.kind}'."
            )
        if self.kind == "sensitivity" and self.sensitivity is None:
            object.__setattr__(self, "sensitivity", SensitivitySpec())

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Build a recipe from a JSON body; ``model_id``/``dataset_id`` are accepted and dropped.

        Raises:
            ValueError: one sentence naming the bad field.
        """
        d = dict(check_keys(d, cls, "the recipe", ENVELOPE_KEYS))
        for key in ENVELOPE_KEYS:
            d.pop(key, None)
        sections = {
            "pruning": PruningSpec,
            "schedule": ScheduleSpec,
            "finetune": FinetuneSpec,
            "sensitivity": SensitivitySpec,
        }
        for key, section in sections.items():
            if key in d and d[key] is None:
                d.pop(key)  # null means "not given": the section's defaults apply
            elif key in d:
                d[key] = section.from_dict(d[key])
        return cls(**d)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "pruning": self.pruning.to_dict(),
            "schedule": self.schedule.to_dict(),
            "finetune": self.finetune.to_dict(),
            "seed": self.seed,
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
        }


def runtime_for_source(body: dict, model_format: str | None) -> dict:
    """A recipe body with ``pruning.deploy_runtime`` "onnxruntime" when the model came as an
    ONNX file and the body does not say where the pruned model runs: an ONNX upload is most
    likely deployed in ONNX Runtime, whose kernels work in blocks of channels, so its widths
    are shaped for it (the new-run form preselects the same). Only a physical filter or
    channel prune without a latency budget (those are timed in PyTorch); else ``body`` as is.

    Example:
        >>> body = {"kind": "prune", "pruning": {"granularity": "filter", "physical": True}}
        >>> runtime_for_source(body, "onnx")["pruning"]["deploy_runtime"]
        'onnxruntime'
        >>> runtime_for_source(body, "torchscript") is body
        True
    """
    pruning = body.get("pruning")
    if (
        model_format != "onnx"
        or body.get("kind", "prune") != "prune"
        or not isinstance(pruning, dict)
        or "deploy_runtime" in pruning
        or pruning.get("physical") is not True
        or pruning.get("granularity") not in ("filter", "channel")
        or (isinstance(pruning.get("target"), dict) and "latency_ms" in pruning["target"])
    ):
        return body
    return {**body, "pruning": {**pruning, "deploy_runtime": "onnxruntime"}}
