"""Every docstring example in app/pruning runs (one test per module)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import app.pruning

MODULES = sorted(m.name for m in pkgutil.walk_packages(app.pruning.__path__, prefix="app.pruning."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    torch.manual_seed(0)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(module, name) if t.examples]
    has_public_functions = any(
        callable(getattr(module, n)) and getattr(getattr(module, n), "__module__", "") == name
        for n in dir(module)
        if not n.startswith("_")
    )
    if has_public_functions:
        assert tests, f"{name} has public functions but no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
