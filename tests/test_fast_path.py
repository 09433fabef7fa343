"""The small-call fast path: a repeated call skips the setup it has already done.

The entry points remember, per call signature (shapes, dtypes, arguments, method,
workspace limit, forced choices), the validated geometry, the dtype and the plan
(:func:`im2colbp.convolution._forward_setup`); memory requirements are remembered
per plan; scratch views are handed out again. These tests check that a cache hit
gives exactly the miss's results, that the caches stay bounded, that a hit still
refuses what must be refused, and that the context's snapshot semantics hold.
"""

import numpy as np
import pytest

import im2colbp as ib
from im2colbp import calls, convolution, reference, workspace
from im2colbp.engine import record_passes
from im2colbp.plan import forced


@pytest.fixture(autouse=True)
def _fresh_setups():
    convolution.clear_setup_cache()
    yield
    convolution.clear_setup_cache()


def _arrays(rng, x_shape=(2, 3, 9, 9), w_shape=(4, 3, 3, 3), dtype=np.float32):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


def _forward_setup_runs(monkeypatch):
    """Count the full setups (calls.forward_call through the entry's own reference)."""
    count = [0]
    original = convolution.forward_call

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(convolution, "forward_call", counting)
    return count


# --------------------------------------------------------------------------
# hit == miss, and a hit really skips the setup
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(padding=1), dict(stride=2, padding=(1, 0)),
                                dict(dilation=2, padding="same"), dict(padding=1, groups=1,
                                                                       padding_mode="reflect")])
def test_hit_gives_the_miss_results_bit_for_bit(rng, monkeypatch, kw):
    x, w, b = _arrays(rng)
    setups = _forward_setup_runs(monkeypatch)
    y1, ctx1 = ib.conv_forward(x, w, b, **kw)
    g1 = ib.conv_backward(np.ones_like(y1), ctx1)
    y2, ctx2 = ib.conv_forward(x, w, b, **kw)
    g2 = ib.conv_backward(np.ones_like(y2), ctx2)
    assert setups[0] == 1  # the second forward was a hit
    assert ctx2.plan is ctx1.plan
    np.testing.assert_array_equal(y1, y2)
    for a, c in zip(g1, g2):
        np.testing.assert_array_equal(a, c)
    expected = reference.conv(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64),
                              **kw)
    np.testing.assert_allclose(y2, expected, rtol=1e-4, atol=1e-4)


def test_conv_and_transposed_hits_match_misses(rng, monkeypatch):
    x, w, b = _arrays(rng, (1, 4, 5, 5), (4, 2, 3, 3))
    setups = _forward_setup_runs(monkeypatch)
    bt = b[:2]  # the transposed convolution's C_out = 2
    first = [ib.conv(x, w, b, padding=1, groups=2),
             ib.conv_transpose(x, w, bt, stride=2, output_padding=1)]
    y_t, ctx_t = ib.conv_transpose_forward(x, w, bt, stride=2, output_padding=1)
    g_t = ib.conv_transpose_backward(np.ones_like(y_t), ctx_t)
    assert setups[0] == 3
    second = [ib.conv(x, w, b, padding=1, groups=2),
              ib.conv_transpose(x, w, bt, stride=2, output_padding=1)]
    y_t2, ctx_t2 = ib.conv_transpose_forward(x, w, bt, stride=2, output_padding=1)
    g_t2 = ib.conv_transpose_backward(np.ones_like(y_t2), ctx_t2)
    assert setups[0] == 3  # every second call was a hit
    for a, c in zip(first + [y_t, *g_t], second + [y_t2, *g_t2]):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(second[1], reference.conv_transpose(
        x.astype(np.float64), w.astype(np.float64), bt.astype(np.float64), stride=2,
        output_padding=1), rtol=1e-4, atol=1e-4)


def test_unbatched_and_mixed_dtype_hits(rng):
    x, w, b = _arrays(rng, (3, 7, 7), (2, 3, 3, 3))
    w64 = w.astype(np.float64)
    for _ in range(2):
        y = ib.conv(x, w64, b, padding=1)  # float32 x, float64 w: float64
        assert y.shape == (2, 7, 7) and y.dtype == np.float64
        np.testing.assert_allclose(y, reference.conv(x.astype(np.float64), w64, b, padding=1),
                                   rtol=1e-12, atol=1e-12)


def test_the_cache_tells_apart_what_parsing_tells_apart(rng):
    """Shapes, dtypes, bias or not, argument types: each its own entry."""
    x, w, b = _arrays(rng, (1, 2, 6, 6), (2, 2, 3, 3))
    y_int = ib.conv(x, w, b, padding=1)
    y_pair = ib.conv(x, w, b, padding=((1, 1), (0, 0)))
    assert y_int.shape == (1, 2, 6, 6) and y_pair.shape == (1, 2, 6, 4)
    assert ib.conv(x, w, None, padding=1).shape == (1, 2, 6, 6)
    assert ib.conv(x.astype(np.float64), w, b, padding=1).dtype == np.float64
    # a float padding is refused whether or not an int one was cached
    with pytest.raises((TypeError, ValueError), match="padding"):
        ib.conv(x, w, b, padding=1.0)
    # a bool stride is judged by the geometry's own parsing, cached int stride or not
    try:
        expected = ib.conv(x, w, b, stride=True, padding=1)
    except (TypeError, ValueError) as error:
        ib.conv(x, w, b, stride=1, padding=1)
        with pytest.raises(type(error)):
            ib.conv(x, w, b, stride=True, padding=1)
    else:
        np.testing.assert_array_equal(expected, y_int)


# --------------------------------------------------------------------------
# what the key holds: workspace limit, forced choices
# --------------------------------------------------------------------------
def test_a_hit_follows_the_workspace_limit_and_forced_choices(rng):
    x, w, _ = _arrays(rng, (4, 2, 8, 8), (3, 2, 3, 3))
    baseline = ib.conv(x, w, padding=1)
    with record_passes() as passes:
        ib.conv(x, w, padding=1)
    assert passes[0][3] == 4  # one chunk of the whole batch
    with ib.workspace_limit(2 * 18 * 100 * 4), record_passes() as passes:  # ~ two samples
        small = ib.conv(x, w, padding=1)
        planned = ib.plan_conv(x.shape, w.shape, padding=1, bias=False)
    assert passes[0][3] == planned.forward.passes[0].samples_per_chunk < 4
    np.testing.assert_allclose(small, baseline, rtol=1e-5, atol=1e-5)
    layouts = set()
    for layout in ("plain", "wide"):
        with forced(layout=layout), record_passes() as passes:
            ib.conv(x, w, padding=1)
        layouts.add(passes[0][2])
    assert layouts == {"plain", "wide"}


def test_a_hit_still_refuses_what_cannot_fit(rng):
    x, w, b = _arrays(rng, (2, 3, 16, 16), (4, 3, 3, 3))
    ib.conv_forward(x, w, b, padding=1)  # cached
    with ib.memory_limit(1024):
        with pytest.raises(ib.AllocationError, match="conv_forward"):
            ib.conv_forward(x, w, b, padding=1)
        with pytest.raises(ib.AllocationError, match="conv"):
            ib.conv(x, w, b, padding=1)
    ib.conv_forward(x, w, b, padding=1)  # and runs again outside


# --------------------------------------------------------------------------
# bad values on a hit: the same errors as on a miss
# --------------------------------------------------------------------------
def test_bad_arrays_of_a_cached_shape_are_still_refused(rng):
    x, w, b = _arrays(rng, (1, 2, 5, 5), (2, 2, 3, 3))
    ib.conv_forward(x, w, b)
    masked = np.ma.masked_array(x, mask=np.zeros_like(x, dtype=bool))
    masked.mask[0, 0, 0, 0] = True
    with pytest.raises(TypeError, match="masked"):
        ib.conv_forward(masked, w, b)
    with pytest.raises(TypeError, match="complex"):
        ib.conv_forward(x.astype(np.complex64), w, b)
    with pytest.raises(TypeError, match="bias"):
        ib.conv_forward(x, w, b.astype(object))
    with pytest.raises(ValueError, match="method"):
        ib.conv_forward(x, w, b, method="fft")
    # a different weight shape of the same size is its own entry: refused
    with pytest.raises(ValueError):
        ib.conv_forward(x, w.reshape(2, 2, 9, 1)[:, :1], b)


def test_backward_fast_path_keeps_its_checks(rng):
    x, w, b = _arrays(rng, (1, 2, 5, 5), (2, 2, 3, 3))
    y, ctx = ib.conv_forward(x, w, b, padding=1)
    with pytest.raises(ValueError, match="dy must have shape"):
        ib.conv_backward(np.ones((1, 2, 5, 4), np.float32), ctx)
    with pytest.raises(TypeError, match="dy"):
        ib.conv_backward(np.ones(y.shape, np.complex64), ctx)
    plain = ib.conv_backward(np.ones_like(y), ctx)
    swapped = ib.conv_backward(np.ones(y.shape, ">f4"), ctx)  # non-native order: converted
    wider = ib.conv_backward(np.ones(y.shape, np.float64), ctx)  # δ wider than the plan
    ints = ib.conv_backward(np.ones(y.shape, np.int64), ctx)
    assert wider.input.dtype == ints.input.dtype == np.float64
    for other in (swapped, wider, ints):
        for a, c in zip(plain, other):
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
    only = ib.conv_backward(np.ones_like(y), ctx, wrt=("bias",))
    assert only.input is None and only.weight is None
    np.testing.assert_array_equal(only.bias, plain.bias)


# --------------------------------------------------------------------------
# the context's copies on a hit: in-place edits after forward are harmless
# --------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (40, 3, 64, 64)])  # columns kept / not kept
def test_in_place_edits_after_a_cached_forward_are_harmless(rng, shape):
    x, w, b = _arrays(rng, shape, (4, 3, 3, 3), np.float64)
    y0, ctx0 = ib.conv_forward(x, w, b, padding=1)
    dy = rng.standard_normal(y0.shape)
    expected = ib.conv_backward(dy, ctx0)
    y, ctx = ib.conv_forward(x, w, b, padding=1)  # a hit
    x[...] = 7.0
    w[...] = -3.0
    b[...] = 0.0
    grads = ib.conv_backward(dy, ctx)
    for a, c in zip(expected, grads):
        np.testing.assert_array_equal(a, c)


def test_a_non_contiguous_weight_on_a_hit(rng):
    x, w, b = _arrays(rng, (1, 3, 6, 6), (4, 3, 3, 3), np.float64)
    w_f = np.asfortranarray(w)
    first, ctx1 = ib.conv_forward(x, w_f, b)
    second, ctx2 = ib.conv_forward(x, w_f, b)
    np.testing.assert_array_equal(first, second)
    w_f[...] = 0.0  # the context holds its own contiguous copy
    dy = np.ones_like(second)
    np.testing.assert_array_equal(ib.conv_backward(dy, ctx2).input,
                                  ib.conv_grad_input(dy, w, x.shape))


# --------------------------------------------------------------------------
# bounded caches
# --------------------------------------------------------------------------
def test_the_setup_cache_is_bounded(rng, monkeypatch):
    monkeypatch.setattr(convolution, "SETUP_CACHE_SIZE", 5)
    w = np.ones((1, 1, 2, 2), np.float32)
    for size in range(3, 20):
        x = np.ones((1, 1, size, size), np.float32)
        assert ib.conv(x, w).shape == (1, 1, size - 1, size - 1)
        assert len(convolution._setups) <= 5
    # the newest entries are kept and still hit
    key = convolution._setup_key("conv", x, w, None, "auto", (1, 0, 1, 1, "zeros"))
    assert key in convolution._setups


def test_uncacheable_arguments_take_the_full_path(rng):
    """numpy scalars, lists, array subclasses: correct results, nothing remembered."""
    x, w, b = _arrays(rng, (1, 2, 5, 5), (2, 2, 3, 3), np.float64)
    expected = ib.conv(x, w, b, stride=2, padding=1)
    convolution.clear_setup_cache()
    np.testing.assert_array_equal(ib.conv(x, w, b, stride=np.int64(2), padding=1), expected)
    np.testing.assert_array_equal(ib.conv(x.tolist(), w, b, stride=2, padding=1), expected)
    np.testing.assert_array_equal(ib.conv(x.astype(np.float16), w, b, stride=2, padding=1),
                                  ib.conv(x.astype(np.float16).astype(np.float32), w, b,
                                          stride=2, padding=1))
    assert all(key[1] != x.tolist() for key in convolution._setups)


def test_the_requirement_cache_is_bounded():
    assert convolution._requirement.cache_info().maxsize is not None


# --------------------------------------------------------------------------
# the argument key
# --------------------------------------------------------------------------
def test_frozen_arguments_tell_apart_types():
    keys = [calls.frozen_arguments(*args) for args in
            [(1,), (1.0,), ((1,),), ([1],), ("1",), (None,), ((1, 1),), ([1, 1],),
             (((1, 1),),), ((1, (1, 1)),)]]
    assert len(set(keys)) == len(keys)
    for uncached in (np.int64(1), True, np.float32(1.0)):
        with pytest.raises(TypeError):
            calls.frozen_arguments(uncached)
    assert calls.shape_key((1, 2)) != calls.shape_key([1, 2])
    assert calls.shape_key((1, 2)) == calls.shape_key((1, 2))
    with pytest.raises(TypeError):
        calls.shape_key((np.int64(1), 2))


# --------------------------------------------------------------------------
# scratch views and scopes
# --------------------------------------------------------------------------
def test_scratch_hands_out_the_same_view_for_the_same_request():
    ib.release_scratch()
    with workspace.scratch_scope():
        a = workspace.scratch("t", (3, 4), np.float32)
        a[...] = 1.0
        b = workspace.scratch("t", (3, 4), np.float32)
        assert b.shape == (3, 4) and b.dtype == np.float32 and np.shares_memory(a, b)
        c = workspace.scratch("t", (2, 2), np.float64)  # another request of the same name
        assert c.shape == (2, 2) and c.dtype == np.float64 and np.shares_memory(a, c)
        d = workspace.scratch("t", (100,), np.float64)  # grows: new memory
        assert d.shape == (100,) and not np.shares_memory(a, d)
        e = workspace.scratch("t", (3, 4), np.float32)
        assert e.shape == (3, 4) and np.shares_memory(d, e)
    assert ib.release_scratch() >= 800
    assert workspace._views() == {} and ib.retained_scratch_bytes() == 0


def test_every_kept_view_belongs_to_a_kept_buffer(rng):
    """Trimming drops a buffer's view with it, so views never keep freed memory alive."""
    ib.release_scratch()
    x, w, _ = _arrays(rng, (2, 4, 40, 40), (8, 4, 3, 3))
    ib.conv(x, w, padding=1)
    with ib.workspace_limit(4096):  # the scope trims everything kept above the limit
        ib.conv(x[:, :, :5, :5], w, padding=1)
    buffers, views = workspace._buffers(), workspace._views()
    assert set(views) <= set(buffers)
    for name, (_, _, view) in views.items():
        assert np.shares_memory(view, buffers[name])
    assert ib.retained_scratch_bytes() <= 4096


def test_scratch_scope_nests_and_survives_exceptions():
    ib.release_scratch()
    with pytest.raises(RuntimeError):
        with workspace.scratch_scope(10):
            with workspace.scratch_scope(10):
                workspace.scratch("u", (10,), np.float64)
                raise RuntimeError("inside")
    assert getattr(workspace._scratch, "depth", 0) == 0
    with ib.workspace_limit(8):  # the outermost exit trimmed to the limit
        with workspace.scratch_scope():
            workspace.scratch("u", (10,), np.float64)
        assert ib.retained_scratch_bytes() == 0


# --------------------------------------------------------------------------
# the bias sum
# --------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda a: a, lambda a: a[:, :, ::2], lambda a: a[:1]])
def test_bias_gradient_paths_agree_with_a_float64_sum(rng, make):
    dy = make((rng.standard_normal((3, 5, 8, 6)) * 1e3).astype(np.float32))
    expected = dy.astype(np.float64).sum(axis=(0, 2, 3))
    db = ib.conv_grad_bias(dy)
    assert db.dtype == np.float32 and db.shape == (5,)
    np.testing.assert_allclose(db, expected, rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 0, 3, 3), (1, 2, 0, 3), (1, 0, 0, 0)])
def test_bias_gradient_of_empty_delta(shape):
    """One sample with no channels or no positions: zeros of C_out, no reshape error."""
    db = ib.conv_grad_bias(np.ones(shape, np.float32))
    np.testing.assert_array_equal(db, np.zeros(shape[1], np.float32))
    x = np.ones((1, 2, 3, 3), np.float32)
    y, ctx = ib.conv_forward(x, np.ones((0, 2, 3, 3), np.float32), np.ones(0, np.float32))
    assert y.shape == (1, 0, 1, 1)
    assert ib.conv_backward(y, ctx).bias.shape == (0,)
