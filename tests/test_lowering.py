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


# --------------------------------------------------------------------------
# both loop orders (kernel offsets, window positions) and no Python loop that
# scales with the kernel or the padding (issue 13, item 3)
# --------------------------------------------------------------------------
LARGE_KERNEL_CASES = [
    # in_size, kernel, stride, padding, dilation: more taps than window positions
    ((6,), (5,), (1,), ((0, 0),), (1,)),       # 2 windows, 5 taps
    ((6,), (6,), (1,), ((0, 0),), (1,)),       # one window
    ((5,), (4,), (3,), ((2, 1),), (1,)),       # padded, strided: 2 windows
    ((7,), (3,), (1,), ((0, 0),), (3,)),       # dilated: 1 window
    ((4, 5), (3, 4), (2, 1), ((1, 0), (0, 1)), (1, 1)),
    ((3, 3, 4), (3, 2, 4), (1, 2, 1), ((0, 0), (1, 1), (0, 0)), (1, 1, 1)),
    ((5, 2), (2, 2), (1, 1), ((0, 0), (0, 0)), (2, 1)),  # 2-D, more windows than taps
]


@pytest.mark.parametrize("in_size,kernel,stride,padding,dilation", LARGE_KERNEL_CASES)
def test_large_kernels_match_definition_and_adjoint(in_size, kernel, stride, padding,
                                                    dilation, rng):
    window = window_geometry(in_size, kernel, stride, padding, dilation)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    x = rng.standard_normal((2, 3) + in_size)
    cols = ib.im2col(x, kernel, **kwargs)
    np.testing.assert_array_equal(cols, im2col_by_definition(x, window))
    c = rng.standard_normal(cols.shape)
    back = ib.col2im(c, in_size, kernel, **kwargs)
    assert np.vdot(cols, c) == pytest.approx(np.vdot(x, back), rel=1e-12)


def _python_lines(call, package_dir, limit):
    """Run ``call`` counting the Python lines executed in ``package_dir``; give up
    (RuntimeError) after ``limit`` of them, so a loop over 10**6 taps fails quickly."""
    import sys

    count = [0]

    def local(frame, event, arg):
        if event == "line":
            count[0] += 1
            if count[0] > limit:
                raise RuntimeError(f"more than {limit} Python lines in im2colbp")
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(package_dir) else None

    sys.settrace(tracer)
    try:
        result = call()
    finally:
        sys.settrace(None)
    return result, count[0]


PACKAGE_DIR = str(__import__("pathlib").Path(ib.__file__).parent)


def test_a_kernel_as_large_as_the_input_takes_few_python_steps():
    """A broadcast 10**6-tap kernel window on a 10**6-sample broadcast input has one
    window position: the lowering loops over positions, not over 10**6 offsets."""
    x = np.broadcast_to(np.float32(1), (1, 1, 10**6))
    cols, lines = _python_lines(lambda: ib.im2col(x, (10**6,)), PACKAGE_DIR, 2000)
    assert cols.shape == (1, 10**6, 1) and cols.dtype == np.float32 and np.all(cols == 1)
    back, lines = _python_lines(lambda: ib.col2im(cols, (10**6,), 10**6), PACKAGE_DIR, 2000)
    assert back.shape == (1, 1, 10**6) and np.all(back == 1)
    # two windows, 5 * 10**5 taps each, dilation 2: still two Python iterations
    cols, _ = _python_lines(lambda: ib.im2col(x, (5 * 10**5,), dilation=2), PACKAGE_DIR, 2000)
    np.testing.assert_array_equal(cols[0, :, 0], 1)


@pytest.mark.parametrize("mode", ["circular", "replicate", "reflect", "zeros"])
def test_padding_work_does_not_loop_over_the_padding(mode):
    """padding=10**6 on a 2-sample input: pad and its adjoint in a few Python steps,
    matching np.pad and the adjoint identity."""
    amount = 10**6 if mode != "reflect" else 1
    window = window_geometry((2, 3), 1, 1, ((amount, amount), (0, 2)), 1, mode)
    x = np.arange(6.0).reshape(1, 2, 3)
    padded, _ = _python_lines(lambda: pad(x, window), PACKAGE_DIR, 500)
    np.testing.assert_array_equal(
        padded, np.pad(x, ((0, 0), (amount, amount), (0, 2)), NP_PAD_MODE[mode]))
    g = np.random.default_rng(1).standard_normal(padded.shape)
    folded, _ = _python_lines(lambda: unpad_add(g.copy(), window), PACKAGE_DIR, 500)
    assert np.vdot(padded, g) == pytest.approx(np.vdot(x, folded), rel=1e-10)


def test_circular_padding_through_conv_is_its_period_sum():
    """Through the public API: the conv with circular padding 10**6 of a 2-sample input,
    and its input gradient (every border sample folds back onto its source)."""
    x = np.array([[[1.0, 2.0]]])
    w = np.ones((1, 1, 1))
    for method in ("auto", "im2col", "direct"):  # plan once (cached); count the work after
        ib.conv(x, w, padding=10**6, padding_mode="circular", method=method)
        ib.conv_grad_input(np.ones((1, 1, 2 * 10**6 + 2)), w, x.shape, padding=10**6,
                           padding_mode="circular", method=method)
    y, _ = _python_lines(lambda: ib.conv(x, w, padding=10**6, padding_mode="circular"),
                         PACKAGE_DIR, 5000)
    y_taught, _ = _python_lines(lambda: ib.conv(x, w, padding=10**6, padding_mode="circular",
                                                method="im2col"), PACKAGE_DIR, 5000)
    np.testing.assert_array_equal(y, y_taught)
    np.testing.assert_array_equal(y[0, 0, :4], [1, 2, 1, 2])
    assert y.shape == (1, 1, 2 * 10**6 + 2)
    dx, _ = _python_lines(
        lambda: ib.conv_grad_input(np.ones_like(y), w, x.shape, padding=10**6,
                                   padding_mode="circular"), PACKAGE_DIR, 5000)
    np.testing.assert_array_equal(dx, [[[10**6 + 1, 10**6 + 1]]])
