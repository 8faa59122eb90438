"""Notes a run hands back: ``{"level": "info"|"warning", "layer": str | None, "text": str}``.

Everything the engine wants a user to read (a layer it could not empty, a classifier it left
dense, a fall-back to masks, a result far from what was asked) is a structured note on the
run, stored with it and shown on its page; logging alone is not enough. Older runs stored
plain sentences: :func:`as_note` reads them as info notes. Torch-free (the web layer reads
notes too).

Example:
    >>> warning("would have been emptied", layer="fc")
    {'level': 'warning', 'layer': 'fc', 'text': 'would have been emptied'}
    >>> as_note("masks only: no speed-up expected")["level"]
    'info'
    >>> add_notes([], [info("a"), info("a"), "b"])
    [{'level': 'info', 'layer': None, 'text': 'a'}, {'level': 'info', 'layer': None, 'text': 'b'}]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, TypedDict

LEVELS = ("info", "warning")


class Note(TypedDict):
    """One sentence for the user, about one layer or the whole run."""

    level: Literal["info", "warning"]
    layer: str | None
    text: str


def info(text: str, layer: str | None = None) -> Note:
    return {"level": "info", "layer": layer, "text": text}


def warning(text: str, layer: str | None = None) -> Note:
    return {"level": "warning", "layer": layer, "text": text}


def as_note(item: Note | str | dict) -> Note:
    """A stored note as a :class:`Note` (plain sentences of older runs become info notes)."""
    if isinstance(item, str):
        return info(item)
    level = item.get("level", "info")
    layer = item.get("layer")
    return {
        "level": level if level in LEVELS else "info",
        "layer": None if layer is None else str(layer),
        "text": str(item.get("text", "")),
    }


def add_notes(notes: list[Note], new: Iterable[Note | str]) -> list[Note]:
    """Append ``new`` to ``notes`` in place, skipping exact repeats (iterative steps repeat)."""
    seen = {(n["level"], n["layer"], n["text"]) for n in notes}
    for item in new:
        note = as_note(item)
        key = (note["level"], note["layer"], note["text"])
        if key not in seen:
            seen.add(key)
            notes.append(note)
    return notes
