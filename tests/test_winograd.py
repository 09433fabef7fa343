"""Winograd F(2, 3) and F(4, 3) against the direct reference (im2colbp.reference).

Oracles: :mod:`im2colbp.reference` (direct loops, no lowering, no Winograd)
in float64 to rounding, and in float32 to the stated :data:`ERROR_BOUNDS`
relative to ``max conv(|x|, |w|)`` (the scale rounding errors grow with);
``numpy.correlate`` for the 1-D identity of the transform matrices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import im2colbp as ib
from im2colbp import reference as ref
from im2colbp import winograd as wg
from im2colbp.engine import record_passes
from im2colbp.geometry import ConvGeometry, conv_geometry
from im2colbp.kernels import backprop_kernel
from im2colbp.lowering import unpad_add
from im2colbp.workspace import retained_scratch_bytes, scratch_scope

MODES = ("zeros", "reflect", "replicate", "circular")
MAX_SIZE = {1: 11, 2: 7, 3: 5}


@dataclass
class Case:
    geometry: ConvGeometry
    kwargs: dict
    tile: int
    chunk: int

    @property
    def x_shape(self) -> Tuple[int, ...]:
        return self.geometry.input_shape

    def arrays(self, dtype=np.float64, seed=0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.geometry.input_shape).astype(dtype)
        w = rng.standard_normal(self.geometry.weight_shape).astype(dtype)
        dy = rng.standard_normal(self.geometry.output_shape).astype(dtype)
        return x, w, dy


@st.composite
def cases(draw, ranks=(1, 2, 3), modes=MODES):
    rank = draw(st.sampled_from(ranks))
    batch = draw(st.integers(0, 3))
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 3))
    c_out = groups * draw(st.integers(1, 3))
    size = tuple(draw(st.integers(1, MAX_SIZE[rank])) for _ in range(rank))
    padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank))
    mode = draw(st.sampled_from(modes))
    kwargs = dict(padding=padding, groups=groups, padding_mode=mode)
    try:
        geometry = conv_geometry((batch, c_in) + size, (c_out, c_in // groups) + (3,) * rank,
                                 **kwargs)
    except ValueError:  # output smaller than 1, or reflect padding too large
        assume(False)
    tile = draw(st.sampled_from(wg.TILES))
    chunk = draw(st.integers(1, max(batch, 1) + 1))
    return Case(geometry, kwargs, tile, chunk)


def forward(case, x, w, dtype=np.float64):
    return wg.winograd_forward(case.geometry, x, w, tile=case.tile, dtype=dtype,
                               samples_per_chunk=case.chunk)


def weight_gradient(case, x, dy, dtype=np.float64):
    return wg.winograd_weight_gradient(case.geometry, x, dy, tile=case.tile, dtype=dtype,
                                       samples_per_chunk=case.chunk)


def input_geometry(case: Case) -> ConvGeometry:
    """The stride-1 convolution of δ that is the input gradient (zero padding <= 2)."""
    g = case.geometry
    pairs = tuple((2 - b, 2 - a) for b, a in g.window.padding)
    return conv_geometry(g.output_shape, (g.in_channels, g.out_channels // g.groups)
                         + (3,) * g.rank, padding=pairs, groups=g.groups)


# --------------------------------------------------------------------------
# the 1-D identity
# --------------------------------------------------------------------------
@pytest.mark.parametrize("tile", wg.TILES)
def test_one_tile_is_a_three_tap_correlation(tile, rng):
    bt, g, at = wg.transform_matrices(tile)
    for _ in range(5):
        d = rng.standard_normal(tile + 2)
        w = rng.standard_normal(3)
        np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), np.correlate(d, w, "valid"),
                                   rtol=1e-13, atol=1e-13)


def test_transform_matrices_returns_copies_and_checks_tile():
    bt, _, _ = wg.transform_matrices(2)
    bt[0, 0] = 99
    assert wg.transform_matrices(2)[0][0, 0] == 1
    with pytest.raises(ValueError, match="tile must be one of"):
        wg.transform_matrices(3)


# --------------------------------------------------------------------------
# float64: the reference to rounding
# --------------------------------------------------------------------------
@given(cases())
def test_forward_matches_reference(case):
    x, w, _ = case.arrays()
    y = forward(case, x, w)
    expected = ref.conv(x, w, **case.kwargs)
    assert y.shape == expected.shape and y.dtype == np.float64
    np.testing.assert_allclose(y, expected, rtol=1e-11, atol=1e-11)


@given(cases())
def test_weight_gradient_matches_reference(case):
    x, w, dy = case.arrays()
    dw = weight_gradient(case, x, dy)
    expected = ref.conv_grad_weight(dy, x, w.shape, **case.kwargs)
    assert dw.shape == w.shape and dw.dtype == np.float64
    np.testing.assert_allclose(dw, expected, rtol=1e-11, atol=1e-10)


@given(cases(modes=("zeros",)))
def test_input_gradient_is_forward_on_the_transposed_geometry(case):
    """dx = winograd_forward(δ padded by 2 - P, backprop_kernel(w)): what the engine runs."""
    x, w, dy = case.arrays()
    geometry = input_geometry(case)
    kernel = backprop_kernel(w, case.geometry.groups)
    dx = wg.winograd_forward(geometry, dy, kernel, tile=case.tile, dtype=np.float64,
                             samples_per_chunk=case.chunk)
    expected = ref.conv_grad_input(dy, w, x.shape, **case.kwargs)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, expected, rtol=1e-11, atol=1e-11)


@given(cases())
def test_input_gradient_for_every_padding_mode_folds_the_padded_gradient(case):
    """Any mode: forward on δ padded by 2 gives the padded input's gradient; fold it back."""
    x, w, dy = case.arrays()
    g = case.geometry
    padded = conv_geometry(g.output_shape, (g.in_channels, g.out_channels // g.groups)
                           + (3,) * g.rank, padding=2, groups=g.groups)
    grad_padded = wg.winograd_forward(padded, dy, backprop_kernel(w, g.groups), tile=case.tile,
                                      dtype=np.float64, samples_per_chunk=case.chunk)
    assert grad_padded.shape == (g.batch, g.in_channels) + g.window.padded_size
    dx = unpad_add(grad_padded, g.window)
    expected = ref.conv_grad_input(dy, w, x.shape, **case.kwargs)
    np.testing.assert_allclose(dx, expected, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------
# float32: the stated bounds
# --------------------------------------------------------------------------
def _within_bound(result, exact, scale, bound):
    error = np.abs(result.astype(np.float64) - exact).max(initial=0.0)
    assert error <= bound * max(scale, 1e-300), (error, bound * scale)


@given(cases())
def test_float32_within_stated_bound(case):
    x, w, dy = case.arrays()
    bound = wg.ERROR_BOUNDS[(case.tile, case.geometry.rank)]
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    y = forward(case, x32, w32, np.float32)
    assert y.dtype == np.float32
    scale = np.abs(ref.conv(np.abs(x), np.abs(w), **case.kwargs)).max(initial=0.0)
    _within_bound(y, ref.conv(x, w, **case.kwargs), scale, bound)
    dw = weight_gradient(case, x32, dy32, np.float32)
    assert dw.dtype == np.float32
    scale = np.abs(ref.conv_grad_weight(np.abs(dy), np.abs(x), w.shape, **case.kwargs)).max()
    _within_bound(dw, ref.conv_grad_weight(dy, x, w.shape, **case.kwargs), scale, bound)


@pytest.mark.parametrize("tile", wg.TILES)
@pytest.mark.parametrize("rank, shape, c", [(1, (40,), 16), (2, (13, 10), 16), (3, (6, 5, 7), 6)])
def test_float32_bound_on_larger_channels(tile, rank, shape, c, rng):
    """Relative to max |exact| (the docstring's measure), many channels, odd sizes."""
    x = rng.standard_normal((3, c) + shape)
    w = rng.standard_normal((c, c) + (3,) * rank)
    g = conv_geometry(x.shape, w.shape, padding=1)
    y = wg.winograd_forward(g, x.astype(np.float32), w.astype(np.float32), tile=tile,
                            dtype=np.float32, samples_per_chunk=2)
    exact = ref.conv(x, w, padding=1)
    assert np.abs(y - exact).max() <= wg.ERROR_BOUNDS[(tile, rank)] * np.abs(exact).max()


# --------------------------------------------------------------------------
# chunking, inputs, dtypes, memory
# --------------------------------------------------------------------------
@pytest.mark.parametrize("tile", wg.TILES)
def test_every_chunk_size_agrees(tile, rng):
    x = rng.standard_normal((5, 4, 9, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    dy = rng.standard_normal((5, 6, 8, 7))
    g = conv_geometry(x.shape, w.shape, padding=((1, 0), (2, 1)), groups=2)
    y_ref = ref.conv(x, w, padding=((1, 0), (2, 1)), groups=2)
    dw_ref = ref.conv_grad_weight(dy, x, w.shape, padding=((1, 0), (2, 1)), groups=2)
    for chunk in range(1, 7):
        y = wg.winograd_forward(g, x, w, tile=tile, dtype=np.float64, samples_per_chunk=chunk)
        dw = wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float64,
                                         samples_per_chunk=chunk)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("tile", wg.TILES)
def test_small_blocks_agree(tile, rng, monkeypatch):
    """One tile row per block (the cache blocking's edge case) gives the same result."""
    x = rng.standard_normal((2, 3, 11, 9))
    w = rng.standard_normal((4, 3, 3, 3))
    dy = rng.standard_normal((2, 4, 11, 9))
    g = conv_geometry(x.shape, w.shape, padding=1, padding_mode="reflect")
    monkeypatch.setattr(wg, "_BLOCK_BYTES", 1)
    y = wg.winograd_forward(g, x, w, tile=tile, dtype=np.float64, samples_per_chunk=2)
    dw = wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float64, samples_per_chunk=2)
    np.testing.assert_allclose(y, ref.conv(x, w, padding=1, padding_mode="reflect"),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        dw, ref.conv_grad_weight(dy, x, w.shape, padding=1, padding_mode="reflect"),
        rtol=1e-12, atol=1e-11)


def test_inputs_are_not_modified_and_results_are_new(rng):
    x = rng.standard_normal((2, 2, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    dy = rng.standard_normal((2, 3, 6, 6))
    copies = [a.copy() for a in (x, w, dy)]
    g = conv_geometry(x.shape, w.shape, padding=1, padding_mode="circular")
    for tile in wg.TILES:
        y = wg.winograd_forward(g, x, w, tile=tile, dtype=np.float64, samples_per_chunk=1)
        dw = wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float64,
                                         samples_per_chunk=1)
        for result in (y, dw):
            assert not any(np.shares_memory(result, a) for a in (x, w, dy))
    for array, copy in zip((x, w, dy), copies):
        np.testing.assert_array_equal(array, copy)


def test_results_are_not_scratch(rng):
    """A second call must not overwrite the first call's result."""
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((2, 2, 3, 3))
    g = conv_geometry(x.shape, w.shape, padding=1)
    first = wg.winograd_forward(g, x, w, tile=2, dtype=np.float64, samples_per_chunk=1)
    kept = first.copy()
    wg.winograd_forward(g, 2 * x, w, tile=2, dtype=np.float64, samples_per_chunk=1)
    np.testing.assert_array_equal(first, kept)


@pytest.mark.parametrize("in_dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_any_float_input_is_cast_to_dtype(in_dtype, dtype, rng):
    x = rng.standard_normal((2, 2, 7, 5)).astype(in_dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    dy = rng.standard_normal((2, 3, 7, 5)).astype(in_dtype)
    g = conv_geometry(x.shape, w.shape, padding=1)
    y = wg.winograd_forward(g, x, w, tile=2, dtype=dtype, samples_per_chunk=1)
    dw = wg.winograd_weight_gradient(g, x, dy, tile=2, dtype=dtype, samples_per_chunk=1)
    assert y.dtype == dtype and dw.dtype == dtype
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(y, ref.conv(x64, w.astype(np.float64), padding=1),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, ref.conv_grad_weight(dy64, x64, w.shape, padding=1),
                               rtol=1e-4, atol=1e-4)


def test_empty_batch_and_zero_channels():
    g = conv_geometry((0, 2, 5, 5), (3, 2, 3, 3), padding=1)
    y = wg.winograd_forward(g, np.ones((0, 2, 5, 5)), np.ones((3, 2, 3, 3)), tile=4,
                            dtype=np.float32, samples_per_chunk=1)
    assert y.shape == (0, 3, 5, 5) and y.dtype == np.float32
    dw = wg.winograd_weight_gradient(g, np.ones((0, 2, 5, 5)), np.ones((0, 3, 5, 5)), tile=4,
                                     dtype=np.float32, samples_per_chunk=1)
    np.testing.assert_array_equal(dw, np.zeros((3, 2, 3, 3)))
    g = conv_geometry((2, 0, 5, 5), (3, 0, 3, 3))
    y = wg.winograd_forward(g, np.ones((2, 0, 5, 5)), np.ones((3, 0, 3, 3)), tile=2,
                            dtype=np.float64, samples_per_chunk=1)
    np.testing.assert_array_equal(y, np.zeros((2, 3, 3, 3)))


@pytest.mark.parametrize("tile", wg.TILES)
@pytest.mark.parametrize("mode", ["zeros", "replicate"])
@pytest.mark.parametrize("block_bytes", [wg._BLOCK_BYTES, 1, 20_000])
def test_scratch_stays_within_the_stated_bytes(tile, mode, block_bytes, rng, monkeypatch):
    monkeypatch.setattr(wg, "_BLOCK_BYTES", block_bytes)
    x = rng.standard_normal((6, 8, 20, 17)).astype(np.float32)
    w = rng.standard_normal((12, 8, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((6, 12, 20, 17)).astype(np.float32)
    g = conv_geometry(x.shape, w.shape, padding=1, padding_mode=mode)
    chunk = 2
    stated = (chunk * wg.winograd_sample_bytes(g, tile, 4)
              + wg.winograd_fixed_bytes(g, tile, 4))
    ib.release_scratch()
    with scratch_scope():  # the outer scope keeps every buffer until it ends
        wg.winograd_forward(g, x, w, tile=tile, dtype=np.float32, samples_per_chunk=chunk)
        wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float32,
                                    samples_per_chunk=chunk)
        held = retained_scratch_bytes()
    assert 0 < held <= stated


# --------------------------------------------------------------------------
# applicability and errors
# --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, weight, message", [
    (dict(), (2, 2, 5, 5), "3 on every kernel axis"),
    (dict(), (2, 2, 3, 1), "3 on every kernel axis"),
    (dict(stride=(1, 2)), (2, 2, 3, 3), "stride 1"),
    (dict(dilation=2), (2, 2, 3, 3), "dilation 1"),
])
def test_reason_not(kwargs, weight, message):
    g = conv_geometry((1, 2, 12, 12), weight, **kwargs)
    assert message in wg.winograd_reason_not(g)
    with pytest.raises(ValueError, match=message):
        wg.winograd_forward(g, np.ones(g.input_shape), np.ones(weight), tile=2,
                            dtype=np.float64, samples_per_chunk=1)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_reason_not_accepts_every_rank_padding_and_groups(rank):
    g = conv_geometry((2, 4) + (6,) * rank, (4, 2) + (3,) * rank, padding=2, groups=2,
                      padding_mode="circular")
    assert wg.winograd_reason_not(g) is None


def test_errors_name_the_argument():
    g = conv_geometry((1, 2, 6, 6), (3, 2, 3, 3), padding=1)
    x, w, dy = np.ones((1, 2, 6, 6)), np.ones((3, 2, 3, 3)), np.ones((1, 3, 6, 6))
    with pytest.raises(ValueError, match="tile must be one of"):
        wg.winograd_forward(g, x, w, tile=3, dtype=np.float64, samples_per_chunk=1)
    with pytest.raises(ValueError, match="x must have shape"):
        wg.winograd_forward(g, x[0], w, tile=2, dtype=np.float64, samples_per_chunk=1)
    with pytest.raises(ValueError, match="weight must have shape"):
        wg.winograd_forward(g, x, w[:2], tile=2, dtype=np.float64, samples_per_chunk=1)
    with pytest.raises(ValueError, match="samples_per_chunk"):
        wg.winograd_forward(g, x, w, tile=2, dtype=np.float64, samples_per_chunk=0)
    with pytest.raises(ValueError, match="dy must have shape"):
        wg.winograd_weight_gradient(g, x, dy[:, :2], tile=2, dtype=np.float64,
                                    samples_per_chunk=1)
    with pytest.raises(ValueError, match="tile must be one of"):
        wg.winograd_sample_bytes(g, 6, 4)


# --------------------------------------------------------------------------
# blocks side by side in threads, GEMM transforms
# --------------------------------------------------------------------------
def _record_threads(monkeypatch, name):
    """Wrap winograd.<name> to record the threads it runs in."""
    import threading
    seen = set()
    original = getattr(wg, name)

    def recorded(*args, **kwargs):
        seen.add(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(wg, name, recorded)
    return seen


@pytest.mark.parametrize("tile", wg.TILES)
@pytest.mark.parametrize("small_gemm", [wg._SMALL_GEMM, 1])  # blocks in threads / rows in threads
def test_threads_agree_with_one_thread_and_the_reference(tile, small_gemm, rng, monkeypatch):
    """Threaded blocks (small GEMMs) or threaded tile rows (large GEMMs) give the one-thread
    result to rounding, and the reference's; the work really runs in several threads."""
    from im2colbp import parallel
    monkeypatch.setattr(parallel, "MINIMUM_SLAB_BYTES", 1)  # split even small work
    monkeypatch.setattr(wg, "_BLOCK_BYTES", 40_000)  # several blocks of several tile rows
    monkeypatch.setattr(wg, "_SMALL_GEMM", small_gemm)
    seen = _record_threads(monkeypatch, "_transform_input")
    x = rng.standard_normal((5, 6, 17, 14))
    w = rng.standard_normal((8, 6, 3, 3))
    dy = rng.standard_normal((5, 8, 17, 14))
    g = conv_geometry(x.shape, w.shape, padding=1)
    results = {}
    for threads in (1, 2):
        with ib.thread_limit(threads):
            results[threads] = [
                wg.winograd_forward(g, x, w, tile=tile, dtype=np.float64, samples_per_chunk=4),
                wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float64,
                                            samples_per_chunk=4),
                wg.winograd_forward(g, x.astype(np.float32), w.astype(np.float32), tile=tile,
                                    dtype=np.float32, samples_per_chunk=4)]
        if threads == 1:
            assert seen == {"MainThread"}
            seen.clear()
    assert len(seen) > 1, seen
    for one, two in zip(results[1], results[2]):
        np.testing.assert_allclose(two, one, rtol=1e-6, atol=1e-6 * np.abs(one).max())
    np.testing.assert_allclose(results[2][0], ref.conv(x, w, padding=1), rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(results[2][1], ref.conv_grad_weight(dy, x, w.shape, padding=1),
                               rtol=1e-12, atol=1e-10)


def test_small_products_match_matmul_over_panels_and_the_rest(rng):
    """Full panels (one batched matmul) and the remainder, into a strided ``out``."""
    a = rng.standard_normal((16, 36))
    width = max(16, wg._SMALL_GEMM // (16 * 36) // 16 * 16)
    b = rng.standard_normal((36, 3 * width + 5))
    out = np.full((16, b.shape[1] + 7), np.nan)[:, 3:-4]  # rows strided: a view
    wg._small_products(a, b, out)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_gemm_transforms_match_the_passes(rank, rng, monkeypatch):
    """The gather + Kronecker GEMM form (rank <= 3) equals the ufunc passes (rank 4's form)."""
    shape = (7, 9, 6)[:rank]
    x = rng.standard_normal((3, 5) + shape)
    w = rng.standard_normal((4, 5) + (3,) * rank)
    dy = rng.standard_normal((3, 4) + shape)
    g = conv_geometry(x.shape, w.shape, padding=1)
    for tile in wg.TILES:
        gemm = (wg.winograd_forward(g, x, w, tile=tile, dtype=np.float64, samples_per_chunk=2),
                wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float64,
                                            samples_per_chunk=2))
        monkeypatch.setattr(wg, "_GEMM_TRANSFORM_RANK", 0)
        passes = (wg.winograd_forward(g, x, w, tile=tile, dtype=np.float64, samples_per_chunk=2),
                  wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=np.float64,
                                              samples_per_chunk=2))
        monkeypatch.undo()
        for a, b in zip(gemm, passes):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_f43_float32_error_with_the_better_points(rng):
    """F(4, 3) at 0, ±1, 1/2, -2: float32 error below 4e-6 of max |exact| on a 64-channel
    2-D layer (measured 2.6e-6; Lavin & Gray's 0, ±1, ±2 gave 6.8e-6 here, 4.7e-6 to
    8.6e-6 over six other seeds)."""
    x = rng.standard_normal((2, 64, 24, 24))
    w = rng.standard_normal((64, 64, 3, 3))
    g = conv_geometry(x.shape, w.shape, padding=1)
    y = wg.winograd_forward(g, x.astype(np.float32), w.astype(np.float32), tile=4,
                            dtype=np.float32, samples_per_chunk=2)
    exact = ref.conv(x, w, padding=1)
    assert np.abs(y - exact).max() <= 4e-6 * np.abs(exact).max()


def test_a_small_call_is_not_refused_for_buffers_it_would_never_use():
    """The block buffers are bounded by the data: a 2×3×8×8 input is one small block, so
    a 1 MiB memory limit admits it (the plan once reserved 4.9 MiB of blocks for it)."""
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    plan = ib.plan_conv(x.shape, w.shape, padding=1, method="winograd")
    assert plan.forward.passes[0].scratch_bytes < 2**18
    with ib.memory_limit(2**20):
        y = ib.conv(x, w, padding=1, method="winograd")
    np.testing.assert_allclose(y, ib.conv(x, w, padding=1, method="im2col"), rtol=1e-5)


@pytest.mark.parametrize("operation", ["forward", "input", "weight"])
def test_large_finite_operands_that_overflow_the_transforms_fall_back(operation):
    """Finite float32 values near the largest float32 overflow inside Winograd's
    transforms where the lowering's sums stay finite: the result is the lowering's."""
    rng = np.random.default_rng(3)
    x = (3e36 * rng.standard_normal((1, 16, 8, 8))).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    dy = (3e36 * rng.standard_normal((1, 16, 8, 8))).astype(np.float32)
    with record_passes() as passes:
        if operation == "forward":
            got = ib.conv(x, w, padding=1, method="winograd")
            want = ib.conv(x, w, padding=1, method="im2col")
        elif operation == "input":
            got = ib.conv_grad_input(dy, w, x.shape, padding=1, method="winograd")
            want = ib.conv_grad_input(dy, w, x.shape, padding=1, method="im2col")
        else:
            dy = dy / 3e37  # dW sums N·∏O products x·δ: keep the exact sum finite
            got = ib.conv_grad_weight(dy, x, w.shape, padding=1, method="winograd")
            want = ib.conv_grad_weight(dy, x, w.shape, padding=1, method="im2col")
    assert np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)
    assert "winograd" in {route for _, route, _, _ in passes}  # it was tried first


@pytest.mark.parametrize("threads", [1, 8])
def test_planned_scratch_bounds_what_the_passes_allocate(threads):
    """Many channels on a small image: the weight transforms' float64 temporaries dominate.
    The plan must count them (a call was admitted under a memory limit it then exceeded
    twice over), and must not count per-thread partials for threads that cannot run."""
    import tracemalloc

    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 128, 4, 4)).astype(np.float32)
    w = rng.standard_normal((128, 128, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((1, 128, 4, 4)).astype(np.float32)
    calls = [
        (lambda: ib.conv(x, w, padding=1, method="winograd"), "forward"),
        (lambda: ib.conv_grad_input(dy, w, x.shape, padding=1, method="winograd"),
         "input_gradient"),
        (lambda: ib.conv_grad_weight(dy, x, w.shape, padding=1, method="winograd"),
         "weight_gradient"),
    ]
    with ib.thread_limit(threads):
        plan = ib.plan_conv(x.shape, w.shape, padding=1, method="winograd")
        for call, step in calls:
            planned = getattr(plan, step).scratch_bytes
            ib.release_scratch()
            tracemalloc.start()
            try:
                result = call()
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak - result.nbytes <= planned + 2**17, (step, peak, planned)
            assert planned <= 4 * (peak - result.nbytes), (step, peak, planned)
