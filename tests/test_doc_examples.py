"""The Python examples of the documentation pages run as written.

Each page's ```python blocks run in order in one namespace (a later block
may use an earlier one's names), in a temporary folder. A block that
imports an optional library which is not installed is skipped.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = ["docs/guide/interop.md", "README.md"]
OPTIONAL = {"torch", "jax", "sklearn"}


def blocks(page):
    text = (ROOT / page).read_text()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_pages_have_examples():
    for page in PAGES:
        assert blocks(page), f"{page} has no python example"


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_example__"}
    for number, code in enumerate(blocks(page)):
        try:
            exec(compile(code, f"{page}[python block {number}]", "exec"), namespace)
        except ModuleNotFoundError as error:
            if error.name not in OPTIONAL:
                raise
            # Only the blocks that need the missing library are skipped.
            continue
