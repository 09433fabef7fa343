"""The teaching routes (Aggarwal 2018, §8.3) against the lowering and the reference.

conv_grad_input_by_transposition and conv_grad_weight_by_correlation compute the
gradients as convolutions; they must equal the lowered conv_grad_input /
conv_grad_weight for every geometry hypothesis draws (rank 1-4, groups, dilation,
every padding form and mode, stride > kernel, unbatched, N = 0, zero channels).
Hand-made cases are checked against numbers a person can verify and against the
direct reference (im2colbp.reference).
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import PADDING_MODES, assert_close, conv_cases

import im2colbp as ib
from im2colbp import reference
from im2colbp.geometry import conv_geometry
from im2colbp.transposition import (
    backprop_kernel,
    conv_grad_input_by_transposition,
    conv_grad_weight_by_correlation,
    zero_insert,
)


def _scale(*arrays):
    return max([1.0] + [float(np.abs(a).max()) for a in arrays if a is not None and a.size])


def _dy(case, x, w, seed):
    shape = ib.conv(x, w, **case.call_kwargs).shape
    return np.random.default_rng(seed + 1).standard_normal(shape).astype(case.dtype)


# --------------------------------------------------------------------------
# both routes equal the lowering, every geometry
# --------------------------------------------------------------------------
@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_input_gradient_by_transposition_equals_lowering(case, seed):
    x, w, _ = case.arrays(seed)
    kw = case.call_kwargs
    dy = _dy(case, x, w, seed)
    expected = ib.conv_grad_input(dy, w, x.shape, **kw)
    actual = conv_grad_input_by_transposition(dy, w, x.shape, **kw)
    assert actual.dtype == expected.dtype == np.float64
    assert_close(actual, expected, scale=_scale(expected) * w.shape[0] * w[0].size)


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_weight_gradient_by_correlation_equals_lowering(case, seed):
    x, w, _ = case.arrays(seed)
    kw = case.call_kwargs
    dy = _dy(case, x, w, seed)
    expected = ib.conv_grad_weight(dy, x, w.shape, **kw)
    actual = conv_grad_weight_by_correlation(dy, x, w.shape, **kw)
    assert actual.dtype == expected.dtype == np.float64
    assert_close(actual, expected, scale=_scale(expected) * max(dy.size, 1))


@given(conv_cases(ranks=(1, 2), dtypes=(np.float32,)), st.integers(0, 2**32 - 1))
def test_routes_keep_float32(case, seed):
    x, w, _ = case.arrays(seed)
    kw = case.call_kwargs
    dy = _dy(case, x, w, seed)
    dx = conv_grad_input_by_transposition(dy, w, x.shape, **kw)
    dw = conv_grad_weight_by_correlation(dy, x, w.shape, **kw)
    assert dx.dtype == dw.dtype == np.float32
    dx_ref = reference.conv_grad_input(dy.astype(float), w.astype(float), x.shape, **kw)
    dw_ref = reference.conv_grad_weight(dy.astype(float), x.astype(float), w.shape, **kw)
    assert_close(dx.astype(float), dx_ref, dtype=np.float32, scale=_scale(dx_ref) * w.size)
    assert_close(dw.astype(float), dw_ref, dtype=np.float32, scale=_scale(dw_ref) * dy.size)


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_routes_match_reference_every_mode_2d(mode):
    """An independent oracle (direct loops) for one asymmetric 2-D geometry per mode."""
    rng = np.random.default_rng(1)
    kw = dict(stride=(2, 3), padding=((2, 1), (1, 2)), dilation=(1, 2), groups=2,
              padding_mode=mode)
    x = rng.standard_normal((2, 4, 7, 8))
    w = rng.standard_normal((6, 2, 3, 2))
    dy = rng.standard_normal(ib.conv(x, w, **kw).shape)
    np.testing.assert_allclose(conv_grad_input_by_transposition(dy, w, x.shape, **kw),
                               reference.conv_grad_input(dy, w, x.shape, **kw), atol=1e-12)
    np.testing.assert_allclose(conv_grad_weight_by_correlation(dy, x, w.shape, **kw),
                               reference.conv_grad_weight(dy, x, w.shape, **kw), atol=1e-12)


# --------------------------------------------------------------------------
# hand-made examples
# --------------------------------------------------------------------------
def test_zero_insert_hand_example():
    np.testing.assert_array_equal(zero_insert(np.array([[[1.0, 2.0, 3.0]]]), 2),
                                  [[[1.0, 0.0, 2.0, 0.0, 3.0]]])
    np.testing.assert_array_equal(zero_insert(np.array([[[1, 2]]]), 3), [[[1, 0, 0, 2]]])


def test_zero_insert_2d_unbatched_tuple_stride():
    dy = np.arange(1.0, 5.0).reshape(1, 2, 2)  # (C, O_1, O_2) unbatched
    z = zero_insert(dy, (2, 3))
    np.testing.assert_array_equal(z, [[[1, 0, 0, 2],
                                       [0, 0, 0, 0],
                                       [3, 0, 0, 4]]])


@given(st.integers(1, 3), st.data())
def test_zero_insert_by_definition(rank, data):
    lead = (data.draw(st.integers(0, 2)), data.draw(st.integers(1, 2)))
    out = tuple(data.draw(st.integers(1, 4)) for _ in range(rank))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(rank))
    dy = np.random.default_rng(rank).standard_normal(lead + out)
    z = zero_insert(dy, stride)
    assert z.shape == lead + tuple((o - 1) * s + 1 for o, s in zip(out, stride))
    for position in itertools.product(*[range(n) for n in z.shape[2:]]):
        on_grid = all(p % s == 0 for p, s in zip(position, stride))
        expected = dy[(Ellipsis,) + tuple(p // s for p, s in zip(position, stride))] \
            if on_grid else 0.0
        np.testing.assert_array_equal(z[(Ellipsis,) + position], expected)


def test_zero_insert_never_aliases_and_dtypes():
    dy = np.ones((1, 2, 3))
    z = zero_insert(dy, 1)
    np.testing.assert_array_equal(z, dy)
    assert not np.shares_memory(z, dy)
    z[...] = 5
    np.testing.assert_array_equal(dy, 1.0)  # input untouched
    assert zero_insert(dy.astype(np.float32), 2).dtype == np.float32
    assert zero_insert(np.ones((1, 1, 2), dtype=int), 2).dtype == np.float64
    assert zero_insert(np.ones((0, 3, 2)), 2).shape == (0, 3, 3)


def test_backprop_kernel_aggarwal_shapes():
    """20 filters on an RGB volume -> 3 filters of depth 20 (Aggarwal 2018, §8.3)."""
    assert backprop_kernel(np.zeros((20, 3, 5, 5))).shape == (3, 20, 5, 5)
    assert backprop_kernel(np.zeros((20, 3, 5))).shape == (3, 20, 5)  # 1-D
    assert backprop_kernel(np.zeros((20, 3, 3, 5, 5))).shape == (3, 20, 3, 5, 5)  # 3-D
    assert backprop_kernel(np.zeros((20, 1, 3, 3)), groups=4).shape == (4, 5, 3, 3)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_backprop_kernel_by_definition(groups):
    rng = np.random.default_rng(groups)
    w = rng.standard_normal((6, 2, 3, 2))  # C_out = 6, C_in/G = 2
    kernel = backprop_kernel(w, groups)
    f_group = 6 // groups
    assert kernel.shape == (2 * groups, f_group, 3, 2)
    for g, c, f, k1, k2 in itertools.product(range(groups), range(2), range(f_group),
                                             range(3), range(2)):
        assert kernel[g * 2 + c, f, k1, k2] == w[g * f_group + f, c, 2 - k1, 1 - k2]
    assert not np.shares_memory(kernel, w)
    np.testing.assert_array_equal(backprop_kernel(kernel, groups), w)  # an involution


def test_aggarwal_rgb_both_routes():
    """20 filters 3×3 on a 7×7 RGB image at stride 2: dX uses 3 filters of depth 20."""
    rng = np.random.default_rng(20)
    x = rng.standard_normal((2, 3, 7, 7))
    w = rng.standard_normal((20, 3, 3, 3))
    kw = dict(stride=2, padding=1)
    dy = rng.standard_normal(ib.conv(x, w, **kw).shape)  # (2, 20, 4, 4)
    z = zero_insert(dy, 2)
    assert z.shape == (2, 20, 7, 7)
    dx = conv_grad_input_by_transposition(dy, w, x.shape, **kw)
    # the identity spelled out: pad D*(K-1) - P = 1 on both sides (R = 0 here)
    manual = ib.conv(z, backprop_kernel(w), padding=1)
    np.testing.assert_allclose(dx, manual, atol=1e-12)
    np.testing.assert_allclose(dx, reference.conv_grad_input(dy, w, x.shape, **kw), atol=1e-12)
    dw = conv_grad_weight_by_correlation(dy, x, w.shape, **kw)
    np.testing.assert_allclose(dw, reference.conv_grad_weight(dy, x, w.shape, **kw), atol=1e-11)


def test_remainder_rows_get_zero_gradient():
    """I=6, K=3, S=2: windows start at 0 and 2, sample 5 (R = 1) is never read."""
    dy = np.array([[[1.0, 10.0]]])
    w = np.array([[[1.0, 2.0, 3.0]]])
    dx = conv_grad_input_by_transposition(dy, w, (1, 1, 6), stride=2)
    np.testing.assert_array_equal(dx, [[[1.0, 2.0, 13.0, 20.0, 30.0, 0.0]]])
    window = conv_geometry((1, 1, 6), w.shape, stride=2).window
    assert window.transposition_padding() == ((2, 3),)  # D*(K-1) - P_a + R = 2 - 0 + 1
    # 2-D: remainder on both axes, weight gradient ignores the unread row/column
    x = np.zeros((1, 1, 6, 6))
    x[..., 5, :] = x[..., :, 5] = 1e6
    w2 = np.ones((1, 1, 3, 3))
    dy2 = np.ones((1, 1, 2, 2))
    dx2 = conv_grad_input_by_transposition(dy2, w2, x.shape, stride=2)
    np.testing.assert_array_equal(dx2[..., 5, :], 0.0)
    np.testing.assert_array_equal(dx2[..., :, 5], 0.0)
    np.testing.assert_array_equal(conv_grad_weight_by_correlation(dy2, x, w2.shape, stride=2),
                                  np.zeros((1, 1, 3, 3)))


@pytest.mark.parametrize("in_size,kernel,stride,padding,dilation", [
    (3, 2, 1, 3, 1),            # P > D*(K-1): crop before and after
    (4, 3, 2, (4, 0), 1),       # crop before only
    (1, 1, 4, (2, 0), 1),       # every window starts in the padding: crop exceeds z
    (5, 2, 3, (0, 6), 2),       # crop after beyond the remainder
    (2, 3, 1, 7, 3),            # dilation with large padding
])
def test_negative_backward_padding_crops(in_size, kernel, stride, padding, dilation):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, in_size))
    w = rng.standard_normal((3, 2, kernel))
    kw = dict(stride=stride, padding=padding if isinstance(padding, int) else (padding,),
              dilation=dilation)
    window = conv_geometry(x.shape, w.shape, **kw).window
    assert min(min(pair) for pair in window.transposition_padding()) < 0
    dy = rng.standard_normal(ib.conv(x, w, **kw).shape)
    np.testing.assert_allclose(conv_grad_input_by_transposition(dy, w, x.shape, **kw),
                               reference.conv_grad_input(dy, w, x.shape, **kw), atol=1e-12)
    np.testing.assert_allclose(conv_grad_weight_by_correlation(dy, x, w.shape, **kw),
                               reference.conv_grad_weight(dy, x, w.shape, **kw), atol=1e-12)


@given(conv_cases(modes=("zeros",)))
def test_backward_padding_sums_to_input_size(case):
    """pad_before + Z + pad_after = I + D*(K-1): a stride-1 convolution then gives I."""
    geometry = conv_geometry(case.input_shape, case.weight_shape, **case.call_kwargs)
    window = geometry.window
    for (before, after), (p_before, _), i, o, s, d, k in zip(
            window.transposition_padding(), window.padding, window.in_size, window.out_size,
            window.stride, window.dilation, window.kernel_size):
        assert before == d * (k - 1) - p_before
        assert before + (o - 1) * s + 1 + after == i + d * (k - 1)


def test_inputs_not_modified_and_results_new():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 5))
    w = rng.standard_normal((2, 2, 3))
    dy = rng.standard_normal((2, 2, 5))  # padding 1: O = I
    copies = [a.copy() for a in (x, w, dy)]
    for mode in PADDING_MODES:
        dx = conv_grad_input_by_transposition(dy, w, x.shape, padding=1, padding_mode=mode)
        dw = conv_grad_weight_by_correlation(dy, x, w.shape, padding=1, padding_mode=mode)
        for result in (dx, dw):
            assert not any(np.shares_memory(result, a) for a in (x, w, dy))
    for array, copy in zip((x, w, dy), copies):
        np.testing.assert_array_equal(array, copy)


def test_unbatched_and_empty():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 6, 5))  # unbatched (C_in, I_1, I_2)
    w = rng.standard_normal((2, 2, 3, 2))
    kw = dict(stride=2, padding="same", groups=2)
    dy = rng.standard_normal(ib.conv(x, w, **kw).shape)
    assert conv_grad_input_by_transposition(dy, w, x.shape, **kw).shape == x.shape
    np.testing.assert_allclose(conv_grad_weight_by_correlation(dy, x, w.shape, **kw),
                               ib.conv_grad_weight(dy, x, w.shape, **kw), atol=1e-12)
    empty = np.zeros((0, 4, 6, 5))
    dy0 = np.zeros((0,) + dy.shape)
    assert conv_grad_input_by_transposition(dy0, w, empty.shape, **kw).shape == empty.shape
    np.testing.assert_array_equal(conv_grad_weight_by_correlation(dy0, empty, w.shape, **kw),
                                  np.zeros(w.shape))


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc, f"expected {exc.__name__}, got {info.value!r}"
    assert match in str(info.value), str(info.value)


@pytest.mark.parametrize("label,thunk,exc,match", [
    ("kernel rank", lambda: backprop_kernel(np.ones((2, 3))), ValueError, "weight"),
    ("kernel groups", lambda: backprop_kernel(np.ones((4, 1, 3)), 3), ValueError, "groups"),
    ("kernel groups 0", lambda: backprop_kernel(np.ones((4, 1, 3)), 0), ValueError, "groups"),
    ("kernel groups float", lambda: backprop_kernel(np.ones((4, 1, 3)), 2.0), TypeError,
     "groups"),
    ("kernel complex", lambda: backprop_kernel(np.ones((4, 1, 3), complex)), TypeError,
     "weight"),
    ("insert stride 0", lambda: zero_insert(np.ones((1, 1, 3)), 0), ValueError, "stride"),
    ("insert stride len", lambda: zero_insert(np.ones((1, 1, 3)), (2, 2, 2, 2)), ValueError, "dy"),
    ("insert stride type", lambda: zero_insert(np.ones((1, 1, 3)), "2"), TypeError, "stride"),
    ("insert stride float", lambda: zero_insert(np.ones((1, 1, 3)), 1.5), TypeError, "stride"),
    ("insert unbatched int", lambda: zero_insert(np.ones((1, 3)), 2), ValueError, "dy"),
    ("insert empty spatial", lambda: zero_insert(np.ones((1, 1, 0)), 2), ValueError, "dy"),
    ("insert empty tuple", lambda: zero_insert(np.ones((1, 1, 3)), ()), ValueError, "stride"),
    ("insert text", lambda: zero_insert(np.array([["a"]]), (1,)), TypeError, "dy"),
    ("dx dy shape", lambda: conv_grad_input_by_transposition(
        np.ones((1, 2, 3)), np.ones((2, 1, 3)), (1, 1, 6)), ValueError, "dy"),
    ("dx channels", lambda: conv_grad_input_by_transposition(
        np.ones((1, 2, 4)), np.ones((2, 1, 3)), (1, 3, 6)), ValueError, "C_in"),
    ("dx mode", lambda: conv_grad_input_by_transposition(
        np.ones((1, 2, 4)), np.ones((2, 1, 3)), (1, 1, 6), padding_mode="mirror"),
     ValueError, "padding_mode"),
    ("dx reflect", lambda: conv_grad_input_by_transposition(
        np.ones((1, 2, 6)), np.ones((2, 1, 3)), (1, 1, 2), padding=2,
        padding_mode="reflect"), ValueError, "reflect"),
    ("dx input_shape type", lambda: conv_grad_input_by_transposition(
        np.ones((1, 2, 4)), np.ones((2, 1, 3)), 6), TypeError, "input shape"),
    ("dx stride", lambda: conv_grad_input_by_transposition(
        np.ones((1, 2, 4)), np.ones((2, 1, 3)), (1, 1, 6), stride=0), ValueError, "stride"),
    ("dw weight_shape", lambda: conv_grad_weight_by_correlation(
        np.ones((1, 2, 4)), np.ones((1, 1, 6)), (2, 2, 3)), ValueError, "C_in"),
    ("dw dy shape", lambda: conv_grad_weight_by_correlation(
        np.ones((1, 2, 5)), np.ones((1, 1, 6)), (2, 1, 3)), ValueError, "dy"),
    ("dw groups", lambda: conv_grad_weight_by_correlation(
        np.ones((1, 3, 4)), np.ones((1, 2, 6)), (3, 1, 3), groups=2), ValueError, "groups"),
    ("dw x complex", lambda: conv_grad_weight_by_correlation(
        np.ones((1, 2, 4)), np.ones((1, 1, 6), complex), (2, 1, 3)), TypeError, "x"),
    ("dw kernel too big", lambda: conv_grad_weight_by_correlation(
        np.ones((1, 2, 1)), np.ones((1, 1, 2)), (2, 1, 3)), ValueError, "kernel"),
])
def test_errors(label, thunk, exc, match):
    _raises(exc, match, thunk)
