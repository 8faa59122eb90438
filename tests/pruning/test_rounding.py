"""Budget-aware round_to: kept counts rounded up or down so the cut lands near the target."""

from __future__ import annotations

import torch

from app.pruning.masks.rounding import Rounded, balanced_keep


def _layer(units: int, multiple: int, size: int = 1, floor: int = 0, shift: float = 0.0) -> Rounded:
    return Rounded(torch.arange(float(units)) + shift, multiple, size, floor or multiple)


def test_one_layer_rounds_to_its_nearest_multiple_ties_up() -> None:
    for kept, nearest in ((11, 8), (12, 16), (13, 16), (20, 24), (4, 8)):
        target = 1 - kept / 32
        assert balanced_keep({"a": _layer(32, 8)}, {"a": kept}, target) == {"a": nearest}


def test_the_lowest_scored_block_is_cut_first_and_the_total_lands_within_a_block() -> None:
    layers = {"low": _layer(64, 16), "high": _layer(64, 16, shift=100.0)}
    kept = balanced_keep(layers, {"low": 40, "high": 40}, 0.5)  # both 48 when rounded up
    assert kept == {"low": 16, "high": 48}  # both blocks of 'low' rank below any of 'high'
    removed = sum(64 - k for k in kept.values()) / 128
    assert abs(removed - 0.5) <= 16 / 128


def test_a_layer_of_one_block_stays_whole_and_the_others_pay_for_it() -> None:
    layers = {"narrow": _layer(16, 16, size=9), "wide": _layer(128, 16, size=9)}
    kept = balanced_keep(layers, {"narrow": 8, "wide": 72}, 0.55)
    assert kept == {"narrow": 16, "wide": 48}  # 80 of 144 units removed (55.6%)


def test_no_layer_goes_below_its_floor() -> None:
    layers = {"a": _layer(64, 16, floor=40), "b": _layer(16, 4)}
    kept = balanced_keep(layers, {"a": 40, "b": 2}, 0.9)
    assert kept == {"a": 48, "b": 4}  # floor 40 rounds up to 48; one multiple of 4 kept
