"""The examples in textinv's docstrings (`>>>` lines) run as written, each module's: an example a change left stale
fails here, where before nothing ran them (those marked `+SKIP` need a model, a GPU or files, and only read)."""

import doctest
import importlib
import pkgutil

import pytest

import textinv

MODULES = sorted(m.name for m in pkgutil.walk_packages(textinv.__path__, "textinv.") if m.name != "textinv.__main__")


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run_as_written(name):
    failed, tried = doctest.testmod(importlib.import_module(name), report=False)
    assert failed == 0, f"{failed} of {tried} examples in {name}'s docstrings fail (printed above)"
