"""Every docstring example in the package runs and gives what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import ivfsq

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(ivfsq.__path__, prefix="ivfsq.")
    if info.name not in ("ivfsq.__main__",)
)


@pytest.mark.parametrize("name", ["ivfsq"] + MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    if name == "ivfsq.sklearn":
        pytest.importorskip("sklearn")  # an optional extra
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
