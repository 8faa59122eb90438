"""What the lab offers, as plain data: one catalogue read by the engine, the routes and the pages.

Torch-free, so the web process can validate recipes and fill the new-run form
(`GET /api/catalogue`) without loading torch. The engine's registries
(`app.pruning.criteria.CRITERIA`, `app.pruning.granularity.GRANULARITIES`, `app.zoo`)
are built from these entries, and a test checks that they agree.

Example:
    >>> CRITERIA["wanda"].needs_data, GRANULARITIES["filter"].structured
    (True, True)
    >>> sorted(g for g in GRANULARITIES if g in CRITERIA["fpgm"].granularities)
    ['filter']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GranularityInfo:
    """A unit level: what one unit is, whether it is structured (whole channels or blocks go)
    and whether whole channels go (then physical removal can shrink the layers)."""

    name: str
    description: str
    structured: bool
    channels: bool = False


@dataclass(frozen=True)
class CriterionInfo:
    """An importance measure: the levels it scores and what it needs from the model and data."""

    name: str
    description: str
    granularities: frozenset[str]
    needs_bn: bool = False
    needs_data: bool = False


@dataclass(frozen=True)
class DatasetInfo:
    """A built-in dataset (no upload needed)."""

    id: str
    name: str
    input_shape: tuple[int, ...]
    n_classes: int
    description: str
    n_train: int
    n_test: int


@dataclass(frozen=True)
class ArchitectureInfo:
    """A built-in architecture that weights-only uploads can name."""

    name: str
    default_input_shape: tuple[int, ...]
    description: str


GRANULARITIES: dict[str, GranularityInfo] = {
    g.name: g
    for g in (
        GranularityInfo("element", "single weights", False),
        GranularityInfo("vector", "a 1-D row inside a kernel, W[o, i, r, :]", False),
        GranularityInfo("kernel", "a whole kernel W[o, i, :, :]", False),
        GranularityInfo("group", "the same (in, kh, kw) positions in every filter", False),
        GranularityInfo("filter", "an output channel / Linear row, with its bias", True, True),
        GranularityInfo("channel", "an input channel / Linear column", True, True),
        GranularityInfo(
            "nm", "at most N non-zeros in every M consecutive input channels or features", False
        ),
        GranularityInfo("layer", "a whole residual branch (identity shortcut kept)", True),
        GranularityInfo(
            "head",
            "a whole attention head (a KV group under grouped-query attention): its q/k/v "
            "rows and output-projection columns; the hidden size is kept",
            True,
        ),
    )
}
GRANULARITY_NAMES: tuple[str, ...] = tuple(GRANULARITIES)
STRUCTURED: frozenset[str] = frozenset(n for n, g in GRANULARITIES.items() if g.structured)
"""Levels that remove whole channels or blocks (residual branches)."""
CHANNEL_LEVELS: frozenset[str] = frozenset(n for n, g in GRANULARITIES.items() if g.channels)
"""Levels that remove whole channels: the ones physical removal (`physical: true`) can shrink."""

_ALL = frozenset(GRANULARITY_NAMES)
_FINE = frozenset({"element", "vector", "kernel", "group", "filter", "channel", "nm"})

CRITERIA: dict[str, CriterionInfo] = {
    c.name: c
    for c in (
        CriterionInfo("l1", "mean |w| of the unit", _ALL),
        CriterionInfo("l2", "root mean square of the unit", _ALL),
        CriterionInfo("threshold", "|w| below an absolute threshold", frozenset({"element"})),
        CriterionInfo(
            "bn_gamma", "|gamma| of the following BatchNorm", frozenset({"filter"}), needs_bn=True
        ),
        CriterionInfo(
            "synaptic", "filter norm times BN |gamma|", frozenset({"filter"}), needs_bn=True
        ),
        CriterionInfo("fpgm", "distance to the geometric median", frozenset({"filter"})),
        CriterionInfo(
            "reconstruction",
            "ThiNet: channels whose removal the next layer can re-fit",
            frozenset({"channel"}),
            needs_data=True,
        ),
        CriterionInfo("taylor", "|w * dL/dw| (first-order Taylor)", _FINE, needs_data=True),
        CriterionInfo("snip", "connection sensitivity |w * g| at a batch", _FINE, needs_data=True),
        CriterionInfo(
            "apoz", "average percentage of zero activations", frozenset({"filter"}), needs_data=True
        ),
        CriterionInfo(
            "wanda",
            "|w| times the input activation norm",
            frozenset({"element", "nm", "channel"}),
            needs_data=True,
        ),
        CriterionInfo(
            "sparsegpt",
            "SparseGPT: OBS saliency from calibration inputs, remaining weights updated",
            frozenset({"element", "nm"}),
            needs_data=True,
        ),
        CriterionInfo("random", "uniform random scores (a baseline)", _ALL),
    )
}
CRITERION_NAMES: tuple[str, ...] = tuple(CRITERIA)
VALID_PAIRS: dict[str, frozenset[str]] = {n: c.granularities for n, c in CRITERIA.items()}
"""criterion -> the granularities it can score."""
NEEDS_BN: frozenset[str] = frozenset(n for n, c in CRITERIA.items() if c.needs_bn)
MASKS_ONLY_NOTE = "masks only: no speed-up expected"
"""The one note a run (or a model format) gets when its pruned weights stay in place as zeros."""

SCHEDULE_KINDS: tuple[str, ...] = ("oneshot", "iterative", "agp", "at_init", "retrain")
RECIPE_KINDS: tuple[str, ...] = ("prune", "sensitivity", "train")
SCOPES: tuple[str, ...] = ("global", "layerwise")
WANDA_GROUPS: tuple[str, ...] = ("row", "layer")
"""What wanda's element scores are compared within: each output row (as published) or the layer."""
DEPLOY_RUNTIMES: tuple[str, ...] = ("pytorch", "onnxruntime")
"""Where a physically pruned model will run: the default ``round_to`` is shaped for it (PyTorch:
the measured multiple capped per layer; ONNX Runtime: its NCHWc block on every layer)."""
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant", "step")
RETRAIN_INITS: tuple[str, ...] = ("rewind", "reinit")
REWIND_FILES: dict[str, str] = {"init": "init.safetensors", "early": "rewind.safetensors"}
"""A train run's rewind points (before the first batch, after an early epoch) -> the artifact
it stores each as; ``schedule.rewind_from`` names one."""
REWIND_POINTS: tuple[str, ...] = tuple(REWIND_FILES)

DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits",
        "digits (scikit-learn 8x8, built in)",
        (1, 8, 8),
        10,
        "1,797 handwritten digits, 8x8 grey levels; stratified 70/30 split, seed 0",
        n_train=1257,
        n_test=540,
    ),
}
BUILTIN_DATASETS: tuple[str, ...] = tuple(DATASETS)

ARCHITECTURES: dict[str, ArchitectureInfo] = {
    a.name: a
    for a in (
        ArchitectureInfo("mlp", (1, 8, 8), "LeNet-300-100 style MLP"),
        ArchitectureInfo("lenet5", (1, 8, 8), "LeNet-5 for small images"),
        ArchitectureInfo("cnn_small", (1, 8, 8), "3 conv-BN-ReLU blocks + Linear"),
        ArchitectureInfo("resnet20", (3, 32, 32), "CIFAR ResNet-20 (BN, residual adds)"),
        ArchitectureInfo("vgg11_bn", (3, 32, 32), "VGG-11 with BN"),
        ArchitectureInfo("transformer", (1, 8, 8), "small ViT over patches"),
    )
}

MAX_COMPARE = 6
"""The compare page shows 2 to this many runs."""


def check_arch(name: str) -> None:
    """Raise ``ValueError`` naming the built-in architectures when ``name`` is not one."""
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; built-in architectures: {', '.join(ARCHITECTURES)}"
        )


def as_json() -> dict:
    """The whole catalogue as JSON-ready data (served at ``GET /api/catalogue``)."""
    return {
        "granularities": [asdict(g) for g in GRANULARITIES.values()],
        "criteria": [
            {**asdict(c), "granularities": [g for g in GRANULARITY_NAMES if g in c.granularities]}
            for c in CRITERIA.values()
        ],
        "schedules": list(SCHEDULE_KINDS),
        "recipe_kinds": list(RECIPE_KINDS),
        "scopes": list(SCOPES),
        "wanda_groups": list(WANDA_GROUPS),
        "deploy_runtimes": list(DEPLOY_RUNTIMES),
        "optimizers": list(OPTIMIZERS),
        "lr_schedules": list(LR_SCHEDULES),
        "retrain_inits": list(RETRAIN_INITS),
        "rewind_points": list(REWIND_POINTS),
        "datasets": [{**asdict(d), "input_shape": list(d.input_shape)} for d in DATASETS.values()],
        "architectures": [
            {**asdict(a), "default_input_shape": list(a.default_input_shape)}
            for a in ARCHITECTURES.values()
        ],
        "max_compare": MAX_COMPARE,
    }
