"""im2col / col2im against their definitions, the adjoint identity, padding adjoints."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import MAX_SIZE, PADDING_MODES, paddings

import im2colbp as ib
from im2colbp.geometry import window_geometry
from im2colbp.lowering import pad, unpad_add

NP_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def im2col_by_definition(x, window):
    """cols[n, (c, k), (o)] = x_padded[n, c, o*S + k*D], one element at a time."""
    padded = np.pad(x, [(0, 0), (0, 0)] + list(window.padding))
    n, c = x.shape[:2]
    cols = np.zeros((n, c * window.kernel_volume, window.out_volume))
    for row, (channel, *kernel) in enumerate(
        itertools.product(range(c), *[range(k) for k in window.kernel_size])
    ):
        for col, out in enumerate(itertools.product(*[range(o) for o in window.out_size])):
            index = tuple(o * s + k * d for o, s, k, d in
                          zip(out, window.stride, kernel, window.dilation))
            cols[:, row, col] = padded[(slice(None), channel) + index]
    return cols


@st.composite
def lowering_cases(draw, ranks=(1, 2, 3, 4)):
    rank = draw(st.sampled_from(ranks))
    in_size = tuple(draw(st.integers(1, MAX_SIZE[rank])) for _ in range(rank))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    padding = draw(paddings(rank))
    try:
        window = window_geometry(in_size, kernel, stride, padding, dilation)
    except ValueError:
        from hypothesis import assume
        assume(False)
    shape = (draw(st.integers(0, 2)), draw(st.integers(1, 3))) + in_size
    return shape, window, dict(stride=stride, padding=padding, dilation=dilation)


@given(lowering_cases(), st.integers(0, 2**32 - 1))
def test_im2col_matches_definition(case, seed):
    shape, window, kwargs = case
    x = np.random.default_rng(seed).standard_normal(shape)
    cols = ib.im2col(x, window.kernel_size, **kwargs)
    np.testing.assert_array_equal(cols, im2col_by_definition(x, window))


@given(lowering_cases(), st.integers(0, 2**32 - 1))
def test_col2im_is_adjoint_of_im2col(case, seed):
    shape, window, kwargs = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    c = rng.standard_normal((shape[0], shape[1] * window.kernel_volume, window.out_volume))
    lhs = np.vdot(ib.im2col(x, window.kernel_size, **kwargs), c)
    rhs = np.vdot(x, ib.col2im(c, window.in_size, window.kernel_size, **kwargs))
    assert lhs == pytest.approx(rhs, rel=1e-11, abs=1e-11)


def test_im2col_small_example_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    # 2×2 windows of [[0 1 2] [3 4 5] [6 7 8]], stride 1: four windows, four taps
    expected = np.array([[0, 1, 3, 4],
                         [1, 2, 4, 5],
                         [3, 4, 6, 7],
                         [4, 5, 7, 8]], dtype=float)
    np.testing.assert_array_equal(ib.im2col(x, 2)[0], expected)


def test_col2im_counts_window_coverage():
    counts = ib.col2im(np.ones((1, 4, 4)), (3, 3), 2)
    np.testing.assert_array_equal(counts[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


def test_unbatched_is_first_sample_of_batched(rng):
    x = rng.standard_normal((3, 6, 5))
    kwargs = dict(stride=(2, 1), padding=((1, 0), 2), dilation=(1, 2))
    cols = ib.im2col(x, (2, 3), **kwargs)
    np.testing.assert_array_equal(cols, ib.im2col(x[None], (2, 3), **kwargs)[0])
    back = ib.col2im(cols, (6, 5), (2, 3), **kwargs)
    np.testing.assert_array_equal(back, ib.col2im(cols[None], (6, 5), (2, 3), **kwargs)[0])


def test_kernel_offsets_are_the_row_order(rng):
    """Row (c, k_1, k_2) of the columns is channel c read at kernel offset (k_1, k_2)."""
    x = rng.standard_normal((1, 2, 4, 5))
    cols = ib.im2col(x, (2, 3)).reshape(1, 2, 2, 3, 3, 3)  # (n, c, k1, k2, o1, o2)
    np.testing.assert_array_equal(cols[0, 1, 1, 2], x[0, 1, 1:4, 2:5])


def test_dtypes(rng):
    assert ib.im2col(np.ones((1, 1, 4), dtype=np.float32), 2).dtype == np.float32
    assert ib.im2col(np.ones((1, 1, 4), dtype=np.int32), 2).dtype == np.float64
    assert ib.col2im(np.ones((1, 2, 3), dtype=np.float32), (4,), 2).dtype == np.float32


def test_results_do_not_alias_inputs():
    x = np.ones((1, 1, 3))
    cols = ib.im2col(x, 1)
    assert not np.shares_memory(cols, x)
    back = ib.col2im(cols, (3,), 1)
    assert not np.shares_memory(back, cols)


@given(st.sampled_from(PADDING_MODES), st.integers(1, 3), st.integers(0, 2**32 - 1),
       st.data())
def test_pad_matches_numpy_and_unpad_add_is_its_adjoint(mode, rank, seed, data):
    in_size = tuple(data.draw(st.integers(1, 5)) for _ in range(rank))
    limit = (lambda size: size - 1) if mode == "reflect" else (lambda size: 7)
    pairs = tuple((data.draw(st.integers(0, limit(i))), data.draw(st.integers(0, limit(i))))
                  for i in in_size)
    window = window_geometry(in_size, 1, 1, pairs, 1, mode)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2,) + in_size)
    padded = pad(x, window)
    np.testing.assert_array_equal(padded, np.pad(x, [(0, 0)] + list(pairs), NP_PAD_MODE[mode]))
    g = rng.standard_normal(padded.shape)
    folded = unpad_add(g.copy(), window)
    assert np.vdot(padded, g) == pytest.approx(np.vdot(x, folded), rel=1e-11, abs=1e-11)


def test_circular_padding_wraps_more_than_once():
    window = window_geometry((2,), 1, 1, ((5, 0),), 1, "circular")
    np.testing.assert_array_equal(pad(np.array([[1.0, 2.0]]), window),
                                  [[2, 1, 2, 1, 2, 1, 2]])


def test_col2im_example_volume_matches_sum():
    """Every column entry lands somewhere or in padding: total mass is conserved
    when there is no padding."""
    cols = np.ones((2, 3 * 8, 27))
    image = ib.col2im(cols, (4, 4, 4), 2, stride=1)
    assert image.sum() == pytest.approx(cols.sum())
    assert image.shape == (2, 3, 4, 4, 4)
