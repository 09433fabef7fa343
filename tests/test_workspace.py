"""The workspace limit: chunked results equal unchunked ones, and memory stays bounded."""

import threading
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import conv_cases, conv_transpose_cases

import im2colbp as ib
from im2colbp.workspace import chunk_slices, samples_per_chunk


def _all_results(case, seed, transposed):
    x, w, b = case.arrays(seed)
    kw = case.call_kwargs
    forward = ib.conv_transpose_forward if transposed else ib.conv_forward
    backward = ib.conv_transpose_backward if transposed else ib.conv_backward
    y, ctx = forward(x, w, b, **kw)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    grads = backward(dy, ctx)
    results = [y, grads.input, grads.weight, grads.bias]
    if not transposed:
        results += [ib.conv_grad_input(dy, w, x.shape, **kw),
                    ib.conv_grad_weight(dy, x, w.shape, **kw)]
    return results


@pytest.mark.parametrize("transposed", [False, True])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1), limit=st.integers(1, 4000))
def test_chunked_results_equal_unchunked(transposed, data, seed, limit):
    strategy = (conv_transpose_cases(max_batch=5) if transposed
                else conv_cases(max_batch=5, allow_unbatched=False))
    case = data.draw(strategy)
    expected = _all_results(case, seed, transposed)
    with ib.workspace_limit(limit):
        chunked = _all_results(case, seed, transposed)
    for got, want in zip(chunked, expected):
        if want is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_context_keeps_columns_only_when_they_fit_the_limit(rng):
    x, w = rng.standard_normal((4, 3, 8, 8)), rng.standard_normal((2, 3, 3, 3))
    per_sample = 3 * 9 * 36 * 8
    _, ctx = ib.conv_forward(x, w)
    assert ctx.columns is not None and ctx.columns.cols.nbytes == 4 * per_sample
    with ib.workspace_limit(4 * per_sample - 1):
        _, ctx = ib.conv_forward(x, w)
    assert ctx.columns is None


def test_kept_columns_survive_other_convolutions(rng):
    """The kept columns are the context's own memory, not scratch a later call reuses."""
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 3, 3, 3))
    y, ctx = ib.conv_forward(x, w, padding=1)
    dy = rng.standard_normal(y.shape)
    expected = ib.conv_grad_weight(dy, x, w.shape, padding=1)
    ib.conv_backward(dy, ib.conv_forward(x[::-1] * 7, w, padding=1)[1])  # same shapes
    np.testing.assert_allclose(ib.conv_backward(dy, ctx).weight, expected, rtol=1e-13)


@pytest.mark.parametrize("limit_mib", [1, 2])
def test_peak_memory_respects_the_limit(limit_mib):
    """Peak extra memory of a backward pass stays within the workspace limit plus a
    few copies of input, output and weights — well below the column matrix of the
    whole batch (25x the input), which an unbounded implementation would build."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8, 20, 20))
    w = rng.standard_normal((8, 8, 5, 5))
    limit = limit_mib * 2**20
    arrays = 2 * x.nbytes + w.nbytes  # y has x's size here
    full_columns = x.nbytes * 25
    assert full_columns > limit + 4 * arrays  # so the bound below can fail
    tracemalloc.start()
    try:
        with ib.workspace_limit(limit):
            y, ctx = ib.conv_forward(x, w, padding=2)
            tracemalloc.reset_peak()
            baseline = tracemalloc.get_traced_memory()[0]
            grads = ib.conv_backward(np.ones_like(y), ctx)
            peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert grads.input.shape == x.shape
    assert peak <= limit + 4 * arrays, (peak, limit, arrays)


def test_single_sample_above_the_limit_still_runs(rng):
    x, w = rng.standard_normal((2, 2, 6, 6)), rng.standard_normal((1, 2, 3, 3))
    with ib.workspace_limit(1):
        y = ib.conv(x, w)
    np.testing.assert_allclose(y, ib.conv(x, w), rtol=1e-14)


def test_limit_is_restored_and_thread_local():
    default = ib.get_workspace_limit()
    seen = []
    with ib.workspace_limit(1234):
        assert ib.get_workspace_limit() == 1234
        thread = threading.Thread(target=lambda: seen.append(ib.get_workspace_limit()))
        thread.start()
        thread.join()
    assert ib.get_workspace_limit() == default
    assert seen == [default]
    with pytest.raises(ValueError, match="workspace limit"):
        with ib.workspace_limit(0):
            pass
    with pytest.raises(TypeError, match="workspace limit"):
        ib.set_workspace_limit(1.5)


@given(st.integers(0, 50), st.integers(0, 10**4), st.integers(1, 10**5))
def test_chunk_plan_covers_batch_within_limit(batch, per_sample, limit):
    chunk = samples_per_chunk(batch, per_sample, limit)
    assert chunk >= 1
    assert chunk == 1 or chunk * per_sample <= limit
    parts = list(chunk_slices(batch, chunk))
    covered = [i for part in parts for i in range(part.start, part.stop)]
    assert covered == list(range(batch))
    assert all(part.stop - part.start <= chunk for part in parts)
