"""The examples in the package's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import understanding_nn

MODULES = sorted(
    name for _, name, _ in pkgutil.iter_modules(understanding_nn.__path__, prefix="understanding_nn.")
)


@pytest.mark.parametrize("name", ["understanding_nn", *MODULES])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of the {result.attempted} examples in {name} failed"


def test_the_part_vi_modules_have_examples():
    for name in ("understanding_nn.analysis", "understanding_nn.data", "understanding_nn.models"):
        assert doctest.testmod(importlib.import_module(name), verbose=False).attempted > 0, name
