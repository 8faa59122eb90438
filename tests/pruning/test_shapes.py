"""round_to defaults from a table measured once on this machine and kept in a cache dir."""

from __future__ import annotations

from app.pruning import shapes
from app.pruning.spec import Recipe


def _recipe(**pruning: object) -> Recipe:
    base = {"granularity": "filter", "criterion": "l1", "sparsity": 0.5, "physical": True}
    return Recipe.from_dict({"kind": "prune", "name": "t", "pruning": {**base, **pruning}})


def test_the_smallest_multiple_within_tolerance_of_the_best_is_preferred() -> None:
    flat = {"widths": {str(c): 1.0 for c in shapes.WIDTHS}}
    assert shapes.preferred_multiple(flat) == 1  # no width is faster: no rounding needed
    eights = {"widths": {str(c): 0.6 if c % 8 == 0 else 1.0 for c in shapes.WIDTHS}}
    assert shapes.preferred_multiple(eights) == 8


def test_the_table_is_measured_here_once_and_then_read_from_the_cache(
    tmp_path, monkeypatch
) -> None:
    table = shapes.channel_table(threads=1, budget_s=0.05)
    assert set(table["widths"]) == {str(c) for c in shapes.WIDTHS}
    assert min(table["widths"].values()) == 1.0 and table["threads"] == 1
    calls = []
    fake = {"widths": {str(c): 0.5 if c % 16 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "channel_table", lambda **kw: calls.append(kw) or fake)
    assert shapes.cached_round_to(tmp_path, threads=1)[0] == 16
    assert shapes.cached_round_to(tmp_path, threads=1)[0] == 16
    assert len(calls) == 1 and len(list(tmp_path.glob("*.json"))) == 1


def test_a_physical_filter_recipe_without_round_to_gets_the_measured_multiple(
    tmp_path, monkeypatch
) -> None:
    fake = {"widths": {str(c): 0.5 if c % 8 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "channel_table", lambda **kw: fake)
    recipe, note = shapes.with_default_round_to(_recipe(), tmp_path)
    assert recipe.pruning.round_to == 8 and note is not None
    assert note["level"] == "info" and "round_to defaulted to 8" in note["text"]
    for unchanged in (_recipe(round_to=4), _recipe(physical=False)):
        assert shapes.with_default_round_to(unchanged, tmp_path) == (unchanged, None)
    assert shapes.with_default_round_to(_recipe(), None) == (_recipe(), None)


def test_the_default_multiple_never_hands_a_narrow_layer_back_whole(tmp_path, monkeypatch) -> None:
    from app import zoo

    fake = {"widths": {str(c): 0.5 if c % 16 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "channel_table", lambda **kw: fake)
    model = zoo.build("cnn_small", input_shape=(1, 8, 8))  # its narrowest conv has 16 filters
    recipe, note = shapes.with_default_round_to(_recipe(), tmp_path, model)
    assert recipe.pruning.round_to == 4
    assert "capped for the narrowest layer" in note["text"]
