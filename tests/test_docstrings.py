"""The ``Examples`` of the public entry points run as written (doctest, tiny and analytic models)."""

from __future__ import annotations

import doctest
import importlib

import pytest

#: the modules whose docstring examples are checked: the entry points a user calls first
MODULES = [
    "napari_treg.api",
    "napari_treg.engine.restorer",
    "napari_treg.batch.runner",
]


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see the output above)"
