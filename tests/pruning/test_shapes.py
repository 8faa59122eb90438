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
    assert recipe.pruning.round_to == 8 and recipe.pruning.round_to_cap == "layer"
    assert note is not None and note["level"] == "info"
    assert "round_to defaulted to 8, capped per layer" in note["text"]
    assert _recipe(round_to=4).pruning.round_to_cap == "none"  # a user's round_to: global
    for unchanged in (_recipe(round_to=4), _recipe(physical=False)):
        assert shapes.with_default_round_to(unchanged, tmp_path) == (unchanged, None)
    assert shapes.with_default_round_to(_recipe(), None) == (_recipe(), None)


def test_a_multiple_must_run_fast_in_every_measured_runtime() -> None:
    flat = {str(c): 1.0 for c in shapes.WIDTHS}
    blocks = {str(c): 1.0 if c % 16 == 0 else (1.3 if c % 4 == 0 else 2.0) for c in shapes.WIDTHS}
    table = {"runtimes": {"pytorch": flat, "onnxruntime": blocks}}
    assert shapes.per_runtime(table) == {"pytorch": 1, "onnxruntime": 16}
    assert shapes.preferred_multiple(table) == 16  # PyTorch does not mind; ONNX Runtime does


def test_the_table_measures_each_given_runtime_and_caches_per_set_of_runtimes(tmp_path) -> None:
    seen = []

    def fake_ort(widths: tuple[int, ...], *, threads: int, budget_s: float) -> list[float]:
        seen.append((threads, budget_s))
        return [c * c * (1.0 if c % 8 == 0 else 3.0) for c in widths]

    timers = {"onnxruntime": fake_ort}
    multiple, table = shapes.cached_round_to(tmp_path, threads=1, timers=timers)
    assert set(table["runtimes"]) == {"pytorch", "onnxruntime"} and len(seen) == 1
    assert (
        table["runtimes"]["onnxruntime"]["64"] == 1.0
        and table["runtimes"]["onnxruntime"]["63"] == 3.0
    )
    assert multiple % 8 == 0 and shapes.per_runtime(table)["onnxruntime"] == 8
    assert shapes.cached_round_to(tmp_path, threads=1, timers=timers)[1] == table
    assert len(seen) == 1  # read from the cache the second time
    shapes.cached_round_to(tmp_path, threads=1)  # PyTorch alone: another table, another file
    assert len(list(tmp_path.glob("*.json"))) == 2


def _kept(model, recipe: Recipe) -> dict[str, int]:
    from app.pruning.masks.compute import compute_masks

    plan = compute_masks(model, recipe.pruning)
    return {n: int(c.sum()) for n, c in plan.channels.items()}


def test_the_default_multiple_is_capped_per_layer_at_a_quarter_of_its_width(
    tmp_path, monkeypatch
) -> None:
    """Measured 64: the 64-filter layer keeps a multiple of 16, the 32-filter one of 8 and the
    16-filter stem of 4, so the stem is still cut; one global multiple of 4 (the old default)
    gives the wide layer 24 filters (25.6 asked, nearest multiple), which ONNX Runtime pads to
    its 16-channel block."""
    from app import zoo

    fake = {"widths": {str(c): 0.5 if c % 16 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "cached_round_to", lambda *a, **kw: (64, fake))
    model = zoo.build("cnn_small", input_shape=(1, 8, 8))  # convs of 16, 32 and 64 filters
    asked = _recipe(scope="layerwise", exclude=["classifier"], sparsity=0.6)
    recipe, note = shapes.with_default_round_to(asked, tmp_path)
    assert (recipe.pruning.round_to, recipe.pruning.round_to_cap) == (64, "layer")
    assert "set round_to for one multiple everywhere" in note["text"]
    per_layer = _kept(model, recipe)
    assert per_layer == {"features.0": 8, "features.4": 16, "features.8": 32}
    assert _kept(
        model, _recipe(scope="layerwise", exclude=["classifier"], sparsity=0.6, round_to=4)
    ) == {
        "features.0": 8,
        "features.4": 12,
        "features.8": 24,
    }


def test_the_default_multiple_still_reaches_a_30_percent_filter_cut(tmp_path, monkeypatch) -> None:
    """Capped at the narrowest layer (16), a 30% cut kept cnn_small's 16- and 32-filter layers
    whole; capped per layer every layer loses filters and the cut lands near 30%."""
    from app import zoo

    fake = {"widths": {str(c): 0.5 if c % 16 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "cached_round_to", lambda *a, **kw: (16, fake))
    model = zoo.build("cnn_small", input_shape=(1, 8, 8))
    asked = _recipe(scope="layerwise", exclude=["classifier"], sparsity=0.3)
    recipe, _ = shapes.with_default_round_to(asked, tmp_path)
    kept = _kept(model, recipe)
    widths = {"features.0": 16, "features.4": 32, "features.8": 64}
    assert all(kept[n] < w for n, w in widths.items()), kept
    assert sum(kept.values()) / sum(widths.values()) <= 0.8, kept
    assert kept == {"features.0": 12, "features.4": 24, "features.8": 48}


def test_a_16_filter_layer_stays_whole_when_the_kernels_want_multiples_of_16() -> None:
    from app import zoo
    from app.pruning.masks.compute import compute_masks

    model = zoo.build("cnn_small", input_shape=(1, 8, 8))
    spec = _recipe(round_to=16, scope="layerwise", exclude=["classifier"]).pruning
    plan = compute_masks(model, spec)
    kept = {n: int(c.sum()) for n, c in plan.channels.items()}
    assert kept == {"features.0": 16, "features.4": 16, "features.8": 32}


def test_a_budget_run_keeps_its_narrowest_layers_within_reach(tmp_path, monkeypatch) -> None:
    fake = {"widths": {str(c): 0.5 if c % 16 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "channel_table", lambda **kw: fake)
    budget = Recipe.from_dict(
        {
            "kind": "prune",
            "name": "t",
            "pruning": {"granularity": "filter", "physical": True, "target": {"params": 500}},
        }
    )
    recipe, note = shapes.with_default_round_to(budget, tmp_path)
    assert (recipe.pruning.round_to, recipe.pruning.round_to_cap) == (16, "layer")
    assert recipe.pruning.multiple(16) == 4  # the budget may still cut the 16-filter stem
    assert recipe.pruning.multiple(64) == 16 and "can still be cut" in note["text"]


def test_onnx_runtime_deployment_rounds_every_layer_to_its_block_uncapped(
    tmp_path, monkeypatch
) -> None:
    """ONNX Runtime pads a layer cut below its 16-channel block back to 16: shaped for it, the
    16-filter stem stays whole and the wider layers are cut deeper, in multiples of 16."""
    from app import zoo

    flat = {str(c): 1.0 for c in shapes.WIDTHS}
    blocks = {str(c): 1.0 if c % 16 == 0 else 2.0 for c in shapes.WIDTHS}
    table = {"runtimes": {"pytorch": flat, "onnxruntime": blocks}, "widths": flat}
    monkeypatch.setattr(shapes, "cached_round_to", lambda *a, **kw: (16, table))
    model = zoo.build("cnn_small", input_shape=(1, 8, 8))
    asked = _recipe(scope="global", exclude=["classifier"], deploy_runtime="onnxruntime")
    recipe, note = shapes.with_default_round_to(asked, tmp_path)
    assert (recipe.pruning.round_to, recipe.pruning.round_to_cap) == (16, "none")
    assert note["level"] == "info" and "deploy_runtime 'onnxruntime'" in note["text"]
    kept = _kept(model, recipe)
    assert all(k % 16 == 0 for k in kept.values()), kept
    assert kept["features.0"] == 16 and kept["features.8"] < 64, kept
    from app.pruning.masks.compute import compute_masks

    notes = {n["layer"]: n for n in compute_masks(model, recipe.pruning).notes if n["layer"]}
    whole = notes["features.0"]  # by design, not a warning about the global ranking's cut
    assert whole["level"] == "info" and "kept whole" in whole["text"], notes
    pytorch, _ = shapes.with_default_round_to(_recipe(exclude=["classifier"]), tmp_path)
    assert _kept(model, pytorch)["features.0"] < 16  # shaped for PyTorch the stem is cut


def test_onnx_runtime_missing_on_the_worker_falls_back_to_the_pytorch_default_with_a_warning(
    tmp_path, monkeypatch
) -> None:
    fake = {"widths": {str(c): 0.5 if c % 8 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "cached_round_to", lambda *a, **kw: (8, fake))
    recipe, note = shapes.with_default_round_to(_recipe(deploy_runtime="onnxruntime"), tmp_path)
    assert (recipe.pruning.round_to, recipe.pruning.round_to_cap) == (8, "layer")
    assert note["level"] == "warning"
    assert "ONNX Runtime is not installed on this worker" in note["text"]


def test_an_unwritable_cache_directory_still_gives_the_measured_multiple(
    tmp_path, monkeypatch
) -> None:
    """prunelab run keeps the table under the user's home; a read-only one must not fail a run."""
    fake = {"widths": {str(c): 0.5 if c % 8 == 0 else 1.0 for c in shapes.WIDTHS}}
    monkeypatch.setattr(shapes, "channel_table", lambda **kw: fake)
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert shapes.cached_round_to(blocked / "cache", threads=1) == (8, fake)
