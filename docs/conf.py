"""Sphinx configuration for the ivfsq documentation."""

import os
import sys

# Document the checkout, not whatever ivfsq is installed.
sys.path.insert(0, os.path.abspath("../src"))

import ivfsq  # noqa: E402

project = "ivfsq"
author = "the ivfsq authors"
copyright = "2026, the ivfsq authors"
release = ivfsq.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Markdown pages (MyST).
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# API reference: autodoc + numpydoc.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"ivfsq {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
}
html_static_path = []
