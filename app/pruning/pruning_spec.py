"""The ``pruning`` section of a recipe: what to prune, how to rank it, and every check on it.

No torch import here (the web layer validates recipes through :mod:`app.pruning.spec`).

Example:
    >>> PruningSpec.from_dict({"granularity": "filter", "criterion": "l1", "sparsity": 0.5}).scope
    'global'
    >>> PruningSpec(granularity="element", criterion="l1", sparsity=1.5)
    Traceback (most recent call last):
    ...
    ValueError: pruning.sparsity must be a number in [0, 1), got 1.5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from app.catalogue import (
    CRITERION_NAMES,
    DEPLOY_RUNTIMES,
    GRANULARITY_NAMES,
    SCOPES,
    VALID_PAIRS,
    WANDA_GROUPS,
)
from app.pruning.budget_spec import check_budget
from app.pruning.spec_checks import check_keys, choice, integer, number, optional

# Global filter/channel ranking: the most of one layer's (or coupled group's) units it may take.
MAX_LAYER_SPARSITY = 0.9
# Global filter/channel ranking: each layer's (or coupled group's) scores divided by their mean
# ("mean", Torch-Pruning's default normalizer) or compared raw ("none").
NORMALIZERS: tuple[str, ...] = ("mean", "none")
NORMALIZE = "mean"
# Global element ranking: every layer keeps at least this times the share a uniform cut keeps
# (masks/floor.py); 0 turns it off.
LAYER_FLOOR = 0.5
# Filter/channel round_to: one multiple everywhere ("none"), or each layer's (or coupled
# group's) multiple capped at a quarter of its width ("layer", the measured default's;
# layer_multiple).
ROUND_TO_CAPS: tuple[str, ...] = ("none", "layer")


def layer_multiple(round_to: int, units: int) -> int:
    """``round_to`` capped for a layer (or coupled group) of ``units`` filters/channels: at the
    largest power of two at most ``units / 4``, so the layer can still lose three quarters.

    Example:
        >>> [layer_multiple(16, w) for w in (3, 8, 16, 32, 64, 128)]
        [1, 2, 4, 8, 16, 16]
    """
    return max(1, min(round_to, 1 << max(0, (units // 4).bit_length() - 1)))


HEAD_TARGET = (
    "granularity 'head' takes a pruning.sparsity (the fraction of heads removed), "
    "not a threshold, per-layer overrides or a stored allocation."
)


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
    round_to_cap: str = "none"  # "layer": round_to capped per layer at a quarter of its width
    deploy_runtime: str = "pytorch"  # where the pruned model runs: shapes the default round_to
    calibration_batches: int = 4
    bn_l1: float = 0.0  # L1 sparsity-training strength on BN gamma (applied by the trainer)
    target: dict[str, float] | None = None  # a budget instead of a sparsity (check_budget)
    wanda_group: str = "row"  # wanda (element) compares scores per output row or per layer
    max_layer_sparsity: float = MAX_LAYER_SPARSITY  # global filter/channel: cap per layer/group
    normalize: str = NORMALIZE  # global filter/channel: per layer/group score normalisation
    layer_floor: float = LAYER_FLOOR  # global element: least share kept per layer vs uniform
    allocation_from: int | None = None  # a sensitivity run whose allocation becomes overrides
    bn_recalibrate: bool = True  # re-estimate BatchNorm statistics after every prune step
    bias_correction: bool = True  # BN-free nets: removed channels' mean into the next bias

    def __post_init__(self) -> None:
        choice(self.granularity, GRANULARITY_NAMES, "pruning.granularity")
        choice(self.criterion, CRITERION_NAMES, "pruning.criterion")
        if self.granularity not in VALID_PAIRS[self.criterion]:
            raise ValueError(
                f"criterion '{self.criterion}' does not support granularity "
                f"'{self.granularity}'; it supports: "
                f"{', '.join(g for g in GRANULARITY_NAMES if g in VALID_PAIRS[self.criterion])}."
            )
        choice(self.scope, SCOPES, "pruning.scope")
        optional(self.sparsity, number, "pruning.sparsity", 0.0, 1.0)
        optional(self.threshold, number, "pruning.threshold", 0.0, math.inf)
        nm = self.nm
        if (
            len(nm) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in nm)
            or not 1 <= nm[0] < nm[1]
        ):
            raise ValueError(f"pruning.nm must be [N, M] with 1 <= N < M, got {list(nm)}.")
        if tuple(nm) != (2, 4) and self.granularity != "nm":
            raise ValueError(
                f"pruning.nm applies to granularity 'nm' only, not '{self.granularity}'."
            )
        for name in self.exclude:
            if not isinstance(name, str) or not name:
                raise ValueError(f"pruning.exclude must list layer names, got {name!r}.")
        for name, value in self.overrides.items():
            number(value, f"pruning.overrides['{name}']", 0.0, 1.0)
        for key in ("physical", "bn_recalibrate", "bias_correction"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(
                    f"pruning.{key} must be true or false, got {getattr(self, key)!r}."
                )
        optional(self.round_to, integer, "pruning.round_to", 1)
        if self.round_to is not None and self.granularity not in ("filter", "channel"):
            raise ValueError(
                "pruning.round_to applies to granularities 'filter' and 'channel' only, "
                f"not '{self.granularity}'."
            )
        choice(self.round_to_cap, ROUND_TO_CAPS, "pruning.round_to_cap")
        if self.round_to_cap != "none" and self.granularity not in ("filter", "channel"):
            raise ValueError(
                "pruning.round_to_cap applies to granularities 'filter' and 'channel' only, "
                f"not '{self.granularity}'."
            )
        choice(self.deploy_runtime, DEPLOY_RUNTIMES, "pruning.deploy_runtime")
        if self.deploy_runtime != "pytorch" and (
            self.granularity not in ("filter", "channel") or not self.physical
        ):
            raise ValueError(
                "pruning.deploy_runtime applies to granularities 'filter' and 'channel' with "
                "pruning.physical true (it shapes the widths a physically pruned model keeps)."
            )
        if self.granularity == "layer" and self.threshold is not None:
            raise ValueError(
                "pruning.threshold does not apply to granularity 'layer' (whole blocks go by "
                "their share of the parameters); set pruning.sparsity instead."
            )
        if self.granularity == "head" and (
            self.threshold is not None or self.overrides or self.allocation_from is not None
        ):
            raise ValueError(HEAD_TARGET)
        integer(self.calibration_batches, "pruning.calibration_batches", 1)
        number(self.bn_l1, "pruning.bn_l1", 0.0, math.inf)
        self._check_budget()
        choice(self.wanda_group, WANDA_GROUPS, "pruning.wanda_group")
        if self.wanda_group != "row" and (self.criterion, self.granularity) != ("wanda", "element"):
            raise ValueError(
                "pruning.wanda_group applies to criterion 'wanda' at granularity 'element' only."
            )
        optional(self.allocation_from, integer, "pruning.allocation_from", 1)
        self._check_cap()
        self._check_floor()

    def _check_budget(self) -> None:
        if self.target is None:
            return
        check_budget(self.target)
        if self.granularity not in ("filter", "channel") or not self.physical:
            raise ValueError(
                "pruning.target needs granularity 'filter' or 'channel' with "
                "pruning.physical true: a budget is met by removing channels."
            )
        if "latency_ms" in self.target and self.deploy_runtime != "pytorch":
            raise ValueError(
                "a pruning.target latency_ms budget is timed in PyTorch on the machine that runs "
                f"the job, not in pruning.deploy_runtime '{self.deploy_runtime}'; give a params "
                "or flops budget (or a sparsity) for a model shaped for that runtime."
            )

    def _check_cap(self) -> None:
        cap = number(self.max_layer_sparsity, "pruning.max_layer_sparsity", 0.0, 1.0, hi_open=False)
        choice(self.normalize, NORMALIZERS, "pruning.normalize")
        ranked = self.scope == "global" and self.granularity in ("filter", "channel")
        for key, value, default in (
            ("max_layer_sparsity", cap, MAX_LAYER_SPARSITY),
            ("normalize", self.normalize, NORMALIZE),
        ):
            if value != default and not ranked:
                raise ValueError(
                    f"pruning.{key} applies to scope 'global' at granularities 'filter' and "
                    "'channel' only (it shapes the global ranking of filters/channels)."
                )

    def _check_floor(self) -> None:
        floor = number(self.layer_floor, "pruning.layer_floor", 0.0, 1.0, hi_open=False)
        ranked = self.scope == "global" and self.granularity == "element"
        if floor != LAYER_FLOOR and not ranked:
            raise ValueError(
                "pruning.layer_floor applies to scope 'global' at granularity 'element' only "
                "(it shapes the global ranking of weights)."
            )

    def multiple(self, units: int) -> int:
        """The multiple a layer (or coupled group) of ``units`` filters/channels keeps: 1
        without ``round_to``; ``round_to``, capped for the layer with ``round_to_cap`` "layer"."""
        if not self.round_to:
            return 1
        return (
            layer_multiple(self.round_to, units) if self.round_to_cap == "layer" else self.round_to
        )

    def check_target(self) -> None:
        """Raise ValueError unless exactly one of sparsity/threshold is set (nm needs neither)."""
        if self.granularity == "nm":
            if self.threshold is not None:
                raise ValueError("pruning.threshold cannot be used with granularity 'nm'.")
            return
        if self.criterion == "threshold" and self.threshold is None:
            raise ValueError("criterion 'threshold' needs pruning.threshold (prune |w| < t).")
        given = [v for v in (self.sparsity, self.threshold, self.target) if v is not None]
        if len(given) != 1:
            raise ValueError(
                "set exactly one of pruning.sparsity and pruning.threshold "
                "(or a budget in pruning.target)."
            )

    @classmethod
    def from_dict(cls, d: dict) -> PruningSpec:
        d = dict(check_keys(d, cls, "pruning"))
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
        if d.get("target") is not None:
            d["target"] = dict(check_budget(d["target"]))
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nm"], d["exclude"], d["overrides"] = (
            list(self.nm),
            list(self.exclude),
            dict(self.overrides),
        )
        d["target"] = None if self.target is None else dict(self.target)
        return d
