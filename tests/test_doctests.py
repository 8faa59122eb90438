"""Every docstring example in app/ outside the engine runs (the engine's: tests/pruning).

A module is collected when its source has an example (``>>>``); none needs a server.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import app

APP_DIR = Path(app.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(app.__path__, prefix="app."):
        if info.name.startswith("app.pruning") or info.ispkg:
            continue
        path = APP_DIR.joinpath(*info.name.split(".")[1:]).with_suffix(".py")
        if ">>> " in path.read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_modules_with_examples_are_found() -> None:
    assert "app.catalogue" in MODULES and "app.modelio.preflight" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    assert tests, f"{name} has '>>> ' in its source but no docstring example doctest finds"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
