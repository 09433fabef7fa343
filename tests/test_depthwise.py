"""The direct depthwise path against the direct reference (an independent oracle)."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import PADDING_MODES, assert_close, paddings

import im2colbp as ib
from im2colbp import depthwise as dwm
from im2colbp import reference
from im2colbp.geometry import conv_geometry

MAX_SIZE = {1: 12, 2: 7, 3: 5}


@st.composite
def depthwise_cases(draw):
    rank = draw(st.sampled_from((1, 2, 3)))
    channels = draw(st.integers(1, 4))
    multiplier = draw(st.integers(1, 3))
    batch = draw(st.integers(0, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    in_size = tuple(draw(st.integers(1, MAX_SIZE[rank])) for _ in range(rank))
    kwargs = dict(stride=stride, dilation=dilation, padding=draw(paddings(rank)),
                  padding_mode=draw(st.sampled_from(PADDING_MODES)), groups=channels)
    input_shape = (batch, channels) + in_size
    weight_shape = (channels * multiplier, 1) + kernel
    try:
        geometry = conv_geometry(input_shape, weight_shape, **kwargs)
    except ValueError:
        assume(False)
    chunk = draw(st.integers(1, max(batch, 1)))
    return geometry, input_shape, weight_shape, kwargs, chunk


def _arrays(input_shape, weight_shape, out_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(input_shape).astype(dtype),
            rng.standard_normal(weight_shape).astype(dtype),
            rng.standard_normal(out_shape).astype(dtype))


def _expected(x, w, dy, input_shape, weight_shape, kwargs):
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    return (reference.conv(x64, w64, **kwargs),
            reference.conv_grad_input(dy64, w64, input_shape, **kwargs),
            reference.conv_grad_weight(dy64, x64, weight_shape, **kwargs))


def _ours(geometry, x, w, dy, dtype, chunk):
    return (dwm.depthwise_forward(geometry, x, w, dtype=dtype, samples_per_chunk=chunk),
            dwm.depthwise_input_gradient(geometry, w, dy, dtype=dtype, samples_per_chunk=chunk),
            dwm.depthwise_weight_gradient(geometry, x, dy, dtype=dtype,
                                          samples_per_chunk=chunk))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(case=depthwise_cases())
def test_matches_reference(case, dtype):
    geometry, input_shape, weight_shape, kwargs, chunk = case
    assert dwm.depthwise_reason_not(geometry) is None
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, dtype)
    copies = [a.copy() for a in (x, w, dy)]
    expected = _expected(x, w, dy, input_shape, weight_shape, kwargs)
    scale = max(float(np.abs(e).max(initial=0)) for e in expected)
    for got, want in zip(_ours(geometry, x, w, dy, dtype, chunk), expected):
        assert got.dtype == dtype
        assert_close(got, want.astype(dtype), dtype, scale=scale)
    for before, after in zip(copies, (x, w, dy)):
        np.testing.assert_array_equal(before, after)  # inputs are not modified


@given(case=depthwise_cases())
def test_ranks_one_and_two_run_the_banded_gemms(case, monkeypatch):
    """With finite data ranks 1 and 2 never take the tap loop (the banded path is tested)."""
    geometry, input_shape, weight_shape, kwargs, chunk = case
    assume(geometry.rank <= 2)

    def refuse(*args, **kwargs):
        raise AssertionError("the tap loop ran")

    for name in ("_taps_forward", "_taps_input_gradient", "_taps_weight_gradient"):
        monkeypatch.setattr(dwm, name, refuse)
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64, seed=1)
    expected = _expected(x, w, dy, input_shape, weight_shape, kwargs)
    for got, want in zip(_ours(geometry, x, w, dy, np.float64, chunk), expected):
        assert_close(got, want)


@pytest.mark.parametrize("input_shape, weight_shape, kwargs", [
    ((2, 3, 9, 8), (6, 1, 3, 3), dict(padding=1, groups=3)),
    ((2, 3, 9, 8), (3, 1, 3, 3), dict(padding=1, groups=3, padding_mode="reflect")),
    ((3, 2, 17), (4, 1, 3), dict(padding=2, stride=2, groups=2, padding_mode="circular")),
    ((2, 2, 4, 5, 3), (2, 1, 2, 3, 2), dict(padding=1, groups=2, padding_mode="reflect")),
])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_values_stay_where_they_belong(input_shape, weight_shape, kwargs, value):
    """inf/nan in x or δ reach exactly the outputs the reference gives them: a band's
    zero must not spread NaN along a row (the chunk falls back to the tap loop)."""
    geometry = conv_geometry(input_shape, weight_shape, **kwargs)
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64)
    x[(0, 1) + (2,) * geometry.rank] = value
    dy[(-1, 0) + (1,) * geometry.rank] = value
    with np.errstate(invalid="ignore"):  # inf - inf in the oracle's sums
        expected = _expected(x, w, dy, input_shape, weight_shape, kwargs)
    for got, want in zip(_ours(geometry, x, w, dy, np.float64, 1), expected):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-10, atol=1e-10)


def test_casts_chunk_by_chunk():
    """float64 x and δ computed in float32 match the float32 computation of cast inputs."""
    geometry = conv_geometry((3, 4, 10, 11), (8, 1, 3, 3), padding=(1, 2), stride=(1, 2),
                             groups=4)
    x, w, dy = _arrays((3, 4, 10, 11), (8, 1, 3, 3), geometry.output_shape, np.float64)
    w32 = w.astype(np.float32)
    mixed = _ours(geometry, x, w32, dy, np.float32, 2)
    cast = _ours(geometry, x.astype(np.float32), w32, dy.astype(np.float32), np.float32, 2)
    for a, b in zip(mixed, cast):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_empty_batch_and_channels():
    for input_shape, weight_shape, groups in [((0, 3, 5, 5), (3, 1, 3, 3), 3),
                                              ((2, 0, 5, 5), (0, 0, 3, 3), 1)]:
        geometry = conv_geometry(input_shape, weight_shape, groups=groups)
        x = np.ones(input_shape)
        w = np.ones(weight_shape)
        dy = np.ones(geometry.output_shape)
        y, dx, dw = _ours(geometry, x, w, dy, np.float64, 1)
        assert y.shape == geometry.output_shape and not y.any()
        assert dx.shape == input_shape and dw.shape == weight_shape and not dw.any()


def test_reason_not():
    assert dwm.depthwise_reason_not(conv_geometry((1, 4, 8, 8), (8, 1, 3, 3), groups=4)) is None
    grouped = conv_geometry((1, 4, 8, 8), (4, 2, 3, 3), groups=2)
    assert "C_in/G must be 1" in dwm.depthwise_reason_not(grouped)
    big = conv_geometry((1, 2, 20, 20), (2, 1, 9, 9), groups=2)
    assert "81 taps" in dwm.depthwise_reason_not(big)
    with pytest.raises(ValueError, match="cannot serve"):
        dwm.depthwise_forward(grouped, np.ones((1, 4, 8, 8)), np.ones((4, 2, 3, 3)),
                              dtype=np.float64, samples_per_chunk=1)


def test_sample_bytes_bound_the_scratch():
    """One sample's working set: positive, and larger for larger inputs."""
    small = conv_geometry((1, 8, 8, 8), (8, 1, 3, 3), padding=1, groups=8)
    large = conv_geometry((1, 8, 16, 16), (8, 1, 3, 3), padding=1, groups=8)
    assert 0 < dwm.depthwise_sample_bytes(small, 4) < dwm.depthwise_sample_bytes(large, 4)
    assert dwm.depthwise_sample_bytes(small, 8) == 2 * dwm.depthwise_sample_bytes(small, 4)


@pytest.mark.parametrize("tile_outputs", [1, 2, 3])
@given(case=depthwise_cases())
def test_tiled_rows_match_reference(case, tile_outputs, monkeypatch):
    """Wide 2-D rows cut into tiles (every width, stride, dilation, padding mode)."""
    geometry, input_shape, weight_shape, kwargs, chunk = case
    monkeypatch.setattr(dwm, "TILE_OUTPUTS", tile_outputs)
    assume(geometry.rank == 2 and dwm._bands(geometry.window, tiled=True).tiles > 1)
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64, seed=2)
    expected = _expected(x, w, dy, input_shape, weight_shape, kwargs)
    for got, want in zip(_ours(geometry, x, w, dy, np.float64, chunk), expected):
        assert_close(got, want)


def test_a_wide_image_is_tiled_and_exact():
    geometry = conv_geometry((2, 3, 9, 60), (6, 1, 3, 3), padding=((1, 0), (2, 1)),
                             stride=(1, 2), groups=3, padding_mode="reflect")
    kwargs = dict(padding=((1, 0), (2, 1)), stride=(1, 2), groups=3, padding_mode="reflect")
    assert dwm._bands(geometry.window, tiled=True).tiles == 3
    x, w, dy = _arrays((2, 3, 9, 60), (6, 1, 3, 3), geometry.output_shape, np.float64)
    expected = _expected(x, w, dy, (2, 3, 9, 60), (6, 1, 3, 3), kwargs)
    for got, want in zip(_ours(geometry, x, w, dy, np.float64, 2), expected):
        assert_close(got, want)


@given(case=depthwise_cases(), poison=st.booleans())
def test_weight_gradient_from_the_kept_input(case, poison):
    """The forward's loaded input, kept, gives the weight gradient (x untouched; a chunk
    with inf still matches the reference through the tap loop)."""
    geometry, input_shape, weight_shape, kwargs, chunk = case
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64, seed=3)
    if poison and x.size:
        x.reshape(-1)[x.size // 2] = np.inf
    y, kept = dwm.depthwise_forward(geometry, x, w, dtype=np.float64, samples_per_chunk=chunk,
                                    keep=True)
    assert (kept is None) == (geometry.rank > 2 or x.size == 0 or w.size == 0)
    dw = dwm.depthwise_weight_gradient(geometry, x, dy, dtype=np.float64,
                                       samples_per_chunk=chunk, kept=kept)
    with np.errstate(invalid="ignore"):
        want = reference.conv_grad_weight(dy, x, weight_shape, **kwargs)
        want_y = reference.conv(x, w, **kwargs)
    for got, expected in ((dw, want), (y, want_y)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        finite = np.isfinite(expected)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-10, atol=1e-10)


@given(case=depthwise_cases())
def test_scratch_stays_within_the_planned_bytes(case):
    """Each pass holds at most samples_per_chunk · sample_bytes + fixed_bytes of scratch."""
    geometry, input_shape, weight_shape, kwargs, chunk = case
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64)
    planned = (chunk * dwm.depthwise_sample_bytes(geometry, 8)
               + dwm.depthwise_fixed_bytes(geometry, 8))
    passes = [lambda: dwm.depthwise_forward(geometry, x, w, dtype=np.float64,
                                            samples_per_chunk=chunk),
              lambda: dwm.depthwise_input_gradient(geometry, w, dy, dtype=np.float64,
                                                   samples_per_chunk=chunk),
              lambda: dwm.depthwise_weight_gradient(geometry, x, dy, dtype=np.float64,
                                                    samples_per_chunk=chunk)]
    for run in passes:
        ib.release_scratch()
        run()
        assert ib.retained_scratch_bytes() <= max(planned, 64)


@pytest.mark.parametrize("input_shape, weight_shape, kwargs", [
    # tiles wholly inside the zero padding (columns left and right of x), uneven tiles
    ((2, 3, 4, 2), (3, 1, 3, 3), dict(padding=((1, 1), (20, 21)), groups=3)),
    # a tile boundary inside x, asymmetric padding, stride and dilation, M = 2
    ((2, 2, 6, 61), (4, 1, 2, 3), dict(padding=((0, 2), (3, 1)), stride=(1, 2),
                                        dilation=(2, 1), groups=2)),
    ((1, 4, 5, 50), (4, 1, 3, 3), dict(padding=1, groups=4)),
])
def test_zero_padded_tiles_load_in_one_pass(input_shape, weight_shape, kwargs):
    """Zero padding: x goes straight into each tile (no padded staging copy); every tile,
    wholly in the padding or cut through x, matches the reference."""
    geometry = conv_geometry(input_shape, weight_shape, **kwargs)
    assert dwm._bands(geometry.window, tiled=True).tiles > 1
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64, seed=4)
    expected = _expected(x, w, dy, input_shape, weight_shape, kwargs)
    for chunk in (1, 2):
        for got, want in zip(_ours(geometry, x, w, dy, np.float64, chunk), expected):
            assert_close(got, want)


@pytest.mark.parametrize("tile_outputs", [1, 2, dwm.TILE_OUTPUTS])
@given(case=depthwise_cases(), poison=st.sampled_from([None, np.inf, -np.inf, np.nan]))
def test_weight_gradient_from_the_kept_input_alone(case, poison, tile_outputs, monkeypatch):
    """x = None with the kept input: the same bits as with x, also when a chunk holds
    inf/nan and the tap loop reads x back from the kept copy (tiles, strides, modes)."""
    monkeypatch.setattr(dwm, "TILE_OUTPUTS", tile_outputs)
    geometry, input_shape, weight_shape, kwargs, chunk = case
    assume(geometry.rank <= 2 and 0 not in input_shape and 0 not in weight_shape)
    x, w, dy = _arrays(input_shape, weight_shape, geometry.output_shape, np.float64, seed=6)
    if poison is not None:
        x.reshape(-1)[x.size // 2] = poison
    _, kept = dwm.depthwise_forward(geometry, x, w, dtype=np.float64,
                                    samples_per_chunk=chunk, keep=True)
    with_x = dwm.depthwise_weight_gradient(geometry, x, dy, dtype=np.float64,
                                           samples_per_chunk=chunk, kept=kept)
    alone = dwm.depthwise_weight_gradient(geometry, None, dy, dtype=np.float64,
                                          samples_per_chunk=chunk, kept=kept)
    np.testing.assert_array_equal(alone, with_x)
    with np.errstate(invalid="ignore"):
        want = reference.conv_grad_weight(dy, x, weight_shape, **kwargs)
    np.testing.assert_array_equal(np.isnan(alone), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(alone[finite], want[finite], rtol=1e-10, atol=1e-10)


def test_weight_gradient_needs_x_or_the_kept_input():
    geometry = conv_geometry((1, 2, 5, 5), (2, 1, 3, 3), groups=2)
    with pytest.raises(ValueError, match="needs x unless"):
        dwm.depthwise_weight_gradient(geometry, None, np.ones((1, 2, 3, 3)),
                                      dtype=np.float64, samples_per_chunk=1)
