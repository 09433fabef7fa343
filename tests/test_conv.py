"""Convolution, its gradients and transposed convolution against independent oracles:
the direct reference (im2colbp.reference), finite differences in float64, the
adjoint identity, and scipy.signal.correlate."""

import numpy as np
import pytest
import scipy.signal
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import (
    PADDING_MODES,
    assert_close,
    assert_forward_and_gradients_match_reference,
    conv_cases,
    conv_transpose_cases,
)

import im2colbp as ib
from im2colbp import reference
from im2colbp.engine import record_passes
from im2colbp.gradcheck import numerical_gradient
from im2colbp.plan import forced


def _scale(*arrays):
    return max([1.0] + [float(np.abs(a).max()) for a in arrays if a is not None and a.size])


# --------------------------------------------------------------------------
# convolution vs the direct reference, every geometry hypothesis draws
# --------------------------------------------------------------------------
@given(conv_cases(dtypes=(np.float64, np.float32)), st.integers(0, 2**32 - 1))
def test_conv_forward_and_gradients_match_reference(case, seed):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    y, ctx = ib.conv_forward(x, w, b, **kw)
    expected = reference.conv(x, w, b, **kw)
    assert y.dtype == case.dtype
    assert_close(y, expected, scale=_scale(expected) * w[0].size)

    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(case.dtype)
    grads = ib.conv_backward(dy, ctx)
    dx_ref = reference.conv_grad_input(dy, w, x.shape, **kw)
    dw_ref = reference.conv_grad_weight(dy, x, w.shape, **kw)
    assert grads.input.dtype == grads.weight.dtype == case.dtype
    assert_close(grads.input, dx_ref, scale=_scale(dx_ref) * w.shape[0])
    assert_close(grads.weight, dw_ref, scale=_scale(dw_ref) * max(y.size, 1))
    if b is None:
        assert grads.bias is None
    else:
        dyb = dy if x.ndim == case.rank + 2 else dy[None]
        assert_close(grads.bias, reference.conv_grad_bias(dyb), scale=_scale(dy) * dy.size)


@given(conv_cases(), st.integers(0, 2**32 - 1))
def test_standalone_gradients_equal_backward(case, seed):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    y, ctx = ib.conv_forward(x, w, b, **kw)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    grads = ib.conv_backward(dy, ctx)
    np.testing.assert_allclose(ib.conv_grad_input(dy, w, x.shape, **kw), grads.input,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ib.conv_grad_weight(dy, x, w.shape, **kw), grads.weight,
                               rtol=1e-12, atol=1e-12)


@given(conv_transpose_cases(dtypes=(np.float64, np.float32)), st.integers(0, 2**32 - 1))
def test_conv_transpose_and_gradients_match_reference(case, seed):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    y, ctx = ib.conv_transpose_forward(x, w, b, **kw)
    expected = reference.conv_transpose(x, w, b, **kw)
    assert y.dtype == case.dtype
    assert_close(y, expected, scale=_scale(expected) * w[0].size)
    # Gradients of y = T(x, w): dx = conv(dy, w) cropped, dw from the reference's
    # weight gradient with the roles exchanged — both checked against the
    # reference's definitions below through the adjoint identity.
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(case.dtype)
    grads = ib.conv_transpose_backward(dy, ctx)
    # <T(x, w), dy> is linear in x and in w: directional derivatives are exact.
    rng = np.random.default_rng(seed + 2)
    vx = rng.standard_normal(x.shape)
    vw = rng.standard_normal(w.shape)
    x64, w64, dy64 = x.astype(float), w.astype(float), dy.astype(float)
    lin_x = np.vdot(reference.conv_transpose(vx, w64, None, **kw), dy64)
    lin_w = np.vdot(reference.conv_transpose(x64, vw, None, **kw), dy64)
    tol = 1e-9 if case.dtype == np.float64 else 1e-3
    scale = _scale(dy64) * dy.size * _scale(x64, w64) + 1
    assert abs(np.vdot(grads.input, vx) - lin_x) <= tol * scale
    assert abs(np.vdot(grads.weight, vw) - lin_w) <= tol * scale
    if b is not None:
        dyb = dy64 if x.ndim == case.rank + 2 else dy64[None]
        assert_close(grads.bias.astype(float), reference.conv_grad_bias(dyb),
                     dtype=case.dtype, scale=_scale(dy64) * dy.size)


# --------------------------------------------------------------------------
# adjoint identities: conv_transpose is conv's adjoint, for every padding mode
# --------------------------------------------------------------------------
@given(conv_cases(allow_empty=False), st.integers(0, 2**32 - 1))
def test_conv_grad_input_is_adjoint_of_conv(case, seed):
    x, w, _ = case.arrays(seed)
    kw = case.call_kwargs
    y = ib.conv(x, w, **kw)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    lhs, rhs = np.vdot(y, dy), np.vdot(x, ib.conv_grad_input(dy, w, x.shape, **kw))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("mode", PADDING_MODES)
@given(case=conv_cases(ranks=(1, 2, 3), allow_empty=False), seed=st.integers(0, 2**32 - 1),
       output_padding=st.integers(0, 3))
def test_conv_transpose_padding_modes_are_adjoints(mode, case, seed, output_padding):
    """<conv(x, w; mode), y> == <x, conv_transpose(y, w; mode)>, also when
    output_padding >= stride crops the convolution's output."""
    kw = dict(case.call_kwargs, padding_mode=mode)
    if kw["padding"] == "same":
        kw["padding"] = 1
    try:
        x, w, _ = case.arrays(seed)
        y_shape = ib.conv(x, w, **kw).shape
    except ValueError:
        assume(False)  # e.g. reflect padding too large for this input
    stride = np.broadcast_to(kw["stride"], (case.rank,))
    dilation = np.broadcast_to(kw["dilation"], (case.rank,))
    op = tuple(min(output_padding, max(s, d) - 1) for s, d in zip(stride, dilation))
    y = np.random.default_rng(seed).standard_normal(y_shape)
    try:
        xt = ib.conv_transpose(y, w, output_padding=op, **kw)
    except ValueError:
        assume(False)  # output_padding made the size unreachable for this x
    # conv of an input of xt's size, cropped to y's size
    x = np.random.default_rng(seed + 1).standard_normal(xt.shape)
    conv_y = ib.conv(x, w, **kw)
    crop = (Ellipsis,) + tuple(slice(0, n) for n in y.shape[-case.rank:])
    lhs, rhs = np.vdot(conv_y[crop], y), np.vdot(x, xt)
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


# --------------------------------------------------------------------------
# finite differences (float64), every gradient of both ops
# --------------------------------------------------------------------------
FD_CASES = [
    dict(x=(2, 4, 7), w=(6, 2, 3), stride=2, padding=((2, 1),), dilation=2, groups=2,
         padding_mode="zeros"),
    dict(x=(1, 2, 5, 6), w=(3, 2, 2, 3), stride=(2, 1), padding="same", dilation=1, groups=1,
         padding_mode="reflect"),
    dict(x=(2, 3, 4, 5), w=(3, 1, 3, 2), stride=(1, 3), padding=(1, 2), dilation=(2, 1),
         groups=3, padding_mode="circular"),
    dict(x=(1, 2, 4, 3, 4), w=(2, 2, 2, 2, 3), stride=(2, 1, 2), padding=1, dilation=1,
         groups=1, padding_mode="replicate"),
    dict(x=(1, 3, 3, 3, 2), w=(2, 1, 1, 2, 2, 1), stride=1, padding=((1, 0), 0, 1, (0, 2)),
         dilation=1, groups=1, padding_mode="zeros"),  # rank 4, unbatched x
]


def _fd_case(spec):
    rng = np.random.default_rng(7)
    kw = {k: v for k, v in spec.items() if k not in ("x", "w")}
    return rng.standard_normal(spec["x"]), rng.standard_normal(spec["w"]), kw


@pytest.mark.parametrize("spec", FD_CASES, ids=lambda s: f"r{len(s['w']) - 2}-{s['padding_mode']}")
def test_conv_gradients_by_finite_differences(spec):
    x, w, kw = _fd_case(spec)
    b = np.random.default_rng(8).standard_normal(w.shape[0])
    y, ctx = ib.conv_forward(x, w, b, **kw)
    dy = np.random.default_rng(9).standard_normal(y.shape)
    grads = ib.conv_backward(dy, ctx)
    np.testing.assert_allclose(
        grads.input, numerical_gradient(lambda v: ib.conv(v, w, b, **kw), x, dy), atol=1e-7)
    np.testing.assert_allclose(
        grads.weight, numerical_gradient(lambda v: ib.conv(x, v, b, **kw), w, dy), atol=1e-7)
    np.testing.assert_allclose(
        grads.bias, numerical_gradient(lambda v: ib.conv(x, w, v, **kw), b, dy), atol=1e-7)


@pytest.mark.parametrize("stride,output_padding,dilation", [(2, 1, 1), (1, 0, 2), (2, 2, 3)])
def test_conv_transpose_gradients_by_finite_differences(stride, output_padding, dilation):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3, 4))
    w = rng.standard_normal((4, 3, 3, 2))  # groups 2: C_out = 6
    b = rng.standard_normal(6)
    kw = dict(stride=stride, padding=((1, 0), 1), output_padding=output_padding,
              dilation=dilation, groups=2)
    y, ctx = ib.conv_transpose_forward(x, w, b, **kw)
    dy = rng.standard_normal(y.shape)
    grads = ib.conv_transpose_backward(dy, ctx)
    np.testing.assert_allclose(
        grads.input,
        numerical_gradient(lambda v: ib.conv_transpose(v, w, b, **kw), x, dy), atol=1e-7)
    np.testing.assert_allclose(
        grads.weight,
        numerical_gradient(lambda v: ib.conv_transpose(x, v, b, **kw), w, dy), atol=1e-7)
    np.testing.assert_allclose(
        grads.bias,
        numerical_gradient(lambda v: ib.conv_transpose(x, w, v, **kw), b, dy), atol=1e-7)


# --------------------------------------------------------------------------
# scipy.signal.correlate: one channel, stride 1
# --------------------------------------------------------------------------
@given(st.integers(1, 3), st.integers(0, 2**32 - 1), st.data())
def test_single_channel_stride_one_matches_scipy_correlate(rank, seed, data):
    rng = np.random.default_rng(seed)
    in_size = tuple(data.draw(st.integers(3, 7)) for _ in range(rank))
    kernel = tuple(data.draw(st.integers(1, i)) for i in in_size)
    x, w = rng.standard_normal(in_size), rng.standard_normal(kernel)
    y = ib.conv(x[None, None], w[None, None])
    np.testing.assert_allclose(y[0, 0], scipy.signal.correlate(x, w, mode="valid"),
                               rtol=1e-12, atol=1e-12)
    full = ib.conv(x[None, None], w[None, None], padding=tuple(k - 1 for k in kernel))
    np.testing.assert_allclose(full[0, 0], scipy.signal.correlate(x, w, mode="full"),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# semantics: batching, dtype, aliasing, requested work only
# --------------------------------------------------------------------------
def test_unbatched_equals_batch_of_one(rng):
    x, w, b = rng.standard_normal((3, 6, 6)), rng.standard_normal((4, 3, 3, 3)), np.ones(4)
    y, ctx = ib.conv_forward(x, w, b, stride=2, padding=1)
    y1, ctx1 = ib.conv_forward(x[None], w, b, stride=2, padding=1)
    np.testing.assert_array_equal(y, y1[0])
    dy = rng.standard_normal(y.shape)
    g, g1 = ib.conv_backward(dy, ctx), ib.conv_backward(dy[None], ctx1)
    np.testing.assert_array_equal(g.input, g1.input[0])
    np.testing.assert_allclose(g.weight, g1.weight, rtol=1e-14)


def test_empty_batch_and_zero_channels(rng):
    w = rng.standard_normal((4, 2, 3, 3))
    y, ctx = ib.conv_forward(np.zeros((0, 2, 5, 5)), w, np.ones(4), padding=1)
    assert y.shape == (0, 4, 5, 5)
    grads = ib.conv_backward(y, ctx)
    assert grads.input.shape == (0, 2, 5, 5)
    np.testing.assert_array_equal(grads.weight, np.zeros(w.shape))
    np.testing.assert_array_equal(grads.bias, np.zeros(4))
    y = ib.conv(np.zeros((2, 0, 5)), np.zeros((3, 0, 2)), np.arange(3.0))
    np.testing.assert_array_equal(y, np.broadcast_to(np.arange(3.0)[:, None], (2, 3, 4)))
    assert ib.conv(np.ones((2, 3, 5)), np.zeros((0, 3, 2))).shape == (2, 0, 4)
    assert ib.conv_transpose(np.zeros((0, 2, 3)), np.ones((2, 1, 2)), stride=2).shape == (0, 1, 6)


@pytest.mark.parametrize("x_dtype,w_dtype,expected", [
    (np.float32, np.float32, np.float32),
    (np.float64, np.float32, np.float64),
    (np.float16, np.float16, np.float32),
    (np.int64, np.int64, np.float64),
    (np.int32, np.float32, np.float64),
    (np.bool_, np.float64, np.float64),
    (np.uint8, np.uint8, np.float64),
])
def test_result_dtypes(x_dtype, w_dtype, expected):
    x = np.ones((1, 2, 5, 5), dtype=x_dtype)
    w = np.ones((3, 2, 3, 3), dtype=w_dtype)
    y, ctx = ib.conv_forward(x, w, padding=1)
    assert y.dtype == expected
    assert y[0, 0, 2, 2] == 18
    grads = ib.conv_backward(np.ones(y.shape, dtype=y.dtype), ctx)
    assert grads.input.dtype == grads.weight.dtype == expected
    assert ib.conv_transpose(x, np.ones((2, 3, 3, 3), dtype=w_dtype)).dtype == expected


def test_python_lists_are_accepted():
    y = ib.conv([[[1, 2, 3, 4]]], [[[1, 1]]])
    np.testing.assert_array_equal(y, [[[3.0, 5.0, 7.0]]])


@pytest.mark.parametrize("op", ["conv", "transpose"])
def test_inputs_are_not_modified_and_results_do_not_alias(op, rng):
    x = rng.standard_normal((2, 4, 6, 6))
    if op == "conv":  # 4 -> 4 channels, reflect padding exercises the padding's adjoint
        w, b = rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
        kwargs = dict(groups=2, padding=1, padding_mode="reflect", stride=2)
    else:  # transposed weight (C_in, C_out/G, *K): 4 -> 6 channels
        w, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(6)
        kwargs = dict(groups=2, padding=1, stride=2, output_padding=1)
    copies = [a.copy() for a in (x, w, b)]
    forward = ib.conv_forward if op == "conv" else ib.conv_transpose_forward
    backward = ib.conv_backward if op == "conv" else ib.conv_transpose_backward
    y, ctx = forward(x, w, b, **kwargs)
    dy = rng.standard_normal(y.shape)
    dy_copy = dy.copy()
    grads = backward(dy, ctx)
    for original, copy in zip((x, w, b, dy), copies + [dy_copy]):
        np.testing.assert_array_equal(original, copy)
    for result in (y, *grads):
        for source in (x, w, b, dy):
            assert not np.shares_memory(result, source)


def test_wrt_computes_only_what_is_asked(rng):
    x, w, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 3)), np.zeros(2)
    y, ctx = ib.conv_forward(x, w, b)
    dy = rng.standard_normal(y.shape)
    full = ib.conv_backward(dy, ctx)
    only_input = ib.conv_backward(dy, ctx, wrt=("input",))
    assert only_input.weight is None and only_input.bias is None
    np.testing.assert_array_equal(only_input.input, full.input)
    only_weight = ib.conv_backward(dy, ctx, wrt="weight")
    assert only_weight.input is None and only_weight.bias is None
    np.testing.assert_array_equal(only_weight.weight, full.weight)
    yt, ctxt = ib.conv_transpose_forward(x, np.ones((3, 2, 2)), b)
    grads = ib.conv_transpose_backward(np.ones(yt.shape), ctxt, wrt=("bias",))
    assert grads.input is None and grads.weight is None
    np.testing.assert_array_equal(grads.bias, [yt[0, 0].size * 2] * 2)


def test_backward_without_bias_returns_none_for_bias(rng):
    y, ctx = ib.conv_forward(rng.standard_normal((1, 1, 4)), rng.standard_normal((1, 1, 2)))
    assert ib.conv_backward(np.ones(y.shape), ctx).bias is None


def test_stride_remainder_rows_get_zero_gradient(rng):
    """I=8, K=3, S=3: windows start at 0 and 3; samples 6 and 7 are never read."""
    dx = ib.conv_grad_input(rng.standard_normal((1, 2, 2)), rng.standard_normal((2, 1, 3)),
                            (1, 1, 8), stride=3)
    np.testing.assert_array_equal(dx[0, 0, 6:], [0, 0])
    assert np.all(dx[0, 0, :6] != 0)


def test_same_padding_with_stride_gives_ceil_output():
    for size in range(1, 12):
        for stride in (1, 2, 3):
            y = ib.conv(np.ones((1, 1, size)), np.ones((1, 1, 3)), stride=stride, padding="same")
            assert y.shape[-1] == -(-size // stride)


def test_conv_transpose_output_size_picks_output_padding(rng):
    x, w = rng.standard_normal((1, 2, 4, 4)), rng.standard_normal((2, 3, 3, 3))
    for size in (7, 8):
        y = ib.conv_transpose(x, w, stride=2, padding=1, output_size=(size, size))
        assert y.shape == (1, 3, size, size)
        np.testing.assert_array_equal(
            y, ib.conv_transpose(x, w, stride=2, padding=1, output_padding=size - 7))
    assert ib.conv_transpose(x, w, stride=2, padding=1, output_size=(1, 3, 8, 7)).shape == \
        (1, 3, 8, 7)


def test_pointwise_transposed_with_crop(rng):
    """1-wide kernel, stride 1, dilation 2, output_padding 1: the output is one sample
    longer than the input, so the columns are NOT the input itself (regression)."""
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal((3, 2, 1))
    y, ctx = ib.conv_transpose_forward(x, w, dilation=2, output_padding=1)
    assert y.shape == (2, 2, 5)
    np.testing.assert_allclose(y, reference.conv_transpose(x, w, dilation=2, output_padding=1),
                               rtol=1e-12)
    np.testing.assert_array_equal(y[..., -1], 0)
    grads = ib.conv_transpose_backward(np.ones(y.shape), ctx)
    np.testing.assert_allclose(grads.input, np.broadcast_to(w.sum(axis=(1, 2)), (2, 4, 3))
                               .transpose(0, 2, 1), rtol=1e-12)


# --------------------------------------------------------------------------
# both lowerings: the plain strided one and the phase-split, widened one
# --------------------------------------------------------------------------
@pytest.fixture(params=["plain", "wide"])
def lowering_path(request):
    """Force every convolution through one lowering layout, whatever its waste."""
    with forced(layout=request.param):
        yield request.param


def _layouts_run(passes):
    return {layout for _, _, layout, _ in passes}


@given(conv_cases(dtypes=(np.float64, np.float32)), st.integers(0, 2**32 - 1),
       st.integers(1, 10**5))
def test_each_lowering_path_matches_reference(lowering_path, case, seed, limit):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    with ib.workspace_limit(limit), record_passes() as passes:  # chunking on both paths
        y, ctx = ib.conv_forward(x, w, b, **kw)
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(case.dtype)
        grads = ib.conv_backward(dy, ctx)
    assert _layouts_run(passes) == {lowering_path}
    assert ctx.plan.forward.passes[0].layout.choice == lowering_path
    assert_forward_and_gradients_match_reference(x, w, b, dy, y, grads, kw)


@given(conv_transpose_cases(modes=PADDING_MODES), st.integers(0, 2**32 - 1))
def test_each_lowering_path_transposed_matches_reference(lowering_path, case, seed):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    try:
        expected = reference.conv_transpose(x, w, b, **kw)
    except ValueError:
        assume(False)  # e.g. reflect padding larger than the output it reflects
    with record_passes() as passes:
        y = ib.conv_transpose(x, w, b, **kw)
    assert _layouts_run(passes) == {lowering_path}
    assert_close(y, expected, scale=_scale(expected) * w[0].size)


def test_wide_lowering_weight_gradient_ignores_garbage_infinities(lowering_path):
    """Tap k=0 never reads x[0, 3] (only tap k=1 does, for window o=2), so dW[k=0] is
    finite — even though the wide layout's garbage position o=3 reads x[0, 3] at
    tap 0 and meets δ = 0 there. (dW[k=1] is 0·inf = nan in IEEE arithmetic.)"""
    x = np.arange(8.0).reshape(1, 1, 2, 4)
    x[0, 0, 0, 3] = np.inf
    w_shape = (1, 1, 1, 2)
    dy = np.ones((1, 1, 2, 3))
    dy[0, 0, 0, 2] = 0.0
    with np.errstate(invalid="ignore"):
        dw = ib.conv_grad_weight(dy, x, w_shape)
        expected = reference.conv_grad_weight(dy, x, w_shape)
    assert np.isfinite(expected[..., 0]).all() and np.isnan(expected[..., 1]).all()
    np.testing.assert_array_equal(dw, expected)


def test_large_finite_inputs_raise_no_overflow_warning(lowering_path):
    """Huge but finite float32 inputs: the gradient is computed without warnings
    (pytest turns RuntimeWarnings into errors) and equals the reference."""
    x = np.full((1, 1, 4, 6), 3e38, dtype=np.float32)
    dy = np.zeros((1, 1, 3, 5), dtype=np.float32)
    dy[0, 0, 0, 0] = 1e-38
    dw = ib.conv_grad_weight(dy, x, (1, 1, 2, 2))
    np.testing.assert_allclose(dw, reference.conv_grad_weight(dy, x, (1, 1, 2, 2)), rtol=1e-6)


def test_non_finite_weights_do_not_leak_through_garbage_positions(lowering_path):
    """An inf weight reaches only the samples its tap touches; the wide layout's
    garbage columns (Wᵀ·0 = nan there) must not be scattered onto real samples."""
    w = np.ones((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.inf
    dy = np.ones((1, 1, 18, 18))
    with np.errstate(invalid="ignore"):
        expected = reference.conv_grad_input(dy, w, (1, 1, 20, 20))
        got = ib.conv_grad_input(dy, w, (1, 1, 20, 20))
        transposed = ib.conv_transpose(dy, w)
    assert not np.isnan(expected).any()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(transposed, expected)


def test_non_finite_input_with_kept_columns(lowering_path):
    """Forward keeps the columns; an inf in the input must not reach other taps'
    weight gradients through the kept garbage positions."""
    x = np.ones((1, 1, 20, 20))
    x[0, 0, 0, 19] = np.inf
    w = np.ones((1, 1, 3, 3))
    y, ctx = ib.conv_forward(x, w)
    assert ctx.columns is not None
    with np.errstate(invalid="ignore"):
        grads = ib.conv_backward(np.ones_like(y), ctx)
        expected = reference.conv_grad_weight(np.ones_like(y), x, w.shape)
    np.testing.assert_array_equal(grads.weight, expected)


@pytest.mark.parametrize("stride", [50, 3000, 10**9])
def test_stride_much_larger_than_input(stride):
    """One window per axis; no work or memory proportional to the stride."""
    x, w = np.arange(2 * 3 * 64.0).reshape(2, 3, 8, 8), np.ones((4, 3, 3, 3))
    y, ctx = ib.conv_forward(x, w, stride=stride)
    np.testing.assert_allclose(y, reference.conv(x, w, stride=stride), rtol=1e-13)
    grads = ib.conv_backward(np.ones_like(y), ctx)
    np.testing.assert_allclose(grads.input, reference.conv_grad_input(
        np.ones_like(y), w, x.shape, stride=stride), rtol=1e-13)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_ndarray_subclasses_are_treated_as_arrays():
    """np.matrix keeps two dimensions under reductions, masked arrays carry masks;
    results are plain arrays of the documented shapes."""
    db = ib.conv_grad_bias(np.ma.ones((2, 3, 4)))
    assert type(db) is np.ndarray and db.shape == (3,)
    y = ib.conv(np.matrix(np.ones((2, 5))), np.ones((1, 2, 3)))  # unbatched (C, I)
    assert type(y) is np.ndarray and y.shape == (1, 3)
    cols = ib.col2im(np.matrix(np.ones((3, 3))), (5,), (3,))
    assert type(cols) is np.ndarray and cols.shape == (1, 5)


def test_non_native_byte_order_gives_native_results():
    x = np.ones((1, 1, 4), dtype=">f4")
    assert ib.im2col(x, 2).dtype == np.dtype("float32")
    assert ib.conv(x, np.ones((1, 1, 2), dtype=">f8")).dtype == np.dtype("float64")


@pytest.fixture(params=["col2im", "transposition"])
def input_gradient_route(request):
    """Force the input gradient through col2im or (where it can serve) the stride-1
    channel-transposition route."""
    with forced(adjoint=request.param):
        yield request.param


def _adjoint_routes_run(passes):
    return [route for kind, route, _, _ in passes if route in ("col2im", "transposition")]


@given(conv_cases(dtypes=(np.float64, np.float32)), st.integers(0, 2**32 - 1))
def test_each_input_gradient_route_matches_reference(input_gradient_route, case, seed):
    x, w, b = case.arrays(seed)
    kw = dict(case.call_kwargs, stride=1)  # the transposition route needs stride 1
    try:
        y, ctx = ib.conv_forward(x, w, b, **kw)
    except ValueError:
        assume(False)  # 'same' at stride 1 may need more reflect padding than fits
    planned = ctx.plan.input_gradient.route.choice
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(case.dtype)
    expected = reference.conv_grad_input(dy, w, x.shape, **kw)
    with record_passes() as passes:
        dx_backward = ib.conv_backward(dy, ctx).input
        dx_direct = ib.conv_grad_input(dy, w, x.shape, **kw)
    assert _adjoint_routes_run(passes) == [planned, planned]
    if input_gradient_route == "col2im":
        assert planned == "col2im"
    assert_close(dx_backward, expected, scale=_scale(expected) * w.shape[0])
    assert_close(dx_direct, expected, scale=_scale(expected) * w.shape[0])


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_transposition_route_runs_where_it_can(mode):
    """Stride 1, paddings within D·(K-1): the forced transposition route is planned and
    is the route that runs (a test of the fixture above, which cannot tell otherwise)."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 6, 7)), rng.standard_normal((2, 3, 3, 3))
    dy = rng.standard_normal((2, 2, 6, 7))
    with forced(adjoint="transposition"), record_passes() as passes:
        dx = ib.conv_grad_input(dy, w, x.shape, padding=1, padding_mode=mode)
    assert _adjoint_routes_run(passes) == ["transposition"]
    np.testing.assert_allclose(
        dx, reference.conv_grad_input(dy, w, x.shape, padding=1, padding_mode=mode),
        rtol=1e-12, atol=1e-12)


@given(conv_transpose_cases(modes=PADDING_MODES), st.integers(0, 2**32 - 1))
def test_each_input_gradient_route_transposed(input_gradient_route, case, seed):
    x, w, b = case.arrays(seed)
    kw = dict(case.call_kwargs, stride=1, output_padding=0)
    try:
        expected = reference.conv_transpose(x, w, b, **kw)
    except ValueError:
        assume(False)  # e.g. reflect padding larger than the output it reflects
    with record_passes() as passes:
        y, ctx = ib.conv_transpose_forward(x, w, b, **kw)
    assert _adjoint_routes_run(passes) == [ctx.plan.forward.route.choice]
    assert_close(y, expected, scale=_scale(expected) * w[0].size)


@given(conv_cases(dtypes=(np.float64, np.float32), ranks=(1, 2, 3), allow_empty=False),
       st.integers(0, 2**32 - 1), st.integers(1, 7), st.integers(1, 4000))
def test_a_sample_built_block_by_block_matches_reference(case, seed, block, limit):
    """One sample's columns beyond the chunk budget come a block of wide positions at a
    time (forward, weight gradient, col2im): the result is the reference's."""
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    with forced(layout="wide", adjoint="col2im", block_positions=block), \
            ib.workspace_limit(limit), record_passes() as passes:
        plan = ib.plan_conv(x.shape, w.shape, method="im2col", dtype=case.dtype, **kw)
        first = plan.forward.passes[0]
        assume(0 < first.block_positions < first.wide.wide_positions)  # several blocks
        y, ctx = ib.conv_forward(x, w, b, method="im2col", **kw)
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(case.dtype)
        grads = ib.conv_backward(dy, ctx)
    assert {kind for kind, *_ in passes} == {"product", "col2im", "weight_gradient"}
    assert_forward_and_gradients_match_reference(x, w, b, dy, y, grads, kw)


def test_blocks_keep_garbage_infinities_out():
    """Blocked weight gradient and col2im zero the wide layout's garbage positions, as the
    whole-sample passes do: a finite result stays finite next to an inf in x or w."""
    x = np.ones((1, 1, 6, 6))
    x[0, 0, :, 5] = np.inf  # read by garbage positions of taps that never see it for real
    w = np.ones((1, 1, 2, 2))
    dy = np.ones((1, 1, 5, 5))
    w_inf = w.copy()
    w_inf[0, 0, 0, 0] = np.inf
    with forced(layout="wide", adjoint="col2im", block_positions=1), ib.workspace_limit(8), \
            np.errstate(invalid="ignore"):
        plan = ib.plan_conv(x.shape, w.shape, method="im2col")
        assert plan.weight_gradient.passes[0].block_positions == 1
        assert plan.input_gradient.passes[0].block_positions == 1
        dw = ib.conv_grad_weight(dy, x, w.shape, method="im2col")
        dx = ib.conv_grad_input(dy, w_inf, x.shape, method="im2col")
        dw_ref = reference.conv_grad_weight(dy, x, w.shape)
        dx_ref = reference.conv_grad_input(dy, w_inf, x.shape)
    assert np.isfinite(dw_ref[..., 0]).all() and np.isfinite(dx_ref[..., 0, :]).any()
    np.testing.assert_array_equal(dw, dw_ref)
    np.testing.assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("groups, c_in, c_out", [(1, 6, 4), (2, 6, 4), (6, 6, 6), (3, 3, 6)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_pointwise_convolution_needs_no_columns(groups, c_in, c_out, contiguous, rng):
    """A 1×1 kernel at stride 1 without padding multiplies x itself (the identity layout),
    per group, including one input or one output channel per group, casts and views."""
    x = rng.standard_normal((3, 5, 7, c_in)).transpose(0, 3, 1, 2)  # a non-contiguous view
    if contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)  # and float32 x with a float64 weight
    w = rng.standard_normal((c_out, c_in // groups, 1, 1))
    b = rng.standard_normal(c_out)
    plan = ib.plan_conv(x.shape, w.shape, groups=groups)
    assert {p.layout.choice for step in (plan.forward, plan.input_gradient,
                                         plan.weight_gradient) for p in step.passes} == {
        "identity"}
    with record_passes() as passes:
        y, ctx = ib.conv_forward(x, w, b, groups=groups)
        dy = rng.standard_normal(y.shape)
        grads = ib.conv_backward(dy, ctx)
    assert {layout for *_, layout, _ in passes} == {"identity"}
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, reference.conv(x64, w, b, groups=groups), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(grads.input, reference.conv_grad_input(
        dy, w, x.shape, groups=groups), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads.weight, reference.conv_grad_weight(
        dy, x64, w.shape, groups=groups), rtol=1e-6, atol=1e-6)
