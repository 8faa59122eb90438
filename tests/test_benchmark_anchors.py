"""``benchmarks/quality_vs_anchors.py`` runs: its smoke path prints a table row per comparison."""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["benchmarks.anchor_methods", "benchmarks.quality_vs_anchors"])
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_quick_run_of_the_mlp_prints_its_row() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "benchmarks/quality_vs_anchors.py", "--quick", "--only", "mlp"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| mlp |")]
    assert len(rows) == 1 and "element: torch.prune | 95%" in rows[0], done.stdout
