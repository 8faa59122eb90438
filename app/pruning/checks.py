"""Warnings for a result far from what was asked: the sparsity (or parameter cut) off by more
than :data:`SPARSITY_TOLERANCE`, or a final accuracy at chance level; and the table of
requested versus achieved sparsity per layer and per coupled group.

What counts as "achieved" is what a user measures: the share of the prunable layers' weights
(at the start of the run) that are gone, as zeros or physically removed; the next layers'
input columns a filter cut takes with it count too. "Asked" is the recipe's sparsity over the
layers it applies to (excluded and protected layers ask 0, overrides their own value).

Example:
    >>> chance_note(0.11, 0.95, 10, threshold=None)["level"]
    'warning'
    >>> chance_note(0.90, 0.95, 10, threshold=None) is None
    True
"""

from __future__ import annotations

from app.pruning.masks.plan import MaskPlan
from app.pruning.notes import Note, info, warning

SPARSITY_TOLERANCE = 0.03  # three points
CHANCE_MARGIN = 0.05  # above 1/n_classes, still "at chance"


def asked_sparsity(plan: MaskPlan) -> float | None:
    """The size-weighted sparsity the recipe asked of all prunable layers (None: a threshold)."""
    sizes = {n: m.numel() for n, m in plan.masks.items()}
    if not sizes or any(plan.requested.get(n) is None for n in sizes):
        return None
    return sum(float(plan.requested[n] or 0.0) * s for n, s in sizes.items()) / sum(sizes.values())


def sparsity_notes(plan: MaskPlan, achieved: float, *, physical: bool) -> list[Note]:
    """A table of requested versus achieved per layer (info) and a warning when the whole run
    is off by more than the tolerance."""
    rows = [
        f"{n} {100 * float(plan.requested[n] or 0.0):.0f}%->{100 * plan.achieved[n]:.0f}%"
        for n in plan.masks
        if plan.requested.get(n) is not None
    ]
    notes = [info("requested -> achieved sparsity per layer: " + ", ".join(rows))] if rows else []
    groups = [
        f"{'+'.join(members)} {100 * float(plan.requested[lead] or 0.0):.0f}%->"
        f"{100 * _group_achieved(plan, members):.0f}%"
        for lead, members in plan.groups.items()
        if plan.requested.get(lead) is not None
    ]
    if groups:
        notes.append(info("requested -> achieved per coupled group: " + ", ".join(groups)))
    asked = asked_sparsity(plan)
    if asked is not None and abs(achieved - asked) > SPARSITY_TOLERANCE:
        what = "parameter cut" if physical else "sparsity"
        notes.append(
            warning(
                f"achieved {what} {100 * achieved:.1f}% of the prunable weights is far from the "
                f"{100 * asked:.1f}% asked (layers kept, coupled channels or the next layers' "
                "inputs removed with a filter explain the difference; see the per-layer table)"
            )
        )
    return notes


def _group_achieved(plan: MaskPlan, members: tuple[str, ...]) -> float:
    sizes = {n: plan.masks[n].numel() for n in members}
    return sum(plan.achieved[n] * s for n, s in sizes.items()) / sum(sizes.values())


def chance_note(
    accuracy: float, baseline: float, n_classes: int, *, threshold: float | None
) -> Note | None:
    """A warning when the final accuracy is at chance (and the baseline was not)."""
    chance = 1.0 / max(n_classes, 1)
    if accuracy > chance + CHANCE_MARGIN or baseline <= chance + CHANCE_MARGIN:
        return None
    text = (
        f"final accuracy {accuracy:.3f} is at chance level (1/{n_classes} = {chance:.3f}): "
        "the pruned model no longer predicts"
    )
    return warning(_advice(text, threshold))


def uniform_note(
    perplexity: float, baseline: float, vocab: int, *, threshold: float | None
) -> Note | None:
    """A language model's chance level: a warning when the final perplexity is no better than
    guessing uniformly over the vocabulary (perplexity >= vocab) and the baseline's was.

    Example:
        >>> uniform_note(300.0, 4.0, 256, threshold=None)["text"].split(":")[0]
        'final perplexity 300.0 is no better than guessing uniformly over the 256 tokens'
        >>> uniform_note(40.0, 4.0, 256, threshold=None) is None
        True
    """
    if perplexity < vocab or baseline >= vocab:
        return None
    text = (
        f"final perplexity {perplexity:.1f} is no better than guessing uniformly over the "
        f"{vocab} tokens: the pruned model no longer predicts"
    )
    return warning(_advice(text, threshold))


def _advice(text: str, threshold: float | None) -> str:
    if threshold is not None:
        text += (
            f"; threshold {threshold:g} removes too much: give layers their own sparsity "
            "(pruning.overrides), exclude the sensitive ones, or prune by sparsity instead"
        )
    else:
        text += "; prune less, exclude sensitive layers, or fine-tune longer"
    return text
