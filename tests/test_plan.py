"""The plan, `method=`, and the memory contract.

- ``method="im2col"`` and ``"auto"`` agree with the direct reference on every
  geometry hypothesis draws, and the passes that run are the plan's.
- Extra memory of every call (tracemalloc) stays within the workspace limit, or
  one sample's working set when that alone is larger — plus the results.
- Contexts hold forward's values: in-place edits between forward and backward do
  not change the gradients, whatever the batch size.
"""

import tracemalloc

import numpy as np
import pytest
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
from im2colbp.geometry import conv_geometry, conv_transpose_geometry
from im2colbp.parallel import parallel_for, thread_buffer_bytes
from im2colbp.plan import KEEP_COLUMNS_BYTES, METHODS, _method_blocker, forced

MiB = 2**20


def _scale(*arrays):
    return max([1.0] + [float(np.abs(a).max()) for a in arrays if a is not None and a.size])


# --------------------------------------------------------------------------
# every method against the reference, and the plan is what runs
# --------------------------------------------------------------------------
@given(conv_cases(dtypes=(np.float64, np.float32)), st.integers(0, 2**32 - 1),
       st.sampled_from(METHODS))
def test_every_method_matches_reference(case, seed, method):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    blocker = _method_blocker(method, conv_geometry(x.shape, w.shape, **kw))
    if blocker is not None:  # e.g. winograd on a stride-2 or 5×5 geometry
        with pytest.raises(ValueError, match=f"method={method!r} cannot serve.*'im2col'"):
            ib.conv_forward(x, w, b, method=method, **kw)
        return
    with record_passes() as passes:
        y, ctx = ib.conv_forward(x, w, b, method=method, **kw)
        dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(case.dtype)
        grads = ib.conv_backward(dy, ctx)
    plan = ctx.plan
    assert plan.method == method
    ran = [route for _, route, _, _ in passes]
    # forward, then backward's weight gradient and input gradient, by the plan's routes
    assert ran[0] == plan.forward.route.choice and ran[1] == plan.weight_gradient.route.choice
    assert ran[2] in (plan.input_gradient.route.choice, "col2im")  # col2im: inf/nan fallback
    if method == "im2col":
        assert set(ran) == {"im2col", "col2im"} and plan.input_gradient.route.choice == "col2im"
    assert_forward_and_gradients_match_reference(x, w, b, dy, y, grads, kw)
    dx_ref = reference.conv_grad_input(dy, w, x.shape, **kw)
    dw_ref = reference.conv_grad_weight(dy, x, w.shape, **kw)
    assert_close(ib.conv_grad_input(dy, w, x.shape, method=method, **kw), dx_ref,
                 scale=_scale(dx_ref) * w.shape[0])
    assert_close(ib.conv_grad_weight(dy, x, w.shape, method=method, **kw), dw_ref,
                 scale=_scale(dw_ref) * max(y.size, 1))


@given(conv_transpose_cases(modes=PADDING_MODES), st.integers(0, 2**32 - 1),
       st.sampled_from(METHODS))
def test_every_method_matches_reference_transposed(case, seed, method):
    x, w, b = case.arrays(seed)
    x, w = x.astype(np.float64), w.astype(np.float64)
    b = None if b is None else b.astype(np.float64)
    kw = case.call_kwargs
    try:
        expected = reference.conv_transpose(x, w, b, **kw)
    except ValueError:
        assume(False)  # e.g. reflect padding larger than the output it reflects
    if _method_blocker(method, conv_transpose_geometry(x.shape, w.shape, **kw)) is not None:
        with pytest.raises(ValueError, match=f"method={method!r} cannot serve"):
            ib.conv_transpose_forward(x, w, b, method=method, **kw)
        return
    y, ctx = ib.conv_transpose_forward(x, w, b, method=method, **kw)
    assert_close(y, expected, scale=_scale(expected) * w[0].size)
    rng = np.random.default_rng(seed + 1)
    dy = rng.standard_normal(y.shape)
    grads = ib.conv_transpose_backward(dy, ctx)
    # y is linear in x and in w: <grad, v> = <y(v), δ> for any direction v, with the
    # reference's forward as the oracle
    v, u = rng.standard_normal(x.shape), rng.standard_normal(w.shape)
    along_x = float(np.vdot(reference.conv_transpose(v, w, **kw), dy))
    along_w = float(np.vdot(reference.conv_transpose(x, u, **kw), dy))
    tol = 1e-9 * (1 + np.abs(dy).sum() * (1 + np.abs(w).max() + np.abs(x).max(initial=0)) * 10)
    assert abs(float(np.vdot(grads.input, v)) - along_x) <= tol
    assert abs(float(np.vdot(grads.weight, u)) - along_w) <= tol


@st.composite
def winograd_cases(draw):
    """Geometries Winograd serves: 3-tap kernels, stride 1, dilation 1; the rest drawn."""
    rank = draw(st.integers(1, 3))
    groups = draw(st.integers(1, 2))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    batch = draw(st.integers(0, 3))
    sizes = tuple(draw(st.integers(1, (12, 9, 6)[rank - 1])) for _ in range(rank))
    padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(rank))
    mode = draw(st.sampled_from(PADDING_MODES))
    kw = dict(padding=padding, groups=groups, padding_mode=mode)
    try:
        conv_geometry((batch, c_in) + sizes, (c_out, c_in // groups) + (3,) * rank, **kw)
    except ValueError:
        assume(False)  # kernel larger than the padded input, reflect padding too large
    return (batch, c_in) + sizes, (c_out, c_in // groups) + (3,) * rank, kw, \
        draw(st.sampled_from([np.float32, np.float64])), draw(st.booleans())


@given(winograd_cases(), st.integers(0, 2**32 - 1), st.integers(1, 10**5))
def test_winograd_method_matches_reference(case, seed, limit):
    """method='winograd' end to end: forward, both gradients and the transposed
    convolution, every pass a Winograd pass, under any workspace limit."""
    input_shape, weight_shape, kw, dtype, with_bias = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(dtype)
    w = rng.standard_normal(weight_shape).astype(dtype)
    b = rng.standard_normal(weight_shape[0]).astype(dtype) if with_bias else None
    with ib.workspace_limit(limit), record_passes() as passes:
        y, ctx = ib.conv_forward(x, w, b, method="winograd", **kw)
        dy = rng.standard_normal(y.shape).astype(dtype)
        grads = ib.conv_backward(dy, ctx)
        y_t = ib.conv_transpose(dy, w, method="winograd", **kw) if kw["padding_mode"] == \
            "zeros" and ctx.geometry.window.out_size == ctx.geometry.window.in_size else None
    assert {route for _, route, _, _ in passes} == {"winograd"}
    assert y.dtype == dtype
    tolerance = 1e-11 if dtype == np.float64 else 2e-6 * 3**len(input_shape)  # ERROR_BOUNDS
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for got, want, magnitude in [
        (y, reference.conv(x64, w64, b, **kw), reference.conv(abs(x64), abs(w64), **kw)),
        (grads.input, reference.conv_grad_input(dy, w64, x.shape, **kw),
         reference.conv_grad_input(abs(dy), abs(w64), x.shape, **kw)),
        (grads.weight, reference.conv_grad_weight(dy, x64, w.shape, **kw),
         reference.conv_grad_weight(abs(dy), abs(x64), w.shape, **kw)),
    ]:
        scale = float(magnitude.max(initial=0.0)) + 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * scale)
    if y_t is not None:
        np.testing.assert_allclose(y_t, reference.conv_transpose(dy, w64, **kw), rtol=0,
                                   atol=tolerance * (float(np.abs(y_t).max(initial=0)) + 1) * 9)


@st.composite
def depthwise_cases(draw):
    """Geometries the direct path serves: one input channel per group; the rest drawn."""
    rank = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 4))
    multiplier = draw(st.integers(1, 3))
    batch = draw(st.integers(0, 3))
    sizes = tuple(draw(st.integers(1, (30, 24, 6)[rank - 1])) for _ in range(rank))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    padding = draw(st.sampled_from(["same", "valid"]) | st.tuples(
        *[st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(rank)]))
    mode = draw(st.sampled_from(PADDING_MODES))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=channels,
              padding_mode=mode)
    shapes = (batch, channels) + sizes, (channels * multiplier, 1) + kernel
    try:
        conv_geometry(*shapes, **kw)
    except ValueError:
        assume(False)
    return shapes + (kw, draw(st.sampled_from([np.float32, np.float64])))


@given(depthwise_cases(), st.integers(0, 2**32 - 1), st.sampled_from(["direct", "auto"]),
       st.integers(1, 10**5))
def test_direct_method_matches_reference(case, seed, method, limit):
    """method='direct' (and auto where it picks it) end to end, forward and gradients."""
    input_shape, weight_shape, kw, dtype = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(dtype)
    w = rng.standard_normal(weight_shape).astype(dtype)
    b = rng.standard_normal(weight_shape[0]).astype(dtype)
    with ib.workspace_limit(limit), record_passes() as passes:
        y, ctx = ib.conv_forward(x, w, b, method=method, **kw)
        dy = rng.standard_normal(y.shape).astype(dtype)
        grads = ib.conv_backward(dy, ctx)
    routes = {route for _, route, _, _ in passes}
    assert routes == ({"direct"} if ctx.plan.forward.route.choice == "direct"
                      else routes - {"direct"})
    if method == "direct":
        assert routes == {"direct"}
    dx_ref = reference.conv_grad_input(dy, w, x.shape, **kw)
    dw_ref = reference.conv_grad_weight(dy, x, w.shape, **kw)
    y_ref = reference.conv(x, w, b, **kw)
    assert_close(y, y_ref, scale=_scale(y_ref) * w[0].size)
    assert_close(grads.input, dx_ref, scale=_scale(dx_ref) * w.shape[0])
    assert_close(grads.weight, dw_ref, scale=_scale(dw_ref) * max(y.size, 1))


def test_auto_takes_the_direct_path_by_the_measured_rule():
    takes = ib.plan_conv((8, 128, 28, 28), (128, 1, 3, 3), padding=1, groups=128)
    assert [s.route.choice for s in takes.steps] == ["direct"] * 3
    for shape, weight, kw in [((8, 128, 14, 14), (128, 1, 3, 3), dict(padding=1)),  # narrow
                              ((8, 64, 28, 28), (128, 1, 3, 3), dict(padding=1)),  # M = 2
                              ((8, 64, 28, 28), (64, 1, 3, 3), dict(stride=2)),
                              ((2, 8, 8, 8, 8), (8, 1, 3, 3, 3), {})]:  # rank 3
        plan = ib.plan_conv(shape, weight, groups=shape[1], **kw)
        assert plan.forward.route.choice == "im2col", shape
    with pytest.raises(ValueError, match="method='direct' cannot serve.*not depthwise"):
        ib.plan_conv((1, 4, 8, 8), (4, 2, 3, 3), groups=2, method="direct")


def test_winograd_falls_back_for_non_finite_operands():
    """A Winograd tile mixes its inputs: an inf would spread nan over the tile. The
    plan's im2col fallback keeps IEEE semantics (inf only where a window reads it)."""
    x = np.ones((1, 1, 8, 8))
    x[0, 0, 0, 0] = np.inf
    w = np.ones((1, 1, 3, 3))
    with record_passes() as passes, np.errstate(invalid="ignore"):
        y = ib.conv(x, w, padding=1, method="winograd")
    assert passes[0][:2] == ("product", "im2col")
    np.testing.assert_array_equal(y, reference.conv(x, w, padding=1))


def test_winograd_is_named_where_it_cannot_serve():
    with pytest.raises(ValueError, match=r"method='winograd' cannot serve this geometry: "
                                         r"winograd needs stride 1.*'auto', 'im2col', 'direct'$"):
        ib.plan_conv((1, 1, 8, 8), (1, 1, 3, 3), stride=2, method="winograd")
    with pytest.raises(ValueError, match="kernel"):
        ib.conv_grad_weight(np.ones((1, 1, 4, 4)), np.ones((1, 1, 8, 8)), (1, 1, 5, 5),
                            method="winograd")


def test_methods_reach_both_input_gradient_routes():
    """The teaching-route pair the default picks from is observable: at stride 1 with
    fewer filters than 2·C_in, auto takes the transposition, im2col never does."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 4, 9, 9)), rng.standard_normal((4, 4, 3, 3))
    y, ctx_auto = ib.conv_forward(x, w, padding=1)
    _, ctx_taught = ib.conv_forward(x, w, padding=1, method="im2col")
    dy = rng.standard_normal(y.shape)
    with record_passes() as auto_passes:
        dx_auto = ib.conv_backward(dy, ctx_auto).input
    with record_passes() as taught_passes:
        dx_taught = ib.conv_backward(dy, ctx_taught).input
    assert ("product", "transposition") in {(k, r) for k, r, _, _ in auto_passes}
    assert ("col2im", "col2im") in {(k, r) for k, r, _, _ in taught_passes}
    assert "transposition" not in {r for _, r, _, _ in taught_passes}
    np.testing.assert_allclose(dx_auto, dx_taught, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx_auto, reference.conv_grad_input(dy, w, x.shape, padding=1),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call", [
    lambda m: ib.conv(np.ones((1, 1, 4)), np.ones((1, 1, 2)), method=m),
    lambda m: ib.conv_forward(np.ones((1, 1, 4)), np.ones((1, 1, 2)), method=m),
    lambda m: ib.conv_grad_input(np.ones((1, 1, 3)), np.ones((1, 1, 2)), (1, 1, 4), method=m),
    lambda m: ib.conv_grad_weight(np.ones((1, 1, 3)), np.ones((1, 1, 4)), (1, 1, 2), method=m),
    lambda m: ib.conv_transpose(np.ones((1, 1, 3)), np.ones((1, 1, 2)), method=m),
    lambda m: ib.conv_transpose_forward(np.ones((1, 1, 3)), np.ones((1, 1, 2)), method=m),
    lambda m: ib.plan_conv((1, 1, 4), (1, 1, 2), method=m),
])
@pytest.mark.parametrize("method", ["fft", "IM2COL", "", None, 3])
def test_unknown_method_names_the_methods(call, method):
    with pytest.raises(ValueError, match="method must be one of 'auto', 'im2col'"):
        call(method)


def test_backward_follows_the_forward_plan():
    """A context made under one workspace limit and method is back-propagated with
    forward's choices, whatever is in force at backward time."""
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((6, 3, 10, 10)), rng.standard_normal((2, 3, 3, 3))
    with ib.workspace_limit(5000):
        y, ctx = ib.conv_forward(x, w, padding=1, method="im2col")
    planned_chunk = ctx.plan.weight_gradient.passes[0].samples_per_chunk
    assert planned_chunk < 6
    dy = rng.standard_normal(y.shape)
    with record_passes() as passes:
        grads = ib.conv_backward(dy, ctx)
    assert [(kind, route, chunk) for kind, route, _, chunk in passes] == [
        ("weight_gradient", "im2col", planned_chunk), ("col2im", "col2im", planned_chunk)]
    np.testing.assert_allclose(grads.weight, reference.conv_grad_weight(dy, x, w.shape,
                                                                        padding=1), rtol=1e-11)


def test_plan_is_frozen_and_lists_every_choice_with_a_reason():
    plan = ib.plan_conv((4, 8, 16, 16), (8, 8, 3, 3), padding=1, stride=1)
    with pytest.raises(AttributeError):
        plan.method = "im2col"
    text = str(plan)
    for step in plan.steps:
        assert step.operation in text and step.route.reason in text
        for p in step.passes:
            assert p.layout.reason in text and p.chunk.reason in text
    assert plan.keep_columns.reason in text
    assert "workspace limit 256.0 MiB" in text


def test_plan_matches_what_runs():
    """plan_conv's plan is the plan conv_forward makes and stores in its context."""
    x, w = np.ones((3, 2, 12, 12), np.float32), np.ones((5, 2, 3, 3), np.float32)
    plan = ib.plan_conv(x.shape, w.shape, padding=2, dilation=2, bias=False)
    _, ctx = ib.conv_forward(x, w, padding=2, dilation=2)
    assert str(plan) == str(ctx.plan)


def test_transposed_plan_describes_the_transposed_operations():
    plan = ib.plan_conv((2, 4, 5, 5), (4, 2, 3, 3), transposed=True, stride=2, padding=1,
                        output_padding=1)
    assert plan.transposed and plan.geometry.window.in_size == (10, 10)
    assert plan.forward.route.choice == "col2im"  # stride 2: no transposition route
    assert plan.input_gradient.passes[0].kind == "product"
    assert plan.keep_columns.choice is False
    with pytest.raises(ValueError, match="transposed=True"):
        ib.plan_conv((2, 4, 5, 5), (4, 4, 3, 3), output_padding=1)


@pytest.mark.parametrize("n_bytes, expected", [(KEEP_COLUMNS_BYTES // 2, True),
                                               (2 * KEEP_COLUMNS_BYTES, False)])
@pytest.mark.parametrize("batched", [True, False])
def test_forward_keeps_columns_only_under_the_cap_whatever_n(n_bytes, expected, batched):
    """N = 1 and unbatched inputs obey the 16 MiB cap like any batch (they did not)."""
    kernel = 3 * 3
    side = int((n_bytes / (8 * kernel)) ** 0.5)  # float64 columns of one 1-channel sample
    shape = (1, 1, side, side) if batched else (1, side, side)
    _, ctx = ib.conv_forward(np.ones(shape), np.ones((1, 1, 3, 3)), padding=1, method="im2col")
    assert (ctx.columns is not None) == expected == ctx.plan.keep_columns.choice
    if expected:
        assert ctx.columns.cols.nbytes <= KEEP_COLUMNS_BYTES


def test_conv_keeps_no_columns():
    plan_conv = ib.plan_conv((2, 3, 8, 8), (4, 3, 3, 3))
    assert plan_conv.keep_columns.choice  # conv_forward would keep them ...
    x, w = np.ones((2, 3, 8, 8)), np.ones((4, 3, 3, 3))
    tracemalloc.start()
    try:
        ib.release_scratch()
        base = tracemalloc.get_traced_memory()[0]
        y = ib.conv(x, w)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # ... conv needs one chunk's scratch (columns + GEMM result + staging), not a kept copy too
    assert peak - y.nbytes <= plan_conv.forward.passes[0].scratch_bytes + 64 * 1024


# --------------------------------------------------------------------------
# the memory contract
# --------------------------------------------------------------------------
def _extra_bytes(function):
    """(result, peak bytes allocated by ``function`` beyond its results)."""
    ib.release_scratch()
    # the thread pool of the memory-bound passes is made once per process (about 85 KiB of
    # thread objects): not a cost of the call measured
    parallel_for(lambda part: None, 2, 2**30)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = function()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak - _nbytes(result)


def _nbytes(result) -> int:
    if isinstance(result, np.ndarray):
        return result.nbytes
    if isinstance(result, ib.ConvContext):
        kept = result.columns
        arrays = [result.x, result.weight,
                  None if kept is None else getattr(kept, "cols", getattr(kept, "flat", None))]
        return sum(a.nbytes for a in arrays if a is not None)
    if isinstance(result, tuple):
        return sum(_nbytes(item) for item in result if item is not None)
    return 0


def _one_sample_bound(plan) -> int:
    """One sample's working set of the largest pass, independently bounded too."""
    passes = [p for s in plan.steps for p in s.passes]
    g = plan.geometry
    item = plan.dtype.itemsize
    columns = g.in_channels * g.window.kernel_volume * g.window.out_volume * item
    sizes = (g.in_channels * np.prod(g.window.padded_size) + g.out_channels
             * g.window.out_volume) * item
    weights = np.prod(g.weight_shape) * item
    for p in passes:
        assert p.sample_bytes <= 2 * columns + 4 * sizes
        # Winograd's transformed weights (α^r of them, U and dU) and its block buffers,
        # which it sizes to the workspace limit
        # the direct path's banded matrices (a weight row per padded input row)
        extra = (2 * 6**g.rank * weights + plan.workspace_limit if p.tile
                 else 4 * weights * int(np.prod(g.window.padded_size)) if p.kind[:6] == "direct"
                 else 0)
        assert p.fixed_bytes <= 4 * weights + extra
    return max(p.sample_bytes + p.fixed_bytes for p in passes)


CONTRACT_CASES = {
    # name: (input shape, weight shape, geometry)
    "many filters, one channel": ((16, 1, 56, 56), (256, 1, 1, 1), {}),
    "N = 1": ((1, 32, 40, 40), (32, 32, 3, 3), dict(padding=1)),
    "unbatched": ((32, 40, 40), (32, 32, 3, 3), dict(padding=1)),
    "strided": ((16, 16, 31, 31), (32, 16, 3, 3), dict(padding=1, stride=2)),
    "reflect": ((8, 16, 30, 30), (8, 16, 3, 3), dict(padding=1, padding_mode="reflect")),
    "circular, dilated": ((6, 8, 20, 20), (8, 8, 3, 3),
                          dict(padding=3, dilation=2, padding_mode="circular")),
    "depthwise": ((8, 32, 28, 28), (32, 1, 3, 3), dict(padding=1, groups=32)),
    "1-D": ((4, 8, 3000), (16, 8, 9), dict(padding=4, stride=2)),
    "3-D": ((2, 4, 12, 12, 12), (8, 4, 3, 3, 3), dict(padding=1)),
}


def _serving(name):
    input_shape, weight_shape, kw = CONTRACT_CASES[name]
    geometry = conv_geometry(input_shape, weight_shape, **kw)
    return [m for m in METHODS if _method_blocker(m, geometry) is None]


@pytest.mark.parametrize("name, method", [(name, method) for name in CONTRACT_CASES
                                          for method in _serving(name)])
@pytest.mark.parametrize("limit", [MiB, 4 * MiB])
def test_extra_memory_within_the_limit_or_one_sample(name, method, limit):
    input_shape, weight_shape, kw = CONTRACT_CASES[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(input_shape).astype(np.float32)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    b = np.zeros(weight_shape[0], np.float32)
    # weight-sized copies (flipped kernel), small objects, NumPy's iteration buffers per thread
    slack = 3 * w.nbytes + 128 * 1024 + (ib.get_thread_limit() - 1) * thread_buffer_bytes()
    with ib.workspace_limit(limit):
        plan = ib.plan_conv(input_shape, weight_shape, method=method, **kw)
        bound = max(limit, _one_sample_bound(plan)) + slack
        y, extra = _extra_bytes(lambda: ib.conv(x, w, b, method=method, **kw))
        assert extra <= bound, ("conv", extra, bound)
        (y, ctx), extra = _extra_bytes(lambda: ib.conv_forward(x, w, b, method=method, **kw))
        assert extra <= bound, ("conv_forward", extra, bound)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        grads, extra = _extra_bytes(lambda: ib.conv_backward(dy, ctx))
        assert extra <= bound, ("conv_backward", extra, bound)
        for label, call in [
            ("conv_grad_input", lambda: ib.conv_grad_input(dy, w, x.shape, method=method, **kw)),
            ("conv_grad_weight", lambda: ib.conv_grad_weight(dy, x, w.shape, method=method,
                                                             **kw)),
        ]:
            _, extra = _extra_bytes(call)
            assert extra <= bound, (label, extra, bound)
    # an unbounded lowering would hold the whole batch's columns: the bound must be below that
    if limit == MiB and name in ("strided", "reflect", "1-D"):
        g = plan.geometry  # the whole batch's im2col columns
        whole = g.batch * g.column_rows * g.window.out_volume * 4
        assert bound < whole


@pytest.mark.parametrize("method", ["auto", "im2col"])  # stride 2: winograd cannot serve
def test_extra_memory_transposed(method):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 16, 15, 15)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1)
    limit = MiB
    with ib.workspace_limit(limit):
        plan = ib.plan_conv(x.shape, w.shape, transposed=True, method=method, **kw)
        bound = (max(limit, _one_sample_bound(plan)) + 3 * w.nbytes + 128 * 1024
                 + (ib.get_thread_limit() - 1) * thread_buffer_bytes())
        (y, ctx), extra = _extra_bytes(lambda: ib.conv_transpose_forward(x, w, method=method,
                                                                           **kw))
        assert extra <= bound
        dy = np.ones_like(y)
        grads, extra = _extra_bytes(lambda: ib.conv_transpose_backward(dy, ctx))
        assert extra <= bound
    assert plan.geometry.batch * plan.input_gradient.passes[0].column_bytes > bound


def test_mixed_dtypes_copy_no_whole_array():
    """float32 x with a float64 weight computes in float64 without a float64 copy of x."""
    x = np.ones((64, 4, 32, 32), np.float32)
    w = np.ones((4, 4, 3, 3), np.float64)
    with ib.workspace_limit(MiB):
        plan = ib.plan_conv(x.shape, w.shape, dtype=np.float64, padding=1)
        y, extra = _extra_bytes(lambda: ib.conv(x, w, padding=1))
    assert y.dtype == np.float64
    assert extra <= max(MiB, _one_sample_bound(plan)) + 128 * 1024 < 2 * x.nbytes


def test_release_scratch_reports_and_frees():
    ib.release_scratch()
    ib.conv(np.ones((4, 3, 16, 16)), np.ones((4, 3, 3, 3)))
    held = ib.retained_scratch_bytes()
    assert 0 < held <= min(64 * MiB, ib.get_workspace_limit())
    assert ib.release_scratch() == held and ib.retained_scratch_bytes() == 0
    with ib.workspace_limit(4096):
        ib.conv(np.ones((4, 3, 16, 16)), np.ones((4, 3, 3, 3)))
        assert ib.retained_scratch_bytes() <= 4096


# --------------------------------------------------------------------------
# contexts hold forward's values
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2, 64])  # kept columns (small) and rebuilt (large)
@pytest.mark.parametrize("method, groups", [(m, 1) for m in ("auto", "im2col", "winograd")]
                         + [("direct", 3), ("auto", 3)])
def test_in_place_edits_after_forward_do_not_change_gradients(batch, method, groups):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, 3, 40, 40))
    w = rng.standard_normal((3 if groups == 3 else 4, 3 // groups, 3, 3))
    y, ctx = ib.conv_forward(x, w, padding=1, groups=groups, method=method)
    dy = rng.standard_normal(y.shape)
    expected_dw = reference.conv_grad_weight(dy, x, w.shape, padding=1, groups=groups)
    expected_dx = reference.conv_grad_input(dy, w, x.shape, padding=1, groups=groups)
    x_before, w_before = x.copy(), w.copy()
    x *= -7.0
    w += 100.0
    grads = ib.conv_backward(dy, ctx)
    np.testing.assert_allclose(grads.weight, expected_dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads.input, expected_dx, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(x, -7.0 * x_before)  # and the inputs are the caller's
    np.testing.assert_array_equal(w, w_before + 100.0)


def test_in_place_edits_after_transposed_forward_do_not_change_gradients():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((3, 4, 6, 6)), rng.standard_normal((4, 2, 3, 3))
    y, ctx = ib.conv_transpose_forward(x, w, stride=2)
    dy = rng.standard_normal(y.shape)
    expected = ib.conv_transpose_backward(dy, ctx)
    _, ctx = ib.conv_transpose_forward(x, w, stride=2)
    x[...] = 0.0
    w[...] = 0.0
    got = ib.conv_transpose_backward(dy, ctx)
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_backward_with_a_wider_dtype_uses_kept_columns():
    """A float64 δ on a float32 forward: computed in float64 from the kept columns."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y, ctx = ib.conv_forward(x, w)
    assert ctx.columns is not None and ctx.x is None
    dy = rng.standard_normal(y.shape)
    grads = ib.conv_backward(dy, ctx)
    assert grads.weight.dtype == grads.input.dtype == np.float64
    np.testing.assert_allclose(grads.weight, reference.conv_grad_weight(
        dy, x.astype(np.float64), w.shape), rtol=1e-12)


@pytest.mark.parametrize("layout", ["plain", "wide"])
def test_forced_layout_is_planned_and_run(layout):
    with forced(layout=layout), record_passes() as passes:
        plan = ib.plan_conv((2, 2, 9, 9), (3, 2, 3, 3))
        ib.conv(np.ones((2, 2, 9, 9)), np.ones((3, 2, 3, 3)))
    assert plan.forward.passes[0].layout == ib.plan.Decision(layout, "forced")
    assert passes[0][2] == layout


# --------------------------------------------------------------------------
# long sums and huge kernels
# --------------------------------------------------------------------------
def test_long_float32_sums_through_a_broadcast_weight_stay_accurate():
    """A broadcast (zero-stride) 3·10⁷-tap float32 weight: the sum is 3·10⁷, not the
    16777216 = 2²⁴ a float32 running sum stalls at; the plan avoids the wide layout's
    per-tap loop (one output position, 3·10⁷ taps)."""
    taps = 3 * 10**7
    x = np.broadcast_to(np.float32(1), (1, 1, taps))
    w = np.broadcast_to(np.float32(1), (1, 1, taps))
    with record_passes() as passes:
        y, ctx = ib.conv_forward(x, w)
        grads = ib.conv_backward(np.ones_like(y), ctx)
    assert y.dtype == np.float32 and float(y[0, 0, 0]) == taps
    assert {layout for _, _, layout, _ in passes} == {"plain"}
    assert float(grads.weight.min()) == float(grads.weight.max()) == 1.0
    assert float(grads.input.min()) == float(grads.input.max()) == 1.0
    b = ib.conv_grad_bias(np.broadcast_to(np.float32(1), (taps // 100, 1, 100)))
    assert float(b[0]) == taps


def test_huge_kernel_plans_no_absurd_transposition():
    """A 10⁶-tap kernel with one output: the transposition route would lower δ into
    10¹² column entries; the plan keeps col2im (and says why)."""
    plan = ib.plan_conv((1, 1, 10**6), (1, 1, 10**6), dtype=np.float64)
    assert plan.input_gradient.route.choice == "col2im"
    assert "twice" in plan.input_gradient.route.reason


@pytest.mark.parametrize("choices", [dict(layout="plain"), dict(layout="wide"),
                                     dict(adjoint="col2im")])
def test_a_wider_delta_replans_with_the_forwards_choices(choices):
    """Backward in float64 after a float32 forward re-plans; the forward kept the direct
    path's loaded input (no copy of x), so the re-plan must take the forward's route even
    when other choices are forced at backward time."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 24)).astype(np.float32)
    w = rng.standard_normal((4, 1, 3)).astype(np.float32)
    y, ctx = ib.conv_forward(x, w, None, 1, 1, 1, 4)
    assert ctx.plan.weight_gradient.route.choice == "direct"
    dy = rng.standard_normal(y.shape)  # float64
    with forced(**choices):
        grads = ib.conv_backward(dy, ctx)
    assert grads.weight.dtype == np.float64
    assert_close(grads.weight, reference.conv_grad_weight(dy, x.astype(float), w.shape,
                                                          padding=1, groups=4),
                 np.float32, scale=10.0)


def test_a_wider_delta_after_a_forced_forward_reads_the_kept_columns():
    """A 1×1 forward forced to the plain layout keeps plain columns; a float64 backward
    outside ``forced`` replays the forward's choice instead of taking the identity layout."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    with forced(layout="plain"):
        y, ctx = ib.conv_forward(x, w)
    assert ctx.plan.keep_columns.choice and ctx.plan.forced_choices == (("layout", "plain"),)
    dy = rng.standard_normal(y.shape)
    grads = ib.conv_backward(dy, ctx)
    assert_close(grads.weight, reference.conv_grad_weight(dy, x.astype(float), w.shape),
                 np.float32, scale=10.0)
    assert_close(grads.input, reference.conv_grad_input(dy, w.astype(float), x.shape),
                 np.float32, scale=10.0)
