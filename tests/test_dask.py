"""im2colbp.dask: lazy convolution and gradients on chunked Dask arrays equal the in-memory core.

Oracles: the in-memory library (``ib.conv`` and friends, themselves proven against
``im2colbp.reference``), and for the padded-border fold-back the adjoint identity
``<conv(x), δ> = <x, conv_grad_input(δ)>``, independent of both. Random geometries
and random chunkings (batch and spatial, uneven, size 1, one chunk) run on the
synchronous scheduler and, with fewer examples, on a ``dask.distributed``
``LocalCluster`` of two worker processes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import PADDING_MODES, conv_cases, conv_transpose_cases

da = pytest.importorskip("dask.array")
import dask  # noqa: E402

import im2colbp as ib  # noqa: E402
from im2colbp import reference  # noqa: E402
from im2colbp.engine import record_passes  # noqa: E402

ibd = pytest.importorskip("im2colbp.dask")


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def assert_equal_1e12(actual, expected):
    """float64 agreement to 1e-12, relative to the largest entry (sums in another order
    cancel differently, so a zero entry is compared on the array's scale)."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12 * scale)


@st.composite
def partitions(draw, size):
    """Chunk sizes of one axis: one chunk, all ones, or a random uneven cut."""
    if size <= 1:
        return (size,)
    form = draw(st.sampled_from(["one", "ones", "random", "random"]))
    if form == "one":
        return (size,)
    if form == "ones":
        return (1,) * size
    cuts = sorted(draw(st.sets(st.integers(1, size - 1), min_size=1, max_size=size - 1)))
    points = [0, *cuts, size]
    return tuple(b - a for a, b in zip(points, points[1:]))


def chunked(draw, array, batched):
    """``array`` as a Dask array chunked randomly along batch and spatial axes (the channel
    axis sometimes cut too: it must be rechunked, not mis-computed)."""
    chunks = []
    for axis, size in enumerate(array.shape):
        if axis == (1 if batched else 0):
            chunks.append(draw(partitions(size)) if draw(st.integers(0, 4)) == 0 else (size,))
        else:
            chunks.append(draw(partitions(size)))
    return da.from_array(array, chunks=tuple(chunks))


def _batched(case):
    return len(case.input_shape) == case.rank + 2


def _conv_pairs(draw, case, seed):
    """(lazy, expected) pairs for the forward pass and every gradient of one case."""
    x, w, b = case.arrays(seed)
    kwargs = case.call_kwargs
    y = ib.conv(x, w, b, **kwargs)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
    xd = chunked(draw, x, _batched(case))
    dyd = chunked(draw, dy, _batched(case))
    pairs = [
        (ibd.conv(xd, w, b, **kwargs), y),
        (ibd.conv_grad_input(dyd, w, x.shape, **kwargs), ib.conv_grad_input(dy, w, x.shape,
                                                                            **kwargs)),
        (ibd.conv_grad_weight(dyd, xd, w.shape, **kwargs),
         ib.conv_grad_weight(dy, x, w.shape, **kwargs)),
    ]
    if _batched(case):
        pairs.append((ibd.conv_grad_bias(dyd), ib.conv_grad_bias(dy)))
    return pairs


def _transpose_pairs(draw, case, seed):
    x, w, b = case.arrays(seed)
    kwargs = case.call_kwargs
    return [(ibd.conv_transpose(chunked(draw, x, _batched(case)), w, b, **kwargs),
             ib.conv_transpose(x, w, b, **kwargs))]


CONV = conv_cases(ranks=(1, 2, 3), allow_empty=False, max_batch=3)
TRANSPOSE = conv_transpose_cases(ranks=(1, 2, 3), modes=PADDING_MODES, max_batch=3)


# --------------------------------------------------------------------------
# random geometries and chunkings, synchronous scheduler
# --------------------------------------------------------------------------
@settings(max_examples=60)
@given(case=CONV, data=st.data())
def test_conv_and_every_gradient_equal_the_core(case, data):
    for lazy, expected in _conv_pairs(data.draw, case, seed=0):
        assert_equal_1e12(lazy.compute(scheduler="sync"), expected)


@settings(max_examples=40)
@given(case=TRANSPOSE, data=st.data())
def test_conv_transpose_equals_the_core(case, data):
    for lazy, expected in _transpose_pairs(data.draw, case, seed=0):
        assert_equal_1e12(lazy.compute(scheduler="sync"), expected)


# --------------------------------------------------------------------------
# the same on a real cluster: two worker processes
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", memory_limit="1GiB") as cluster, \
            distributed.Client(cluster) as connected:
        yield connected


@settings(max_examples=6)
@given(cases=st.lists(CONV, min_size=2, max_size=2), transposed=TRANSPOSE, data=st.data())
def test_on_a_local_cluster_of_worker_processes(client, cases, transposed, data):
    pairs = [pair for seed, case in enumerate(cases)
             for pair in _conv_pairs(data.draw, case, seed)]
    pairs += _transpose_pairs(data.draw, transposed, seed=7)
    results = client.compute([lazy for lazy, _ in pairs], sync=True)
    assert len({worker for worker in client.scheduler_info()["workers"]}) == 2
    for result, (_, expected) in zip(results, pairs):
        assert_equal_1e12(result, expected)


# --------------------------------------------------------------------------
# padding modes at the global border, and their fold-back adjoint
# --------------------------------------------------------------------------
@pytest.mark.parametrize("mode, padding", [
    ("circular", ((7, 5),)),      # wraps more than three times round an input of 2
    ("circular", ((0, 9),)),
    ("reflect", ((1, 1),)),       # the largest reflect padding an input of 2 allows
    ("replicate", ((6, 3),)),
    ("zeros", ((4, 0),)),
])
def test_padding_larger_than_the_chunks_and_its_adjoint(mode, padding):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 2))
    w = rng.standard_normal((3, 2, 3))
    xd = da.from_array(x, chunks=(1, 2, 1))
    y = ibd.conv(xd, w, padding=padding, padding_mode=mode).compute(scheduler="sync")
    assert_equal_1e12(y, ib.conv(x, w, padding=padding, padding_mode=mode))
    dy = rng.standard_normal(y.shape)
    dx = ibd.conv_grad_input(da.from_array(dy, chunks=1), w, x.shape, padding=padding,
                             padding_mode=mode).compute(scheduler="sync")
    # adjoint identity: the fold-back is the transpose of the padding, nothing else
    assert np.isclose(np.vdot(y, dy), np.vdot(x, dx), rtol=1e-12, atol=0)
    assert_equal_1e12(dx, ib.conv_grad_input(dy, w, x.shape, padding=padding,
                                             padding_mode=mode))


@pytest.mark.parametrize("mode", PADDING_MODES)
def test_three_d_volume_in_many_chunks_every_mode(mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 7, 6, 5))
    w = rng.standard_normal((2, 1, 3, 2, 3))
    kwargs = dict(stride=(2, 1, 3), padding=((2, 1), 1, (0, 2)), dilation=(1, 2, 1),
                  groups=2, padding_mode=mode)
    xd = da.from_array(x, chunks=(1, 2, (3, 1, 3), (1, 5), 2))
    y = ibd.conv(xd, w, **kwargs)
    assert_equal_1e12(y.compute(scheduler="sync"), ib.conv(x, w, **kwargs))
    dy = rng.standard_normal(y.shape)
    dyd = da.from_array(dy, chunks=(2, 2, 1, 2, 1))
    dx = ibd.conv_grad_input(dyd, w, x.shape, **kwargs).compute(scheduler="sync")
    assert np.isclose(np.vdot(y.compute(scheduler="sync"), dy), np.vdot(x, dx), rtol=1e-12, atol=0)
    assert_equal_1e12(dx, ib.conv_grad_input(dy, w, x.shape, **kwargs))
    assert_equal_1e12(ibd.conv_grad_weight(dyd, xd, w.shape, **kwargs).compute(scheduler="sync"),
                      ib.conv_grad_weight(dy, x, w.shape, **kwargs))


# --------------------------------------------------------------------------
# chunks, halos, reductions
# --------------------------------------------------------------------------
def test_chunks_smaller_than_the_halo_are_assembled_not_wrong():
    x = np.random.default_rng(0).standard_normal((1, 1, 30))
    w = np.ones((1, 1, 5))
    y = ibd.conv(da.from_array(x, chunks=1), w, dilation=3, padding="same")  # halo 12 >> 1
    assert_equal_1e12(y.compute(scheduler="sync"), ib.conv(x, w, dilation=3, padding="same"))


def test_blocks_that_read_only_padding():
    x = np.arange(1.0, 4.0)[None, None]                   # (1, 1, 3)
    w = np.full((1, 1, 1), 2.0)
    y = ibd.conv(da.from_array(x, chunks=1), w, padding=5)  # first 5 outputs: all padding
    assert y.chunks[-1][0] == 5
    assert_equal_1e12(y.compute(scheduler="sync"), ib.conv(x, w, padding=5))
    dy = da.from_array(np.arange(13.0)[None, None], chunks=((1,), (1,), (5, 1, 1, 6)))
    assert_equal_1e12(ibd.conv_grad_weight(dy, da.from_array(x, chunks=1), w.shape,
                                           padding=5).compute(scheduler="sync"),
                      ib.conv_grad_weight(dy.compute(), x, w.shape, padding=5))


def test_output_chunks_follow_the_input_chunks():
    x = da.zeros((4, 3, 12, 9), chunks=(2, 3, (5, 7), (3, 3, 3)))
    w = np.zeros((2, 3, 3, 3))
    assert ibd.conv(x, w, padding="same").chunks == ((2, 2), (2,), (5, 7), (3, 3, 3))
    # stride 2: output o goes with the chunk holding its window centre 2·o (padded 2·o + 1)
    y = ibd.conv(x, w, stride=2, padding=1)
    assert y.chunks == ((2, 2), (2,), (3, 3), (2, 1, 2))
    # the input gradient is cut at o·S + h - P_before: x's chunks again at stride 1 ...
    same = ibd.conv(x, w, padding="same")
    dx = ibd.conv_grad_input(da.zeros(same.shape, chunks=same.chunks), w, x.shape,
                             padding="same")
    assert dx.chunks == ((2, 2), (3,), (5, 7), (3, 3, 3))
    # ... and the nearest stride multiples otherwise (3·2, then 2·2 and 3·2)
    dx = ibd.conv_grad_input(da.zeros(y.shape, chunks=y.chunks), w, x.shape, stride=2,
                             padding=1)
    assert dx.chunks == ((2, 2), (3,), (6, 6), (4, 2, 3))


def test_weight_and_bias_gradients_are_tree_reductions():
    """No task of the graph reads more than SPLIT_EVERY partial sums: nothing gathers
    δ or x (or every partial) on one worker."""
    dy = da.ones((16, 2, 40), chunks=(1, 2, 4))           # 160 blocks
    x = da.ones((16, 3, 42), chunks=(1, 3, 6))
    for result in (ibd.conv_grad_weight(dy, x, (2, 3, 3)), ibd.conv_grad_bias(dy)):
        graph = dict(result.__dask_graph__())
        fan_in = max(len(dask.core.get_dependencies(graph, key)) for key in graph)
        assert fan_in <= max(ibd.SPLIT_EVERY, 3), fan_in
        assert len(graph) > 160  # one partial per block at least
    np.testing.assert_array_equal(ibd.conv_grad_bias(dy).compute(scheduler="sync"),
                                  np.full(2, 640.0))


def test_results_are_lazy():
    def explode(block):
        raise RuntimeError("computed too early")

    x = da.ones((2, 1, 8), chunks=(1, 1, 4)).map_blocks(explode, dtype=float)
    w = np.ones((1, 1, 3))
    y = ibd.conv(x, w)  # builds the graph only
    dx = ibd.conv_grad_input(x[:, :, :6], w, (2, 1, 8))
    dw = ibd.conv_grad_weight(x[:, :, :6], x, (1, 1, 3))
    for lazy in (y, dx, dw):
        assert isinstance(lazy, da.Array)
        with pytest.raises(RuntimeError, match="too early"):
            lazy.compute(scheduler="sync")


def test_every_block_goes_through_the_core_under_the_graph_time_workspace_limit(monkeypatch):
    seen = []
    core_conv = ib.conv

    def spy(x, w, b=None, **kwargs):
        seen.append((ib.get_workspace_limit(), kwargs["padding"], x.shape))
        return core_conv(x, w, b, **kwargs)

    x = np.random.default_rng(0).standard_normal((2, 1, 11))
    w = np.ones((1, 1, 3))
    with ib.workspace_limit(4096):
        y = ibd.conv(da.from_array(x, chunks=(1, 1, 4)), w, stride=2, padding=1)
    monkeypatch.setattr(ib, "conv", spy)
    result = y.compute(scheduler="sync")
    assert_equal_1e12(result, core_conv(x, w, stride=2, padding=1))
    assert len(seen) == 2 * 3  # one call per block
    assert {limit for limit, _, _ in seen} == {4096}
    assert {padding for _, padding, _ in seen} == {0}   # padded once, globally
    assert max(shape[-1] for _, _, shape in seen) <= 4 + 3  # a chunk and its halo


def test_dtypes_unbatched_and_a_dask_weight():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9)).astype(np.float32)  # unbatched (C_in, I)
    w = rng.standard_normal((2, 3, 3)).astype(np.float32)
    y = ibd.conv(da.from_array(x, chunks=(3, 4)), da.from_array(w, chunks=1), padding=1)
    assert y.dtype == np.float32 and y.shape == (2, 9)
    np.testing.assert_allclose(y.compute(scheduler="sync"), ib.conv(x, w, padding=1),
                               rtol=1e-5, atol=1e-5)
    ints = ibd.conv(da.ones((1, 1, 5), dtype=np.int32, chunks=2), np.ones((1, 1, 2), int))
    assert ints.dtype == np.float64
    np.testing.assert_array_equal(ints.compute(scheduler="sync"), np.full((1, 1, 4), 2.0))


def test_conv_transpose_with_output_size_and_bias():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 5, 3))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(6)
    kwargs = dict(stride=(3, 2), padding=(1, 0), groups=2, output_size=(14, 7),
                  padding_mode="circular")
    y = ibd.conv_transpose(da.from_array(x, chunks=(1, 4, 2, 1)), w, b, **kwargs)
    assert y.shape == (2, 6, 14, 7)
    assert_equal_1e12(y.compute(scheduler="sync"), ib.conv_transpose(x, w, b, **kwargs))


# --------------------------------------------------------------------------
# errors name the argument
# --------------------------------------------------------------------------
def test_errors_name_the_argument():
    x = da.ones((1, 2, 6), chunks=3)
    w = np.ones((1, 2, 3))
    with pytest.raises(ValueError, match="dy must have shape"):
        ibd.conv_grad_input(da.ones((1, 1, 5)), w, (1, 2, 6))
    with pytest.raises(ValueError, match="dy must have shape"):
        ibd.conv_grad_weight(da.ones((1, 1, 3)), x, (1, 2, 3))
    with pytest.raises(ValueError, match="input has C_in=2"):
        ibd.conv(x, np.ones((1, 3, 3)))
    with pytest.raises(TypeError, match="x must be real"):
        ibd.conv(x.astype(complex), w)
    with pytest.raises(ValueError, match="dy must be batched"):
        ibd.conv_grad_bias(da.ones((2, 3)))
    with pytest.raises(ValueError, match="known chunk sizes"):
        ibd.conv(x[x[:, 0, 0] > 0], w)
    with pytest.raises(ValueError, match="reflect padding"):
        ibd.conv(x, w, padding=6, padding_mode="reflect")


# --------------------------------------------------------------------------
# the examples
# --------------------------------------------------------------------------
def _script(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_parallel_training_step_equals_the_single_process_step():
    pytest.importorskip("sklearn")
    pytest.importorskip("distributed")
    rows = _script("dask_train_digits").compare(steps=2, batch=40, shards=3, log=None)
    for row in rows:
        assert abs(row["loss_parallel"] - row["loss_single"]) <= 1e-12 * row["loss_single"]
        assert row["grad_gap"] < 1e-12 and row["param_gap"] < 1e-12, row


def test_out_of_core_volume_example_small(tmp_path):
    pytest.importorskip("distributed")
    result = _script("dask_volume").run(length=30, side=24, chunk=(8, 8, 16), workers=1,
                                        memory_limit="1GiB",
                                        directory=str(tmp_path), log=None)
    assert abs(result["xdx"] - result["yy"]) <= 1e-5 * result["yy"]
    assert abs(result["wdw"] - result["yy"]) <= 1e-5 * result["yy"]
    assert result["sub_error"] < 1e-6
    assert len(result["workers"]) == 1 and result["workers"][0]["peak"] > 0


def test_the_dask_functions_take_the_numpy_api_positional_order_and_method():
    """The same signatures as the NumPy API: stride, padding, dilation, groups positionally
    (conv_transpose: stride, padding, output_padding, groups, dilation), method= by keyword."""
    import inspect

    for name in ("conv", "conv_grad_input", "conv_grad_weight", "conv_transpose"):
        ours = inspect.signature(getattr(ibd, name)).parameters
        numpy_api = inspect.signature(getattr(ib, name)).parameters
        assert list(ours) == list(numpy_api), name
        for parameter in ours:
            assert ours[parameter].kind == numpy_api[parameter].kind, (name, parameter)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((4, 2, 3, 3))
    xd = da.from_array(x, chunks=(1, 4, 4, 3))
    y = ibd.conv(xd, w, None, 1, 1, 1, 2)  # stride, padding, dilation, groups
    assert_equal_1e12(y.compute(), ib.conv(x, w, None, 1, 1, 1, 2))
    yt = ibd.conv_transpose(xd, w, None, 2, 1, 1, 2)  # stride, padding, output_padding, groups
    assert_equal_1e12(yt.compute(), ib.conv_transpose(x, w, None, 2, 1, 1, 2))


@pytest.mark.parametrize("method", ["im2col", "winograd", "direct"])
def test_method_reaches_every_task(method):
    rng = np.random.default_rng(1)
    groups = 4 if method == "direct" else 1
    x = rng.standard_normal((2, 4, 10, 9))
    w = rng.standard_normal((4, 4 // groups, 3, 3))
    dy = rng.standard_normal((2, 4, 10, 9))
    xd = da.from_array(x, chunks=(1, 4, 5, 4))
    dyd = da.from_array(dy, chunks=(1, 4, 5, 4))
    kw = dict(padding=1, groups=groups)
    with record_passes() as passes:
        y = ibd.conv(xd, w, method=method, **kw).compute(scheduler="synchronous")
        dx = ibd.conv_grad_input(dyd, w, x.shape, method=method, **kw).compute(
            scheduler="synchronous")
        dw = ibd.conv_grad_weight(dyd, xd, w.shape, method=method, **kw).compute(
            scheduler="synchronous")
    routes = {route for _, route, _, _ in passes}
    expected_route = {"im2col": {"im2col", "col2im", "transposition"}, "winograd": {"winograd"},
                      "direct": {"direct"}}[method]
    assert routes and routes <= expected_route, routes
    tolerance = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y, reference.conv(x, w, **kw), **tolerance)
    np.testing.assert_allclose(dx, reference.conv_grad_input(dy, w, x.shape, **kw), **tolerance)
    np.testing.assert_allclose(dw, reference.conv_grad_weight(dy, x, w.shape, **kw), **tolerance)


def test_a_method_that_cannot_serve_is_refused_before_any_task():
    xd = da.ones((1, 2, 8, 8), chunks=(1, 2, 4, 4))
    with pytest.raises(ValueError, match="method='winograd' cannot serve"):
        ibd.conv(xd, np.ones((2, 2, 5, 5)), method="winograd")
    with pytest.raises(ValueError, match="method must be one of"):
        ibd.conv_grad_weight(xd, xd, (2, 2, 1, 1), method="fast")


def test_graphs_of_different_methods_or_limits_have_different_names():
    """Two methods (or workspace limits) in one graph must not share task keys: one's
    results would silently stand in for the other's."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    xd = da.from_array(x, chunks=(1, 3, 6, 6))
    dyd = da.ones((2, 4, 12, 12), chunks=(1, 4, 6, 6), dtype=np.float32)
    lowered = ibd.conv(xd, w, None, 1, 1, method="im2col")
    winograd = ibd.conv(xd, w, None, 1, 1, method="winograd")
    assert lowered.name != winograd.name
    with ib.workspace_limit(2**16):
        small = ibd.conv(xd, w, None, 1, 1, method="im2col")
    assert small.name != lowered.name
    for function, args in ((ibd.conv_grad_input, (dyd, w, x.shape)),
                           (ibd.conv_grad_weight, (dyd, xd, w.shape)),
                           (ibd.conv_transpose, (dyd, np.ones((4, 3, 3, 3), np.float32), None))):
        names = {function(*args, 1, 1, method=m).name for m in ("im2col", "winograd")}
        assert len(names) == 2, function.__name__
    both = (lowered - winograd).compute()
    np.testing.assert_allclose(both, (lowered.compute() - winograd.compute()), atol=0)
    assert np.abs(both).max() > 0  # float32 rounding differs: the graph computed both
