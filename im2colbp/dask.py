"""Convolution and every gradient on Dask arrays (the optional ``dask`` extra).

``pip install "im2colbp[dask]"`` (dask and distributed). The functions below
take the core's names and arguments and return *lazy* Dask arrays: nothing
runs until ``.compute()`` (on threads, processes, or a ``dask.distributed``
cluster). Inputs are chunked along the batch and spatial axes in any way; the
channel axis is read as one chunk (a chunked channel axis is merged inside each
task, since every output channel needs every input channel of its group).

How a block is computed (the docs page "Beyond one machine" draws it):

- **Padding once, at the global border.** A block's read range, in padded
  coordinates, is mapped through the padding mode (position p copies input
  sample ``np.pad(arange(I), ..., mode)[p]``, from whichever chunk holds it);
  padding never happens at chunk borders. The input gradient is the adjoint:
  the gradient of the padded input is cropped, and its border part *folds
  back* onto the samples the border was copied from (reflect, replicate,
  circular — circular may wrap several times).
- **Halos aligned with the stride.** An output chunk ``[o0, o1)`` reads the
  padded input ``[o0·S, (o1 - 1)·S + D·(K - 1) + 1)``, i.e. the unpadded input
  from ``o0·S - P_before``. Output chunks follow the input's: output o goes
  with the input chunk that holds its window's centre.
  A chunk smaller than the halo is not an error: the read range then spans
  several chunks and is assembled from them — in one task per block, from the
  slices of the chunks it touches.
- **Every block by the core.** Each task calls ``im2colbp.conv``,
  ``conv_grad_input`` or ``conv_grad_weight`` on its block with
  ``padding=0``, under the workspace limit in force when the graph was built
  (``with ib.workspace_limit(n): y = ibd.conv(...)``), so the limit bounds
  every task on every worker.
- **Weight and bias gradients are tree reductions**: one partial sum per
  block, added pairwise-ish (``split_every``) — no worker ever holds all of δ
  or x.

The weight (and bias) is a NumPy array or a small Dask array; it travels to
each worker once, as one key of the graph.
"""

from __future__ import annotations

import functools
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "im2colbp.dask needs Dask: pip install 'im2colbp[dask]' "
        "(or pip install 'dask[array]' distributed)"
    ) from error

import im2colbp as ib
from im2colbp.geometry import (
    NUMPY_PAD_MODES,
    ConvGeometry,
    as_float_array,
    check_array_shape,
    conv_geometry,
    conv_transpose_geometry,
)
from im2colbp.plan import _check_method as _method_name
from im2colbp.plan import _check_serves

__all__ = [
    "conv",
    "conv_transpose",
    "conv_grad_input",
    "conv_grad_weight",
    "conv_grad_bias",
]

#: how many partial sums one task of the weight/bias tree reduction adds up
SPLIT_EVERY = 8

Ranges = List[Tuple[int, int]]


# --------------------------------------------------------------------------
# arrays and dtypes
# --------------------------------------------------------------------------
def _check_method(method: Any, geometry: ConvGeometry) -> None:
    """Refuse, before any task exists, a method the engine cannot run on ``geometry``."""
    _check_serves(_method_name(method), geometry)


def _as_dask(value: Any, name: str) -> da.Array:
    """A Dask array (NumPy and array-likes become one chunk); known chunk sizes only."""
    array = value if isinstance(value, da.Array) else da.asarray(value)
    if any(math.isnan(size) for size in array.shape):
        raise ValueError(
            f"{name} must have known chunk sizes, got shape {array.shape}; "
            f"call {name}.compute_chunk_sizes() first"
        )
    return array


def _float_dtype(array: Any, name: str) -> np.dtype:
    """The dtype the core computes ``array`` in (its rule, applied to an empty array)."""
    return as_float_array(np.empty((0,), dtype=array.dtype), name).dtype


def _small(value: Any, name: str, dtype: np.dtype) -> da.Array:
    """Weight or bias as a one-chunk Dask array of ``dtype`` (one key in the graph)."""
    if isinstance(value, da.Array):
        _float_dtype(value, name)
        array = _as_dask(value, name)
    else:
        array = da.from_array(as_float_array(value, name))
    return array.astype(dtype).rechunk(array.shape)


def _one_key(array: Optional[da.Array]) -> Any:
    return None if array is None else (array.name,) + (0,) * array.ndim


def _batched(x: da.Array, geometry: ConvGeometry) -> da.Array:
    return x if geometry.batched else x[None]


def _unbatched(y: da.Array, geometry: ConvGeometry) -> da.Array:
    return y if geometry.batched else y[0]


# --------------------------------------------------------------------------
# per-axis chunk arithmetic
# --------------------------------------------------------------------------
def _starts(chunks: Sequence[int]) -> List[int]:
    """Offsets at which the chunks of one axis begin."""
    return [int(s) for s in np.cumsum((0,) + tuple(chunks[:-1]))]


def _to_ranges(starts: Sequence[int], end: int) -> Ranges:
    """Sorted, distinct starts in ``[0, end)`` (0 included) -> ``[start, next)`` ranges."""
    points = sorted({0, *(s for s in starts if 0 < s < end)})
    return list(zip(points, points[1:] + [end]))


def _lengths(ranges: Ranges) -> Tuple[int, ...]:
    return tuple(stop - start for start, stop in ranges)


def _output_ranges(in_chunks: Sequence[int], before: int, stride: int, extent: int,
                   out: int) -> Ranges:
    """Output chunks that follow the input's: output o belongs to the input chunk that
    holds its window's centre ``o·S + h - P_before``, ``h = (D·(K-1)) // 2``, so a
    boundary at input position ``c`` becomes one at ``ceil((c + P_before - h) / S)``
    (with ``'same'`` padding and stride 1, y is chunked exactly like x)."""
    centre = (extent - 1) // 2
    return _to_ranges([-(-(c + before - centre) // stride) for c in _starts(in_chunks)], out)


def _read_ranges(out_ranges: Ranges, stride: int, extent: int) -> Ranges:
    """Padded-input range each output chunk reads: ``[o0·S, (o1-1)·S + D·(K-1) + 1)``."""
    return [(o0 * stride, (o1 - 1) * stride + extent) for o0, o1 in out_ranges]


# --------------------------------------------------------------------------
# reading blocks: halo and global padding in one task per block
# --------------------------------------------------------------------------
def _source_index(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Which input sample each padded position copies (``np.pad`` of the positions);
    -1 where the padding is zeros."""
    positions = np.arange(size)
    if mode == "zeros":
        return np.pad(positions, (before, after), constant_values=-1)
    return np.pad(positions, (before, after), mode=NUMPY_PAD_MODES[mode])


def _identity(chunks: Sequence[int]) -> List[np.ndarray]:
    """Per block, the positions of one chunk: the axis is read as it is chunked."""
    starts = _starts(chunks)
    return [np.arange(start, start + size) for start, size in zip(starts, chunks)]


def _whole(size: int) -> List[np.ndarray]:
    """One block with every position (the channel axis: one chunk)."""
    return [np.arange(size)]


class _Reads:
    """Blocks made of positions of ``array``: ``maps[axis][i]`` lists, for block i along
    ``axis``, the source position of each of its entries (-1: a zero of the padding).

    A block is assembled in *one* task from the slices of the chunks it touches:
    halos (ranges reaching into the neighbours, however small they are), the global
    padding (reflect, replicate, circular: copies of border samples; zeros), and the
    merging of the channel chunks all happen there.
    """

    def __init__(self, array: da.Array, maps: Sequence[List[np.ndarray]]) -> None:
        self.array = array
        self.maps = maps
        self.chunks = tuple(tuple(len(m) for m in axis_maps) for axis_maps in maps)
        self.numblocks = tuple(len(axis_maps) for axis_maps in maps)
        self._ends = [np.cumsum(c) for c in array.chunks]

    def expression(self, block: Tuple[int, ...]) -> tuple:
        """A task expression computing ``block`` (nested inside the consumer's task)."""
        shape = tuple(len(self.maps[axis][i]) for axis, i in enumerate(block))
        if 0 in shape:  # an empty batch (or no channels): nothing to read
            return (np.zeros, shape, self.array.dtype)
        per_axis = []  # (chunk ids, their slices, index into the joined slices, zero?)
        for axis, i in enumerate(block):
            positions = self.maps[axis][i]
            ends = self._ends[axis]
            valid = positions >= 0
            if not valid.any():  # the block lies in the zero padding
                return (np.zeros, shape, self.array.dtype)
            owner = np.searchsorted(ends, positions[valid], side="right")
            ids, slices, offsets = [], [], {}
            joined = 0
            for chunk in np.unique(owner):
                start = int(ends[chunk - 1]) if chunk else 0
                local = positions[valid][owner == chunk] - start
                low, high = int(local.min()), int(local.max()) + 1
                ids.append(int(chunk))
                slices.append(slice(low, high))
                offsets[int(chunk)] = joined - low - start
                joined += high - low
            index = np.full(len(positions), joined)  # the appended zero, if any
            index[valid] = positions[valid] + np.array([offsets[c] for c in owner], dtype=int)
            per_axis.append((ids, slices, index, not valid.all()))
        nested = self._nest(per_axis, ())
        indices = tuple(index for _, _, index, _ in per_axis)
        zeros = tuple(zero for _, _, _, zero in per_axis)
        return (_assemble, nested, indices, zeros)

    def _nest(self, per_axis, prefix):
        """Nested lists (one level per axis) of ``(chunk key, slice)`` reads, for np.block."""
        axis = len(prefix)
        if axis == len(per_axis):
            key = (self.array.name,) + tuple(chunk for chunk, _ in prefix)
            return (_slice_of, key, tuple(part for _, part in prefix))
        ids, slices = per_axis[axis][0], per_axis[axis][1]
        return [self._nest(per_axis, prefix + ((chunk, part),))
                for chunk, part in zip(ids, slices)]


def _slice_of(chunk: np.ndarray, index: Tuple[slice, ...]) -> np.ndarray:
    return chunk[index]


def _assemble(nested: list, indices: Tuple[np.ndarray, ...],
              zeros: Tuple[bool, ...]) -> np.ndarray:
    """Join the chunk slices, append a zero where padding needs one, pick the positions."""
    joined = np.block(nested) if isinstance(nested, list) else nested
    if any(zeros):
        joined = np.pad(joined, [(0, int(z)) for z in zeros])
    return joined[np.ix_(*indices)]


def _padded_reads(geometry: ConvGeometry, out_ranges: Sequence[Ranges]) -> List[List[np.ndarray]]:
    """Per spatial axis and output block, the input positions its window reads:
    padded ``[o0·S, (o1-1)·S + D·(K-1) + 1)``, through the padding mode."""
    window = geometry.window
    maps = []
    for size, (before, after), s, e, ranges in zip(
            window.in_size, window.padding, window.stride, _extents(geometry), out_ranges):
        source = _source_index(size, before, after, window.padding_mode)
        maps.append([source[start:stop] for start, stop in _read_ranges(ranges, s, e)])
    return maps


def _fold(dxp: da.Array, geometry: ConvGeometry) -> da.Array:
    """Adjoint of reading through the padding (:func:`_padded_reads`): crop the padded
    gradient, add its border onto the samples it copies (a one-hot matrix per border)."""
    window = geometry.window
    for axis, (size, (before, after)) in enumerate(zip(window.in_size, window.padding), 2):
        if not (before or after):
            continue
        index = (slice(None),) * axis
        dx = dxp[index + (slice(before, before + size),)]
        if window.padding_mode != "zeros":
            source = _source_index(size, before, after, window.padding_mode)
            borders = [(0, before), (before + size, before + size + after)]
            for start, stop in borders:
                if start == stop:
                    continue
                targets = source[start:stop]
                low, high = int(targets.min()), int(targets.max()) + 1
                scatter = np.zeros((stop - start, high - low), dtype=dxp.dtype)
                scatter[np.arange(stop - start), targets - low] = 1  # (border, sources)
                folded = da.moveaxis(
                    da.tensordot(dxp[index + (slice(start, stop),)], scatter,
                                 axes=([axis], [0])), -1, axis)
                parts = [dx[index + (slice(0, low),)]] if low else []
                parts.append(dx[index + (slice(low, high),)] + folded)
                if high < size:
                    parts.append(dx[index + (slice(high, size),)])
                dx = da.concatenate(parts, axis=axis) if len(parts) > 1 else parts[0]
        dxp = dx
    return dxp


# --------------------------------------------------------------------------
# the graph: one task per block, each a call of the core
# --------------------------------------------------------------------------
def _graph(name: str, task: Any, reads: Sequence[_Reads], chunks: Tuple, dtype: np.dtype,
           shared: Sequence[Optional[da.Array]] = (), extra: Any = None) -> da.Array:
    """A Dask array whose block ``i`` is ``task(*(read block i), *shared, *extra(i))``.

    One task per block: the reads are nested inside it. All ``reads`` have the
    output's block grid; ``shared`` arrays are one chunk each (weight, bias) and are
    passed whole to every task.
    """
    numblocks = tuple(len(c) for c in chunks)
    for read in reads:
        if read.numblocks != numblocks:  # a bug here, never a user error
            raise RuntimeError(f"block grids differ: {read.numblocks} != {numblocks}")
    shared_keys = [_one_key(array) for array in shared]
    graph = {}
    for block in np.ndindex(*numblocks):
        arguments = [read.expression(block) for read in reads] + shared_keys
        if extra is not None:
            arguments += list(extra(block))
        graph[(name,) + block] = (task, *arguments)
    dependencies = [read.array for read in reads] + [a for a in shared if a is not None]
    layer = HighLevelGraph.from_collections(name, graph, dependencies=dependencies)
    return da.Array(layer, name, chunks, dtype=dtype)


def _partials(name: str, task: Any, reads: Sequence[_Reads], shape: Tuple[int, ...],
              dtype: np.dtype) -> da.Array:
    """Tree-reduced sum of ``task(*(read block i))`` (each of ``shape``) over all blocks."""
    blocks = list(np.ndindex(*reads[0].numblocks))
    graph = {}
    for position, block in enumerate(blocks):
        arguments = [read.expression(block) for read in reads]
        graph[(name, position) + (0,) * len(shape)] = (_stacked, task, *arguments)
    layer = HighLevelGraph.from_collections(name, graph,
                                            dependencies=[read.array for read in reads])
    chunks = ((1,) * len(blocks),) + tuple((size,) for size in shape)
    stacked = da.Array(layer, name, chunks, dtype=dtype)
    return stacked.sum(axis=0, split_every=SPLIT_EVERY, dtype=dtype)


def _stacked(task: Any, *blocks: np.ndarray) -> np.ndarray:
    return task(*blocks)[None]


def _conv_block(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], *, stride: Tuple,
                dilation: Tuple, groups: int, limit: int, method: str) -> np.ndarray:
    """One output block: the core's convolution of an already padded, halo'd block."""
    with ib.workspace_limit(limit):
        return ib.conv(x, w, b, stride=stride, padding=0, dilation=dilation, groups=groups,
                       method=method)


def _grad_weight_block(dy: np.ndarray, x: np.ndarray, *, weight_shape: Tuple, stride: Tuple,
                       dilation: Tuple, groups: int, limit: int, method: str) -> np.ndarray:
    """One block's share of dW: the core's weight gradient of a halo'd, padded block."""
    with ib.workspace_limit(limit):
        return ib.conv_grad_weight(dy, x, weight_shape, stride=stride, padding=0,
                                   dilation=dilation, groups=groups, method=method)


def _grad_bias_block(dy: np.ndarray) -> np.ndarray:
    return ib.conv_grad_bias(dy)


def _grad_input_block(dy: np.ndarray, w: np.ndarray, reads: Tuple, cores: Tuple, *,
                      in_channels: int, stride: Tuple, dilation: Tuple, groups: int,
                      extents: Tuple, limit: int, method: str) -> np.ndarray:
    """The padded-input gradient on one core range, from the δ rows that reach it.

    ``reads[a] = (lo, hi)``: the outputs whose windows touch the core
    ``cores[a] = (start, stop)`` (padded coordinates). The core's local input
    gradient covers ``[lo·S, (hi-1)·S + D·(K-1) + 1)``; it is placed into the
    core, zeros where no window reaches (before the first, after the last).
    """
    local_size = tuple((hi - lo - 1) * s + e for (lo, hi), s, e in zip(reads, stride, extents))
    with ib.workspace_limit(limit):
        local = ib.conv_grad_input(dy, w, (dy.shape[0], in_channels) + local_size,
                                   stride=stride, padding=0, dilation=dilation, groups=groups,
                                   method=method)
    out = np.zeros((dy.shape[0], in_channels) + tuple(b - a for a, b in cores), dtype=local.dtype)
    target, origin = [slice(None)] * 2, [slice(None)] * 2
    for (lo, _), (start, stop), s, size in zip(reads, cores, stride, local_size):
        first, last = max(start, lo * s), min(stop, lo * s + size)
        if last <= first:
            return out
        target.append(slice(first - start, last - start))
        origin.append(slice(first - lo * s, last - lo * s))
    out[tuple(target)] = local[tuple(origin)]
    return out


# --------------------------------------------------------------------------
# the shared halves of the public functions
# --------------------------------------------------------------------------
def _extents(geometry: ConvGeometry) -> Tuple[int, ...]:
    window = geometry.window
    return tuple(d * (k - 1) + 1 for d, k in zip(window.dilation, window.kernel_size))


def _input_gradient(dyb: da.Array, w: da.Array, geometry: ConvGeometry,
                    dtype: np.dtype, token: str, method: str) -> da.Array:
    """Gradient w.r.t. the (batched) input of the convolution ``geometry``, lazily.

    δ keeps its batch and spatial chunks; padded-input chunk i is the core
    ``[o_i·S + h, o_{i+1}·S + h)``, ``h = (D·(K-1)) // 2`` (the first from 0,
    the last to the padded end: the inverse of :func:`conv`'s chunk rule), and
    reads the δ rows whose windows reach it — a halo on both sides. Then the
    border folds back (:func:`_fold`).
    """
    window = geometry.window
    extents = _extents(geometry)
    dyb = dyb.astype(dtype)
    reads_per_axis, cores_per_axis = [], []
    for axis, (s, e, out, padded) in enumerate(
            zip(window.stride, extents, window.out_size, window.padded_size)):
        outs = _to_ranges(_starts(dyb.chunks[2 + axis]), out)
        centre = (e - 1) // 2  # the inverse of conv's chunk rule (_output_ranges)
        cores = [(o0 * s + centre, o1 * s + centre) for o0, o1 in outs]
        cores[0], cores[-1] = (0, cores[0][1]), (cores[-1][0], padded)
        if len(cores) == 1:
            cores = [(0, padded)]
        reads_per_axis.append(
            [(max(0, -(-(a - e + 1) // s)), min(out, -(-b // s))) for a, b in cores])
        cores_per_axis.append(cores)
    maps = [_identity(dyb.chunks[0]), _whole(dyb.shape[1])] + [
        [np.arange(lo, hi) for lo, hi in reads] for reads in reads_per_axis]
    task = functools.partial(
        _grad_input_block, in_channels=geometry.in_channels, stride=window.stride,
        dilation=window.dilation, groups=geometry.groups, extents=extents,
        limit=ib.get_workspace_limit(), method=method,
    )

    def where(block):
        spatial = block[2:]
        return (tuple(reads_per_axis[a][i] for a, i in enumerate(spatial)),
                tuple(cores_per_axis[a][i] for a, i in enumerate(spatial)))

    chunks = (dyb.chunks[0], (geometry.in_channels,)) + tuple(
        _lengths(cores) for cores in cores_per_axis)
    dxp = _graph(f"conv-grad-input-{token}", task, [_Reads(dyb, maps)], chunks, dtype, [w],
                 where)
    dx = _fold(dxp, geometry)
    # chunks of dx: the cores, shifted by P_before back to unpadded coordinates
    target = {
        2 + axis: _lengths(_to_ranges([a - before for a, _ in cores], size))
        for axis, (cores, size, (before, _)) in enumerate(
            zip(cores_per_axis, window.in_size, window.padding))
    }
    return dx.rechunk(target)


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------
def conv(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> da.Array:
    """N-d convolution of a Dask array, lazily; the same as :func:`im2colbp.conv`.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C_in, *I) or (C_in, *I)
        Chunked in any way along the batch and spatial axes (the channel
        axis is read as one chunk). A NumPy array is taken as one chunk.
    weight : array_like or dask.array.Array, shape (C_out, C_in/G, *K)
        Small: it is sent whole to every task.
    bias : array_like or dask.array.Array, shape (C_out,), optional
    stride, padding, dilation, groups, padding_mode
        As for :func:`im2colbp.conv` (the same positional order); padding is
        applied at the global border only.
    method : {'auto', 'im2col', 'winograd', 'direct'}
        The engine method every task runs (see :func:`im2colbp.conv`); a
        method that cannot serve the convolution is refused here, at once.

    Returns
    -------
    y : dask.array.Array, shape (N, C_out, *O) or (C_out, *O)
        Lazy. Batch chunks as x's; spatial chunk boundaries at
        ``ceil((c + P_before - h) / S)``, ``h = (D·(K-1)) // 2``, for x's
        boundaries ``c`` (output o goes with the chunk holding its window's centre).

    Notes
    -----
    Output chunk ``[o0, o1)`` is computed by :func:`im2colbp.conv` (with
    ``padding=0``) on the padded input ``[o0·S, (o1-1)·S + D·(K-1) + 1)``:
    neighbouring chunks share a halo of ``D·(K-1) + 1 - S`` samples (none
    when the stride skips samples). The workspace limit in force when this
    function is called bounds every task.

    Examples
    --------
    >>> import numpy as np, dask.array as da, im2colbp as ib, im2colbp.dask as ibd
    >>> x = da.arange(10.0, chunks=3).reshape(1, 1, 10)     # chunks of 3 along space
    >>> w = np.array([[[1.0, 0.0, -1.0]]])
    >>> y = ibd.conv(x, w, padding=1)
    >>> y.chunks
    ((1,), (1,), (3, 3, 3, 1))
    >>> y.compute()
    array([[[-1., -2., -2., -2., -2., -2., -2., -2., -2.,  8.]]])
    >>> np.array_equal(y.compute(), ib.conv(x.compute(), w, padding=1))
    True
    """
    x = _as_dask(x, "x")
    w_dtype = _float_dtype(weight if isinstance(weight, da.Array) else np.asarray(weight),
                           "weight")
    geometry = conv_geometry(
        x.shape, np.shape(weight), None if bias is None else np.shape(bias),
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode,
    )
    _check_method(method, geometry)
    dtypes = [_float_dtype(x, "x"), w_dtype]
    if bias is not None:
        dtypes.append(_float_dtype(bias if isinstance(bias, da.Array) else np.asarray(bias),
                                   "bias"))
    dtype = np.result_type(*dtypes)
    w = _small(weight, "weight", dtype)
    b = None if bias is None else _small(bias, "bias", dtype)
    window = geometry.window
    xb = _batched(x, geometry).astype(dtype)
    out_ranges = [
        _output_ranges(xb.chunks[2 + axis], before, s, e, out)
        for axis, ((before, _), s, e, out) in enumerate(
            zip(window.padding, window.stride, _extents(geometry), window.out_size))
    ]
    reads = _Reads(xb, [_identity(xb.chunks[0]), _whole(xb.shape[1])]
                   + _padded_reads(geometry, out_ranges))
    task = functools.partial(_conv_block, stride=window.stride, dilation=window.dilation,
                             groups=geometry.groups, limit=ib.get_workspace_limit(),
                             method=method)
    chunks = (xb.chunks[0], (geometry.out_channels,)) + tuple(map(_lengths, out_ranges))
    token = tokenize(xb, w, b, geometry, method, ib.get_workspace_limit())
    y = _graph(f"conv-{token}", task, [reads], chunks, dtype, [w, b])
    return _unbatched(y, geometry)


def conv_grad_input(
    dy: Any,
    weight: Any,
    input_shape: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> da.Array:
    """Input gradient of a convolution, from a chunked δ; see :func:`im2colbp.conv_grad_input`.

    Parameters
    ----------
    dy : dask.array.Array, shape (N, C_out, *O) or (C_out, *O)
        δ, chunked in any way along batch and space.
    weight : array_like or dask.array.Array, shape (C_out, C_in/G, *K)
    input_shape : tuple of int
        ``x.shape``.
    stride, padding, dilation, groups, padding_mode, method
        As for :func:`im2colbp.conv_grad_input` (the same positional order).

    Returns
    -------
    dx : dask.array.Array, shape ``input_shape``
        Lazy; chunk boundaries at ``o·S + h - P_before``, ``h = (D·(K-1)) // 2``,
        for δ's boundaries ``o`` (the inverse of :func:`conv`'s chunk rule).

    Notes
    -----
    The padded input is cut into cores ``[o_i·S + h, o_{i+1}·S + h)``; each
    core reads the δ rows whose windows reach it (a halo) and is computed by
    :func:`im2colbp.conv_grad_input`. The gradient that lands on the padded
    border then folds back onto the samples the border copies: for reflect
    the mirrored samples, for replicate the edge, for circular the samples
    at the other end (several times round when the padding exceeds I).

    Examples
    --------
    >>> import numpy as np, dask.array as da, im2colbp as ib, im2colbp.dask as ibd
    >>> dy = da.ones((1, 1, 4), chunks=(1, 1, 1)); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> ibd.conv_grad_input(dy, w, (1, 1, 9), stride=2).compute()
    array([[[1., 2., 4., 2., 4., 2., 4., 2., 3.]]])
    >>> dx = ibd.conv_grad_input(dy, w, (1, 1, 4), padding=1, padding_mode="circular")
    >>> np.allclose(dx.compute(), ib.conv_grad_input(np.ones((1, 1, 4)), w, (1, 1, 4), padding=1,
    ...                                              padding_mode="circular"))
    True
    """
    dy = _as_dask(dy, "dy")
    w_dtype = _float_dtype(weight if isinstance(weight, da.Array) else np.asarray(weight),
                           "weight")
    geometry = conv_geometry(
        input_shape, np.shape(weight), stride=stride, padding=padding, dilation=dilation,
        groups=groups, padding_mode=padding_mode,
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy",
                      "the output of the convolution of input_shape")
    _check_method(method, geometry)
    dtype = np.result_type(_float_dtype(dy, "dy"), w_dtype)
    w = _small(weight, "weight", dtype)
    token = tokenize(dy, w, geometry, method, ib.get_workspace_limit())
    dx = _input_gradient(_batched(dy, geometry), w, geometry, dtype, token, method)
    return _unbatched(dx, geometry)


def conv_grad_weight(
    dy: Any,
    x: Any,
    weight_shape: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> da.Array:
    """Weight gradient from chunked δ and x, as a tree reduction; see
    :func:`im2colbp.conv_grad_weight`.

    Parameters
    ----------
    dy : dask.array.Array, shape (N, C_out, *O) or (C_out, *O)
    x : dask.array.Array, shape (N, C_in, *I) or (C_in, *I)
        The forward input; its batch chunks are used for δ too.
    weight_shape : tuple of int
        (C_out, C_in/G, *K).
    stride, padding, dilation, groups, padding_mode, method
        As for :func:`im2colbp.conv_grad_weight` (the same positional order).

    Returns
    -------
    dw : dask.array.Array, shape ``weight_shape``, one chunk
        ``Σ_blocks conv_grad_weight(δ block, halo'd x block)``, summed
        :data:`SPLIT_EVERY` partials per task (a tree: no worker gathers δ or x).

    Examples
    --------
    >>> import numpy as np, dask.array as da, im2colbp.dask as ibd
    >>> x = da.arange(5.0, chunks=2).reshape(1, 1, 5); dy = da.ones((1, 1, 3), chunks=1)
    >>> ibd.conv_grad_weight(dy, x, (1, 1, 3)).compute()   # tap k sees x[k], x[k+1], x[k+2]
    array([[[3., 6., 9.]]])
    """
    dy = _as_dask(dy, "dy")
    x = _as_dask(x, "x")
    geometry = conv_geometry(
        x.shape, weight_shape, stride=stride, padding=padding, dilation=dilation,
        groups=groups, padding_mode=padding_mode,
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy", "the output of the convolution of x")
    _check_method(method, geometry)
    dtype = np.result_type(_float_dtype(dy, "dy"), _float_dtype(x, "x"))
    window = geometry.window
    xb = _batched(x, geometry).astype(dtype)
    dyb = _batched(dy, geometry).astype(dtype)
    out_ranges = [_to_ranges(_starts(dyb.chunks[2 + axis]), out)
                  for axis, out in enumerate(window.out_size)]
    batch = _identity(xb.chunks[0])  # δ is read in x's batch blocks
    dy_reads = _Reads(dyb, [batch, _whole(dyb.shape[1])]
                      + [[np.arange(a, b) for a, b in ranges] for ranges in out_ranges])
    x_reads = _Reads(xb, [batch, _whole(xb.shape[1])] + _padded_reads(geometry, out_ranges))
    task = functools.partial(
        _grad_weight_block, weight_shape=geometry.weight_shape, stride=window.stride,
        dilation=window.dilation, groups=geometry.groups, limit=ib.get_workspace_limit(),
        method=method,
    )
    token = tokenize(dyb, xb, geometry, method, ib.get_workspace_limit())
    return _partials(f"conv-grad-weight-{token}", task, [dy_reads, x_reads],
                     geometry.weight_shape, dtype)


def conv_grad_bias(dy: Any) -> da.Array:
    """Bias gradient ``db[f] = Σ_{n, o} δ[n, f, o]`` as a tree reduction over δ's blocks.

    Parameters
    ----------
    dy : dask.array.Array, shape (N, C_out, *O)
        Batched δ (see :func:`im2colbp.conv_grad_bias`).

    Returns
    -------
    db : dask.array.Array, shape (C_out,)

    Examples
    --------
    >>> import dask.array as da, im2colbp.dask as ibd
    >>> ibd.conv_grad_bias(da.ones((2, 3, 4, 4), chunks=(1, 3, 2, 3))).compute()
    array([32., 32., 32.])
    """
    dy = _as_dask(dy, "dy")
    if dy.ndim < 3:
        raise ValueError(
            f"dy must be batched, (N, C_out, *out_size) with at least 3 dimensions, "
            f"got shape {dy.shape}"
        )
    dtype = _float_dtype(dy, "dy")
    dy = dy.astype(dtype)
    reads = _Reads(dy, [_identity(c) for c in dy.chunks[:1]] + [_whole(dy.shape[1])]
                   + [_identity(c) for c in dy.chunks[2:]])
    return _partials(f"conv-grad-bias-{tokenize(dy)}", _grad_bias_block, [reads],
                     (dy.shape[1],), dtype)


def conv_transpose(
    x: Any,
    weight: Any,
    bias: Any = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
    *,
    output_size: Any = None,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> da.Array:
    """N-d transposed convolution of a Dask array; see :func:`im2colbp.conv_transpose`.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C_in, *I) or (C_in, *I)
    weight : array_like or dask.array.Array, shape (C_in, C_out/G, *K)
    bias : array_like or dask.array.Array, shape (C_out,), optional
    stride, padding, output_padding, groups, dilation, output_size, padding_mode, method
        As for :func:`im2colbp.conv_transpose`, in its positional order
        (non-zero modes: the exact adjoint of the padded convolution).

    Returns
    -------
    y : dask.array.Array, shape (N, C_out, *O) or (C_out, *O)
        ``O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1``;
        lazy, computed like :func:`conv_grad_input` (x plays δ).

    Examples
    --------
    >>> import numpy as np, dask.array as da, im2colbp.dask as ibd
    >>> x = da.from_array(np.array([[[1.0, 10.0]]]), chunks=1); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> ibd.conv_transpose(x, w, stride=2).compute()    # each input stamps a scaled copy of w
    array([[[ 1.,  2., 13., 20., 30.]]])
    """
    x = _as_dask(x, "x")
    w_dtype = _float_dtype(weight if isinstance(weight, da.Array) else np.asarray(weight),
                           "weight")
    geometry = conv_transpose_geometry(
        x.shape, np.shape(weight), None if bias is None else np.shape(bias),
        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        groups=groups, output_size=output_size, padding_mode=padding_mode,
    )
    _check_method(method, geometry)
    dtypes = [_float_dtype(x, "x"), w_dtype]
    if bias is not None:
        dtypes.append(_float_dtype(bias if isinstance(bias, da.Array) else np.asarray(bias),
                                   "bias"))
    dtype = np.result_type(*dtypes)
    w = _small(weight, "weight", dtype)
    token = tokenize(x, w, geometry, method, ib.get_workspace_limit())
    y = _input_gradient(_batched(x, geometry), w, geometry, dtype, token, method)
    if bias is not None:
        b = _small(bias, "bias", dtype)
        y = y + b.reshape((1, -1) + (1,) * geometry.rank)
    return _unbatched(y, geometry)
