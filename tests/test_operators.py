"""Sparse operator views against the lowering: S is im2col, S.T is col2im; T is conv,
T.T is conv_grad_input and conv_transpose (every padding mode: the adjoint padding
modes of conv_transpose are proved with the dot-product test through T)."""

import math

import numpy as np
import pytest
import scipy.sparse
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import MAX_SIZE, PADDING_MODES, assert_close, conv_cases, paddings

import im2colbp as ib
from im2colbp import reference
from im2colbp.geometry import conv_geometry, window_geometry
from im2colbp.memory import AllocationError, memory_limit
from im2colbp.operators import (
    DEFAULT_MAX_NONZEROS,
    _axis_sources,
    _axis_taps_reading_input,
    conv_operator,
    im2col_operator,
)


def _scale(*arrays):
    return max([1.0] + [float(np.abs(a).max()) for a in arrays if a is not None and a.size])


@st.composite
def im2col_cases(draw, ranks=(1, 2, 3, 4)):
    """Input shape (batched, or unbatched with a tuple kernel_size) and window arguments."""
    rank = draw(st.sampled_from(ranks))
    in_size = tuple(draw(st.integers(1, MAX_SIZE[rank])) for _ in range(rank))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    kwargs = dict(stride=tuple(draw(st.integers(1, 4)) for _ in range(rank)),
                  padding=draw(paddings(rank)),
                  dilation=tuple(draw(st.integers(1, 3)) for _ in range(rank)))
    try:
        window_geometry(in_size, kernel, **kwargs)
    except ValueError:
        assume(False)
    lead = draw(st.sampled_from([(draw(st.integers(0, 2)), draw(st.integers(1, 3))),
                                 (draw(st.integers(1, 3)),)]))
    if len(lead) == 2 and len(set(kernel)) == 1 and draw(st.booleans()):
        kernel = kernel[0]  # an int kernel_size (batched input only)
    return lead + in_size, kernel, kwargs


# --------------------------------------------------------------------------
# im2col_operator
# --------------------------------------------------------------------------
@given(im2col_cases(), st.integers(0, 2**32 - 1))
def test_im2col_operator_is_im2col_and_its_transpose_col2im(case, seed):
    shape, kernel, kw = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    S = im2col_operator(shape, kernel, **kw)
    assert S.format == "csr"
    cols = ib.im2col(x, kernel, **kw)
    assert S.shape == (cols.size, x.size)
    np.testing.assert_array_equal(S @ x.ravel(), cols.ravel())  # a selection: exact
    dcols = rng.standard_normal(cols.shape)
    kernel_size = kernel if isinstance(kernel, tuple) else (kernel,) * (len(shape) - 2)
    rank = len(kernel_size)
    expected = ib.col2im(dcols, shape[-rank:], kernel_size, **kw)
    assert_close(S.T @ dcols.ravel(), expected.ravel(), scale=_scale(dcols) * 4**rank)
    # one entry per row at most, every entry a 1
    assert np.all(np.diff(S.indptr) <= 1)
    np.testing.assert_array_equal(S.data, 1.0)


def test_im2col_operator_hand_example():
    S = im2col_operator((1, 1, 4), 2)
    np.testing.assert_array_equal(S.toarray(), [[1, 0, 0, 0],
                                                [0, 1, 0, 0],
                                                [0, 0, 1, 0],
                                                [0, 1, 0, 0],
                                                [0, 0, 1, 0],
                                                [0, 0, 0, 1]])
    # two channels: block diagonal, one block per channel
    S2 = im2col_operator((2, 3), (2,))
    np.testing.assert_array_equal(S2.toarray(), [[1, 0, 0, 0, 0, 0],
                                                 [0, 1, 0, 0, 0, 0],
                                                 [0, 1, 0, 0, 0, 0],
                                                 [0, 0, 1, 0, 0, 0],
                                                 [0, 0, 0, 1, 0, 0],
                                                 [0, 0, 0, 0, 1, 0],
                                                 [0, 0, 0, 0, 1, 0],
                                                 [0, 0, 0, 0, 0, 1]])


# --------------------------------------------------------------------------
# conv_operator
# --------------------------------------------------------------------------
def _transpose_kwargs(case, **overrides):
    """conv_transpose arguments giving back x's size: padding resolved, output_size = I."""
    kw = dict(case.call_kwargs, **overrides)
    geometry = conv_geometry(case.input_shape, case.weight_shape, **kw)
    return dict(kw, padding=geometry.window.padding, output_size=geometry.window.in_size)


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_conv_operator_is_conv_and_its_transpose_the_input_gradient(case, seed):
    x, w, _ = case.arrays(seed)
    kw = case.call_kwargs
    T = conv_operator(w, x.shape, **kw)
    assert T.format == "csr"
    y = ib.conv(x, w, **kw)
    assert T.shape == (y.size, x.size)
    assert_close(T @ x.ravel(), y.ravel(), scale=_scale(y, x) * w[0].size)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
    dx = ib.conv_grad_input(dy, w, x.shape, **kw)
    adjoint = T.T @ dy.ravel()
    assert_close(adjoint, dx.ravel(), scale=_scale(dx, dy) * w.shape[0] * w[0].size)
    dx_t = ib.conv_transpose(dy, w, **_transpose_kwargs(case))
    assert dx_t.shape == x.shape
    assert_close(adjoint, dx_t.ravel(), scale=_scale(dx_t, dy) * w.shape[0] * w[0].size)


@pytest.mark.parametrize("mode", PADDING_MODES)
@given(case=conv_cases(ranks=(1, 2, 3), allow_empty=False), seed=st.integers(0, 2**32 - 1))
def test_conv_transpose_padding_mode_is_the_adjoint_via_operator(mode, case, seed):
    """For every mode: T.T @ y == conv_transpose(y, w, padding_mode=mode), and the
    dot-product test <conv(x), y> == <x, conv_transpose(y)> holds."""
    kw = dict(case.call_kwargs, padding_mode=mode)
    try:
        geometry = conv_geometry(case.input_shape, case.weight_shape, **kw)
    except ValueError:
        assume(False)  # e.g. reflect padding as large as the input
    x, w, _ = case.arrays(seed)
    T = conv_operator(w, x.shape, **kw)
    y = np.random.default_rng(seed + 1).standard_normal(geometry.output_shape)
    xt = ib.conv_transpose(y, w, **_transpose_kwargs(case, padding_mode=mode))
    scale = _scale(xt, y) * w.shape[0] * w[0].size
    assert_close(T.T @ y.ravel(), xt.ravel(), scale=scale)
    lhs, rhs = np.vdot(ib.conv(x, w, **kw), y), np.vdot(x, xt)
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


def test_conv_operator_hand_examples():
    w = np.array([[[1.0, -1.0]]])
    np.testing.assert_array_equal(conv_operator(w, (1, 1, 4)).toarray(),
                                  [[1, -1, 0, 0], [0, 1, -1, 0], [0, 0, 1, -1]])
    # replicate padding: x_pad = x0 x0 x1 x2 x2 -> taps that meet on a source add up
    T = conv_operator(np.ones((1, 1, 3)), (1, 3), padding=1, padding_mode="replicate")
    np.testing.assert_array_equal(T.toarray(), [[2, 1, 0], [1, 1, 1], [0, 1, 2]])
    # reflect: x_pad = x1 x0 x1 x2 x1
    T = conv_operator(np.array([[[1.0, 2.0, 3.0]]]), (1, 3), padding=1, padding_mode="reflect")
    np.testing.assert_array_equal(T.toarray(), [[2, 4, 0], [1, 2, 3], [0, 4, 2]])
    # circular padding larger than the input wraps more than once: x_pad = x0 x1 x0 x1 x0
    T = conv_operator(np.array([[[1.0, 10.0, 100.0]]]), (1, 2), padding=((2, 1),),
                      padding_mode="circular")
    np.testing.assert_array_equal(T.toarray(), [[101, 10], [10, 101], [101, 10]])
    # groups: block diagonal over groups, stride 2 skips the remainder sample
    w = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])  # (C_out=2, C_in/G=1, K=2), G = 2
    T = conv_operator(w, (2, 2, 5), stride=2, groups=2)  # N = 2, C_in = 2
    dense = T.toarray()
    assert dense.shape == (2 * 2 * 2, 2 * 2 * 5)
    np.testing.assert_array_equal(dense[:4, :10], [[1, 2, 0, 0, 0, 0, 0, 0, 0, 0],
                                                   [0, 0, 1, 2, 0, 0, 0, 0, 0, 0],
                                                   [0, 0, 0, 0, 0, 3, 4, 0, 0, 0],
                                                   [0, 0, 0, 0, 0, 0, 0, 3, 4, 0]])
    np.testing.assert_array_equal(dense[4:, 10:], dense[:4, :10])  # second sample
    np.testing.assert_array_equal(dense[:4, 10:], 0)
    np.testing.assert_array_equal(dense[:, [4, 9, 14, 19]], 0)  # never read (R = 1)


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_conv_operator_matches_reference_2d(mode):
    rng = np.random.default_rng(2)
    kw = dict(stride=(1, 2), padding=((1, 2), (2, 0)), dilation=(2, 1), groups=3,
              padding_mode=mode)
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((6, 1, 2, 3))
    T = conv_operator(w, x.shape, **kw)
    np.testing.assert_allclose(T @ x.ravel(), reference.conv(x, w, None, **kw).ravel(),
                               atol=1e-12)
    y_shape = reference.conv(x, w, None, **kw).shape
    dy = rng.standard_normal(y_shape)
    np.testing.assert_allclose(T.T @ dy.ravel(),
                               reference.conv_grad_input(dy, w, x.shape, **kw).ravel(),
                               atol=1e-12)


def test_conv_operator_dtype_and_inputs_untouched():
    w = np.arange(6, dtype=np.float32).reshape(2, 1, 3)
    copy = w.copy()
    T = conv_operator(w, (1, 1, 5), padding=2, padding_mode="circular")
    assert T.dtype == np.float32
    np.testing.assert_array_equal(w, copy)
    assert conv_operator(np.ones((1, 1, 2), dtype=int), (1, 3)).dtype == np.float64
    assert im2col_operator((1, 1, 3), 2).dtype == np.float64


def test_empty_operators():
    assert conv_operator(np.ones((2, 1, 3)), (0, 1, 5)).shape == (0, 0)
    T = conv_operator(np.ones((2, 0, 3)), (1, 0, 5))
    assert T.shape == (2 * 3, 0) and T.nnz == 0
    S = im2col_operator((0, 2, 4), 2)
    assert S.shape == (0, 0)
    assert isinstance(S, (scipy.sparse.csr_array, scipy.sparse.csr_matrix))


# --------------------------------------------------------------------------
# the nonzero limit and errors
# --------------------------------------------------------------------------
def test_max_nonzeros_limit():
    shape = (2, 3, 10, 10)
    stored = im2col_operator(shape, 3).nnz  # valid: 6 planes * 9 taps * 64 windows
    assert stored == 6 * 9 * 64
    assert im2col_operator(shape, 3, max_nonzeros=stored).nnz == stored
    with pytest.raises(ValueError, match="max_nonzeros=3,455") as info:
        im2col_operator(shape, 3, max_nonzeros=stored - 1)
    assert f"{stored:,}" in str(info.value)
    w = np.ones((4, 3, 3, 3))
    entries = 2 * 4 * 3 * 9 * 64
    assert conv_operator(w, shape, max_nonzeros=entries).nnz == entries
    with pytest.raises(ValueError, match="max_nonzeros"):
        conv_operator(w, shape, max_nonzeros=entries - 1)
    # the default applies when max_nonzeros is not given: DEFAULT_MAX_NONZEROS entries pass
    # the count (and then meet the memory bound, set tiny here so that nothing is built),
    # one more is refused by the count
    with memory_limit(1000):
        with pytest.raises(AllocationError):
            im2col_operator((1, 1, DEFAULT_MAX_NONZEROS), 1)
        with pytest.raises(ValueError, match=f"max_nonzeros={DEFAULT_MAX_NONZEROS:,}") as info:
            im2col_operator((1, 1, DEFAULT_MAX_NONZEROS + 1), 1)
        assert type(info.value) is ValueError
        with pytest.raises(ValueError, match=f"max_nonzeros={DEFAULT_MAX_NONZEROS:,}"):
            conv_operator(np.ones((1, 1, 1)), (1, 1, DEFAULT_MAX_NONZEROS + 1))
    # 3.6e9 entries: refused from per-axis counts, before any (*K, *O) array is built
    with pytest.raises(ValueError, match="max_nonzeros=10,000,000"):
        im2col_operator((1, 1, 512, 512, 512), (3, 3, 3))
    with pytest.raises(ValueError, match="3,581,577,000 nonzeros"):
        conv_operator(np.ones((1, 1, 3, 3, 3)), (1, 1, 512, 512, 512))


def test_operator_counts_match_formula():
    """Zero padding: stored entries = N*C_out*C_in/G * (taps reading real samples)."""
    w = np.ones((4, 2, 3, 2))
    T = conv_operator(w, (3, 4, 6, 5), stride=(2, 1), groups=2)
    out = (2, 4)
    assert T.nnz == 3 * 4 * 2 * math.prod(w.shape[2:]) * math.prod(out)


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc, f"expected {exc.__name__}, got {info.value!r}"
    assert match in str(info.value), str(info.value)


@pytest.mark.parametrize("label,thunk,exc,match", [
    ("S limit type", lambda: im2col_operator((1, 1, 4), 2, max_nonzeros=1.5), TypeError,
     "max_nonzeros"),
    ("S limit negative", lambda: im2col_operator((1, 1, 4), 2, max_nonzeros=-1), ValueError,
     "max_nonzeros"),
    ("S shape type", lambda: im2col_operator(4, 2), TypeError, "input_shape"),
    ("S shape negative", lambda: im2col_operator((1, -1, 4), 2), ValueError, "input_shape"),
    ("S unbatched int kernel", lambda: im2col_operator((1, 4), 2), ValueError, "input_shape"),
    ("S rank", lambda: im2col_operator((1, 1, 4), (2, 2, 2)), ValueError, "input_shape"),
    ("S kernel type", lambda: im2col_operator((1, 1, 4), "2"), TypeError, "kernel_size"),
    ("S kernel too big", lambda: im2col_operator((1, 1, 4), 5), ValueError, "kernel"),
    ("S stride", lambda: im2col_operator((1, 1, 4), 2, stride=0), ValueError, "stride"),
    ("S padding", lambda: im2col_operator((1, 1, 4), 2, padding="full"), ValueError,
     "padding"),
    ("S empty spatial", lambda: im2col_operator((1, 1, 0), 1), ValueError, "spatial size"),
    ("T limit type", lambda: conv_operator(np.ones((1, 1, 2)), (1, 1, 4), max_nonzeros="9"),
     TypeError, "max_nonzeros"),
    ("T channels", lambda: conv_operator(np.ones((1, 2, 2)), (1, 1, 4)), ValueError, "C_in"),
    ("T weight rank", lambda: conv_operator(np.ones((1, 2)), (1, 1, 4)), ValueError, "weight"),
    ("T weight complex", lambda: conv_operator(np.ones((1, 1, 2), complex), (1, 1, 4)),
     TypeError, "weight"),
    ("T groups", lambda: conv_operator(np.ones((3, 1, 2)), (1, 2, 4), groups=2), ValueError,
     "groups"),
    ("T mode", lambda: conv_operator(np.ones((1, 1, 2)), (1, 1, 4), padding_mode="wrap"),
     ValueError, "padding_mode"),
    ("T reflect", lambda: conv_operator(np.ones((1, 1, 2)), (1, 1, 2), padding=2,
                                        padding_mode="reflect"), ValueError, "reflect"),
    ("T input rank", lambda: conv_operator(np.ones((1, 1, 2)), (1, 1, 4, 4)), ValueError,
     "input"),
])
def test_errors(label, thunk, exc, match):
    _raises(exc, match, thunk)


@given(st.integers(1, 9), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4),
       st.integers(0, 6), st.integers(0, 6))
def test_entry_count_by_arithmetic_matches_the_index_tables(size, kernel, stride, dilation,
                                                          before, after):
    """The count that guards max_nonzeros (arithmetic, no (K, O) array) equals the
    number of (tap, window) pairs of the index table that read a real sample, on both
    of its branches (more taps than windows, and fewer)."""
    try:
        window = window_geometry((size,), kernel, stride, ((before, after),), dilation)
    except ValueError:
        assume(False)
    table = _axis_sources(window)[0]  # (K, O), -1 where the tap reads zero padding
    assert _axis_taps_reading_input(window, 0) == np.count_nonzero(table >= 0)


def test_huge_groups_of_no_channels():
    """Any groups divides zero channels: an empty operator, not np.arange(10**20)."""
    T = conv_operator(np.ones((0, 0, 3)), (1, 0, 5), groups=10**20)
    assert T.shape == (0, 0) and T.nnz == 0


def test_large_kernel_operator_matches_im2col():
    """More taps than windows (one window): the operator still equals the lowering."""
    x = np.arange(1.0, 13.0).reshape(1, 2, 6)
    S = im2col_operator(x.shape, 5, padding=((1, 0),), stride=3)
    np.testing.assert_array_equal(S @ x.ravel(),
                                  ib.im2col(x, 5, padding=((1, 0),), stride=3).ravel())
