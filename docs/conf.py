"""Sphinx configuration for the im2colbp docs (Sphinx + MyST Markdown).

Build (offline; warnings are errors)::

    python -m sphinx -W -b html docs docs/_build/html

Every code block in the pages is a doctest, run by pytest
(``--doctest-glob='*.md'``). Figures in ``_static/`` are drawn by
``scripts/make_figures.py``. Nothing here touches the network: no
intersphinx, and the pages need none either: MathJax is served from the
site itself (``sphinx-mathjax-offline`` copies its vendored MathJax 3 into
``_static/mathjax``), so formulas render on a machine with no network.
Folded answers use ``sphinx-design``'s ``{dropdown}``.
"""

import os
import sys

# The package lives one directory up; autodoc imports it from there.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "im2colbp"
author = "im2colbp developers"
copyright = "im2colbp developers, BSD-3-Clause"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # sets mathjax_path to the vendored copy: no CDN
    "sphinx_design",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ maths, amsmath environments, definition lists,
# anchors for ## and ### headings.
myst_enable_extensions = ["dollarmath", "amsmath", "deflist", "colon_fence"]
myst_heading_anchors = 3

# numpydoc-style docstrings through napoleon; types stay verbatim.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_param = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": False}

html_theme = "alabaster"
html_static_path = ["_static"]
html_css_files = ["wrap.css"]  # long code lines wrap instead of being cut
html_title = "im2colbp"
html_theme_options = {
    "description": "N-d convolution lowered to im2col + GEMM, with every gradient",
    "page_width": "1240px",  # a 100-character code line fits beside the sidebar at 1280 px
}


# --------------------------------------------------------------------------
# numpydoc field sections write shapes such as ``x : array_like, shape
# (N, C_in, *I)``: a bare ``*`` (the "remaining axes" of a shape), which
# reStructuredText reads as the start of emphasis. Escape such stars -- one
# that follows "(" or ", " and precedes a name, outside ``literals`` -- in the
# Parameters/Returns/... sections, before napoleon rewrites them.
# --------------------------------------------------------------------------
import re  # noqa: E402

_FIELD_SECTIONS = {
    "parameters", "other parameters", "returns", "yields", "receives", "raises",
    "warns", "attributes",
}
_SHAPE_STAR = re.compile(r"(?:(?<=, )|(?<=\())\*(?=\w)")


def _escape_shape_stars(app, what, name, obj, options, lines):
    section = None
    for index, line in enumerate(lines):
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if line.strip() and following.strip() and set(following.strip()) == {"-"}:
            section = line.strip().lower()
            continue
        if section not in _FIELD_SECTIONS:
            continue
        parts = line.split("``")  # odd parts are inline literals: leave them alone
        for part in range(0, len(parts), 2):
            parts[part] = _SHAPE_STAR.sub(r"\\*", parts[part])
        lines[index] = "``".join(parts)


def setup(app):
    # priority < 500: run before napoleon (default priority) rewrites the sections
    app.connect("autodoc-process-docstring", _escape_shape_stars, priority=400)
