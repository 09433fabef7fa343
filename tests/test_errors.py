"""Bad input is refused with a clear ValueError/TypeError naming the argument.

The contract (DESIGN.md, "Errors"): bad input never crashes deep inside NumPy and
never returns a wrong answer. Every check below asserts

* the *exact* exception class (ValueError or TypeError; subclasses such as
  numpy's AxisError, or IndexError/AssertionError/MemoryError, do not count);
* with ``match=``, that the message names the offending argument;
* that the inputs were not modified.

Empty batches and zero channels are *not* errors: they give correctly shaped
empty / zero results in the right dtype (tested at the end).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import im2colbp as ib
from im2colbp import reference

PACKAGE_DIR = pathlib.Path(ib.__file__).resolve().parent


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _raises(exc, match, fn, *args, **kwargs):
    """Call ``fn`` and check it raises exactly ``exc`` with ``match`` in the message."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    error = info.value
    assert type(error) is exc, (
        f"expected {exc.__name__}, got {type(error).__module__}.{type(error).__name__}: {error}"
    )
    assert re.search(match, str(error)), f"message {str(error)!r} does not match {match!r}"
    return error


def _snapshot(*arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def _assert_unchanged(before, *arrays):
    for old, new in zip(before, arrays):
        if old is None:
            continue
        np.testing.assert_array_equal(np.asarray(new), old)


def _base():
    """x (1, 2, 6, 5), weight (2, 2, 3, 3) (square channels: valid both as a
    convolution and as a transposed-convolution weight), bias (2,)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 5))
    w = rng.standard_normal((2, 2, 3, 3))
    b = rng.standard_normal(2)
    return x, w, b


DY_SHAPE = (1, 2, 4, 3)  # conv(x, w) with the default geometry


def _cols(x, w):
    return ib.im2col(x, w.shape[2:])  # (1, 18, 12) for the default geometry


# Entry points taking the window arguments (stride, padding, dilation), as
# ``call(x, w, b, **kwargs)``.
WINDOW_CALLS = {
    "conv": lambda x, w, b, **kw: ib.conv(x, w, b, **kw),
    "conv_forward": lambda x, w, b, **kw: ib.conv_forward(x, w, b, **kw),
    "conv_grad_input": lambda x, w, b, **kw: ib.conv_grad_input(
        np.ones(DY_SHAPE), w, x.shape, **kw),
    "conv_grad_weight": lambda x, w, b, **kw: ib.conv_grad_weight(
        np.ones(DY_SHAPE), x, w.shape, **kw),
    "conv_transpose": lambda x, w, b, **kw: ib.conv_transpose(x, w, b, **kw),
    "conv_transpose_forward": lambda x, w, b, **kw: ib.conv_transpose_forward(x, w, b, **kw),
    "im2col": lambda x, w, b, **kw: ib.im2col(x, w.shape[2:], **kw),
    "col2im": lambda x, w, b, **kw: ib.col2im(_cols(x, w), x.shape[2:], w.shape[2:], **kw),
}
# ... that also take groups and padding_mode
CONV_CALLS = {k: v for k, v in WINDOW_CALLS.items() if k not in ("im2col", "col2im")}
# ... that take a bias
BIAS_CALLS = {k: CONV_CALLS[k] for k in
              ("conv", "conv_forward", "conv_transpose", "conv_transpose_forward")}
TRANSPOSE_CALLS = {k: CONV_CALLS[k] for k in ("conv_transpose", "conv_transpose_forward")}


def _check_call(call, exc, match, **kwargs):
    x, w, b = _base()
    before = _snapshot(x, w, b)
    _raises(exc, match, call, x, w, b, **kwargs)
    _assert_unchanged(before, x, w, b)


@pytest.mark.parametrize("name", sorted(WINDOW_CALLS))
def test_baseline_arguments_are_valid(name):
    """The fixtures are valid for every entry point: errors below are the bad argument's."""
    x, w, b = _base()
    WINDOW_CALLS[name](x, w, b)
    if name not in ("conv_grad_input", "conv_grad_weight", "col2im"):  # dy/cols sized for default
        WINDOW_CALLS[name](x, w, b, stride=(1, 2), padding=((0, 1), (1, 0)), dilation=(1, 1))


# --------------------------------------------------------------------------
# stride / dilation
# --------------------------------------------------------------------------
BAD_STEP = [
    (0, ValueError),
    (-1, ValueError),
    ((1, 0), ValueError),
    ((-1, 1), ValueError),
    (1.5, TypeError),
    (2.0, TypeError),
    (np.float64(1.0), TypeError),
    (True, TypeError),
    (np.bool_(True), TypeError),
    ((1, True), TypeError),
    ((1, 1.0), TypeError),
    ("1", TypeError),
    (None, TypeError),
    ((1, 1, 1), ValueError),  # tuple of wrong length (rank is 2)
    ((1,), ValueError),
    ((), ValueError),
]


@pytest.mark.parametrize("arg", ["stride", "dilation"])
@pytest.mark.parametrize("value,exc", BAD_STEP, ids=[repr(v) for v, _ in BAD_STEP])
@pytest.mark.parametrize("name", sorted(WINDOW_CALLS))
def test_bad_stride_and_dilation(name, value, exc, arg):
    _check_call(WINDOW_CALLS[name], exc, arg, **{arg: value})


# --------------------------------------------------------------------------
# padding
# --------------------------------------------------------------------------
BAD_PADDING = [
    (-1, ValueError),
    ((1, -1), ValueError),                 # tuple entry
    (((0, 1), (1, -1)), ValueError),       # pair entry
    (((-1, 0), (0, 0)), ValueError),
    (((0, 1, 2), (1, 1)), ValueError),     # pair with 3 entries
    (((0,), (1, 1)), ValueError),          # pair with 1 entry
    ((1, 1, 1), ValueError),               # tuple of wrong length
    ((1,), ValueError),
    (((1, 1),), ValueError),
    ("full", ValueError),                  # unknown padding string
    ("SAME", ValueError),
    ("", ValueError),
    (1.5, TypeError),
    (1.0, TypeError),
    (True, TypeError),
    (None, TypeError),
    ((1, 1.5), TypeError),
    ((1, True), TypeError),
    (((0, 1), (1, 0.5)), TypeError),
    (((0, 1), (True, 0)), TypeError),
    ((1, "1"), TypeError),
]


@pytest.mark.parametrize("value,exc", BAD_PADDING, ids=[repr(v) for v, _ in BAD_PADDING])
@pytest.mark.parametrize("name", sorted(WINDOW_CALLS))
def test_bad_padding(name, value, exc):
    _check_call(WINDOW_CALLS[name], exc, "padding", padding=value)


@pytest.mark.parametrize("name", sorted(TRANSPOSE_CALLS))
def test_same_padding_refused_for_transposed_convolution(name):
    _check_call(TRANSPOSE_CALLS[name], ValueError, r"padding.*same|same.*padding",
                padding="same")


@pytest.mark.parametrize("name", sorted(WINDOW_CALLS))
def test_valid_padding_accepted(name):
    x, w, b = _base()
    WINDOW_CALLS[name](x, w, b, padding="valid")


# --------------------------------------------------------------------------
# groups
# --------------------------------------------------------------------------
BAD_GROUPS = [
    (0, ValueError),
    (-1, ValueError),
    (-2, ValueError),
    (1.0, TypeError),
    (1.5, TypeError),
    (True, TypeError),
    (np.bool_(True), TypeError),
    ("1", TypeError),
    (None, TypeError),
    ((1,), TypeError),
]


@pytest.mark.parametrize("value,exc", BAD_GROUPS, ids=[repr(v) for v, _ in BAD_GROUPS])
@pytest.mark.parametrize("name", sorted(CONV_CALLS))
def test_bad_groups_value(name, value, exc):
    _check_call(CONV_CALLS[name], exc, "groups", groups=value)


# --------------------------------------------------------------------------
# padding_mode
# --------------------------------------------------------------------------
BAD_MODE = [
    ("constant", ValueError),
    ("zero", ValueError),
    ("ZEROS", ValueError),
    ("", ValueError),
    (None, TypeError),
    (0, TypeError),
    (b"zeros", TypeError),
    (("zeros",), TypeError),
]


@pytest.mark.parametrize("value,exc", BAD_MODE, ids=[repr(v) for v, _ in BAD_MODE])
@pytest.mark.parametrize("name", sorted(CONV_CALLS))
def test_bad_padding_mode(name, value, exc):
    _check_call(CONV_CALLS[name], exc, "padding_mode", padding_mode=value)


# --------------------------------------------------------------------------
# bias
# --------------------------------------------------------------------------
BAD_BIAS = [
    ("2-D", lambda: np.ones((1, 2)), ValueError),
    ("2-D-T", lambda: np.ones((2, 1)), ValueError),
    ("too-long", lambda: np.ones(3), ValueError),
    ("length-1-would-broadcast", lambda: np.ones(1), ValueError),
    ("empty", lambda: np.ones(0), ValueError),
    ("scalar", lambda: np.float64(1.0), ValueError),
    ("python-scalar", lambda: 1.0, ValueError),
    ("complex", lambda: np.ones(2, dtype=complex), TypeError),
    ("object", lambda: np.ones(2, dtype=object), TypeError),
    ("strings", lambda: np.array(["a", "b"]), TypeError),
]


@pytest.mark.parametrize("label,make,exc", BAD_BIAS, ids=[c[0] for c in BAD_BIAS])
@pytest.mark.parametrize("name", sorted(BIAS_CALLS))
def test_bad_bias(name, label, make, exc):
    x, w, _ = _base()
    bias = make()
    before = _snapshot(x, w)
    _raises(exc, "bias", BIAS_CALLS[name], x, w, bias)
    _assert_unchanged(before, x, w)


# --------------------------------------------------------------------------
# shapes: ranks, channels, groups dividing channels, kernel vs input
# --------------------------------------------------------------------------
def _a(*shape, dtype=np.float64):
    return np.ones(shape, dtype=dtype)


X_NAME = r"\bx\b|input"

SHAPE_CASES = [
    # --- wrong rank of x vs weight
    ("conv-x-2d", lambda: ib.conv(_a(6, 5), _a(2, 2, 3, 3)), ValueError, X_NAME),
    ("conv-x-1d", lambda: ib.conv(_a(6), _a(2, 2, 3, 3)), ValueError, X_NAME),
    ("conv-x-0d", lambda: ib.conv(np.float64(1), _a(2, 2, 3, 3)), ValueError, X_NAME),
    ("conv-x-5d", lambda: ib.conv(_a(1, 1, 2, 6, 5), _a(2, 2, 3, 3)), ValueError, X_NAME),
    ("conv_forward-x-5d", lambda: ib.conv_forward(_a(1, 1, 2, 6, 5), _a(2, 2, 3, 3)),
     ValueError, X_NAME),
    ("conv_transpose-x-2d", lambda: ib.conv_transpose(_a(6, 5), _a(2, 2, 3, 3)),
     ValueError, X_NAME),
    ("conv_transpose-x-5d", lambda: ib.conv_transpose(_a(1, 1, 2, 6, 5), _a(2, 2, 3, 3)),
     ValueError, X_NAME),
    ("conv_transpose_forward-x-2d",
     lambda: ib.conv_transpose_forward(_a(6, 5), _a(2, 2, 3, 3)), ValueError, X_NAME),
    ("conv_grad_weight-x-5d",
     lambda: ib.conv_grad_weight(_a(1, 2, 4, 3), _a(1, 1, 2, 6, 5), (2, 2, 3, 3)),
     ValueError, X_NAME),
    ("conv_grad_weight-x-2d",
     lambda: ib.conv_grad_weight(_a(1, 2, 4, 3), _a(6, 5), (2, 2, 3, 3)), ValueError, X_NAME),
    # --- weight with fewer than 3 dimensions
    ("conv-weight-2d", lambda: ib.conv(_a(1, 2, 5), _a(2, 2)), ValueError, "weight"),
    ("conv-weight-1d", lambda: ib.conv(_a(1, 2, 5), _a(2)), ValueError, "weight"),
    ("conv-weight-0d", lambda: ib.conv(_a(1, 2, 5), np.float64(1)), ValueError, "weight"),
    ("conv_forward-weight-2d", lambda: ib.conv_forward(_a(1, 2, 5), _a(2, 2)),
     ValueError, "weight"),
    ("conv_grad_input-weight-2d",
     lambda: ib.conv_grad_input(_a(1, 2, 3), _a(2, 2), (1, 2, 5)), ValueError, "weight"),
    ("conv_grad_weight-weight_shape-2",
     lambda: ib.conv_grad_weight(_a(1, 2, 3), _a(1, 2, 5), (2, 2)), ValueError, "weight"),
    ("conv_grad_weight-weight_shape-0",
     lambda: ib.conv_grad_weight(_a(1, 2, 3), _a(1, 2, 5), ()), ValueError, "weight"),
    ("conv_transpose-weight-2d", lambda: ib.conv_transpose(_a(1, 2, 5), _a(2, 2)),
     ValueError, "weight"),
    ("conv_transpose_forward-weight-1d",
     lambda: ib.conv_transpose_forward(_a(1, 2, 5), _a(2)), ValueError, "weight"),
    # --- kernel size 0 inside the weight
    ("conv-weight-kernel-0", lambda: ib.conv(_a(1, 2, 5), _a(2, 2, 0)), ValueError, "kernel"),
    ("conv_transpose-weight-kernel-0", lambda: ib.conv_transpose(_a(1, 2, 5), _a(2, 2, 0)),
     ValueError, "kernel"),
    ("conv_grad_weight-weight_shape-kernel-0",
     lambda: ib.conv_grad_weight(_a(1, 2, 3), _a(1, 2, 5), (2, 2, 0)), ValueError, "kernel"),
    # --- C_in != weight.shape[1] * groups
    ("conv-cin", lambda: ib.conv(_a(1, 3, 6, 5), _a(2, 2, 3, 3)), ValueError, "weight"),
    ("conv-cin-groups", lambda: ib.conv(_a(1, 4, 5), _a(2, 1, 3), groups=2),
     ValueError, "weight"),
    ("conv-cin-unbatched", lambda: ib.conv(_a(3, 6, 5), _a(2, 2, 3, 3)), ValueError, "weight"),
    ("conv_forward-cin", lambda: ib.conv_forward(_a(1, 3, 6, 5), _a(2, 2, 3, 3)),
     ValueError, "weight"),
    ("conv_grad_input-cin",
     lambda: ib.conv_grad_input(_a(1, 2, 4, 3), _a(2, 2, 3, 3), (1, 3, 6, 5)),
     ValueError, "weight"),
    ("conv_grad_weight-cin",
     lambda: ib.conv_grad_weight(_a(1, 2, 4, 3), _a(1, 3, 6, 5), (2, 2, 3, 3)),
     ValueError, "weight"),
    ("conv_transpose-cin", lambda: ib.conv_transpose(_a(1, 3, 5), _a(2, 2, 3)),
     ValueError, "weight"),
    ("conv_transpose_forward-cin", lambda: ib.conv_transpose_forward(_a(1, 3, 5), _a(2, 2, 3)),
     ValueError, "weight"),
    # --- groups not dividing C_in / C_out
    ("conv-groups-cin", lambda: ib.conv(_a(1, 3, 5), _a(4, 1, 3), groups=2),
     ValueError, "groups"),
    ("conv-groups-cout", lambda: ib.conv(_a(1, 4, 5), _a(3, 2, 3), groups=2),
     ValueError, "groups"),
    ("conv_forward-groups-cout", lambda: ib.conv_forward(_a(1, 4, 5), _a(3, 2, 3), groups=2),
     ValueError, "groups"),
    ("conv_grad_input-groups-cin",
     lambda: ib.conv_grad_input(_a(1, 4, 3), _a(4, 1, 3), (1, 3, 5), groups=2),
     ValueError, "groups"),
    ("conv_grad_input-groups-cout",
     lambda: ib.conv_grad_input(_a(1, 3, 3), _a(3, 2, 3), (1, 4, 5), groups=2),
     ValueError, "groups"),
    ("conv_grad_weight-groups-cin",
     lambda: ib.conv_grad_weight(_a(1, 4, 3), _a(1, 3, 5), (4, 1, 3), groups=2),
     ValueError, "groups"),
    ("conv_grad_weight-groups-cout",
     lambda: ib.conv_grad_weight(_a(1, 3, 3), _a(1, 4, 5), (3, 2, 3), groups=2),
     ValueError, "groups"),
    # transposed weight (C_in, C_out/G, *K): C_out = shape[1]*G always divides; C_in may not
    ("conv_transpose-groups-cin", lambda: ib.conv_transpose(_a(1, 3, 5), _a(3, 1, 3), groups=2),
     ValueError, "groups"),
    ("conv_transpose_forward-groups-cin",
     lambda: ib.conv_transpose_forward(_a(1, 4, 5), _a(4, 1, 3), groups=3),
     ValueError, "groups"),
    # --- kernel larger than the padded input (output size < 1)
    ("conv-kernel-too-big", lambda: ib.conv(_a(1, 2, 6, 5), _a(2, 2, 7, 3)),
     ValueError, "kernel"),
    ("conv-kernel-too-big-after-padding",
     lambda: ib.conv(_a(1, 1, 3), _a(1, 1, 6), padding=1), ValueError, "kernel"),
    ("conv-dilated-kernel-too-big",
     lambda: ib.conv(_a(1, 2, 6, 5), _a(2, 2, 3, 3), dilation=(1, 3)), ValueError, "dilation"),
    ("conv_forward-kernel-too-big", lambda: ib.conv_forward(_a(1, 1, 2), _a(1, 1, 3)),
     ValueError, "kernel"),
    ("conv_grad_input-kernel-too-big",
     lambda: ib.conv_grad_input(_a(1, 1, 1), _a(1, 1, 3), (1, 1, 2)), ValueError, "kernel"),
    ("conv_grad_weight-kernel-too-big",
     lambda: ib.conv_grad_weight(_a(1, 1, 1), _a(1, 1, 2), (1, 1, 3)), ValueError, "kernel"),
    ("im2col-kernel-too-big", lambda: ib.im2col(_a(1, 2, 6, 5), (7, 3)), ValueError, "kernel"),
    ("im2col-dilated-kernel-too-big",
     lambda: ib.im2col(_a(1, 2, 6, 5), (3, 3), dilation=3), ValueError, "dilation"),
    ("col2im-kernel-too-big", lambda: ib.col2im(_a(1, 21, 1), (6, 5), (7, 3)),
     ValueError, "kernel"),
    ("conv_transpose-output-below-1",
     lambda: ib.conv_transpose(_a(1, 1, 2), _a(1, 1, 3), padding=3), ValueError,
     r"output[ _]size|padding"),
    ("conv_transpose_forward-output-below-1",
     lambda: ib.conv_transpose_forward(_a(1, 1, 2), _a(1, 1, 3), padding=((2, 3),)),
     ValueError, r"output[ _]size|padding"),
    # --- reflect padding as large as the input
    ("conv-reflect-pad-eq-size",
     lambda: ib.conv(_a(1, 1, 3), _a(1, 1, 3), padding=3, padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv-reflect-pair-eq-size",
     lambda: ib.conv(_a(1, 1, 3), _a(1, 1, 3), padding=((0, 3),), padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv-reflect-pad-gt-size-2d",
     lambda: ib.conv(_a(1, 1, 8, 2), _a(1, 1, 3, 3), padding=(1, 4), padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv-reflect-same-too-big",
     lambda: ib.conv(_a(1, 1, 3), _a(1, 1, 9), padding="same", padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv_forward-reflect",
     lambda: ib.conv_forward(_a(1, 1, 2), _a(1, 1, 3), padding=2, padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv_grad_input-reflect",
     lambda: ib.conv_grad_input(_a(1, 1, 7), _a(1, 1, 3), (1, 1, 3), padding=3,
                                padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv_grad_weight-reflect",
     lambda: ib.conv_grad_weight(_a(1, 1, 7), _a(1, 1, 3), (1, 1, 3), padding=3,
                                 padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    # transposed: output size (3-1) - 6 + 6 + 1 = 3, reflect padding 3 >= 3
    ("conv_transpose-reflect",
     lambda: ib.conv_transpose(_a(1, 1, 3), _a(1, 1, 7), padding=3, padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    ("conv_transpose_forward-reflect",
     lambda: ib.conv_transpose_forward(_a(1, 1, 3), _a(1, 1, 7), padding=3,
                                       padding_mode="reflect"),
     ValueError, r"reflect.*padding|padding.*reflect"),
    # --- im2col / col2im ranks and kernel_size
    ("im2col-int-kernel-unbatched", lambda: ib.im2col(_a(2, 5), 3), ValueError, X_NAME),
    ("im2col-int-kernel-1d", lambda: ib.im2col(_a(5), 3), ValueError, X_NAME),
    ("im2col-kernel-tuple-vs-x-rank", lambda: ib.im2col(_a(1, 2, 6, 5), (3,)),
     ValueError, r"kernel_size|\bx\b"),
    ("im2col-kernel-tuple-too-long", lambda: ib.im2col(_a(1, 2, 6, 5), (3, 3, 3, 3)),
     ValueError, r"kernel_size|\bx\b"),
    ("im2col-kernel-empty", lambda: ib.im2col(_a(1, 2, 6, 5), ()), ValueError, "kernel_size"),
    ("im2col-kernel-0", lambda: ib.im2col(_a(1, 2, 6, 5), 0), ValueError, "kernel_size"),
    ("im2col-kernel-neg", lambda: ib.im2col(_a(1, 2, 6, 5), (3, -1)), ValueError,
     "kernel_size"),
    ("im2col-kernel-float", lambda: ib.im2col(_a(1, 2, 6, 5), 3.0), TypeError, "kernel_size"),
    ("im2col-kernel-bool", lambda: ib.im2col(_a(1, 2, 6, 5), True), TypeError, "kernel_size"),
    ("im2col-kernel-float-entry", lambda: ib.im2col(_a(1, 2, 6, 5), (3, 2.0)), TypeError,
     "kernel_size"),
    ("im2col-kernel-str", lambda: ib.im2col(_a(1, 2, 6, 5), "33"), TypeError, "kernel_size"),
    ("im2col-kernel-None", lambda: ib.im2col(_a(1, 2, 6, 5), None), TypeError, "kernel_size"),
    ("col2im-kernel-tuple-wrong-length", lambda: ib.col2im(_a(1, 6, 3), (5,), (3, 1)),
     ValueError, "kernel_size"),
    ("col2im-kernel-float", lambda: ib.col2im(_a(1, 3, 3), (5,), 3.0), TypeError,
     "kernel_size"),
    ("col2im-kernel-0", lambda: ib.col2im(_a(1, 3, 3), (5,), 0), ValueError, "kernel_size"),
    ("col2im-cols-1d", lambda: ib.col2im(_a(9), (5,), 3), ValueError, "cols"),
    ("col2im-cols-4d", lambda: ib.col2im(_a(1, 1, 3, 3), (5,), 3), ValueError, "cols"),
    ("col2im-cols-0d", lambda: ib.col2im(np.float64(1), (5,), 3), ValueError, "cols"),
    ("col2im-rows-not-multiple", lambda: ib.col2im(_a(1, 17, 12), (6, 5), (3, 3)),
     ValueError, "cols"),
    ("col2im-rows-not-multiple-unbatched", lambda: ib.col2im(_a(4, 3), (5,), 3),
     ValueError, "cols"),
    ("col2im-columns-vs-L", lambda: ib.col2im(_a(1, 18, 11), (6, 5), (3, 3)),
     ValueError, "cols"),
    ("col2im-columns-vs-L-strided", lambda: ib.col2im(_a(1, 3, 3), (5,), 3, stride=2),
     ValueError, "cols"),
    ("col2im-output_size-int", lambda: ib.col2im(_a(1, 3, 3), 5, 3), TypeError, "output_size"),
    ("col2im-output_size-str", lambda: ib.col2im(_a(1, 3, 3), "5", 3), TypeError,
     "output_size"),
    ("col2im-output_size-None", lambda: ib.col2im(_a(1, 3, 3), None, 3), TypeError,
     "output_size"),
    ("col2im-output_size-float-entry", lambda: ib.col2im(_a(1, 3, 3), (5.5,), 3), TypeError,
     "output_size"),
    ("col2im-output_size-empty", lambda: ib.col2im(_a(1, 3, 3), (), 3), ValueError,
     r"output_size|rank|spatial"),
    ("col2im-output_size-negative", lambda: ib.col2im(_a(1, 3, 3), (-5,), 3), ValueError,
     r"output_size|spatial size"),
]


@pytest.mark.parametrize("label,thunk,exc,match", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_bad_shapes(label, thunk, exc, match):
    _raises(exc, match, thunk)


# --------------------------------------------------------------------------
# transposed convolution: output_padding and output_size
# --------------------------------------------------------------------------
def _range_printed(message, low, high_exclusive, given):
    """The message shows the admissible range [low, high_exclusive) of output_padding."""
    rest = message.replace(f"got {given}", "")
    return (re.search(rf"\b{low}\b", rest) is not None
            and re.search(rf"\b({high_exclusive}|{high_exclusive - 1})\b", rest) is not None)


OUTPUT_PADDING_CASES = [
    # (rank-1 unless noted) kwargs, given value, admissible high (exclusive)
    ("too-big-stride3", dict(stride=3, output_padding=5), 5, 3),
    ("equal-stride", dict(stride=3, output_padding=3), 3, 3),
    ("stride1", dict(stride=1, output_padding=1), 1, 1),
    ("dilation-bound", dict(stride=1, dilation=3, output_padding=4), 4, 3),
    ("stride-and-dilation", dict(stride=2, dilation=3, output_padding=3), 3, 3),
    ("negative", dict(stride=3, output_padding=-1), -1, 3),
    ("tuple-entry", dict(stride=(3,), output_padding=(4,)), 4, 3),
]


@pytest.mark.parametrize("label,kwargs,given,high", OUTPUT_PADDING_CASES,
                         ids=[c[0] for c in OUTPUT_PADDING_CASES])
@pytest.mark.parametrize("name", sorted(TRANSPOSE_CALLS))
def test_output_padding_out_of_range_prints_range(name, label, kwargs, given, high):
    fn = getattr(ib, name)
    x, w = _a(1, 1, 3), _a(1, 1, 3)
    error = _raises(ValueError, "output_padding", fn, x, w, **kwargs)
    assert _range_printed(str(error), 0, high, given), (
        f"message does not print the admissible range 0..{high - 1}: {error}")


@pytest.mark.parametrize("name", sorted(TRANSPOSE_CALLS))
def test_output_padding_out_of_range_on_one_axis_2d(name):
    fn = getattr(ib, name)
    error = _raises(ValueError, "output_padding", fn, _a(1, 1, 3, 3), _a(1, 1, 3, 3),
                    stride=(2, 3), output_padding=(1, 4))
    assert _range_printed(str(error), 0, 3, 4), str(error)


@pytest.mark.parametrize("value,exc", [
    ((1, 1), ValueError), ((1, 1, 1), ValueError), (1.0, TypeError), (True, TypeError),
    ((0.5,), TypeError), ("1", TypeError), (None, TypeError),
], ids=repr)
@pytest.mark.parametrize("name", sorted(TRANSPOSE_CALLS))
def test_output_padding_bad_type_or_length(name, value, exc):
    fn = getattr(ib, name)
    # rank 1, stride 2: output_padding must be an int or a 1-tuple in 0..1
    _raises(exc, "output_padding", fn, _a(1, 1, 3), _a(1, 1, 3), stride=2,
            output_padding=value)


def test_output_padding_in_range_accepted():
    x, w = _a(1, 1, 3), _a(1, 1, 3)
    assert ib.conv_transpose(x, w, stride=3, output_padding=2).shape == (1, 1, 11)
    assert ib.conv_transpose(x, w, stride=1, dilation=3, output_padding=2).shape == (1, 1, 11)


OUTPUT_SIZE_CASES = [
    # x (1, 1, 3), w (1, 1, 3), stride 2: admissible sizes 7..8
    ("too-small", dict(output_size=(6,)), ValueError, r"output_size.*\b7\b.*\b8\b"),
    ("too-large", dict(output_size=(9,)), ValueError, r"output_size.*\b7\b.*\b8\b"),
    ("zero", dict(output_size=(0,)), ValueError, r"output_size"),
    ("negative", dict(output_size=(-7,)), ValueError, r"output_size"),
    ("conflict-output_padding", dict(output_size=(7,), output_padding=1), ValueError,
     r"output_padding.*output_size|output_size.*output_padding"),
    ("leading-N", dict(output_size=(2, 1, 8)), ValueError, r"output_size"),
    ("leading-C-full", dict(output_size=(1, 2, 8)), ValueError, r"output_size"),
    ("leading-C-only", dict(output_size=(2, 8)), ValueError, r"output_size"),
    ("too-long", dict(output_size=(1, 1, 1, 8)), ValueError, r"output_size"),
    ("empty", dict(output_size=()), ValueError, r"output_size"),
    ("float-entry", dict(output_size=(7.9,)), TypeError, r"output_size"),
    ("string", dict(output_size="8"), TypeError, r"output_size"),
    ("string-bad", dict(output_size="abc"), TypeError, r"output_size"),
    ("bool", dict(output_size=True), TypeError, r"output_size"),
]


@pytest.mark.parametrize("label,kwargs,exc,match", OUTPUT_SIZE_CASES,
                         ids=[c[0] for c in OUTPUT_SIZE_CASES])
@pytest.mark.parametrize("name", sorted(TRANSPOSE_CALLS))
def test_output_size_refused(name, label, kwargs, exc, match):
    fn = getattr(ib, name)
    x, w = _a(1, 1, 3), _a(1, 1, 3)
    _raises(exc, match, fn, x, w, stride=2, **kwargs)


@pytest.mark.parametrize("name", sorted(TRANSPOSE_CALLS))
def test_output_size_unbatched_and_2d(name):
    fn = getattr(ib, name)
    # unbatched input: the full shape is (C_out, *O); a leading N is one size too many
    _raises(ValueError, "output_size", fn, _a(1, 3), _a(1, 1, 3), stride=2,
            output_size=(1, 1, 8))
    # rank 2 with a single size, and one axis unreachable
    _raises(ValueError, "output_size", fn, _a(1, 1, 3, 3), _a(1, 1, 3, 3), stride=2,
            output_size=(8,))
    _raises(ValueError, "output_size", fn, _a(1, 1, 3, 3), _a(1, 1, 3, 3), stride=2,
            output_size=(8, 9))


def test_output_size_admissible_accepted():
    x, w = _a(1, 1, 3), _a(1, 1, 3)
    assert ib.conv_transpose(x, w, stride=2, output_size=(8,)).shape == (1, 1, 8)
    assert ib.conv_transpose(x, w, stride=2, output_size=(8,), output_padding=1).shape \
        == (1, 1, 8)
    assert ib.conv_transpose(x, w, stride=2, output_size=(1, 1, 7)).shape == (1, 1, 7)
    assert ib.conv_transpose(x, w, stride=2, output_size=(1, 7)).shape == (1, 1, 7)


# --------------------------------------------------------------------------
# input_shape / weight_shape of the gradient functions
# --------------------------------------------------------------------------
GRAD_SHAPE_CASES = [
    # conv_grad_input(dy, w, input_shape): dy (1, 2, 4, 3), w (2, 2, 3, 3)
    ("input_shape-too-short", "input", (6, 5), ValueError, r"input"),
    ("input_shape-too-long", "input", (1, 1, 2, 6, 5), ValueError, r"input"),
    ("input_shape-empty", "input", (), ValueError, r"input"),
    ("input_shape-channels", "input", (1, 3, 6, 5), ValueError, r"weight|input|C_in"),
    ("input_shape-negative", "input", (1, 2, -6, 5), ValueError, r"input"),
    ("input_shape-spatial-0", "input", (1, 2, 0, 5), ValueError, r"spatial"),
    ("input_shape-unreachable", "input", (1, 2, 9, 5), ValueError, r"dy"),
    ("input_shape-None", "input", None, TypeError, r"input[_ ]shape"),
    ("input_shape-int", "input", 5, TypeError, r"input[_ ]shape"),
    ("input_shape-str", "input", "1265", TypeError, r"input[_ ]shape"),
    ("input_shape-float-entry", "input", (1, 2, 6.5, 5), TypeError, r"input[_ ]shape"),
    ("input_shape-str-entry", "input", (1, 2, "6", 5), TypeError, r"input[_ ]shape"),
    # conv_grad_weight(dy, x, weight_shape): dy (1, 2, 4, 3), x (1, 2, 6, 5)
    ("weight_shape-too-short", "weight", (2, 2), ValueError, r"weight"),
    ("weight_shape-too-long", "weight", (2, 2, 1, 3, 3), ValueError, r"weight|\bx\b|input"),
    ("weight_shape-channels", "weight", (2, 3, 3, 3), ValueError, r"weight"),
    ("weight_shape-negative", "weight", (2, -2, 3, 3), ValueError, r"weight"),
    ("weight_shape-kernel-0", "weight", (2, 2, 0, 3), ValueError, r"kernel"),
    ("weight_shape-kernel-too-big", "weight", (2, 2, 7, 3), ValueError, r"kernel"),
    ("weight_shape-cout", "weight", (3, 2, 3, 3), ValueError, r"dy"),
    ("weight_shape-None", "weight", None, TypeError, r"weight[_ ]shape"),
    ("weight_shape-int", "weight", 3, TypeError, r"weight[_ ]shape"),
    ("weight_shape-float-entry", "weight", (2, 2, 3.0, 3), TypeError, r"weight[_ ]shape"),
    ("weight_shape-str-entry", "weight", (2, 2, "3", 3), TypeError, r"weight[_ ]shape"),
]


@pytest.mark.parametrize("label,which,shape,exc,match", GRAD_SHAPE_CASES,
                         ids=[c[0] for c in GRAD_SHAPE_CASES])
def test_bad_gradient_shapes(label, which, shape, exc, match):
    x, w, _ = _base()
    dy = np.ones(DY_SHAPE)
    before = _snapshot(x, w, dy)
    if which == "input":
        _raises(exc, match, ib.conv_grad_input, dy, w, shape)
    else:
        _raises(exc, match, ib.conv_grad_weight, dy, x, shape)
    _assert_unchanged(before, x, w, dy)


# --------------------------------------------------------------------------
# dy, ctx and wrt
# --------------------------------------------------------------------------
BAD_DY_SHAPES = [
    ("spatial", (1, 2, 4, 4)),
    ("channels", (1, 3, 4, 3)),
    ("batch", (2, 2, 4, 3)),
    ("unbatched", (2, 4, 3)),
    ("extra-axis", (1, 1, 2, 4, 3)),
    ("transposed-axes", (1, 2, 3, 4)),
    ("scalar", ()),
    ("flat", (24,)),
]


@pytest.mark.parametrize("label,shape", BAD_DY_SHAPES, ids=[c[0] for c in BAD_DY_SHAPES])
def test_conv_backward_dy_shape(label, shape):
    x, w, b = _base()
    y, ctx = ib.conv_forward(x, w, b)
    assert y.shape == DY_SHAPE
    dy = np.ones(shape)
    before = _snapshot(x, w, b, dy, y)
    _raises(ValueError, r"\bdy\b", ib.conv_backward, dy, ctx)
    _assert_unchanged(before, x, w, b, dy, y)


@pytest.mark.parametrize("label,shape", BAD_DY_SHAPES, ids=[c[0] for c in BAD_DY_SHAPES])
def test_conv_grad_input_dy_shape(label, shape):
    x, w, _ = _base()
    _raises(ValueError, r"\bdy\b", ib.conv_grad_input, np.ones(shape), w, x.shape)


@pytest.mark.parametrize("label,shape", BAD_DY_SHAPES, ids=[c[0] for c in BAD_DY_SHAPES])
def test_conv_grad_weight_dy_shape(label, shape):
    x, w, _ = _base()
    _raises(ValueError, r"\bdy\b", ib.conv_grad_weight, np.ones(shape), x, w.shape)


@pytest.mark.parametrize("via", ["conv_transpose_backward", "conv_backward"])
@pytest.mark.parametrize("shape", [(1, 2, 8, 7), (1, 2, 7, 7), (1, 3, 8, 7), (2, 8, 7), ()],
                         ids=repr)
def test_conv_transpose_backward_dy_shape(via, shape):
    x, w, b = _base()
    y, ctx = ib.conv_transpose_forward(x, w, b)
    assert y.shape == (1, 2, 8, 7)
    if shape == y.shape:
        shape = (1, 2, 8, 6)
    _raises(ValueError, r"\bdy\b", getattr(ib, via), np.ones(shape), ctx)


@pytest.mark.parametrize("shape", [(3,), (), (0,)], ids=repr)
def test_conv_grad_bias_dy_rank(shape):
    _raises(ValueError, r"\bdy\b", ib.conv_grad_bias, np.ones(shape))


def _not_contexts():
    x, w, b = _base()
    y, ctx = ib.conv_forward(x, w, b)
    return y, [None, {}, (y, ctx), [ctx], "ctx", 0, y]


@pytest.mark.parametrize("fn", ["conv_backward", "conv_transpose_backward"])
def test_backward_with_non_context(fn):
    y, bad = _not_contexts()
    for ctx in bad:
        _raises(TypeError, r"ctx|context", getattr(ib, fn), np.ones_like(y), ctx)


def test_conv_transpose_backward_with_convolution_context():
    x, w, b = _base()
    y, ctx = ib.conv_forward(x, w, b)
    _raises(TypeError, r"ctx|context", ib.conv_transpose_backward, np.ones_like(y), ctx)


BAD_WRT = [
    ("inputs", ValueError),
    (("input", "bias_"), ValueError),
    (("x",), ValueError),
    (("dx",), ValueError),
    (("Input",), ValueError),
    ([0], ValueError),
    ((None,), ValueError),
    (None, TypeError),
    (5, TypeError),
    (1.5, TypeError),
]


@pytest.mark.parametrize("value,exc", BAD_WRT, ids=[repr(v) for v, _ in BAD_WRT])
@pytest.mark.parametrize("kind", ["conv", "conv_transpose", "conv_transpose-via-conv_backward"])
def test_bad_wrt(kind, value, exc):
    x, w, b = _base()
    if kind == "conv":
        y, ctx = ib.conv_forward(x, w, b)
        fn = ib.conv_backward
    else:
        y, ctx = ib.conv_transpose_forward(x, w, b)
        fn = ib.conv_transpose_backward if kind == "conv_transpose" else ib.conv_backward
    _raises(exc, r"\bwrt\b", fn, np.ones_like(y), ctx, wrt=value)


def test_good_wrt_variants():
    x, w, b = _base()
    y, ctx = ib.conv_forward(x, w, b)
    dy = np.ones_like(y)
    g = ib.conv_backward(dy, ctx, wrt="weight")
    assert g.input is None and g.weight is not None and g.bias is None
    g = ib.conv_backward(dy, ctx, wrt=["bias", "input"])
    assert g.input is not None and g.weight is None and g.bias is not None
    g = ib.conv_backward(dy, ctx, wrt=())
    assert g == (None, None, None)


# --------------------------------------------------------------------------
# spatial size 0
# --------------------------------------------------------------------------
ZERO_SPATIAL = [
    ("conv", lambda: ib.conv(_a(1, 2, 0, 5), _a(2, 2, 1, 1))),
    ("conv-padded", lambda: ib.conv(_a(1, 1, 0), _a(1, 1, 1), padding=1)),
    ("conv-unbatched", lambda: ib.conv(_a(2, 6, 0), _a(2, 2, 1, 1))),
    ("conv-circular", lambda: ib.conv(_a(1, 1, 0), _a(1, 1, 1), padding=1,
                                      padding_mode="circular")),
    ("conv_forward", lambda: ib.conv_forward(_a(1, 2, 6, 0), _a(2, 2, 1, 1))),
    ("conv_grad_input", lambda: ib.conv_grad_input(_a(1, 2, 0, 5), _a(2, 2, 1, 1),
                                                   (1, 2, 0, 5))),
    ("conv_grad_weight", lambda: ib.conv_grad_weight(_a(1, 2, 0, 5), _a(1, 2, 0, 5),
                                                     (2, 2, 1, 1))),
    ("conv_transpose", lambda: ib.conv_transpose(_a(1, 2, 0, 5), _a(2, 2, 3, 3))),
    ("conv_transpose-padded-output", lambda: ib.conv_transpose(_a(1, 1, 0), _a(1, 1, 3))),
    ("conv_transpose_forward", lambda: ib.conv_transpose_forward(_a(1, 2, 5, 0),
                                                                 _a(2, 2, 3, 3))),
    ("im2col", lambda: ib.im2col(_a(1, 2, 0, 5), 1)),
    ("im2col-padded", lambda: ib.im2col(_a(1, 2, 0, 5), (1, 1), padding=1)),
    ("im2col-unbatched", lambda: ib.im2col(_a(2, 0), (1,))),
    ("col2im", lambda: ib.col2im(_a(1, 2, 0), (0, 5), (1, 1))),
]


@pytest.mark.parametrize("label,thunk", ZERO_SPATIAL, ids=[c[0] for c in ZERO_SPATIAL])
def test_zero_spatial_size_refused(label, thunk):
    _raises(ValueError, r"spatial|size", thunk)


# --------------------------------------------------------------------------
# dtypes: complex, object and string arrays
# --------------------------------------------------------------------------
def _bad_dtype_cases(make, exc):
    """(label, thunk, exc, name) for every array argument of every entry point."""
    x, w, b = _base()
    dy = np.ones(DY_SHAPE)
    yt, tctx = ib.conv_transpose_forward(x, w, b)
    _, ctx = ib.conv_forward(x, w, b)
    cols = _cols(x, w)
    return [
        ("conv-x", lambda: ib.conv(make(x), w, b), exc, r"\bx\b"),
        ("conv-weight", lambda: ib.conv(x, make(w), b), exc, "weight"),
        ("conv-bias", lambda: ib.conv(x, w, make(b)), exc, "bias"),
        ("conv_forward-x", lambda: ib.conv_forward(make(x), w), exc, r"\bx\b"),
        ("conv_forward-weight", lambda: ib.conv_forward(x, make(w)), exc, "weight"),
        ("conv_backward-dy", lambda: ib.conv_backward(make(dy), ctx), exc, r"\bdy\b"),
        ("conv_grad_input-dy", lambda: ib.conv_grad_input(make(dy), w, x.shape), exc,
         r"\bdy\b"),
        ("conv_grad_input-weight", lambda: ib.conv_grad_input(dy, make(w), x.shape), exc,
         "weight"),
        ("conv_grad_weight-dy", lambda: ib.conv_grad_weight(make(dy), x, w.shape), exc,
         r"\bdy\b"),
        ("conv_grad_weight-x", lambda: ib.conv_grad_weight(dy, make(x), w.shape), exc,
         r"\bx\b"),
        ("conv_grad_bias-dy", lambda: ib.conv_grad_bias(make(dy)), exc, r"\bdy\b"),
        ("conv_transpose-x", lambda: ib.conv_transpose(make(x), w, b), exc, r"\bx\b"),
        ("conv_transpose-weight", lambda: ib.conv_transpose(x, make(w), b), exc, "weight"),
        ("conv_transpose-bias", lambda: ib.conv_transpose(x, w, make(b)), exc, "bias"),
        ("conv_transpose_forward-x", lambda: ib.conv_transpose_forward(make(x), w), exc,
         r"\bx\b"),
        ("conv_transpose_backward-dy",
         lambda: ib.conv_transpose_backward(make(np.ones_like(yt)), tctx), exc, r"\bdy\b"),
        ("im2col-x", lambda: ib.im2col(make(x), (3, 3)), exc, r"\bx\b"),
        ("col2im-cols", lambda: ib.col2im(make(cols), (6, 5), (3, 3)), exc, r"\bcols\b"),
    ]


BAD_DTYPES = {
    "complex128": lambda a: np.asarray(a).astype(np.complex128),
    "complex64": lambda a: np.asarray(a).astype(np.complex64),
    "complex-zero-imag": lambda a: np.asarray(a) + 0j,
    "object": lambda a: np.asarray(a).astype(object),
    "str": lambda a: np.asarray(a).astype(str),
    "bytes": lambda a: np.asarray(a).astype(bytes),
    "datetime": lambda a: np.asarray(a).astype(np.int64).astype("datetime64[s]"),
    "timedelta": lambda a: np.asarray(a).astype(np.int64).astype("timedelta64[s]"),
    "structured": lambda a: np.zeros(np.shape(a), dtype=[("v", "f8")]),
}

DTYPE_CASES = [
    pytest.param(kind, index, id=f"{kind}-{label}")
    for kind in BAD_DTYPES
    for index, (label, *_rest) in enumerate(_bad_dtype_cases(BAD_DTYPES[kind], TypeError))
]


@pytest.mark.parametrize("kind,index", DTYPE_CASES)
def test_non_real_numeric_arrays_refused(kind, index):
    label, thunk, exc, match = _bad_dtype_cases(BAD_DTYPES[kind], TypeError)[index]
    _raises(exc, match, thunk)


@pytest.mark.parametrize("value", [None, "abc", [[1.0, 2.0], [3.0]], {"a": 1}], ids=repr)
def test_non_array_x_refused(value):
    w = _a(1, 1, 1)
    _raises(TypeError, r"\bx\b", ib.conv, value, w)
    _raises(TypeError, r"\bx\b", ib.im2col, value, 1)


def test_python_complex_scalars_refused():
    _raises(TypeError, r"\bx\b", ib.conv, [[[1 + 2j, 3.0]]], _a(1, 1, 1))
    _raises(TypeError, "weight", ib.conv, _a(1, 1, 2), [[[1j]]])


# --------------------------------------------------------------------------
# absurd sizes: refused with ValueError before allocating anything
# --------------------------------------------------------------------------
ABSURD = [
    ("conv-padding-1e9-3d",
     lambda: ib.conv(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), padding=10**9)),
    ("conv-padding-1e9-circular",
     lambda: ib.conv(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), padding=10**9,
                     padding_mode="circular")),
    ("conv-padding-1e9-replicate",
     lambda: ib.conv(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), padding=10**9,
                     padding_mode="replicate")),
    ("conv_forward-padding-1e9-3d",
     lambda: ib.conv_forward(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), padding=10**9)),
    ("conv_grad_input-padding-1e9",
     lambda: ib.conv_grad_input(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), (1, 1, 2, 2, 2),
                                padding=10**9)),
    ("conv_grad_input-input_shape-1e13",
     lambda: ib.conv_grad_input(_a(1, 1, 1, 1, 1), _a(1, 1, 1, 1, 1),
                                (1, 1, 10**5, 10**5, 10**3))),
    ("conv_grad_input-batch-1e12",
     lambda: ib.conv_grad_input(_a(1, 1, 2), _a(1, 1, 1), (10**12, 1, 2))),
    ("conv_grad_weight-padding-1e9",
     lambda: ib.conv_grad_weight(_a(1, 1, 2, 2, 2), _a(1, 1, 2, 2, 2), (1, 1, 1, 1, 1),
                                 padding=10**9)),
    ("conv_grad_weight-kernel-volume-1e13",
     lambda: ib.conv_grad_weight(_a(1, 1, 1, 1, 1), _a(1, 1, 1, 1, 1),
                                 (1, 1, 10**5, 10**5, 10**3))),
    ("conv_grad_weight-kernel-volume-1e13-padded",
     lambda: ib.conv_grad_weight(_a(1, 1, 1, 1, 1), _a(1, 1, 1, 1, 1),
                                 (1, 1, 10**5, 10**5, 10**3),
                                 padding=(10**5, 10**5, 10**3))),
    ("conv_grad_weight-cout-1e12",
     lambda: ib.conv_grad_weight(_a(1, 1, 2), _a(1, 1, 2), (10**12, 1, 1))),
    ("conv_transpose-stride-1e9-3d",
     lambda: ib.conv_transpose(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), stride=10**9)),
    ("conv_transpose-dilation-1e9-3d",
     lambda: ib.conv_transpose(_a(1, 1, 1, 1, 1), _a(1, 1, 2, 2, 2), dilation=10**9)),
    ("conv_transpose_forward-stride-1e9-output_padding",
     lambda: ib.conv_transpose_forward(_a(1, 1, 2, 2, 2), _a(1, 1, 1, 1, 1), stride=10**9,
                                       output_padding=10**9 - 1)),
    ("im2col-padding-1e9-3d", lambda: ib.im2col(_a(1, 1, 2, 2, 2), 1, padding=10**9)),
    ("im2col-kernel-volume-1e13",
     lambda: ib.im2col(_a(1, 1, 1, 1, 1), (10**5, 10**5, 10**3))),
    ("im2col-columns-huge",  # padded input 1e10 fits, its columns (x 27) do not
     lambda: ib.im2col(_a(1, 1, 1, 1, 1), (3, 3, 3), padding=(1075, 1075, 1075))),
    ("col2im-output_size-1e13",
     lambda: ib.col2im(_a(1, 1, 1), (10**5, 10**5, 10**3), 1)),
    ("col2im-padding-1e9", lambda: ib.col2im(_a(1, 1, 8), (2, 2, 2), 1, padding=10**9)),
    ("col2im-kernel-volume-1e13",
     lambda: ib.col2im(_a(1, 1, 1), (1, 1, 1), (10**5, 10**5, 10**3))),
]


@pytest.mark.parametrize("label,thunk", ABSURD, ids=[c[0] for c in ABSURD])
def test_absurd_sizes_refused_before_allocating(label, thunk):
    _raises(ValueError, r"padding|kernel|size|stride|dilation|elements|input|output", thunk)


# --------------------------------------------------------------------------
# workspace limit
# --------------------------------------------------------------------------
BAD_LIMITS = [
    (0, ValueError), (-1, ValueError), (-(2**40), ValueError),
    (1.5, TypeError), (1e9, TypeError), (True, TypeError), ("1MB", TypeError),
    (None, TypeError), ((1,), TypeError),
]


@pytest.mark.parametrize("value,exc", BAD_LIMITS, ids=[repr(v) for v, _ in BAD_LIMITS])
def test_bad_workspace_limit(value, exc):
    old = ib.get_workspace_limit()
    with pytest.raises(Exception) as info:
        with ib.workspace_limit(value):
            pass
    assert type(info.value) is exc and re.search("workspace|limit|nbytes", str(info.value))
    assert ib.get_workspace_limit() == old
    _raises(exc, "workspace|limit|nbytes", ib.set_workspace_limit, value)
    assert ib.get_workspace_limit() == old


def test_workspace_limit_restored_after_error_inside_block():
    old = ib.get_workspace_limit()
    with pytest.raises(ValueError):
        with ib.workspace_limit(1000):
            ib.conv(_a(1, 1, 5), _a(1, 1, 3), stride=0)
    assert ib.get_workspace_limit() == old


# --------------------------------------------------------------------------
# extra edge cases: 0-d integer arrays as arguments, absurd groups
# --------------------------------------------------------------------------
@pytest.mark.parametrize("arg,value", [("stride", 2), ("padding", 1), ("dilation", 2),
                                       ("groups", 1)])
def test_zero_d_integer_array_arguments(arg, value):
    """A 0-d integer array is taken as the int it holds (the same result as the int,
    which differs from the default: the argument is really read)."""
    x, w = _a(1, 1, 7), _a(1, 1, 3)
    y = ib.conv(x, w, **{arg: np.array(value)})
    np.testing.assert_array_equal(y, ib.conv(x, w, **{arg: value}))
    np.testing.assert_array_equal(y, reference.conv(x, w, **{arg: value}))
    if arg != "groups":
        assert y.shape != ib.conv(x, w).shape


@pytest.mark.parametrize("arg,value", [("stride", 1.0), ("padding", np.array(1.5)),
                                       ("dilation", np.array([[1]])), ("groups", np.array(True))])
def test_non_integer_array_arguments_are_refused_by_name(arg, value):
    _raises(TypeError, arg, ib.conv, _a(1, 1, 7), _a(1, 1, 3), **{arg: value})


@pytest.mark.parametrize("make", [lambda: np.array(5), lambda: np.array([[1, 1, 5]])],
                         ids=["0-d", "2-d"])
def test_array_shape_arguments_must_be_one_dimensional(make):
    """A 0-d array as a shape gave NumPy's 'iteration over a 0-d array'."""
    _raises(TypeError, "input shape must be a tuple of ints", ib.conv_grad_input,
            _a(1, 1, 3), _a(1, 1, 3), make())
    _raises(TypeError, "output_size must be a tuple of ints", ib.col2im,
            _a(1, 3, 3), make(), 3)
    np.testing.assert_array_equal(  # a 1-d integer array is a shape
        ib.conv_grad_input(_a(1, 1, 3), _a(1, 1, 3), np.array([1, 1, 5])),
        ib.conv_grad_input(_a(1, 1, 3), _a(1, 1, 3), (1, 1, 5)))


def test_huge_groups_with_zero_channels():
    """0 channels are divisible by any groups: the (correct, empty) result, with the
    shape the geometry defines, never a NumPy-internal error."""
    y = ib.conv(_a(1, 0, 5), _a(0, 0, 3), groups=10**20)
    assert type(y) is np.ndarray and y.shape == (1, 0, 3) and y.dtype == np.float64
    assert reference.conv(_a(1, 0, 5), _a(0, 0, 3), groups=10**20).shape == (1, 0, 3)


# --------------------------------------------------------------------------
# inputs never modified (on errors and on success), results never alias inputs
# --------------------------------------------------------------------------
def _readonly(*arrays):
    for a in arrays:
        if a is not None:
            a.flags.writeable = False
    return arrays


ERRORING_CALLS = [
    ("conv-late-geometry", lambda x, w, b, dy: ib.conv(x, w, b, padding=100,
                                                      padding_mode="reflect")),
    ("conv-bad-bias", lambda x, w, b, dy: ib.conv(x, w, b[:1])),
    ("conv_grad_input-bad-dy", lambda x, w, b, dy: ib.conv_grad_input(dy[..., :2], w, x.shape)),
    ("conv_grad_weight-bad-dy", lambda x, w, b, dy: ib.conv_grad_weight(dy[:, :1], x, w.shape)),
    ("conv_backward-bad-dy",
     lambda x, w, b, dy: ib.conv_backward(dy[..., :2], ib.conv_forward(x, w, b)[1])),
    ("conv_backward-bad-wrt",
     lambda x, w, b, dy: ib.conv_backward(dy, ib.conv_forward(x, w, b)[1], wrt=("all",))),
    ("conv_transpose-bad-output_size",
     lambda x, w, b, dy: ib.conv_transpose(x, w, b, stride=2, output_size=(100, 100))),
    ("conv_transpose_backward-bad-dy",
     lambda x, w, b, dy: ib.conv_transpose_backward(dy, ib.conv_transpose_forward(x, w, b)[1])),
    ("im2col-bad-kernel", lambda x, w, b, dy: ib.im2col(x, (30, 3))),
    ("col2im-bad-cols", lambda x, w, b, dy: ib.col2im(x[0], (6, 5), (3, 3))),
]


@pytest.mark.parametrize("label,call", ERRORING_CALLS, ids=[c[0] for c in ERRORING_CALLS])
@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_inputs_unchanged_when_error_raised(label, call, readonly):
    x, w, b = _base()
    dy = np.random.default_rng(1).standard_normal(DY_SHAPE)
    if readonly:
        _readonly(x, w, b, dy)
    before = _snapshot(x, w, b, dy)
    with pytest.raises(Exception) as info:
        call(x, w, b, dy)
    assert type(info.value) in (ValueError, TypeError), repr(info.value)
    _assert_unchanged(before, x, w, b, dy)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_inputs_unchanged_and_not_aliased_on_success(mode):
    x, w, b = _base()
    dy = np.random.default_rng(1).standard_normal((1, 2, 6, 5))
    _readonly(x, w, b, dy)
    before = _snapshot(x, w, b, dy)
    results = []
    y, ctx = ib.conv_forward(x, w, b, padding=1, padding_mode=mode)
    results += [y, *ib.conv_backward(np.ones_like(y), ctx)]
    results.append(ib.conv_grad_input(dy, w, x.shape, padding=1, padding_mode=mode))
    results.append(ib.conv_grad_weight(dy, x, w.shape, padding=1, padding_mode=mode))
    results.append(ib.conv_grad_bias(dy))
    yt, tctx = ib.conv_transpose_forward(dy, w, b, padding=1, padding_mode=mode)
    results += [yt, *ib.conv_transpose_backward(np.ones_like(yt), tctx)]
    results.append(ib.im2col(x, (3, 3), padding=1))
    results.append(ib.col2im(ib.im2col(x, (3, 3), padding=1), (6, 5), (3, 3), padding=1))
    # pointwise kernel, no padding: the easiest case to alias by accident
    one = np.ones((2, 2, 1, 1))
    _readonly(one)
    results.append(ib.conv(x, one))
    results.append(ib.im2col(x, (1, 1)))
    results.append(ib.col2im(x.reshape(1, 2, 30), (6, 5), (1, 1)))
    _assert_unchanged(before, x, w, b, dy)
    for r in results:
        for a in (x, w, b, dy, one):
            assert not np.shares_memory(r, a)


# --------------------------------------------------------------------------
# validation survives `python -O`: no assert statements in the package
# --------------------------------------------------------------------------
def test_no_assert_statements_in_package():
    offenders = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"^\s*assert\b", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "assert used in the package (vanishes under python -O):\n" + \
        "\n".join(offenders)


def test_errors_raised_under_python_optimize():
    script = textwrap.dedent("""
        import numpy as np, im2colbp as ib
        assert False, "not reached under -O"
    """)
    # sanity: -O really strips asserts in the child
    assert subprocess.run([sys.executable, "-O", "-c", script], env=_child_env(),
                          capture_output=True).returncode == 0
    script = textwrap.dedent("""
        import numpy as np, im2colbp as ib
        x, w = np.ones((1, 2, 5)), np.ones((2, 2, 3))
        y, ctx = ib.conv_forward(x, w)
        cases = [
            (lambda: ib.conv(x, w, stride=0), ValueError),
            (lambda: ib.conv(x, w, padding=-1), ValueError),
            (lambda: ib.conv(x, w, groups=1.5), TypeError),
            (lambda: ib.conv(x, np.ones((2, 3, 3))), ValueError),
            (lambda: ib.conv(x, w, np.ones(3)), ValueError),
            (lambda: ib.conv(x, w, padding_mode="mirror"), ValueError),
            (lambda: ib.conv(x + 0j, w), TypeError),
            (lambda: ib.conv_backward(np.ones((1, 2, 4)), ctx), ValueError),
            (lambda: ib.conv_backward(np.ones_like(y), ctx, wrt=("x",)), ValueError),
            (lambda: ib.conv_grad_input(np.ones_like(y), w, (1, 2, 9)), ValueError),
            (lambda: ib.conv_grad_weight(np.ones_like(y), x, (2, 2, 4)), ValueError),
            (lambda: ib.conv_transpose(x, w, stride=2, output_padding=2), ValueError),
            (lambda: ib.conv_transpose(x, w, padding="same"), ValueError),
            (lambda: ib.im2col(x, 9), ValueError),
            (lambda: ib.col2im(np.ones((1, 5, 3)), (5,), 3), ValueError),
            (lambda: ib.set_workspace_limit(0), ValueError),
        ]
        for i, (thunk, exc) in enumerate(cases):
            try:
                thunk()
            except Exception as e:
                if type(e) is not exc:
                    raise SystemExit(f"case {i}: {type(e).__name__}: {e}")
            else:
                raise SystemExit(f"case {i}: no error under -O")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-O", "-c", script], env=_child_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr


def _child_env():
    env = dict(os.environ)
    root = str(PACKAGE_DIR.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# --------------------------------------------------------------------------
# empty batch and zero channels are fine: right shape, dtype and values
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_convolution(dtype):
    x = np.ones((0, 2, 6, 5), dtype)
    w = np.ones((3, 2, 3, 3), dtype)
    b = np.ones(3, dtype)
    y = ib.conv(x, w, b, padding=1, padding_mode="reflect")
    assert y.shape == (0, 3, 6, 5) and y.dtype == dtype
    y, ctx = ib.conv_forward(x, w, b, stride=2)
    assert y.shape == (0, 3, 2, 2) and y.dtype == dtype
    g = ib.conv_backward(np.ones(y.shape, dtype), ctx)
    assert g.input.shape == x.shape and g.input.dtype == dtype
    assert g.weight.shape == w.shape and g.weight.dtype == dtype and not g.weight.any()
    assert g.bias.shape == (3,) and g.bias.dtype == dtype and not g.bias.any()
    dx = ib.conv_grad_input(np.ones((0, 3, 4, 3), dtype), w, x.shape)
    assert dx.shape == x.shape and dx.dtype == dtype
    dw = ib.conv_grad_weight(np.ones((0, 3, 4, 3), dtype), x, w.shape)
    assert dw.shape == w.shape and dw.dtype == dtype and not dw.any()
    db = ib.conv_grad_bias(np.ones((0, 3, 4, 3), dtype))
    assert db.shape == (3,) and db.dtype == dtype and not db.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_batch_transposed_and_lowering(dtype):
    x = np.ones((0, 2, 4, 5), dtype)
    w = np.ones((2, 3, 3, 3), dtype)
    y, ctx = ib.conv_transpose_forward(x, w, np.ones(3, dtype), stride=2, output_padding=1)
    assert y.shape == (0, 3, 10, 12) and y.dtype == dtype
    g = ib.conv_transpose_backward(np.ones(y.shape, dtype), ctx)
    assert g.input.shape == x.shape and g.input.dtype == dtype
    assert g.weight.shape == w.shape and not g.weight.any()
    assert g.bias.shape == (3,) and not g.bias.any()
    assert ib.conv_transpose(x, w).shape == (0, 3, 6, 7)
    cols = ib.im2col(x, (3, 3), padding=1)
    assert cols.shape == (0, 18, 20) and cols.dtype == dtype
    img = ib.col2im(cols, (4, 5), (3, 3), padding=1)
    assert img.shape == (0, 2, 4, 5) and img.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_input_channels(dtype):
    x = np.ones((2, 0, 6, 5), dtype)
    w = np.ones((3, 0, 3, 3), dtype)
    b = np.arange(3, dtype=dtype)
    y = ib.conv(x, w, b)
    assert y.shape == (2, 3, 4, 3) and y.dtype == dtype
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], y.shape))
    y, ctx = ib.conv_forward(x, w, b, padding=1, padding_mode="circular")
    g = ib.conv_backward(np.ones(y.shape, dtype), ctx)
    assert g.input.shape == x.shape and g.input.dtype == dtype
    assert g.weight.shape == w.shape and g.weight.dtype == dtype
    np.testing.assert_array_equal(g.bias, np.full(3, 2 * 6 * 5, dtype))
    assert ib.conv_grad_input(np.ones((2, 3, 4, 3), dtype), w, x.shape).shape == x.shape
    assert ib.conv_grad_weight(np.ones((2, 3, 4, 3), dtype), x, w.shape).shape == w.shape
    # groups with zero channels per group
    y = ib.conv(np.ones((2, 0, 5), dtype), np.ones((4, 0, 3), dtype), groups=2)
    assert y.shape == (2, 4, 3) and y.dtype == dtype and not y.any()
    # unbatched
    y = ib.conv(np.ones((0, 5), dtype), np.ones((3, 0, 3), dtype))
    assert y.shape == (3, 3) and y.dtype == dtype and not y.any()
    # im2col / col2im
    cols = ib.im2col(x, (3, 3))
    assert cols.shape == (2, 0, 12) and cols.dtype == dtype
    img = ib.col2im(cols, (6, 5), (3, 3))
    assert img.shape == (2, 0, 6, 5) and img.dtype == dtype
    assert ib.conv_grad_bias(np.ones((2, 0, 4), dtype)).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_output_channels(dtype):
    x = np.ones((2, 2, 6, 5), dtype)
    w = np.ones((0, 2, 3, 3), dtype)
    y, ctx = ib.conv_forward(x, w, np.ones(0, dtype))
    assert y.shape == (2, 0, 4, 3) and y.dtype == dtype
    g = ib.conv_backward(np.ones(y.shape, dtype), ctx)
    assert g.input.shape == x.shape and not g.input.any() and g.input.dtype == dtype
    assert g.weight.shape == w.shape and g.bias.shape == (0,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_channels_transposed(dtype):
    # no input channels: the output is the bias
    x = np.ones((1, 0, 5), dtype)
    w = np.ones((0, 3, 3), dtype)
    b = np.arange(3, dtype=dtype)
    y, ctx = ib.conv_transpose_forward(x, w, b, stride=2)
    assert y.shape == (1, 3, 11) and y.dtype == dtype
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None], y.shape))
    g = ib.conv_transpose_backward(np.ones(y.shape, dtype), ctx)
    assert g.input.shape == x.shape and g.weight.shape == w.shape
    np.testing.assert_array_equal(g.bias, np.full(3, 11, dtype))
    # no output channels
    y = ib.conv_transpose(np.ones((1, 2, 5), dtype), np.ones((2, 0, 3), dtype))
    assert y.shape == (1, 0, 7) and y.dtype == dtype


def test_empty_integer_inputs_compute_in_float64():
    y = ib.conv(np.ones((0, 1, 5), np.int32), np.ones((2, 1, 3), np.int64))
    assert y.shape == (0, 2, 3) and y.dtype == np.float64
    y = ib.conv(np.ones((1, 0, 5), bool), np.ones((2, 0, 3), np.int8))
    assert y.shape == (1, 2, 3) and y.dtype == np.float64 and not y.any()
    assert ib.im2col(np.ones((0, 1, 5), np.int16), 2).dtype == np.float64
