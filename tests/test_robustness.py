"""What an adversarial run of the public API showed, kept as tests (issue 13).

Thread safety (16 threads × 300 calls give the serial results, each thread's
workspace limit its own), no leak over thousands of varied calls, NaN/inf
confined to the outputs whose windows contain them (the wide layout computes
garbage positions it then drops: strides and paddings below exercise them),
masked arrays refused rather than silently unmasked, the library's messages
for odd arguments, ranks NumPy cannot hold refused up front.
"""

import threading
import tracemalloc

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import im2colbp as ib
from im2colbp import reference
from im2colbp.geometry import MAX_ARRAY_DIMS, MAX_RANK, NUMPY_PAD_MODES, parse_wrt
from im2colbp.gradcheck import numerical_gradient

# --------------------------------------------------------------------------
# a varied workload: every entry point, several geometries
# --------------------------------------------------------------------------
GEOMETRIES = [
    dict(x=(2, 3, 9), w=(4, 3, 3), kw=dict(stride=2, padding=1)),
    dict(x=(1, 4, 7, 6), w=(4, 2, 3, 2), kw=dict(groups=2, dilation=(2, 1))),
    dict(x=(3, 2, 5, 5), w=(2, 2, 3, 3), kw=dict(padding="same", padding_mode="reflect")),
    dict(x=(2, 6, 5), w=(6, 1, 2), kw=dict(groups=6, stride=3, padding=((2, 0),),
                                            padding_mode="circular")),
    dict(x=(2, 3, 4, 3, 3), w=(2, 3, 2, 2, 2), kw=dict(padding=1, padding_mode="replicate")),
    dict(x=(3, 8, 8), w=(5, 3, 1, 1), kw=dict(stride=2)),  # unbatched
]


def _workload(seed):
    """Deterministic list of (thunk) calls over every entry point and geometry."""
    rng = np.random.default_rng(seed)
    calls = []
    for g in GEOMETRIES:
        x = rng.standard_normal(g["x"])
        w = rng.standard_normal(g["w"])
        b = rng.standard_normal(g["w"][0])
        kw = g["kw"]
        y = ib.conv(x, w, b, **kw)
        dy = rng.standard_normal(y.shape)
        calls.append(lambda x=x, w=w, b=b, kw=kw: ib.conv(x, w, b, **kw))
        calls.append(lambda x=x, w=w, b=b, kw=kw, dy=dy:
                     tuple(ib.conv_backward(dy, ib.conv_forward(x, w, b, **kw)[1])))
        calls.append(lambda w=w, kw=kw, dy=dy, shape=x.shape:
                     ib.conv_grad_input(dy, w, shape, **kw))
        calls.append(lambda x=x, kw=kw, dy=dy, shape=w.shape:
                     ib.conv_grad_weight(dy, x, shape, **kw))
        if kw.get("padding") != "same":
            calls.append(lambda w=w, kw=kw, dy=dy, shape=x.shape:
                         ib.conv_transpose(dy, w, **kw, output_size=shape[-w.ndim + 2:]))
        if kw.get("padding_mode", "zeros") == "zeros" and kw.get("groups", 1) == 1:
            lowering = {k: v for k, v in kw.items() if k in ("stride", "padding", "dilation")}
            kernel = g["w"][2:]
            calls.append(lambda x=x, kernel=kernel, lowering=lowering:
                         ib.im2col(x, kernel, **lowering))
            cols = ib.im2col(x, kernel, **lowering)
            size = x.shape[-len(kernel):]
            calls.append(lambda cols=cols, size=size, kernel=kernel,
                         lowering=lowering: ib.col2im(cols, size, kernel, **lowering))
    return calls


def _flatten(result):
    if isinstance(result, tuple):
        return [r for r in result if r is not None]
    return [result]


THREADS, CALLS = 16, 300
LIMITS = [2**k for k in range(10, 10 + THREADS)]  # 1 KiB .. 32 MiB: different chunkings


def test_threads_give_the_serial_results_and_keep_their_own_workspace_limit():
    calls = _workload(0)
    plan = [[(t * 7 + i) % len(calls) for i in range(CALLS)] for t in range(THREADS)]
    # serial run, thread by thread, under that thread's limit
    expected = {}
    for t in range(THREADS):
        with ib.workspace_limit(LIMITS[t]):
            for index in set(plan[t]):
                expected[t, index] = _flatten(calls[index]())
    failures = []
    start = threading.Barrier(THREADS)

    def run(t):
        try:
            with ib.workspace_limit(LIMITS[t]):
                start.wait()
                for index in plan[t]:
                    got = _flatten(calls[index]())
                    if ib.get_workspace_limit() != LIMITS[t]:
                        failures.append(f"thread {t}: limit {ib.get_workspace_limit()}")
                        return
                    for a, e in zip(got, expected[t, index]):
                        if a.shape != e.shape or not np.array_equal(a, e, equal_nan=True):
                            failures.append(f"thread {t}: call {index} differs")
                            return
        except Exception as error:  # reported below, with the thread
            failures.append(f"thread {t}: {type(error).__name__}: {error}")

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]
    assert ib.get_workspace_limit() == ib.DEFAULT_WORKSPACE_LIMIT


def test_no_leak_over_thousands_of_varied_calls():
    """After one warm-up pass (per-thread scratch reaches its steady size), thousands
    more calls leave the traced memory where it was."""
    calls = _workload(1)
    for call in calls:
        call()
    tracemalloc.start()
    try:
        for call in calls:
            call()
        baseline, _ = tracemalloc.get_traced_memory()
        rounds = max(1, 2000 // len(calls))
        for _ in range(rounds):
            for call in calls:
                call()
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rounds * len(calls) >= 1900
    assert current - baseline < 256 * 1024, f"grew by {current - baseline} bytes"


# --------------------------------------------------------------------------
# NaN / inf stay in the outputs whose windows contain them
# --------------------------------------------------------------------------
def _windows_reading(mask, kw, kernel):
    """Which outputs read a True sample of ``mask`` (N, C, *I): pad the mask with the
    same mode (so wrapped / reflected copies of the sample count), then look at every
    window — an oracle built from np.pad and sliding_window_view only."""
    rank = len(kernel)
    stride = kw.get("stride", 1)
    dilation = kw.get("dilation", 1)
    stride = (stride,) * rank if isinstance(stride, int) else tuple(stride)
    dilation = (dilation,) * rank if isinstance(dilation, int) else tuple(dilation)
    padding = kw.get("padding", 0)
    pairs = [(padding, padding)] * rank if isinstance(padding, int) else list(padding)
    mode = NUMPY_PAD_MODES[kw.get("padding_mode", "zeros")]
    padded = np.pad(mask.any(axis=1), [(0, 0)] + pairs, mode=mode)  # (N, *padded)
    extent = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    windows = sliding_window_view(padded, extent, axis=tuple(range(1, rank + 1)))
    windows = windows[(slice(None),) + tuple(slice(None, None, s) for s in stride)
                      + tuple(slice(None, None, d) for d in dilation)]
    return windows.reshape(windows.shape[: 1 + rank] + (-1,)).any(axis=-1)  # (N, *O)


NAN_GEOMETRIES = [
    dict(stride=1),
    dict(stride=2, padding=1),
    dict(stride=3, padding=((2, 0), (1, 1))),
    dict(stride=2, dilation=2, padding=2),
    dict(stride=(2, 3), padding=((1, 2), (0, 1))),
    dict(stride=2, padding=1, padding_mode="circular"),
    dict(stride=(1, 2), padding=1, padding_mode="reflect"),
    dict(stride=3, padding=2, padding_mode="replicate"),
]


@pytest.mark.parametrize("kw", NAN_GEOMETRIES, ids=[str(k) for k in NAN_GEOMETRIES])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_input_reaches_only_the_windows_that_read_it(kw, bad):
    rng = np.random.default_rng(3)
    w = rng.uniform(0.5, 1.5, (3, 2, 3, 2))  # positive taps: an inf stays an inf
    x = rng.uniform(0.5, 1.5, (1, 2, 7, 8))
    for index in np.ndindex(*x.shape[1:]):
        poisoned = x.copy()
        poisoned[(0,) + index] = bad
        mask = ~np.isfinite(poisoned)
        y = ib.conv(poisoned, w, **kw)
        expected = _windows_reading(mask, kw, w.shape[2:])  # (N, *O)
        np.testing.assert_array_equal(~np.isfinite(y), np.broadcast_to(
            expected[:, None], y.shape), err_msg=f"x{index} = {bad}")
        # and the finite outputs are the ones of the clean input
        clean = ib.conv(x, w, **kw)
        np.testing.assert_allclose(y[np.isfinite(y)], clean[np.isfinite(y)], rtol=1e-12)


@pytest.mark.parametrize("kw", NAN_GEOMETRIES[:5], ids=[str(k) for k in NAN_GEOMETRIES[:5]])
def test_nonfinite_dy_reaches_only_the_samples_its_window_read(kw):
    """dx: a NaN in δ at output j lands exactly on the input samples window j reads
    (zero padding: the reference's own scatter tells which, via a 0/1 probe)."""
    rng = np.random.default_rng(4)
    w = rng.uniform(0.5, 1.5, (3, 2, 3, 2))
    x = rng.standard_normal((2, 2, 7, 8))
    y, ctx = ib.conv_forward(x, w, **kw)
    for index in np.ndindex(*y.shape[1:]):
        dy = np.ones_like(y)
        dy[(1,) + index] = np.nan
        grads = ib.conv_backward(dy, ctx, wrt=("input",))
        probe = np.zeros_like(y)
        probe[(1,) + index] = 1.0
        reads = reference.conv_grad_input(probe, np.ones_like(w), x.shape, **kw) != 0
        np.testing.assert_array_equal(~np.isfinite(grads.input), reads,
                                      err_msg=f"dy{index} = nan")


@pytest.mark.parametrize("kw", [dict(stride=2), dict(stride=3, padding=1),
                                dict(stride=(2, 1), dilation=2, output_padding=(1, 0))])
def test_nonfinite_input_of_conv_transpose_stays_in_its_scatter(kw):
    rng = np.random.default_rng(5)
    w = rng.uniform(0.5, 1.5, (2, 3, 3, 2))
    x = rng.uniform(0.5, 1.5, (1, 2, 4, 5))
    for index in np.ndindex(*x.shape[1:]):
        poisoned = x.copy()
        poisoned[(0,) + index] = np.nan
        y = ib.conv_transpose(poisoned, w, **kw)
        probe = np.zeros_like(x)
        probe[(0,) + index] = 1.0
        reached = reference.conv_transpose(probe, np.ones_like(w), **kw) != 0
        np.testing.assert_array_equal(~np.isfinite(y), reached, err_msg=f"x{index}")


# --------------------------------------------------------------------------
# masked arrays, odd arguments, ranks NumPy cannot hold (issue 13, items 4 and 5)
# --------------------------------------------------------------------------
MASKED = np.ma.masked_array([[[1.0, 1e30, 1.0]]], mask=[[[0, 1, 0]]])


@pytest.mark.parametrize("call", [
    lambda: ib.conv(MASKED, np.ones((1, 1, 3))),
    lambda: ib.conv(np.ones((1, 1, 3)), MASKED),
    lambda: ib.im2col(MASKED, 2),
    lambda: ib.col2im(MASKED, (3,), 1),
    lambda: ib.conv_transpose(MASKED, np.ones((1, 1, 3))),
    lambda: reference.conv(MASKED, np.ones((1, 1, 3))),
    lambda: ib.conv_operator(MASKED, (1, 1, 5)),
    lambda: numerical_gradient(lambda v: v, MASKED, np.ones((1, 1, 3))),
], ids=["conv-x", "conv-weight", "im2col", "col2im", "conv_transpose", "reference",
        "conv_operator", "numerical_gradient"])
def test_masked_arrays_are_refused(call):
    """conv(masked [1, --(1e30), 1], ones) returned 1e30: the mask was dropped."""
    with pytest.raises(TypeError, match="masked"):
        call()


def test_masked_array_without_masked_elements_is_its_data():
    x = np.ma.masked_array([[[1.0, 2.0, 3.0]]], mask=False)
    np.testing.assert_array_equal(ib.conv(x, np.ones((1, 1, 2))), [[[3.0, 5.0]]])
    assert type(ib.conv(x, np.ones((1, 1, 2)))) is np.ndarray


def test_parse_wrt_gives_the_library_messages():
    assert parse_wrt(np.array(["input", "bias"])) == (True, False, True)
    with pytest.raises(ValueError, match=r"wrt entries must be in \('input', 'weight', "
                                         r"'bias'\), got array"):
        parse_wrt([np.array(["input", "bias"])])
    with pytest.raises(ValueError, match="wrt entries"):
        parse_wrt([0])
    with pytest.raises(TypeError, match="wrt must be"):
        parse_wrt(5)
    assert parse_wrt(np.array("weight")) == (False, True, False)


def test_wrt_with_an_array_entry_through_conv_backward():
    y, ctx = ib.conv_forward(np.ones((1, 1, 5)), np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match="wrt entries must be in"):
        ib.conv_backward(np.ones_like(y), ctx, wrt=[np.array(["input", "bias"])])


def test_rank_limit_comes_from_numpy():
    assert MAX_ARRAY_DIMS == (64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32)
    assert 2 + 2 * MAX_RANK <= MAX_ARRAY_DIMS < 2 + 2 * (MAX_RANK + 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_ranks_beyond_numpy_are_refused_up_front(stride):
    """Rank 32 with stride 2 gave NumPy's 'maximum supported dimension ... found 66'."""
    rank = MAX_RANK + 1
    x, w = np.ones((1, 1) + (1,) * rank), np.ones((1, 1) + (1,) * rank)
    for call in (lambda: ib.conv(x, w, stride=stride),
                 lambda: ib.conv_transpose(x, w, stride=stride),
                 lambda: ib.im2col(x, (1,) * rank, stride=stride),
                 lambda: ib.col2im(np.ones((1, 1, 1)), (1,) * rank, 1, stride=stride),
                 lambda: reference.conv(x, w, stride=stride)):
        with pytest.raises(ValueError, match=f"spatial rank r = {rank} is too large: at most "
                                             f"{MAX_RANK}"):
            call()


@pytest.mark.parametrize("stride", [1, 2])
def test_the_largest_rank_runs(stride):
    rank = MAX_RANK
    x, w = np.full((1, 1) + (1,) * rank, 2.0), np.full((1, 1) + (1,) * rank, 3.0)
    y, ctx = ib.conv_forward(x, w, stride=stride)
    assert y.shape == (1, 1) + (1,) * rank and y.ravel()[0] == 6.0
    grads = ib.conv_backward(np.ones_like(y), ctx)
    assert grads.input.ravel()[0] == 3.0 and grads.weight.ravel()[0] == 2.0
    assert ib.conv_transpose(x, w, stride=stride).shape[:2] == (1, 1)
    assert ib.im2col(x, (1,) * rank, stride=stride).shape == (1, 1, 1)
