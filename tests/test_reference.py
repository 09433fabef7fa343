"""Tests of the oracle (im2colbp.reference) and of im2colbp.gradcheck.

The oracle is only worth something if it is right, so every test here checks
it against something that shares no code with it: numbers worked out by hand,
scipy.signal.correlate, a scalar-loop convolution that maps padded positions
to samples by arithmetic (no np.pad), finite differences, the adjoint identity
and, when it is installed, PyTorch.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.signal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from im2colbp import gradcheck, reference
from im2colbp.gradcheck import (
    adjoint_mismatch,
    directional_derivative_check,
    max_relative_error,
    numerical_gradient,
)

MODES = ("zeros", "reflect", "replicate", "circular")


# --------------------------------------------------------------------------
# an independent scalar-loop convolution (no np.pad, no einsum)
# --------------------------------------------------------------------------
def _source(position: int, size: int, mode: str):
    """The sample a padded position copies (unpadded coordinates), None for a zero."""
    if 0 <= position < size:
        return position
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(position, 0), size - 1)
    if mode == "circular":
        return position % size
    period = 2 * (size - 1)  # reflect: ... 2 1 | 0 1 2 ... size-1 | size-2 ...
    folded = position % period
    return folded if folded < size else period - folded


def _naive_conv(x, w, b, stride, padding, dilation, groups, mode):
    """y[n, o, j] = b[o] + sum_{c, k} x[n, c, src(j*S + k*D - P_before)] * w[o, c, k]."""
    rank = w.ndim - 2
    in_size, kernel = x.shape[2:], w.shape[2:]
    out_size = tuple(
        (i + pb + pa - d * (k - 1) - 1) // s + 1
        for i, (pb, pa), d, k, s in zip(in_size, padding, dilation, kernel, stride)
    )
    c_in, c_out = w.shape[1], w.shape[0] // groups
    y = np.zeros((x.shape[0], w.shape[0]) + out_size)
    for n, o in itertools.product(range(x.shape[0]), range(w.shape[0])):
        group = o // c_out
        for j in itertools.product(*map(range, out_size)):
            total = 0.0 if b is None else float(b[o])
            for c, k in itertools.product(range(c_in), itertools.product(*map(range, kernel))):
                src = tuple(
                    _source(j[a] * stride[a] + k[a] * dilation[a] - padding[a][0], in_size[a], mode)
                    for a in range(rank)
                )
                if None not in src:
                    total += x[(n, group * c_in + c) + src] * w[(o, c) + k]
            y[(n, o) + j] = total
    return y


def _rand(rng, *shape):
    return rng.standard_normal(shape)


# --------------------------------------------------------------------------
# hand-computed examples
# --------------------------------------------------------------------------
def test_conv_2d_by_hand():
    x = np.array([[[[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]]])  # (1, 1, 3, 3)
    w = np.array([[[[1.0, 2], [3, 4]]]])  # (1, 1, 2, 2)
    # y[0,0] = 1*1 + 2*2 + 4*3 + 5*4 = 37, and so on, plus bias 1
    expected = np.array([[[[38.0, 48], [68, 78]]]])
    np.testing.assert_array_equal(reference.conv(x, w, np.array([1.0])), expected)
    # stride 2, zero padding 1: windows [[0,0],[0,1]], [[0,0],[2,3]], [[0,4],[0,7]], [[5,6],[8,9]]
    expected = np.array([[[[4.0, 18], [36, 77]]]])
    np.testing.assert_array_equal(reference.conv(x, w, stride=2, padding=1), expected)


def test_conv_groups_and_dilation_by_hand():
    x = np.array([[1.0, 1.0], [10.0, 10.0]])  # unbatched (C_in=2, I=2)
    w = np.array([[[2.0]], [[3.0]]])  # (C_out=2, C_in/G=1, K=1)
    np.testing.assert_array_equal(reference.conv(x, w, groups=2), [[2.0, 2.0], [30.0, 30.0]])
    x = np.arange(6.0)[None, None]  # [0 1 2 3 4 5]
    w = np.array([[[1.0, 10.0]]])
    # dilation 2: y[j] = x[j] + 10 x[j + 2]
    np.testing.assert_array_equal(reference.conv(x, w, dilation=2), [[[20.0, 31, 42, 53]]])


def test_gradients_by_hand():
    x = np.array([[[1.0, 2, 3, 4, 5]]])
    w = np.array([[[1.0, 2.0]]])
    dy = np.array([[[1.0, 10.0]]])  # stride 2: O = (5-2)//2 + 1 = 2, windows [1,2] and [3,4]
    np.testing.assert_array_equal(
        reference.conv_grad_input(dy, w, x.shape, stride=2), [[[1.0, 2, 10, 20, 0]]]
    )
    # dw[k] = 1 * x[k] + 10 * x[2 + k]
    np.testing.assert_array_equal(
        reference.conv_grad_weight(dy, x, w.shape, stride=2), [[[31.0, 42.0]]]
    )
    np.testing.assert_array_equal(reference.conv_grad_bias(dy), [11.0])


def test_conv_transpose_by_hand():
    x = np.array([[[1.0, 2.0]]])
    w = np.array([[[1.0, 1.0, 1.0]]])
    # stride 2: [1 1 1 . .] + [. . 2 2 2]
    np.testing.assert_array_equal(reference.conv_transpose(x, w, stride=2), [[[1.0, 1, 3, 2, 2]]])
    np.testing.assert_array_equal(
        reference.conv_transpose(x, w, stride=2, padding=((1, 0),)), [[[1.0, 3, 2, 2]]]
    )
    # 2 input channels -> 2 output channels with groups=2: each channel scatters on its own
    x = np.array([[1.0], [5.0]])  # unbatched (C_in=2, I=1)
    w = np.array([[[1.0, 2.0]], [[3.0, 4.0]]])  # (C_in=2, C_out/G=1, K=2)
    np.testing.assert_array_equal(
        reference.conv_transpose(x, w, groups=2), [[1.0, 2.0], [15.0, 20.0]]
    )


def test_conv_transpose_reflect_folds_by_hand():
    # forward: reflect padding 1 of [x0 x1 x2] is [x1 x0 x1 x2 x1]; a 1-tap kernel copies it
    t = np.array([[[1.0, 2, 3, 4, 5]]])
    w = np.ones((1, 1, 1))
    y = reference.conv_transpose(t, w, padding=1, padding_mode="reflect")
    np.testing.assert_array_equal(y, [[[2.0, 1 + 3 + 5, 4]]])
    y = reference.conv_transpose(t, w, padding=1, padding_mode="circular")  # [x2 x0 x1 x2 x0]
    np.testing.assert_array_equal(y, [[[2.0 + 5, 3, 1 + 4]]])
    y = reference.conv_transpose(t, w, padding=1, padding_mode="replicate")  # [x0 x0 x1 x2 x2]
    np.testing.assert_array_equal(y, [[[1.0 + 2, 3, 4 + 5]]])


# --------------------------------------------------------------------------
# scipy.signal.correlate: one channel, stride 1
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "in_size, kernel, padding",
    [
        ((9,), (3,), ((2, 1),)),
        ((7, 8), (3, 2), ((1, 2), (0, 1))),
        ((5, 4, 6), (2, 3, 3), ((1, 0), (1, 1), (2, 0))),
    ],
    ids=["1d", "2d", "3d"],
)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dilation", [1, 2])
def test_conv_matches_scipy_correlate(in_size, kernel, padding, mode, dilation):
    rng = np.random.default_rng(0)
    x, w = _rand(rng, *in_size), _rand(rng, *kernel)
    np_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}
    # a dilated kernel is the kernel with D-1 zeros between taps
    w_dilated = np.zeros(tuple(dilation * (k - 1) + 1 for k in kernel))
    w_dilated[tuple(slice(None, None, dilation) for _ in kernel)] = w
    expected = scipy.signal.correlate(
        np.pad(x, padding, mode=np_mode[mode]), w_dilated, mode="valid", method="direct"
    )
    y = reference.conv(
        x[None, None], w[None, None], padding=padding, dilation=dilation, padding_mode=mode
    )
    assert y.shape == (1, 1) + expected.shape
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# scalar loops with arithmetic padding: multi-channel, groups, stride, all modes
# --------------------------------------------------------------------------
NAIVE_CASES = [
    # in_size, kernel, stride, padding (pairs), dilation, groups
    ((7,), (3,), (2,), ((2, 1),), (1,), 2),
    ((8,), (2,), (3,), ((0, 3),), (2,), 1),
    ((3,), (2,), (1,), ((7, 5),), (1,), 1),  # padding wider than the input (not for reflect)
    ((6, 5), (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), 2),
    ((4, 4, 3), (2, 2, 2), (1, 2, 1), ((1, 0), (0, 1), (1, 1)), (2, 1, 1), 1),
]


NAIVE_PARAMS = [
    pytest.param(case, mode, id=f"r{len(case[0])}-I{case[0]}-{mode}")
    for case in NAIVE_CASES
    for mode in MODES
    if mode != "reflect" or all(max(p) < i for p, i in zip(case[3], case[0]))
]


@pytest.mark.parametrize("case, mode", NAIVE_PARAMS)
def test_conv_matches_scalar_loops(case, mode):
    in_size, kernel, stride, padding, dilation, groups = case
    rng = np.random.default_rng(1)
    x = _rand(rng, 2, 2 * groups, *in_size)
    w = _rand(rng, 3 * groups, 2, *kernel)
    b = _rand(rng, 3 * groups)
    y = reference.conv(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=mode,
    )
    expected = _naive_conv(x, w, b, stride, padding, dilation, groups, mode)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_conv_matches_scalar_loops_random_geometry(data):
    rank = data.draw(st.integers(1, 3))
    small = st.integers(1, 3)
    in_size = tuple(data.draw(st.integers(1, 6 if rank < 3 else 4)) for _ in range(rank))
    kernel = tuple(data.draw(small) for _ in range(rank))
    stride = tuple(data.draw(small) for _ in range(rank))
    dilation = tuple(data.draw(st.integers(1, 2)) for _ in range(rank))
    padding = tuple((data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
                    for _ in range(rank))
    mode = data.draw(st.sampled_from(MODES))
    groups = data.draw(st.integers(1, 2))
    assume(all(d * (k - 1) + 1 <= i + sum(p)
               for d, k, i, p in zip(dilation, kernel, in_size, padding)))
    if mode == "reflect":
        assume(all(max(p) < i for p, i in zip(padding, in_size)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = _rand(rng, data.draw(st.integers(0, 2)), groups * data.draw(st.integers(0, 2)), *in_size)
    w = _rand(rng, groups * data.draw(st.integers(0, 2)), x.shape[1] // groups, *kernel)
    b = _rand(rng, w.shape[0]) if data.draw(st.booleans()) else None
    y = reference.conv(x, w, b, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, padding_mode=mode)
    expected = _naive_conv(x, w, b, stride, padding, dilation, groups, mode)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# gradients against finite differences (float64)
# --------------------------------------------------------------------------
GRAD_CASES = [
    # x shape, weight shape, geometry
    ((2, 2, 7), (4, 1, 3), dict(stride=2, padding=((2, 1),), dilation=1, groups=2)),
    ((1, 2, 8), (2, 2, 3), dict(stride=1, padding="same", dilation=2, groups=1)),
    ((2, 2, 5, 4), (2, 1, 3, 2), dict(stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2),
                                      groups=2)),
    ((1, 1, 4, 3), (2, 1, 2, 2), dict(stride=(1, 2), padding=((3, 1), (2, 2)), dilation=1,
                                      groups=1)),
    ((1, 2, 4, 3, 4), (2, 2, 2, 2, 3), dict(stride=(1, 2, 1), padding=((1, 0), (1, 1), (0, 2)),
                                            dilation=(1, 1, 2), groups=1)),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"r{len(c[0]) - 2}-{c[0]}")
@pytest.mark.parametrize("mode", MODES)
def test_gradients_match_finite_differences(case, mode):
    x_shape, w_shape, geometry = case
    geometry = dict(geometry, padding_mode=mode)
    rng = np.random.default_rng(2)
    x, w, b = _rand(rng, *x_shape), _rand(rng, *w_shape), _rand(rng, w_shape[0])
    dy = _rand(rng, *reference.conv(x, w, b, **geometry).shape)

    dx = reference.conv_grad_input(dy, w, x.shape, **geometry)
    dx_numeric = numerical_gradient(lambda v: reference.conv(v, w, b, **geometry), x, dy)
    assert max_relative_error(dx, dx_numeric) < 1e-7

    dw = reference.conv_grad_weight(dy, x, w.shape, **geometry)
    dw_numeric = numerical_gradient(lambda v: reference.conv(x, v, b, **geometry), w, dy)
    assert max_relative_error(dw, dw_numeric) < 1e-7

    db_numeric = numerical_gradient(lambda v: reference.conv(x, w, v, **geometry), b, dy)
    assert max_relative_error(reference.conv_grad_bias(dy), db_numeric) < 1e-7


def test_gradients_unbatched_and_directional():
    rng = np.random.default_rng(3)
    x, w = _rand(rng, 3, 9, 8), _rand(rng, 4, 3, 3, 3)  # unbatched input
    geometry = dict(stride=2, padding="same", dilation=1, groups=1, padding_mode="reflect")
    dy = _rand(rng, *reference.conv(x, w, **geometry).shape)
    dx = reference.conv_grad_input(dy, w, x.shape, **geometry)
    assert dx.shape == x.shape
    numerical, analytic = directional_derivative_check(
        lambda v: reference.conv(v, w, **geometry), x, dx, dy, rng=0
    )
    assert numerical == pytest.approx(analytic, rel=1e-7)
    dw = reference.conv_grad_weight(dy, x, w.shape, **geometry)
    np.testing.assert_allclose(
        dw, reference.conv_grad_weight(dy[None], x[None], w.shape, **geometry), rtol=1e-14
    )


# --------------------------------------------------------------------------
# conv_transpose against the adjoint identity <conv(u, w), t> = <u, conv_transpose(t, w)>
# --------------------------------------------------------------------------
TRANSPOSE_CASES = [
    # t shape (transposed input), weight, geometry, does the forward output need cropping?
    ((2, 2, 4), (2, 3, 3), dict(stride=2, padding=1, output_padding=1), False),
    ((1, 2, 5), (2, 1, 3), dict(stride=1, padding=((2, 0),), output_padding=1, dilation=2,
                                groups=2), True),
    ((1, 1, 3), (1, 2, 2), dict(stride=2, padding=((0, 1),), output_padding=2, dilation=3), True),
    ((2, 4, 3, 4), (4, 1, 3, 2), dict(stride=(2, 1), padding=((1, 0), (1, 1)),
                                      output_padding=(1, 0), groups=2), False),
    ((1, 2, 3, 3), (2, 2, 2, 3), dict(stride=(1, 2), padding=((0, 1), (2, 1)),
                                      output_padding=(1, 1), dilation=(2, 1)), True),
    ((1, 2, 2, 3, 2), (2, 1, 2, 2, 2), dict(stride=(2, 1, 2), padding=((1, 0), (0, 1), (1, 1)),
                                            output_padding=(1, 0, 0), dilation=(1, 2, 1)), False),
]


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=lambda c: f"r{len(c[0]) - 2}-{c[2]}")
@pytest.mark.parametrize("mode", MODES)
def test_conv_transpose_is_adjoint_of_conv(case, mode):
    t_shape, w_shape, geometry, needs_crop = case
    rng = np.random.default_rng(4)
    t, w = _rand(rng, *t_shape), _rand(rng, *w_shape)
    transposed = dict(geometry, padding_mode=mode)
    y = reference.conv_transpose(t, w, **transposed)
    out_size = y.shape[2:]
    in_size = t.shape[2:]
    # the forward convolution has the same weight (transposed layout (C_in_t, C_out_t/G, *K)
    # is conv layout (C_out, C_in/G, *K)) and drops output_padding
    forward_geometry = {key: value for key, value in transposed.items() if key != "output_padding"}
    if mode == "reflect" and any(max(p) >= o for p, o in zip(
            _pairs(forward_geometry["padding"], len(out_size)), out_size)):
        pytest.skip("reflect padding must be smaller than the output it reflects")
    crop = (slice(None), slice(None)) + tuple(slice(0, i) for i in in_size)

    def forward(u):
        return reference.conv(u, w, **forward_geometry)[crop]

    u = _rand(rng, *y.shape)
    assert (reference.conv(u, w, **forward_geometry).shape[2:] != in_size) == needs_crop
    assert adjoint_mismatch(forward, lambda v: reference.conv_transpose(v, w, **transposed),
                            u, t) < 1e-13
    # the transposed convolution is linear in t: bias adds on top
    b = _rand(rng, y.shape[1])
    np.testing.assert_allclose(
        reference.conv_transpose(t, w, b, **transposed),
        y + b.reshape((-1,) + (1,) * len(out_size)), rtol=1e-13,
    )


def _pairs(padding, rank):
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    return tuple(p if isinstance(p, tuple) else (p, p) for p in padding)


def test_conv_transpose_agrees_with_conv_grad_input():
    # two independent implementations of the same linear map (scatter vs window loop)
    rng = np.random.default_rng(5)
    t, w = _rand(rng, 2, 4, 4, 3), _rand(rng, 4, 3, 3, 2)
    for mode in MODES:
        geometry = dict(stride=(2, 1), padding=((1, 1), (1, 0)), dilation=(1, 2), groups=1,
                        padding_mode=mode)
        y = reference.conv_transpose(t, w, **geometry)
        dx = reference.conv_grad_input(t, w, y.shape, **geometry)
        np.testing.assert_allclose(y, dx, rtol=1e-12, atol=1e-12)


def test_conv_transpose_output_size_picks_output_padding():
    rng = np.random.default_rng(6)
    t, w = _rand(rng, 1, 2, 3, 3), _rand(rng, 2, 1, 3, 3)
    geometry = dict(stride=(3, 2), padding=1)
    smallest = reference.conv_transpose(t, w, **geometry).shape[2:]
    assert smallest == (7, 5)  # (3-1)*S - 2 + 2 + 1
    y = reference.conv_transpose(t, w, output_size=(9, 6), **geometry)
    np.testing.assert_array_equal(y, reference.conv_transpose(t, w, output_padding=(2, 1),
                                                              **geometry))
    with pytest.raises(ValueError, match="output_size"):
        reference.conv_transpose(t, w, output_size=(10, 6), **geometry)


# --------------------------------------------------------------------------
# PyTorch, when installed
# --------------------------------------------------------------------------
TORCH_CASES = [
    ((2, 4, 9), (6, 2, 3), dict(stride=2, padding=((2, 1),), dilation=2, groups=2)),
    ((2, 3, 7, 6), (4, 3, 3, 2), dict(stride=(1, 2), padding=((1, 2), (0, 1)), dilation=(2, 1))),
    ((1, 2, 5, 4, 5), (2, 1, 2, 3, 2), dict(stride=(2, 1, 1), padding=((1, 1), (2, 0), (0, 1)),
                                            dilation=1, groups=2)),
]


@pytest.mark.parametrize("case", TORCH_CASES, ids=lambda c: f"r{len(c[0]) - 2}")
@pytest.mark.parametrize("mode", MODES)
def test_conv_and_gradients_match_torch(case, mode):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    x_shape, w_shape, geometry = case
    rank = len(x_shape) - 2
    rng = np.random.default_rng(7)
    x, w, b = _rand(rng, *x_shape), _rand(rng, *w_shape), _rand(rng, w_shape[0])
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    flat = [side for pair in reversed(geometry["padding"]) for side in pair]  # last axis first
    padded = functional.pad(xt, flat, mode="constant" if mode == "zeros" else mode)
    conv_nd = getattr(functional, f"conv{rank}d")
    yt = conv_nd(padded, wt, bt, stride=geometry["stride"], dilation=geometry["dilation"],
                 groups=geometry.get("groups", 1))
    geometry = dict(geometry, padding_mode=mode)
    y = reference.conv(x, w, b, **geometry)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dy = _rand(rng, *y.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(reference.conv_grad_input(dy, w, x.shape, **geometry),
                               xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(reference.conv_grad_weight(dy, x, w.shape, **geometry),
                               wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(reference.conv_grad_bias(dy), bt.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_transpose_matches_torch(rank):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    t = _rand(rng, 2, 4, *(3,) * rank)
    w = _rand(rng, 4, 3, *(3, 2, 2)[:rank])
    b = _rand(rng, 6)
    geometry = dict(stride=(2, 3, 1)[:rank], padding=(1, 0, 1)[:rank],
                    output_padding=(1, 2, 1)[:rank], dilation=(1, 1, 2)[:rank], groups=2)
    y = reference.conv_transpose(t, w, b, **geometry)
    transpose_nd = getattr(torch.nn.functional, f"conv_transpose{rank}d")
    expected = transpose_nd(torch.tensor(t), torch.tensor(w), torch.tensor(b), **geometry)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# shapes, dtypes and edge cases
# --------------------------------------------------------------------------
@pytest.mark.parametrize("in_size, stride", [(7, 1), (7, 2), (8, 3), (5, 5), (4, 6)])
@pytest.mark.parametrize("kernel, dilation", [(1, 1), (3, 1), (4, 2)])
def test_same_padding_gives_ceil_in_over_stride(in_size, stride, kernel, dilation):
    x = np.ones((1, 1, in_size))
    w = np.ones((1, 1, kernel))
    y = reference.conv(x, w, stride=stride, padding="same", dilation=dilation)
    assert y.shape[-1] == math.ceil(in_size / stride)


def test_unbatched_equals_batch_of_one():
    rng = np.random.default_rng(9)
    x, w, b = _rand(rng, 2, 5, 6), _rand(rng, 4, 1, 2, 3), _rand(rng, 4)
    geometry = dict(stride=(2, 1), padding=1, dilation=1, groups=2, padding_mode="circular")
    y = reference.conv(x, w, b, **geometry)
    np.testing.assert_array_equal(y, reference.conv(x[None], w, b, **geometry)[0])
    dy = _rand(rng, *y.shape)
    np.testing.assert_array_equal(reference.conv_grad_input(dy, w, x.shape, **geometry),
                                  reference.conv_grad_input(dy[None], w, (1,) + x.shape,
                                                            **geometry)[0])
    t = _rand(rng, 4, 3, 3)
    b_t = b[:2]  # transposed output channels: C_out/G * G = 1 * 2
    np.testing.assert_array_equal(reference.conv_transpose(t, w, b_t, **geometry),
                                  reference.conv_transpose(t[None], w, b_t, **geometry)[0])


def test_empty_batch_and_zero_channels():
    b = np.array([1.0, 2.0])
    assert reference.conv(np.zeros((0, 3, 5)), np.ones((2, 3, 2)), b).shape == (0, 2, 4)
    # no input channels: only the bias is left
    y = reference.conv(np.zeros((2, 0, 5)), np.ones((2, 0, 2)), b)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None], (2, 2, 4)))
    assert reference.conv(np.ones((2, 4, 5)), np.ones((0, 2, 2)), groups=2).shape == (2, 0, 4)
    dx = reference.conv_grad_input(np.zeros((0, 2, 6)), np.ones((2, 3, 2)), (0, 3, 5),
                                   padding=1, padding_mode="reflect")
    assert dx.shape == (0, 3, 5)
    dw = reference.conv_grad_weight(np.zeros((0, 2, 4)), np.zeros((0, 3, 5)), (2, 3, 2))
    np.testing.assert_array_equal(dw, np.zeros((2, 3, 2)))
    assert reference.conv_grad_bias(np.zeros((0, 2, 4))).shape == (2,)
    assert reference.conv_transpose(np.zeros((0, 2, 4)), np.ones((2, 3, 2))).shape == (0, 3, 5)
    assert reference.conv_transpose(np.ones((2, 4)), np.ones((2, 0, 2))).shape == (0, 5)


def test_dtypes():
    x32 = np.ones((1, 2, 5), dtype=np.float32)
    w32 = np.ones((3, 2, 2), dtype=np.float32)
    assert reference.conv(x32, w32).dtype == np.float32
    assert reference.conv(x32, w32.astype(np.float64)).dtype == np.float64
    assert reference.conv(x32, w32, np.zeros(3)).dtype == np.float64
    assert reference.conv(np.ones((1, 2, 5), dtype=int), np.ones((3, 2, 2), dtype=bool)).dtype \
        == np.float64
    dy32 = np.ones((1, 3, 4), dtype=np.float32)
    assert reference.conv_grad_input(dy32, w32, x32.shape).dtype == np.float32
    assert reference.conv_grad_weight(dy32, x32, w32.shape).dtype == np.float32
    assert reference.conv_grad_bias(dy32).dtype == np.float32
    assert reference.conv_transpose(np.ones((1, 3, 4), np.float32),
                                    np.ones((3, 2, 2), np.float32)).dtype == np.float32
    assert reference.conv_transpose(np.ones((1, 3, 4), int), np.ones((3, 2, 2), int)).dtype \
        == np.float64
    with pytest.raises(TypeError, match="complex"):
        reference.conv(np.ones((1, 2, 5), complex), w32)


def test_inputs_not_modified_and_results_not_aliased():
    rng = np.random.default_rng(10)
    x, w, b = _rand(rng, 1, 2, 4), _rand(rng, 2, 2, 1), _rand(rng, 2)
    dy = _rand(rng, 1, 2, 4)
    copies = [a.copy() for a in (x, w, b, dy)]
    results = [
        reference.conv(x, w, b),
        reference.conv_grad_input(dy, w, x.shape),
        reference.conv_grad_weight(dy, x, w.shape),
        reference.conv_grad_bias(dy),
        reference.conv_transpose(dy, w, b),
    ]
    for original, copy in zip((x, w, b, dy), copies):
        np.testing.assert_array_equal(original, copy)
    for result in results:
        assert not any(np.shares_memory(result, a) for a in (x, w, b, dy))


def test_errors_name_the_argument():
    x, w = np.ones((1, 2, 5)), np.ones((3, 2, 2))
    with pytest.raises(ValueError, match="dy"):
        reference.conv_grad_input(np.ones((1, 3, 3)), w, x.shape)
    with pytest.raises(ValueError, match="dy"):
        reference.conv_grad_weight(np.ones((1, 3, 5)), x, w.shape)
    with pytest.raises(ValueError, match="dy"):
        reference.conv_grad_bias(np.ones((3, 4)))
    with pytest.raises(ValueError, match="groups"):
        reference.conv(x, w, groups=2)
    with pytest.raises(ValueError, match="reflect"):
        reference.conv(x, w, padding=5, padding_mode="reflect")
    with pytest.raises(ValueError, match="output_padding"):
        reference.conv_transpose(np.ones((1, 3, 4)), w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="same"):
        reference.conv_transpose(np.ones((1, 3, 4)), w, padding="same")


# --------------------------------------------------------------------------
# gradcheck itself
# --------------------------------------------------------------------------
def test_numerical_gradient_of_known_functions():
    rng = np.random.default_rng(11)
    a, x, dy = _rand(rng, 3, 4), _rand(rng, 4), _rand(rng, 3)
    np.testing.assert_allclose(numerical_gradient(lambda v: a @ v, x, dy), a.T @ dy, rtol=1e-8)
    x2 = _rand(rng, 2, 3)
    dy2 = _rand(rng, 2, 3)
    expected = (np.cos(x2) * x2 + np.sin(x2)) * dy2  # d/dx (x sin x)
    np.testing.assert_allclose(numerical_gradient(lambda v: v * np.sin(v), x2, dy2), expected,
                               rtol=1e-7, atol=1e-9)
    x_before = x2.copy()
    numerical_gradient(lambda v: v * np.sin(v), x2, dy2)
    np.testing.assert_array_equal(x2, x_before)  # the point is not modified
    assert numerical_gradient(lambda v: v, np.arange(3), np.ones(3)).dtype == np.float64


def test_gradcheck_detects_a_wrong_gradient():
    # a realistic bug: ignoring the fold of reflect padding (treating the border as zeros)
    rng = np.random.default_rng(12)
    x, w = _rand(rng, 1, 2, 6, 5), _rand(rng, 3, 2, 3, 3)
    geometry = dict(stride=1, padding=1, dilation=1, groups=1)

    def f(v):
        return reference.conv(v, w, padding_mode="reflect", **geometry)

    dy = _rand(rng, *f(x).shape)
    right = reference.conv_grad_input(dy, w, x.shape, padding_mode="reflect", **geometry)
    wrong = reference.conv_grad_input(dy, w, x.shape, padding_mode="zeros", **geometry)
    numeric = numerical_gradient(f, x, dy)
    assert max_relative_error(right, numeric) < 1e-7
    assert max_relative_error(wrong, numeric) > 1e-2
    numerical, analytic = directional_derivative_check(f, x, wrong, dy, rng=1)
    assert abs(numerical - analytic) > 1e-3 * abs(numerical)
    numerical, analytic = directional_derivative_check(f, x, right, dy, rng=1)
    assert numerical == pytest.approx(analytic, rel=1e-7)
    # and the dot-product test rejects the wrong adjoint
    t = _rand(rng, *dy.shape)
    assert adjoint_mismatch(
        f, lambda v: reference.conv_transpose(v, w, padding_mode="reflect", **geometry), x, t
    ) < 1e-13
    assert adjoint_mismatch(
        f, lambda v: reference.conv_transpose(v, w, padding_mode="zeros", **geometry), x, t
    ) > 1e-3


def test_adjoint_mismatch_and_max_relative_error():
    rng = np.random.default_rng(13)
    a = _rand(rng, 5, 3)
    x, y = _rand(rng, 3), _rand(rng, 5)
    assert adjoint_mismatch(lambda v: a @ v, lambda u: a.T @ u, x, y) < 1e-14
    assert adjoint_mismatch(lambda v: a @ v, lambda u: a[:3].T @ u[:3], x, y) > 1e-3
    assert adjoint_mismatch(lambda v: 0 * v, lambda u: 0 * u, x, x) == 0.0
    with pytest.raises(ValueError, match="shape"):
        adjoint_mismatch(lambda v: a @ v, lambda u: a.T @ u, x, x)
    assert max_relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert max_relative_error([1.0, -4.0], [1.0, -3.0]) == pytest.approx(0.25)
    assert max_relative_error(np.zeros(0), np.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="shape"):
        max_relative_error(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match="dy"):
        numerical_gradient(lambda v: v, np.zeros(2), np.zeros(3))
    with pytest.raises(TypeError):
        numerical_gradient(lambda v: v, np.zeros(2, complex), np.zeros(2))



@pytest.mark.parametrize("module,names", [
    (gradcheck, {"numerical_gradient", "directional_derivative_check", "adjoint_mismatch",
                 "max_relative_error"}),
    (reference, {"conv", "conv_grad_input", "conv_grad_weight", "conv_grad_bias",
                 "conv_transpose"}),
])
def test_public_names(module, names):
    """__all__ lists exactly the documented functions, each defined in the module
    itself (the reference must not borrow the engine's), with a runnable example."""
    assert set(module.__all__) == names and len(module.__all__) == len(names)
    for name in names:
        function = getattr(module, name)
        assert callable(function) and function.__module__ == module.__name__, name
        assert ">>> " in (function.__doc__ or ""), f"{name} has no example"
