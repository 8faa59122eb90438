"""The notes a selection leaves: a layer kept from being emptied, kept counts rounded (up or
down, :mod:`.rounding`) to ``pruning.round_to`` (or, with ``round_to_cap`` "layer", to each
layer's capped multiple), and the global ranking's normalisation.

Example:
    >>> from app.pruning.pruning_spec import PruningSpec
    >>> spec = PruningSpec("filter", "l1", sparsity=0.5, round_to=4)
    >>> kept_note("conv1", 3, 4, spec)["text"]
    "'conv1' kept 3 unit(s), rounded up to 4 (a multiple of pruning.round_to 4)"
    >>> kept_note("conv1", 0, 4, spec)["level"]
    'warning'
"""

from __future__ import annotations

from app.pruning.notes import Note, info, warning
from app.pruning.pruning_spec import PruningSpec

NORMALIZED_NOTE = (
    "global ranking: each layer's (or coupled group's) scores divided by their mean "
    "(pruning.normalize 'mean'), so layers of different weight scales compare fairly"
)

SPARSEGPT_LAYERWISE_NOTE = (
    "sparsegpt pruned every layer to its own target, as published: its saliencies "
    "(w^2 / [H^-1]_jj^2) are not comparable across layers, so scope 'global' ranks nothing "
    "across layers here"
)

LM_GLOBAL_MAGNITUDE = (
    "magnitude with scope 'global' on a language model: one |w| ranking across layers prunes "
    "the attention value/output projections hardest; the Wanda and SparseGPT papers compare "
    "against layer-wise magnitude (scope 'layerwise', each layer at the target), which "
    "measured better on the lab's byte-level LMs (benchmarks/lm_one_shot.py, 50%: perplexity "
    "5.67 vs 6.01 on a 4-layer Llama, 1.34 vs 1.66 on a 2-layer one)"
)


def scope_notes(spec: PruningSpec, task: str | None) -> list[Note]:
    """A note for global element magnitude on a language model (``task``: the data's task)."""
    magnitude = spec.criterion in ("l1", "l2", "threshold") and spec.granularity == "element"
    lm = task == "language_model" and spec.scope == "global" and spec.threshold is None
    return [info(LM_GLOBAL_MAGNITUDE)] if magnitude and lm else []


def kept_note(n: str, kept: int, need: int, spec: PruningSpec, multiple: int = 0) -> Note:
    """Which rule kept more of layer ``n``: the emptied-layer guard (``kept`` was 0, a
    warning), or rounding a kept count up to ``multiple``, ``pruning.round_to`` or its
    per-layer cap (an info note)."""
    rule = _rule(spec, multiple or spec.round_to)
    if kept == 0:
        rounded = f" ({rule})" if need > 1 else ""
        return emptied_note(
            n, f"'{n}' would have been emptied; its best {need} unit(s) kept{rounded}", spec
        )
    return info(f"'{n}' kept {kept} unit(s), rounded up to {need} (a multiple of {rule})", layer=n)


def _rule(spec: PruningSpec, multiple: int | None) -> str:
    if spec.round_to_cap == "layer" and multiple != spec.round_to:
        return f"{multiple}: pruning.round_to {spec.round_to} capped for this layer's width"
    return f"pruning.round_to {spec.round_to}"


def rounded_note(
    spec: PruningSpec,
    multiples: dict[str, int],
    coupled: dict[str, int] | None = None,
    reached: tuple[float, float | None] = (0.0, None),
) -> str:
    """What rounding the kept counts did: one multiple, or (``round_to_cap`` "layer") each
    layer's (or coupled group's) multiple; ``coupled``: a group's leader -> its other members;
    ``reached``: (share asked, share of the global pool's parameters removed, None without).

    Example:
        >>> spec = PruningSpec("filter", "l1", sparsity=0.5, round_to=16, round_to_cap="layer")
        >>> rounded_note(spec, {"a": 4, "b": 16, "c": 16}, {"b": 3}).split(": ")[-1]
        "16 'b' (+3 coupled), 'c'; 4 'a'"
        >>> "removed 29.1% of its parameters for 30%" in rounded_note(spec, {}, None, (0.3, 0.2912))
        True
    """
    asked, removed = reached
    how = (
        "kept filter/channel counts rounded up or down (the lowest-ranked blocks cut first) so "
        "the removed share lands nearest the one asked"
        + (
            ""
            if removed is None
            else f"; the global ranking removed {removed:.1%} of its parameters for {asked:.0%}"
        )
    )
    if spec.round_to_cap != "layer":
        return f"{how}; each a multiple of pruning.round_to {spec.round_to}"
    by: dict[int, list[str]] = {}
    for n, m in multiples.items():
        more = (coupled or {}).get(n)
        by.setdefault(m, []).append(f"'{n}'" + (f" (+{more} coupled)" if more else ""))
    each = "; ".join(f"{m} {', '.join(names)}" for m, names in sorted(by.items(), reverse=True))
    return (
        f"{how}; per layer (or coupled group) a multiple of pruning.round_to {spec.round_to} "
        f"capped at the largest power of two at most a quarter of its width "
        f"(pruning.round_to_cap 'layer'): {each}"
    )


def emptied_note(n: str, text: str, spec: PruningSpec) -> Note:
    """A warning that layer ``n`` (or its rows) would have been emptied; with a threshold,
    what to do about it."""
    if spec.threshold is not None:
        text += (
            "; the threshold is too high for this layer: give it its own sparsity "
            "(pruning.overrides), exclude it, or prune by sparsity instead"
        )
    return warning(text, layer=n)


def floor_note(names: list[str], floor: float) -> str:
    """The layers a global element ranking would have cut below ``pruning.layer_floor``.

    Example:
        >>> floor_note(["stem"], 0.5)[:44]
        "global ranking: 'stem' kept 0.5 x the share "
    """
    listed = ", ".join(f"'{n}'" for n in names)
    return (
        f"global ranking: {listed} kept {floor:g} x the share a uniform cut keeps "
        "(pruning.layer_floor); the rest of the cut fell on the other layers"
    )
