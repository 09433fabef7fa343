"""The type hints are checked: mypy (the `test` extra) on the package and on a typed user.

The package ships ``py.typed``, so its hints are part of the API. mypy runs in a
subprocess with the configuration of pyproject.toml ([tool.mypy]); the test fails with
mypy's report. Misuse snippets show that the hints are real types, not ``Any``: each must
be reported, with the expected error code.
"""

import importlib.util
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import im2colbp as ib

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = Path(__file__).resolve().parent / "typing_sample.py"

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install -e '.[test]' brings it)",
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    # one mypy cache for this module's runs, outside the checkout
    return tmp_path_factory.mktemp("mypy-cache")


def _mypy(cache_dir, *targets):
    """Run mypy on ``targets`` from the checkout with its configuration; (status, report)."""
    if Path(ib.__file__).resolve().parent != ROOT / "im2colbp":
        pytest.skip(f"im2colbp is imported from {ib.__file__}, not from this checkout")
    env = dict(os.environ, MYPYPATH=str(ROOT))  # an editable install is invisible to mypy
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(cache_dir), "--no-color-output", "--no-error-summary",
               *map(str, targets)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    return done.returncode, done.stdout + done.stderr


@needs_mypy
def test_package_and_typed_sample_pass_mypy(cache_dir):
    status, report = _mypy(cache_dir, ROOT / "im2colbp", SAMPLE)
    assert status == 0, "mypy reports errors:\n" + report


def test_typed_sample_runs():
    # the annotated calls of the sample are real ones: it runs and its numbers agree
    runpy.run_path(str(SAMPLE), run_name="__main__")


MISUSES = {
    # a string where an int is expected
    "groups_string": ('ib.conv(x, w, groups="2")', "arg-type", '"groups"'),
    "layer_stride_string": ('ib.Conv2d(3, 8, 3, stride="2")', "arg-type", '"stride"'),
    "padding_mode_int": ("ib.conv(x, w, padding_mode=0)", "arg-type", '"padding_mode"'),
    # the results are ndarrays, not Any: a method ndarray lacks is an error
    "result_is_ndarray": ("ib.conv(x, w).backward()", "attr-defined", '"backward"'),
    "layer_result_is_ndarray": ("ib.Conv1d(1, 1, 3)(x).zero_grad()", "attr-defined",
                                '"zero_grad"'),
    # ConvGrads' fields are Optional: using one unchecked is an error
    "grads_optional": ("ib.conv_backward(y, ctx).input.sum()", "union-attr", '"sum"'),
    # a misspelt keyword, as in `--wieght`
    "unknown_keyword": ("ib.conv(x, w, strides=2)", "call-arg", '"strides"'),
}


@needs_mypy
@pytest.mark.parametrize("name", sorted(MISUSES))
def test_misuse_is_a_type_error(name, cache_dir, tmp_path):
    call, code, mention = MISUSES[name]
    snippet = tmp_path / f"misuse_{name}.py"
    snippet.write_text(textwrap.dedent(f"""\
        import numpy as np
        import im2colbp as ib

        x = np.ones((1, 1, 5)); w = np.ones((1, 1, 3))
        y, ctx = ib.conv_forward(x, w)
        {call}
        """))
    status, report = _mypy(cache_dir, snippet)
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert status == 1 and errors, f"mypy accepted `{call}`:\n{report}"
    assert len(errors) == 1 and errors[0].startswith(f"{snippet}:6:"), report
    assert f"[{code}]" in errors[0] and mention in errors[0], report
