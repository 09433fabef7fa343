"""Winograd minimal filtering: 3×3 (and 3, 3×3×3) stride-1 convolution as batched GEMMs.

Lavin & Gray (2016). Along one axis, F(m, 3) computes m outputs of a 3-tap
correlation from one tile of α = m + 2 inputs with α multiplications::

    y = Aᵀ [ (G w) ⊙ (Bᵀ d) ]          d: α inputs, w: 3 taps, y: m outputs

and the r-d form nests the 1-D one along every axis (the transforms are
separable). Per transformed position ξ (α^r of them) the channel sum is one
GEMM over all tiles of a chunk::

    M_ξ[g] = U_ξ[g] · V_ξ[g]          (C_out/G × C_in/G) · (C_in/G × n·T)

with U = G w Gᵀ (weights, once) and V = Bᵀ d B (input tiles). Tiles overlap
by 2 samples; output tiles do not. Every transform runs as separable 1-D
passes of small-integer multiply-adds over strided views, in channel blocks
that stay in cache, laid out ``(ξ_1..ξ_r, C, n, T_1..T_r)`` so that each GEMM
reads contiguous rows.

Gradients in Winograd form (derived in ``docs/winograd.md``):

* input gradient: at stride 1 it is the stride-1 convolution of δ padded by
  ``2 - P`` with :func:`im2colbp.kernels.backprop_kernel` — the same forward
  kernel on another geometry, nothing new;
* weight gradient: the adjoint of ``y = Aᵀ[U ⊙ V]A`` with respect to U is
  ``dU_ξ = Σ_tiles Δ_ξ · V_ξᵀ`` with ``Δ = A δ Aᵀ`` (δ cut into m-sized
  tiles), then ``dW = Gᵀ dU G``: the *transposes* of the forward transforms.

Accuracy (float32, measured by ``scripts/winograd_error.py`` against a float64
reference on the benchmark suite's 3×3 stride-1 shapes, max |error| divided by
max |exact|): F(2, 3) stays below 1e-6 for the forward and both gradients;
F(4, 3) reaches a few times 1e-6 (see the docstrings of the kernels for the
bound the tests enforce). The lowering itself is about 5e-7.

Non-finite values: a tile mixes its inputs, so an inf or nan in x, δ or the
weight spreads nan over whole tiles (the direct method would give inf at the
positions that read it). Callers that must reproduce IEEE semantics fall back
to im2col for non-finite operands.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .geometry import ConvGeometry
from .lowering import pad_into
from .workspace import chunk_slices, scratch, scratch_scope

__all__ = [
    "TILES",
    "transform_matrices",
    "winograd_reason_not",
    "winograd_sample_bytes",
    "winograd_fixed_bytes",
    "winograd_forward",
    "winograd_weight_gradient",
]

#: The output tile sizes m offered: F(2, 3) (α = 4) and F(4, 3) (α = 6).
TILES = (2, 4)

#: Bytes of one channel block's source that the transform passes aim at, so
#: that a block and its transformed copies stay in the L2 cache.
_BLOCK_BYTES = 192 * 2**10

# (Bᵀ, G, Aᵀ) per tile size m; exact small rationals (Lavin & Gray's points
# 0, ±1 for m = 2 and 0, ±1, ±2 for m = 4, plus the point at infinity).
_MATRICES: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (
        np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]], dtype=np.float64),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]], dtype=np.float64),
    ),
    4: (
        np.array([[4, 0, -5, 0, 1, 0],
                  [0, -4, -4, 1, 1, 0],
                  [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0],
                  [0, 4, 0, -5, 0, 1]], dtype=np.float64),
        np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 0],
                  [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], dtype=np.float64),
    ),
}


def transform_matrices(tile: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1-D transforms ``(Bᵀ, G, Aᵀ)`` of F(m, 3) for ``tile`` = m.

    Parameters
    ----------
    tile : int
        m, the outputs per tile: 2 or 4.

    Returns
    -------
    BT : ndarray, shape (α, α)
        Input transform (α = m + 2), small integers.
    G : ndarray, shape (α, 3)
        Filter transform.
    AT : ndarray, shape (m, α)
        Output transform, small integers.

    A new copy each call (float64).

    Examples
    --------
    Two outputs of a 3-tap correlation from four inputs with four products:

    >>> import numpy as np
    >>> BT, G, AT = transform_matrices(2)
    >>> d = np.array([1., 2., 3., 4.]); w = np.array([1., 0., -1.])
    >>> AT @ ((G @ w) * (BT @ d))
    array([-2., -2.])
    >>> np.correlate(d, w, mode="valid")
    array([-2., -2.])
    """
    _check_tile(tile)
    return tuple(matrix.copy() for matrix in _MATRICES[tile])  # type: ignore[return-value]


def _check_tile(tile: int) -> None:
    if tile not in TILES:
        raise ValueError(f"tile must be one of {TILES} (F(2, 3) or F(4, 3)), got {tile!r}")


# --------------------------------------------------------------------------
# applicability and memory
# --------------------------------------------------------------------------
def winograd_reason_not(geometry: ConvGeometry) -> Optional[str]:
    """None when Winograd serves ``geometry``, else why not (for the error message).

    Winograd serves every rank r >= 1 with every kernel axis 3, stride 1 and
    dilation 1; any padding pairs and padding modes (the input is padded
    first), any groups.

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> winograd_reason_not(conv_geometry((1, 2, 8, 8), (4, 2, 3, 3), padding=1)) is None
    True
    >>> winograd_reason_not(conv_geometry((1, 2, 8, 8), (4, 2, 3, 3), stride=2))
    'winograd needs stride 1, got stride (2, 2)'
    """
    window = geometry.window
    if any(k != 3 for k in window.kernel_size):
        return f"winograd needs a 3 on every kernel axis, got kernel size {window.kernel_size}"
    if any(s != 1 for s in window.stride):
        return f"winograd needs stride 1, got stride {window.stride}"
    if any(d != 1 for d in window.dilation):
        return f"winograd needs dilation 1, got dilation {window.dilation}"
    return None


def _tiles(geometry: ConvGeometry, tile: int) -> Tuple[int, ...]:
    """T per axis: output tiles of size m covering O."""
    return tuple(-(-o // tile) for o in geometry.window.out_size)


def _sizes(geometry: ConvGeometry, tile: int) -> Tuple[int, int, int, int]:
    """(α^r, tiles per sample, padded tile-aligned input volume, δ tile-aligned volume)."""
    r = geometry.rank
    tiles = _tiles(geometry, tile)
    positions = (tile + 2) ** r
    return (positions, math.prod(tiles), math.prod(t * tile + 2 for t in tiles),
            math.prod(t * tile for t in tiles))


def winograd_sample_bytes(geometry: ConvGeometry, tile: int, itemsize: int) -> int:
    """Scratch bytes that grow with the chunk: one sample's share of either pass.

    The larger of the forward (transformed input V and products M, α^r·T·(C_in +
    C_out) elements, plus the output staging C_out·∏(T·m)) and the weight
    gradient (V and the transformed δ, the same count). Channel-block buffers
    do not grow with the batch: they are in :func:`winograd_fixed_bytes`.

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> winograd_sample_bytes(g, 4, 4)    # 36·196·128·4 + 64·56·56·4
    4415488
    """
    _check_tile(tile)
    positions, tiles, _, delta_volume = _sizes(geometry, tile)
    transformed = positions * tiles * (geometry.in_channels + geometry.out_channels)
    staging = geometry.out_channels * delta_volume
    return (transformed + staging) * itemsize


def _block_channels(per_channel_bytes: int, channels: int) -> int:
    return max(1, min(channels, _BLOCK_BYTES // max(per_channel_bytes, 1)))


def winograd_fixed_bytes(geometry: ConvGeometry, tile: int, itemsize: int,
                         samples_per_chunk: int = 1) -> int:
    """Scratch bytes that do not grow with the chunk: transformed weights, block buffers.

    The transformed weights U (and, for the weight gradient, dU), α^r·C_out·C_in/G
    elements each, plus the channel-block buffers of the transform passes
    (about ``_BLOCK_BYTES`` times a small factor; they scale with the chunk
    only until a block is one channel, hence ``samples_per_chunk``).

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> winograd_fixed_bytes(g, 4, 4) > 2 * 36 * 64 * 64 * 4
    True
    """
    _check_tile(tile)
    positions, tiles, padded_volume, _ = _sizes(geometry, tile)
    weights = 2 * positions * geometry.out_channels * (geometry.in_channels // geometry.groups)
    alpha = tile + 2
    per_channel = max(padded_volume, positions * tiles) * samples_per_chunk * itemsize
    block = max(per_channel, _BLOCK_BYTES)
    # source block + every intermediate pass (each at most (α/m)^r times the source)
    blocks = 2 * block * (1 + geometry.rank) * (alpha / tile) ** geometry.rank
    return weights * itemsize + int(blocks)


# --------------------------------------------------------------------------
# the 1-D passes: small-integer multiply-adds over strided views
# --------------------------------------------------------------------------
def _combine(out: np.ndarray, terms: Sequence[Tuple[float, np.ndarray]], tmp: np.ndarray) -> None:
    """``out = Σ c·view`` over ``terms`` with as few memory passes as NumPy allows."""
    if not terms:
        out[...] = 0
        return
    # put a unit coefficient first where there is one (a copy instead of a multiply)
    terms = sorted(terms, key=lambda term: abs(term[0]) != 1)
    coefficient, view = terms[0]
    if coefficient == 1:
        np.copyto(out, view)
    elif coefficient == -1:
        np.negative(view, out=out)
    else:
        np.multiply(view, coefficient, out=out)
    for coefficient, view in terms[1:]:
        if coefficient == 1:
            np.add(out, view, out=out)
        elif coefficient == -1:
            np.subtract(out, view, out=out)
        else:
            np.multiply(view, coefficient, out=tmp)
            np.add(out, tmp, out=out)


def _along(array: np.ndarray, axis: int, index) -> tuple:
    return (slice(None),) * axis + (index,)


def _spread_pass(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, lead: int,
                 axis: int, step: int, count: int, tmp: np.ndarray) -> None:
    """``out[ξ at lead] = Σ_j matrix[ξ, j] · source[j + step·t along axis]``, t < count.

    ``out`` has one more axis than ``source`` (the new ξ axis at position
    ``lead``); its spatial axis ``axis + 1`` has ``count`` entries.
    """
    stop = step * (count - 1) + 1
    views = [source[_along(source, axis, slice(j, j + stop, step))]
             for j in range(matrix.shape[1])]
    for xi in range(matrix.shape[0]):
        terms = [(float(c), views[j]) for j, c in enumerate(matrix[xi]) if c != 0]
        _combine(out[_along(out, lead, xi)], terms, tmp)


def _gather_pass(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, lead: int,
                 axis: int, tmp: np.ndarray) -> None:
    """``out[j at axis] = Σ_ξ matrix[j, ξ] · source[ξ at lead]`` (the ξ axis disappears)."""
    views = [source[_along(source, lead, xi)] for xi in range(matrix.shape[1])]
    for j in range(matrix.shape[0]):
        terms = [(float(c), views[xi]) for xi, c in enumerate(matrix[j]) if c != 0]
        _combine(out[_along(out, axis, j)], terms, tmp)


def _transform_tiles(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, step: int,
                     tiles: Tuple[int, ...], name: str) -> None:
    """Transform the tiles of ``source`` (B, *S) along every axis into ``out`` (α^r, B, *T).

    Tile t of axis a starts at ``step·t`` and spans ``matrix.shape[1]``
    samples; axis by axis, a pass replaces that axis by its T tiles and
    prepends its α transformed positions (after those of earlier axes).
    """
    r = len(tiles)
    lead = source.ndim - r
    alpha = matrix.shape[0]
    current = source
    for axis in range(r):
        # `current`: (ξ_1..ξ_axis, *B, T_1..T_axis, S_{axis+1}, ...)
        spatial = axis + lead + axis  # position of this spatial axis in `current`
        if axis == r - 1:
            target = out
        else:
            new_shape = ((alpha,) * (axis + 1) + current.shape[axis:spatial]
                         + (tiles[axis],) + current.shape[spatial + 1:])
            target = scratch(f"{name}.{axis}", new_shape, out.dtype)
        tmp = scratch(f"{name}.tmp", target.shape[:axis] + target.shape[axis + 1:], out.dtype)
        _spread_pass(current, target, matrix, axis, spatial, step, tiles[axis], tmp)
        current = target


def _untransform_tiles(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, rank: int,
                       name: str) -> None:
    """Inverse layout of :func:`_transform_tiles` for the output transform.

    ``source`` (α^r, B, T_1..T_r) becomes ``out`` (B, T_1, m, ..., T_r, m):
    axis by axis from the last, a pass removes that axis's ξ and puts its m
    outputs right after its tile index.
    """
    lead = out.ndim - 2 * rank
    m = matrix.shape[0]
    current = source
    for axis in reversed(range(rank)):
        # `current`: (ξ_1..ξ_{axis+1}, *B, T_1, .., T_{axis+1}, [m, T, m ...])
        spatial = (axis + 1) + lead + axis  # position of T_{axis+1} in `current`
        if axis == 0:
            target = out
        else:
            new_shape = (current.shape[:axis] + current.shape[axis + 1:spatial]
                         + (current.shape[spatial], m) + current.shape[spatial + 1:])
            target = scratch(f"{name}.{axis}", new_shape, out.dtype)
        # in `target` the ξ axis is gone: T sits at spatial - 1, its m right after
        tmp = scratch(f"{name}.tmp", target.shape[:spatial] + target.shape[spatial + 1:],
                      out.dtype)
        _gather_pass(current, target, matrix, axis, spatial, tmp)
        current = target


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------
def _transform_weight(weight: np.ndarray, geometry: ConvGeometry, tile: int,
                      dtype: np.dtype) -> np.ndarray:
    """U = G w Gᵀ per axis, in float64, as (α^r, G, C_out/G, C_in/G) in ``dtype``."""
    _, filt, _ = _MATRICES[tile]
    r = geometry.rank
    u = np.asarray(weight, dtype=np.float64)  # (C_out, C_in/G, 3, ..., 3)
    for axis in range(r):
        u = np.tensordot(filt, u, axes=([1], [2 + axis]))  # new ξ axis in front
        u = np.moveaxis(u, 0, axis)
    # u: (ξ_1..ξ_r, C_out, C_in/G)
    positions = (tile + 2) ** r
    groups = geometry.groups
    out_per_group = geometry.out_channels // groups
    u = u.reshape(positions, groups, out_per_group, -1)
    return np.ascontiguousarray(u, dtype=dtype)


def _untransform_weight_gradient(du: np.ndarray, geometry: ConvGeometry,
                                 tile: int) -> np.ndarray:
    """dW = Gᵀ dU G per axis: (α^r, G, C_out/G, C_in/G) -> (C_out, C_in/G, 3, ..., 3)."""
    _, filt, _ = _MATRICES[tile]
    r = geometry.rank
    alpha = tile + 2
    d = du.astype(np.float64).reshape((alpha,) * r + (geometry.out_channels, -1))
    for _ in range(r):
        # contract the first ξ axis; the resulting 3-axis goes last, so axes stay in order
        d = np.tensordot(d, filt, axes=([0], [0]))
    return d  # (C_out, C_in/G, 3, ..., 3)


# --------------------------------------------------------------------------
# passes
# --------------------------------------------------------------------------
def _check_arrays(geometry: ConvGeometry, x: np.ndarray, name: str, shape: Tuple[int, ...],
                  tile: int, samples_per_chunk: int) -> None:
    reason = winograd_reason_not(geometry)
    if reason is not None:
        raise ValueError(reason)
    _check_tile(tile)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} (batched), got {tuple(x.shape)}")
    if samples_per_chunk < 1:
        raise ValueError(f"samples_per_chunk must be >= 1, got {samples_per_chunk}")


def _padded_block(x_part: np.ndarray, geometry: ConvGeometry, tile: int,
                  dtype: np.dtype) -> np.ndarray:
    """x_part (n, c, *I) padded and tile-aligned as (c, n, *(T·m + 2)) in scratch."""
    window = geometry.window
    tiles = _tiles(geometry, tile)
    aligned = tuple(t * tile + 2 for t in tiles)
    n, c = x_part.shape[:2]
    block = scratch("winograd.padded", (c, n) + aligned, dtype)
    inner = block[(Ellipsis,) + tuple(slice(0, p) for p in window.padded_size)]
    pad_into(x_part.transpose((1, 0) + tuple(range(2, x_part.ndim))), window, inner)
    for axis, (p, a) in enumerate(zip(window.padded_size, aligned)):
        if a > p:
            block[(slice(None),) * (2 + axis) + (slice(p, None),)] = 0
    return block


def _transform_input(x_part: np.ndarray, geometry: ConvGeometry, tile: int,
                     dtype: np.dtype, v: np.ndarray) -> None:
    """V (α^r, C_in, n, *T) = Bᵀ d B of every input tile, in channel blocks."""
    bt, _, _ = _MATRICES[tile]
    tiles = _tiles(geometry, tile)
    n = x_part.shape[0]
    aligned = math.prod(t * tile + 2 for t in tiles)
    cb = _block_channels(n * aligned * np.dtype(dtype).itemsize, geometry.in_channels)
    r = geometry.rank
    for c0 in range(0, geometry.in_channels, cb):
        c1 = min(c0 + cb, geometry.in_channels)
        block = _padded_block(x_part[:, c0:c1], geometry, tile, dtype)
        _transform_tiles(block, v[(slice(None),) * r + (slice(c0, c1),)], bt, tile, tiles,
                         "winograd.in")


def winograd_forward(geometry: ConvGeometry, x: ArrayLike, weight: ArrayLike, *,
                     tile: int, dtype: DTypeLike, samples_per_chunk: int) -> np.ndarray:
    """Convolution by Winograd's F(m^r, 3^r): ``(N, C_in, *I) -> (N, C_out, *O)``.

    Parameters
    ----------
    geometry : ConvGeometry
        A geometry :func:`winograd_reason_not` accepts (kernel 3 per axis,
        stride 1, dilation 1; any padding, padding mode, groups, rank).
    x : ndarray, shape (N, C_in, *I)
        Batched input, any floating dtype (cast block by block, never as a whole).
    weight : ndarray, shape (C_out, C_in/G, 3, ..., 3)
    tile : int
        m: 2 for F(2, 3), 4 for F(4, 3) (per axis).
    dtype : dtype
        Compute and result dtype.
    samples_per_chunk : int
        Samples transformed and multiplied together (bounds the scratch:
        ``samples_per_chunk * winograd_sample_bytes + winograd_fixed_bytes``).

    Returns
    -------
    y : ndarray, shape (N, C_out, *O)
        A new array in ``dtype``.

    Notes
    -----
    Multiplications per output tile and channel pair: α^r against
    m^r·3^r for im2col — 16/36 (2.25× fewer) for F(2×2, 3×3), 36/144 (4×
    fewer) for F(4×4, 3×3). The transforms cost O(α^r) adds per tile and
    channel and are memory-bound.

    Error bound (float32, max |error| / max |exact| against float64 over the
    benchmark's 3×3 shapes and the tests' random shapes, standard-normal
    data): F(2, 3) < 2e-6 in 1-D/2-D, F(4, 3) < 2e-5 in 2-D (measured 3e-6
    to 8e-6, growing with C_in·3^r); in 3-D F(4, 3) is worse (the
    transform's 1/6, 1/24 and its 4, 5 entries compound per axis). The tests
    enforce 2e-6 and 2e-5 (2-D) scaled by √(C_in/G·3^r/9) only as a margin.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.geometry import conv_geometry
    >>> x = np.arange(2 * 1 * 5 * 5, dtype=float).reshape(2, 1, 5, 5)
    >>> w = np.ones((1, 1, 3, 3))
    >>> g = conv_geometry(x.shape, w.shape, padding=1)
    >>> y = winograd_forward(g, x, w, tile=2, dtype=np.float64, samples_per_chunk=1)
    >>> np.allclose(y, ib.conv(x, w, padding=1))
    True
    >>> y[0, 0, 0]
    array([12., 21., 27., 33., 24.])
    """
    dtype = np.dtype(dtype)
    x = np.asarray(x)
    weight = np.asarray(weight)
    batch = x.shape[0] if x.ndim else 0
    in_shape = (batch, geometry.in_channels) + geometry.window.in_size
    _check_arrays(geometry, x, "x", in_shape, tile, samples_per_chunk)
    if tuple(weight.shape) != geometry.weight_shape:
        raise ValueError(f"weight must have shape {geometry.weight_shape}, "
                         f"got {tuple(weight.shape)}")
    r = geometry.rank
    out_size = geometry.window.out_size
    y = np.empty((batch, geometry.out_channels) + out_size, dtype=dtype)
    if y.size == 0:
        return y
    if geometry.in_channels == 0:
        y[...] = 0
        return y
    tiles = _tiles(geometry, tile)
    positions = (tile + 2) ** r
    groups = geometry.groups
    ci, co = geometry.in_channels // groups, geometry.out_channels // groups
    _, _, at = _MATRICES[tile]
    u = _transform_weight(weight, geometry, tile, dtype)  # (α^r, G, co, ci)
    depthwise = ci == 1
    with scratch_scope(samples_per_chunk * winograd_sample_bytes(geometry, tile, dtype.itemsize)
                       + winograd_fixed_bytes(geometry, tile, dtype.itemsize,
                                              samples_per_chunk)):
        for part in chunk_slices(batch, samples_per_chunk):
            n = part.stop - part.start
            count = n * math.prod(tiles)
            v = scratch("winograd.v", (tile + 2,) * r + (geometry.in_channels, n) + tiles, dtype)
            _transform_input(x[part], geometry, tile, dtype, v)
            m = scratch("winograd.m", (tile + 2,) * r + (geometry.out_channels, n) + tiles,
                        dtype)
            v4 = v.reshape(positions, groups, ci, count)
            m4 = m.reshape(positions, groups, co, count)
            if depthwise:
                np.multiply(u, v4, out=m4)  # (α^r, G, co, 1) * (α^r, G, 1, n·T)
            else:
                np.matmul(u, v4, out=m4)
            _output_transform(m, y[part], geometry, tile, at, dtype)
    return y


def _output_transform(m: np.ndarray, y_part: np.ndarray, geometry: ConvGeometry, tile: int,
                      at: np.ndarray, dtype: np.dtype) -> None:
    """y_part (n, C_out, *O) = Aᵀ M A of every tile, cropped, in channel blocks."""
    r = geometry.rank
    n = y_part.shape[0]
    tiles = m.shape[r + 2:]
    positions = (tile + 2) ** r
    cb = _block_channels(n * math.prod(tiles) * positions * dtype.itemsize,
                         geometry.out_channels)
    crop = (slice(None), slice(None)) + tuple(slice(0, o) for o in geometry.window.out_size)
    y_t = y_part.transpose((1, 0) + tuple(range(2, y_part.ndim)))  # (C_out, n, *O)
    for c0 in range(0, geometry.out_channels, cb):
        c1 = min(c0 + cb, geometry.out_channels)
        stage_shape = (c1 - c0, n) + sum(((t, tile) for t in tiles), ())
        stage = scratch("winograd.stage", stage_shape, dtype)
        _untransform_tiles(m[(slice(None),) * r + (slice(c0, c1),)], stage, at, r,
                           "winograd.out")
        aligned = stage.reshape((c1 - c0, n) + tuple(t * tile for t in tiles))
        y_t[c0:c1] = aligned[crop]


def _transform_delta(dy_part: np.ndarray, geometry: ConvGeometry, tile: int, dtype: np.dtype,
                     delta: np.ndarray) -> None:
    """Δ (α^r, C_out, n, *T) = A δ Aᵀ of every m-sized δ tile, in channel blocks."""
    _, _, at = _MATRICES[tile]
    a = at.T  # (α, m)
    r = geometry.rank
    tiles = _tiles(geometry, tile)
    aligned = tuple(t * tile for t in tiles)
    n = dy_part.shape[0]
    cb = _block_channels(n * math.prod(aligned) * dtype.itemsize, geometry.out_channels)
    out_size = geometry.window.out_size
    for c0 in range(0, geometry.out_channels, cb):
        c1 = min(c0 + cb, geometry.out_channels)
        block = scratch("winograd.dblock", (c1 - c0, n) + aligned, dtype)
        block[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_size)] = \
            dy_part[:, c0:c1].transpose((1, 0) + tuple(range(2, dy_part.ndim)))
        for axis, (o, al) in enumerate(zip(out_size, aligned)):
            if al > o:
                block[(slice(None),) * (2 + axis) + (slice(o, None),)] = 0
        _transform_tiles(block, delta[(slice(None),) * r + (slice(c0, c1),)], a, tile, tiles,
                         "winograd.delta")


def winograd_weight_gradient(geometry: ConvGeometry, x: ArrayLike, dy: ArrayLike, *,
                             tile: int, dtype: DTypeLike,
                             samples_per_chunk: int) -> np.ndarray:
    """Weight gradient in Winograd form: ``dW = Gᵀ [Σ_tiles (A δ Aᵀ) ⊙ (Bᵀ d B)] G``.

    Derivation: the forward is ``y_tile = Aᵀ (U ⊙ V) A`` summed over input
    channels with ``U = G w Gᵀ``. Its adjoint with respect to U is
    ``dU_ξ = Σ_tiles Δ_ξ V_ξᵀ`` per transformed position ξ — one GEMM
    ``(C_out/G × n·T) · (n·T × C_in/G)`` per group — where ``Δ = A δ Aᵀ``
    spreads each non-overlapping m-sized δ tile (zero beyond O) onto α
    positions; then ``dW = Gᵀ dU G`` (the adjoint of ``U = G w Gᵀ``), done in
    float64 once. The transforms are the transposes of the forward's.

    Parameters
    ----------
    geometry : ConvGeometry
        As for :func:`winograd_forward`.
    x : ndarray, shape (N, C_in, *I)
    dy : ndarray, shape (N, C_out, *O)
        δ, any floating dtype (cast block by block).
    tile, dtype, samples_per_chunk
        As for :func:`winograd_forward`.

    Returns
    -------
    dw : ndarray, shape (C_out, C_in/G, 3, ..., 3)
        A new array in ``dtype``.

    Notes
    -----
    Error bound (float32, max |error| / max |exact|): F(2, 3) < 2e-6, F(4, 3)
    < 2e-5 in 2-D; the sum over n·T tiles runs in the GEMM's precision like
    im2col's ``δ · colsᵀ``.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.geometry import conv_geometry
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 3, 6, 7)); dy = rng.standard_normal((2, 4, 6, 7))
    >>> g = conv_geometry(x.shape, (4, 3, 3, 3), padding=1)
    >>> dw = winograd_weight_gradient(g, x, dy, tile=4, dtype=np.float64, samples_per_chunk=2)
    >>> np.allclose(dw, ib.conv_grad_weight(dy, x, (4, 3, 3, 3), padding=1))
    True
    """
    dtype = np.dtype(dtype)
    x = np.asarray(x)
    dy = np.asarray(dy)
    batch = x.shape[0] if x.ndim else 0
    _check_arrays(geometry, x, "x", (batch, geometry.in_channels) + geometry.window.in_size,
                  tile, samples_per_chunk)
    out_shape = (batch, geometry.out_channels) + geometry.window.out_size
    if tuple(dy.shape) != out_shape:
        raise ValueError(f"dy must have shape {out_shape}, got {tuple(dy.shape)}")
    r = geometry.rank
    groups = geometry.groups
    ci, co = geometry.in_channels // groups, geometry.out_channels // groups
    positions = (tile + 2) ** r
    if batch == 0 or geometry.out_channels == 0 or geometry.in_channels == 0:
        return np.zeros(geometry.weight_shape, dtype=dtype)
    tiles = _tiles(geometry, tile)
    du = np.zeros((positions, groups, co, ci), dtype=dtype)
    depthwise = ci == 1 and co == 1
    with scratch_scope(samples_per_chunk * winograd_sample_bytes(geometry, tile, dtype.itemsize)
                       + winograd_fixed_bytes(geometry, tile, dtype.itemsize,
                                              samples_per_chunk)):
        for part in chunk_slices(batch, samples_per_chunk):
            n = part.stop - part.start
            count = n * math.prod(tiles)
            v = scratch("winograd.v", (tile + 2,) * r + (geometry.in_channels, n) + tiles, dtype)
            _transform_input(x[part], geometry, tile, dtype, v)
            delta = scratch("winograd.m", (tile + 2,) * r + (geometry.out_channels, n) + tiles,
                            dtype)
            _transform_delta(dy[part], geometry, tile, dtype, delta)
            v4 = v.reshape(positions, groups, ci, count)
            d4 = delta.reshape(positions, groups, co, count)
            if depthwise:
                du += np.einsum("pgct,pgdt->pgcd", d4, v4)
            else:
                du += np.matmul(d4, v4.swapaxes(-1, -2))
    return np.ascontiguousarray(_untransform_weight_gradient(du, geometry, tile), dtype=dtype)
