"""A pruning recipe as frozen dataclasses that round-trip through JSON.

No torch import here: the web layer validates recipes and offers valid
(criterion, granularity) pairs from these tables without loading torch.
The names it accepts come from :mod:`app.catalogue`.

Example:
    >>> r = Recipe.from_dict({"kind": "prune", "name": "x",
    ...     "pruning": {"granularity": "element", "criterion": "l1", "sparsity": 0.9}})
    >>> Recipe.from_dict(r.to_dict()) == r
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from app.catalogue import (
    CRITERION_NAMES,
    GRANULARITY_NAMES,
    LR_SCHEDULES,
    OPTIMIZERS,
    RECIPE_KINDS,
    RETRAIN_INITS,
    SCHEDULE_KINDS,
    SCOPES,
    VALID_PAIRS,
    WANDA_GROUPS,
)

# Keys of the POST /api/runs body that belong to the run row, not to the recipe.
ENVELOPE_KEYS: frozenset[str] = frozenset({"model_id", "dataset_id"})


def _check_keys(d: Any, cls: type, section: str, ignore: frozenset[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise ValueError(f"{section} must be a JSON object, got {type(d).__name__}.")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - allowed - ignore)
    if unknown:
        raise ValueError(
            f"unknown key '{unknown[0]}' in {section}; allowed keys: {', '.join(sorted(allowed))}."
        )
    return d


def _choice(value: Any, options: tuple[str, ...], name: str) -> str:
    if value not in options:
        raise ValueError(f"{name} {value!r} is not one of: {', '.join(options)}.")
    return value


def _number(value: Any, name: str, lo: float, hi: float, *, hi_open: bool = True) -> float:
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    bad = not ok_type or not math.isfinite(value) or value < lo
    bad = bad or (value >= hi if hi_open else value > hi)
    if bad:
        right = ")" if hi_open else "]"
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}{right}, got {value!r}.")
    return float(value)


def _int(value: Any, name: str, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}.")
    return int(value)


def _optional(value: Any, check: Any, *args: Any, **kw: Any) -> Any:
    return None if value is None else check(value, *args, **kw)


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how to rank it; see ``shared/design/PRUNING.md`` sections 3-4."""

    granularity: str = "element"
    criterion: str = "l1"
    scope: str = "global"
    sparsity: float | None = None
    threshold: float | None = None
    nm: tuple[int, int] = (2, 4)
    exclude: tuple[str, ...] = ()
    overrides: dict[str, float] = field(default_factory=dict)
    physical: bool = False
    round_to: int | None = None
    calibration_batches: int = 4
    bn_l1: float = 0.0  # L1 sparsity-training strength on BN gamma (applied by the trainer)
    wanda_group: str = "row"  # wanda (element) compares scores per output row or per layer

    def __post_init__(self) -> None:
        _choice(self.granularity, GRANULARITY_NAMES, "pruning.granularity")
        _choice(self.criterion, CRITERION_NAMES, "pruning.criterion")
        if self.granularity not in VALID_PAIRS[self.criterion]:
            raise ValueError(
                f"criterion '{self.criterion}' does not support granularity "
                f"'{self.granularity}'; it supports: "
                f"{', '.join(g for g in GRANULARITY_NAMES if g in VALID_PAIRS[self.criterion])}."
            )
        _choice(self.scope, SCOPES, "pruning.scope")
        _optional(self.sparsity, _number, "pruning.sparsity", 0.0, 1.0)
        _optional(self.threshold, _number, "pruning.threshold", 0.0, math.inf)
        nm = self.nm
        if (
            len(nm) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in nm)
            or not 1 <= nm[0] < nm[1]
        ):
            raise ValueError(f"pruning.nm must be [N, M] with 1 <= N < M, got {list(nm)}.")
        for name in self.exclude:
            if not isinstance(name, str) or not name:
                raise ValueError(f"pruning.exclude must list layer names, got {name!r}.")
        for name, value in self.overrides.items():
            _number(value, f"pruning.overrides['{name}']", 0.0, 1.0)
        if not isinstance(self.physical, bool):
            raise ValueError(f"pruning.physical must be true or false, got {self.physical!r}.")
        _optional(self.round_to, _int, "pruning.round_to", 1)
        if self.round_to is not None and self.granularity not in ("filter", "channel"):
            raise ValueError(
                "pruning.round_to applies to granularities 'filter' and 'channel' only, "
                f"not '{self.granularity}'."
            )
        if self.granularity == "layer" and self.threshold is not None:
            raise ValueError(
                "pruning.threshold does not apply to granularity 'layer' (whole blocks go by "
                "their share of the parameters); set pruning.sparsity instead."
            )
        _int(self.calibration_batches, "pruning.calibration_batches", 1)
        _number(self.bn_l1, "pruning.bn_l1", 0.0, math.inf)
        _choice(self.wanda_group, WANDA_GROUPS, "pruning.wanda_group")
        if self.wanda_group != "row" and (self.criterion, self.granularity) != ("wanda", "element"):
            raise ValueError(
                "pruning.wanda_group applies to criterion 'wanda' at granularity 'element' only."
            )

    def check_target(self) -> None:
        """Raise ValueError unless exactly one of sparsity/threshold is set (nm needs neither)."""
        if self.granularity == "nm":
            if self.threshold is not None:
                raise ValueError("pruning.threshold cannot be used with granularity 'nm'.")
            return
        if self.criterion == "threshold" and self.threshold is None:
            raise ValueError("criterion 'threshold' needs pruning.threshold (prune |w| < t).")
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError("set exactly one of pruning.sparsity and pruning.threshold.")

    @classmethod
    def from_dict(cls, d: dict) -> PruningSpec:
        d = dict(_check_keys(d, cls, "pruning"))
        if "nm" in d:
            if not isinstance(d["nm"], list | tuple):
                raise ValueError(f"pruning.nm must be [N, M], got {d['nm']!r}.")
            d["nm"] = tuple(d["nm"])
        if "exclude" in d:
            if not isinstance(d["exclude"], list | tuple):
                raise ValueError("pruning.exclude must be a list of layer names.")
            d["exclude"] = tuple(d["exclude"])
        if "overrides" in d and not isinstance(d["overrides"], dict):
            raise ValueError("pruning.overrides must map layer names to sparsities.")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nm"], d["exclude"], d["overrides"] = (
            list(self.nm),
            list(self.exclude),
            dict(self.overrides),
        )
        return d


@dataclass(frozen=True)
class ScheduleSpec:
    """When to prune: oneshot, iterative, agp, at_init or retrain, in ``steps`` steps."""

    kind: str = "oneshot"
    steps: int = 1
    max_accuracy_drop: float | None = None
    retrain_init: str = "rewind"

    def __post_init__(self) -> None:
        _choice(self.kind, SCHEDULE_KINDS, "schedule.kind")
        _int(self.steps, "schedule.steps", 1)
        _optional(
            self.max_accuracy_drop, _number, "schedule.max_accuracy_drop", 0.0, 1.0, hi_open=False
        )
        _choice(self.retrain_init, RETRAIN_INITS, "schedule.retrain_init")

    @classmethod
    def from_dict(cls, d: dict) -> ScheduleSpec:
        return cls(**_check_keys(d, cls, "schedule"))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneSpec:
    """How to (re)train between and after pruning steps."""

    epochs: int = 2
    lr: float = 0.01
    optimizer: str = "sgd"
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    label_smoothing: float = 0.0
    early_stop_patience: int | None = None

    def __post_init__(self) -> None:
        _int(self.epochs, "finetune.epochs", 0)
        if _number(self.lr, "finetune.lr", 0.0, 10.0, hi_open=False) == 0.0:
            raise ValueError("finetune.lr must be greater than 0.")
        _choice(self.optimizer, OPTIMIZERS, "finetune.optimizer")
        _int(self.batch_size, "finetune.batch_size", 1)
        _number(self.momentum, "finetune.momentum", 0.0, 1.0)
        _number(self.weight_decay, "finetune.weight_decay", 0.0, math.inf)
        _choice(self.lr_schedule, LR_SCHEDULES, "finetune.lr_schedule")
        _number(self.label_smoothing, "finetune.label_smoothing", 0.0, 1.0)
        _optional(self.early_stop_patience, _int, "finetune.early_stop_patience", 1)

    @classmethod
    def from_dict(cls, d: dict) -> FinetuneSpec:
        return cls(**_check_keys(d, cls, "finetune"))

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
            _number(s, "sensitivity.sparsities[]", 0.0, 1.0)
        _optional(self.target, _number, "sensitivity.target", 0.0, 1.0)

    @classmethod
    def from_dict(cls, d: dict) -> SensitivitySpec:
        d = dict(_check_keys(d, cls, "sensitivity"))
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
        _choice(self.kind, RECIPE_KINDS, "kind")
        if not isinstance(self.name, str):
            raise ValueError(f"name must be a string, got {self.name!r}.")
        _int(self.seed, "seed", 0)
        if self.kind == "prune":
            self.pruning.check_target()
        if self.kind == "sensitivity" and self.sensitivity is None:
            object.__setattr__(self, "sensitivity", SensitivitySpec())

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        """Build a recipe from a JSON body; ``model_id``/``dataset_id`` are accepted and dropped.

        Raises:
            ValueError: one sentence naming the bad field.
        """
        d = dict(_check_keys(d, cls, "the recipe", ENVELOPE_KEYS))
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
