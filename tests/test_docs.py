"""The docs site: API page completeness, code blocks, figures, and a clean Sphinx build.

The code blocks of the pages themselves run as doctests (pytest collects
``docs/*.md`` with ``--doctest-glob='*.md'``); this module checks what
doctests cannot: that the API page documents every public name, that no code
block escapes the doctests, that the figures exist, and that Sphinx builds
the site with warnings as errors (skipped when Sphinx or MyST is missing).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import im2colbp

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

# ``.. autofunction:: im2colbp.conv`` and friends, with the option lines that follow
_DIRECTIVE = re.compile(r"^\.\.\s+(auto\w+)::\s*(\S+)\s*$")
_OPTION = re.compile(r"^\s+:([\w-]+):")
# a fenced block: opening fence, info string, body (MyST uses ``` or ~~~)
_FENCE = re.compile(r"^(```+|~~~+)\s*(\S*)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
_DIRECTIVE_BLOCKS = {"{eval-rst}", "{toctree}", "{figure}", "{math}", "{note}", "{warning}",
                     "{dropdown}"}


def _resolve(dotted: str):
    """The object a dotted path names (module attribute or module), or None."""
    module_name, _, attribute = dotted.rpartition(".")
    while module_name:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            module_name, _, head = module_name.rpartition(".")
            attribute = f"{head}.{attribute}"
            continue
        target = module
        for part in attribute.split("."):
            target = getattr(target, part, None)
            if target is None:
                return None
        return target
    return None


def _documented_objects(text: str) -> list:
    """Objects documented by the autodoc directives of a page (automodule :members: included)."""
    lines = text.splitlines()
    objects = []
    for index, line in enumerate(lines):
        match = _DIRECTIVE.match(line.strip() if line.startswith("..") else line)
        if not match:
            continue
        kind, target = match.groups()
        options = set()
        for following in lines[index + 1:]:
            option = _OPTION.match(following)
            if not option:
                break
            options.add(option.group(1))
        if kind == "automodule":
            if "members" in options:
                module = importlib.import_module(target)
                names = getattr(module, "__all__", [])
                objects.extend(getattr(module, name) for name in names)
            continue
        obj = _resolve(target)
        assert obj is not None, f"docs/api.md documents {target!r}, which does not exist"
        objects.append(obj)
    return objects


def test_api_page_documents_every_public_name():
    documented = _documented_objects((DOCS / "api.md").read_text(encoding="utf-8"))
    missing = [
        name for name in im2colbp.__all__
        if not any(getattr(im2colbp, name) is obj for obj in documented)
    ]
    assert not missing, (
        f"names in im2colbp.__all__ missing from docs/api.md: {missing}; add an autodoc "
        "directive (e.g. '.. autofunction:: im2colbp.NAME') for each"
    )


def test_api_page_documents_the_teaching_modules():
    documented = _documented_objects((DOCS / "api.md").read_text(encoding="utf-8"))
    for module_name in ("im2colbp.transposition", "im2colbp.operators", "im2colbp.layer"):
        module = importlib.import_module(module_name)
        missing = [
            name for name in module.__all__
            if not any(getattr(module, name) is obj for obj in documented)
        ]
        assert not missing, f"{module_name} names missing from docs/api.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_code_block_is_a_doctest(page):
    """A fenced block is either a MyST directive or runs as a doctest (has ``>>>``)."""
    for _fence, info, body in _FENCE.findall(page.read_text(encoding="utf-8")):
        if info in _DIRECTIVE_BLOCKS:
            continue
        assert ">>>" in body, (
            f"{page.name}: a ```{info} block without '>>>' would not be tested:\n{body[:300]}"
        )


def test_pages_and_figures_exist():
    names = {page.stem for page in PAGES}
    expected = {"index", "shapes", "lowering", "derivation", "worked-example",
                "channel-transposition", "transposed-convolution", "exercises", "api"}
    assert expected <= names, f"missing pages: {sorted(expected - names)}"
    for page in PAGES:
        for figure in re.findall(r"_static/[\w.-]+\.(?:png|html)",
                                 page.read_text(encoding="utf-8")):
            assert (DOCS / figure).is_file(), (
                f"{page.name} shows {figure}, which does not exist; run "
                "python scripts/make_figures.py"
            )


def test_first_screen_answers_the_four_questions():
    """The top of the index, before its first code block, answers channels, filters, stride, bias
    in the learner's notation, with the matrix one-liners, the recipe and links to the steps."""
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    first_screen = text[: text.index("```")]
    for needle in ("Your four questions", "**channels**", "**filters**", "**stride**",
                   "**bias**", r"\delta^{\ell-1}", "f'", "m',n'",
                   r"Y = X_\text{col}\cdot W", r"dW = X_\text{col}^\top\cdot\delta",
                   r"\text{col2im}(\delta\cdot W^\top)", "y = W·cols + b",
                   "zero-insert", "pad", "swap channels", "rotate"):
        assert needle in first_screen, f"the first screen of index.md lacks {needle!r}"
    for step in ("step-1-channels", "step-2-filters", "step-3-bias",
                 "step-4-stride-and-the-remainder", "step-5-padding", "step-6-dilation",
                 "step-7-groups"):
        assert f"derivation.md#{step}" in first_screen, step


def test_derivation_adds_one_ingredient_per_step_each_with_a_check():
    text = (DOCS / "derivation.md").read_text(encoding="utf-8")
    steps = re.split(r"^### Step \d+: ", text, flags=re.M)[1:]
    titles = [step.splitlines()[0] for step in steps]
    assert titles == ["what you already know", "channels", "filters", "bias",
                      "stride, and the remainder", "padding", "dilation", "groups"]
    for title, step in zip(titles, steps):
        body = step.split("## Part II")[0]
        assert ">>>" in body, f"step {title!r} has no runnable check"
        if title not in ("what you already know", "bias"):
            assert "im2col form" in body and "onvolution form" in body, title


def test_exercises_have_folded_checked_answers():
    text = (DOCS / "exercises.md").read_text(encoding="utf-8")
    exercises = re.split(r"^## \d+\. ", text, flags=re.M)[1:]
    assert len(exercises) >= 6
    for exercise in exercises:
        answer = exercise.split(":::{dropdown} Answer", 1)
        assert len(answer) == 2, f"exercise without a folded answer: {exercise[:60]!r}"
        assert ">>>" in answer[1].split("\n:::\n")[0], f"answer not checked: {exercise[:60]!r}"
    for source in ("Jefkine", "Goodfellow", "Dumoulin", "cs231n"):
        assert source in text


def test_sphinx_build_has_no_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    pytest.importorskip("sphinx_design")
    pytest.importorskip("sphinx-mathjax-offline")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
        "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html"),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (
        f"sphinx-build -W failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    html = tmp_path / "html"
    assert (html / "derivation.html").is_file()
    # formulas render offline: MathJax comes with the site, no page loads anything remote
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (html / "_static" / "explorer-example.html").is_file()
    for page in html.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        # resources a page loads: scripts, images, stylesheets (links to read are fine)
        loaded = re.findall(r"""src=["']([^"']*)""", text) + re.findall(
            r"""<link[^>]*href=["']([^"']*)""", text)
        remote = [url for url in loaded if re.match(r"(?:https?:)?//", url)]
        assert not remote, f"{page.name} loads remote resources: {remote}"
    assert 'src="_static/mathjax/tex-chtml.js"' in (html / "derivation.html").read_text(
        encoding="utf-8")
