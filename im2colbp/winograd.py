"""Winograd minimal filtering: 3×3 (and 3, 3×3×3) stride-1 convolution as batched GEMMs.

Lavin & Gray (2016). Along one axis, F(m, 3) computes m outputs of a 3-tap
correlation from one tile of α = m + 2 inputs with α multiplications::

    y = Aᵀ [ (G w) ⊙ (Bᵀ d) ]          d: α inputs, w: 3 taps, y: m outputs

and the r-d form nests the 1-D one along every axis (the transforms are
separable). Per transformed position ξ (α^r of them) the channel sum is one
GEMM per group over the tiles of a block::

    M_ξ[g] = V_ξ[g] · U_ξ[g]          (T·n × C_in/G) · (C_in/G × C_out/G)

with U = G w Gᵀ (weights, once, in float64) and V = Bᵀ d B (input tiles).
Tiles overlap by 2 samples; output tiles do not. Layout and engineering:

* channels last: a block is ``(tile rows, *rest, n, C)``, copied in from
  ``(n, C, *S)`` once (padding and casting on the way), so that each GEMM
  reads contiguous rows;
* transforms as GEMMs (ranks 1 to 3): one strided copy gathers every tile's
  α^r inputs, one GEMM with the Kronecker product ``Bᵀ ⊗ Bᵀ`` (36 × 36 for
  F(4×4, 3×3)) transforms them all, and one with ``Aᵀ ⊗ Aᵀ`` maps M back,
  followed by one copy into y's tiles; from rank 4 the transforms are 1-D
  passes of small multiply-adds over strided views;
* fused and blocked: per block (a few tile rows of a few samples: about
  ``_BLOCK_BYTES`` of source, and GEMMs small enough that BLAS runs them in
  the calling thread, :data:`_SMALL_GEMM`) the input is copied in,
  transformed, multiplied and transformed back into y, so the working set
  is the block's, not the chunk's (:func:`winograd_sample_bytes`,
  :func:`winograd_fixed_bytes`);
* threads: such blocks run side by side under :func:`im2colbp.parallel.parallel_for`
  (each thread its own scratch, the weight gradient's partial sums added in a
  fixed order); blocks whose GEMMs are large keep the GEMMs on BLAS's threads
  and split only their copies and transforms over tile rows.

Gradients in Winograd form (derived in ``docs/winograd.md``):

* input gradient: at stride 1 it is the stride-1 convolution of δ padded by
  ``2 - P`` with :func:`im2colbp.kernels.backprop_kernel` — the same forward
  kernel on another geometry, nothing new;
* weight gradient: the adjoint of ``y = Aᵀ[U ⊙ V]A`` with respect to U is
  ``dU_ξ = Σ_tiles Δ_ξ · V_ξᵀ`` with ``Δ = A δ Aᵀ`` (δ cut into m-sized
  tiles), then ``dW = Gᵀ dU G``: the *transposes* of the forward transforms.

Accuracy: see :data:`ERROR_BOUNDS`. In float32, F(2, 3) is as accurate as
the lowering (below 1e-6 relative on the benchmark's shapes); F(4, 3), at
the points 0, ±1, 1/2, -2 (not Lavin & Gray's 0, ±1, ±2), is about 5 times
worse in 2-D (3.4e-6 on resnet3x3; ±2 gave 1.05e-5) and 7.1e-6 in 3-D:
cancellation in Aᵀ amplifies the GEMM's rounding. In float64 both are below
1e-13.

Non-finite values: a tile mixes its inputs, so an inf or nan in x, δ or the
weight spreads nan over whole tiles (the direct method would give inf at the
positions that read it). Callers that must reproduce IEEE semantics fall back
to im2col for non-finite operands.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .geometry import ConvGeometry
from .lowering import pad_into
from .parallel import get_thread_limit, parallel_for
from .workspace import chunk_slices, get_workspace_limit, scratch, scratch_scope

__all__ = [
    "TILES",
    "ERROR_BOUNDS",
    "transform_matrices",
    "winograd_reason_not",
    "winograd_sample_bytes",
    "winograd_fixed_bytes",
    "winograd_forward",
    "winograd_weight_gradient",
]

#: The output tile sizes m offered: F(2, 3) (α = 4) and F(4, 3) (α = 6).
TILES = (2, 4)

#: Float32 error bounds per ``(tile, rank)``: max |result - exact| over the
#: output, relative to its max |exact|, for standard-normal data. Measured
#: (``scripts/winograd_error.py`` and the 1-D run quoted in
#: ``docs/winograd.md``), worst of forward, input and weight gradient:
#: F(2, 3) 4.3e-7 (1-D), 6.8e-7 (2-D: teach, resnet3x3, depthwise), 8.5e-7
#: (3-D: conv3d's weight gradient); F(4, 3) at the points 0, ±1, 1/2, -2:
#: 1.0e-6 (1-D), 3.4e-6 (2-D, resnet3x3's input gradient; its forward
#: 2.8e-6), 7.1e-6 (3-D, conv3d's input gradient). The float32 lowering is
#: about 6e-7 (9.4e-7 on conv3d).
#: The bounds leave a factor of about 2; the tests hold the kernels to them
#: relative to ``max conv(|x|, |w|)``, the scale rounding errors grow with
#: (with a large input mean and weights summing to zero, the output is small
#: next to that scale and the error relative to it larger, as for im2col). The
#: weight gradient's error also grows with its reduction length N·∏O: at one
#: million positions in 1-D F(4, 3) measured 4.6e-6 to 7.7e-6 against
#: im2col's 1.5e-6, beyond the (4, 1) bound; the bounds hold for the
#: benchmark shapes. Float64: below 1e-13 for both tiles and every rank.
ERROR_BOUNDS = {(2, 1): 2e-6, (2, 2): 2e-6, (2, 3): 3e-6,
                (4, 1): 3e-6, (4, 2): 8e-6, (4, 3): 1.5e-5}

#: Bytes of source (tile rows of all samples of a chunk) that one block of the
#: fused transform–GEMM–back-transform aims at: its buffers (ten to twenty
#: times that) then stay in the outer caches. 512 KiB measured best of
#: 256 KiB–2 MiB on resnet3x3 (single thread, CPU time).
_BLOCK_BYTES = 2**19

# (Bᵀ, G, Aᵀ) per tile size m; exact small rationals (Toom–Cook at the points
# 0, ±1 for m = 2, Lavin & Gray's, and 0, ±1, 1/2, -2 for m = 4, plus the
# point at infinity). For m = 4 Lavin & Gray use 0, ±1, ±2; 1/2 and -2
# (Barabasz et al., 2018) keep Aᵀ's entries at most 8 and measured 3.6 times
# less float32 error on resnet3x3 (2.8e-6 against 1.0e-5). Rows of Bᵀ are
# scaled to integers, G's rows by the inverse (exact: powers of 2).
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
        np.array([[2, -3, -4, 3, 2, 0],
                  [0, -2, 1, 5, 2, 0],
                  [0, 2, -5, 1, 2, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 1, -2, -1, 2, 0],
                  [0, 2, -3, -4, 3, 2]], dtype=np.float64),
        np.array([[1 / 2, 0, 0],
                  [1 / 6, 1 / 6, 1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [-16 / 15, -8 / 15, -4 / 15],
                  [1 / 30, -1 / 15, 2 / 15],
                  [0, 0, 1 / 2]], dtype=np.float64),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 1 / 2, -2, 0],
                  [0, 1, 1, 1 / 4, 4, 0],
                  [0, 1, -1, 1 / 8, -8, 1]], dtype=np.float64),
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
    bt, g, at = _MATRICES[tile]
    return bt.copy(), g.copy(), at.copy()


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


def _row_elements(geometry: ConvGeometry, tile: int) -> Tuple[int, int]:
    """(every buffer's elements for one tile row of one sample, that row's source elements).

    A block of tile rows holds: the tile-aligned source rows, one output and
    one temporary per input pass, V and M, and one output and one temporary
    per output pass (the last being the output staging).
    """
    r, m, alpha = geometry.rank, tile, tile + 2
    tiles = (1,) + _tiles(geometry, tile)[1:]
    aligned = (m + 2,) + tuple(t * m + 2 for t in tiles[1:])
    c_in, c_out = geometry.in_channels, geometry.out_channels
    total = math.prod(aligned) * c_in
    for axis in range(r):  # input passes: axes <= axis are tiles with α positions
        out = alpha ** (axis + 1) * math.prod(tiles[:axis + 1]) * math.prod(aligned[axis + 1:])
        total += (out + out // alpha) * c_in
    total += alpha ** r * math.prod(tiles) * (c_in + c_out)  # V and M (or Δ)
    for axis in reversed(range(r)):  # output passes: axes >= axis are done (m outputs)
        out = alpha ** axis * math.prod(tiles) * m ** (r - axis)
        total += (out + out // m) * c_out
    source = m * math.prod(aligned[1:]) * max(c_in, c_out)
    return total, source


def winograd_sample_bytes(geometry: ConvGeometry, tile: int, itemsize: int) -> int:
    """Scratch bytes that grow with the chunk, per sample.

    The passes run block by block (tile rows of the first spatial axis, all
    samples of the chunk, about 512 KiB of source): transform, multiply and
    transform back, so nothing of the size of the whole chunk is ever held
    except, for a non-zero padding mode, the padded chunk (C_in·∏(I + P)
    per sample). A block holds at least one tile row of every sample,
    which is the other term.

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> winograd_sample_bytes(g, 4, 4)      # one tile row of one sample, every buffer
    780800
    """
    _check_tile(tile)
    row, _ = _row_elements(geometry, tile)
    padded = 0
    if geometry.window.padding_mode != "zeros":
        padded = geometry.in_channels * math.prod(geometry.window.padded_size)
    return (row + padded) * itemsize


def winograd_fixed_bytes(geometry: ConvGeometry, tile: int, itemsize: int, *,
                         weight_gradient: bool = True) -> int:
    """Scratch bytes that do not grow with the chunk: transformed weights, block buffers.

    The transformed weights U (forward) or the weight gradient's dU,
    α^r·C_out·C_in/G elements; for the weight gradient two more of that size
    per thread that can run (:func:`im2colbp.get_thread_limit`, at most one
    per block: each thread's partial dU and its GEMM's result); the float64
    temporaries of transforming the weights (or dU back), two float64 arrays
    of U's size; plus the buffers of about ``_BLOCK_BYTES``
    of source (512 KiB, or the whole input when smaller; threads share it, each
    a block of its part), which hold ten to twenty times that. With
    :func:`winograd_sample_bytes` this bounds every buffer of a call, in every
    thread: ``samples_per_chunk * sample_bytes + fixed_bytes``.

    Examples
    --------
    >>> import im2colbp as ib
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((8, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> with ib.thread_limit(1):
    ...     winograd_fixed_bytes(g, 4, 4) // 2**20, winograd_fixed_bytes(
    ...         g, 4, 4, weight_gradient=False) // 2**20
    (10, 9)
    """
    _check_tile(tile)
    positions = (tile + 2) ** geometry.rank
    u = positions * geometry.out_channels * (geometry.in_channels // geometry.groups)
    # U (or dU), and for dW per thread a partial dU and the GEMM's result before it is added
    copies = 1
    if weight_gradient:  # the threads that can run: at most one per block of the batch
        work, threaded = _work_blocks(geometry, tile, max(geometry.batch, 1),
                                      np.dtype(f"f{itemsize}"))
        copies += 2 * (min(get_thread_limit(), len(work)) if threaded else 1)
    weights = copies * u * itemsize + 2 * u * 8  # and the float64 transform temporaries
    row, source = _row_elements(geometry, tile)
    # a block is at most the whole batch's tile rows (a small input is one block)
    whole = max(geometry.batch, 1) * _tiles(geometry, tile)[0] * source * itemsize
    block = min(_block_bytes(geometry, tile), whole)
    blocks = -(-block * row // max(source, 1))
    return weights + blocks


def _block_bytes(geometry: ConvGeometry, tile: int) -> int:
    """Source bytes of one block: about ``_BLOCK_BYTES`` (cache-sized), and less under a
    small workspace limit, so that a block's buffers (ten to twenty times its source)
    stay within the limit."""
    row, source = _row_elements(geometry, tile)
    return max(1, min(_BLOCK_BYTES, get_workspace_limit() * source // max(row, 1)))


# --------------------------------------------------------------------------
# the 1-D passes: small-integer multiply-adds over strided views
# --------------------------------------------------------------------------
def _combine(out: np.ndarray, terms: Sequence[Tuple[float, np.ndarray]], tmp: np.ndarray) -> None:
    """``out = Σ c·view`` over ``terms``, one ufunc (one pass over ``out``) per term.

    The first two terms share one ufunc (``a ± b``, or ``c·b`` then ``+ a``);
    each further unit term is one add or subtract, each further scaled term a
    multiply into ``tmp`` and an add.
    """
    if not terms:
        out[...] = 0
        return
    # unit coefficients first: they combine without a multiply
    terms = sorted(terms, key=lambda term: abs(term[0]) != 1)
    (c0, v0), rest = terms[0], terms[1:]
    if not rest:
        if c0 == 1:
            np.copyto(out, v0)
        elif c0 == -1:
            np.negative(v0, out=out)
        else:
            np.multiply(v0, c0, out=out)
        return
    (c1, v1), rest = rest[0], rest[1:]
    if abs(c0) == 1 and abs(c1) == 1:
        if c0 == 1:
            (np.add if c1 == 1 else np.subtract)(v0, v1, out=out)
        elif c1 == 1:
            np.subtract(v1, v0, out=out)
        else:
            np.add(v0, v1, out=out)
            np.negative(out, out=out)
    elif abs(c0) == 1:
        np.multiply(v1, c1, out=out)
        (np.add if c0 == 1 else np.subtract)(out, v0, out=out)  # c1·v1 ± v0
    else:
        np.multiply(v0, c0, out=out)
        np.multiply(v1, c1, out=tmp)
        np.add(out, tmp, out=out)
    for coefficient, view in rest:
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
    outs = [out[_along(out, lead, xi)] for xi in range(matrix.shape[0])]
    for xi, target in enumerate(outs):
        terms = [(float(c), views[j]) for j, c in enumerate(matrix[xi]) if c != 0]
        _combine(target, terms, tmp)


def _gather_pass(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, lead: int,
                 axis: int, tmp: np.ndarray) -> None:
    """``out[j at axis] = Σ_ξ matrix[j, ξ] · source[ξ at lead]`` (the ξ axis disappears)."""
    views = [source[_along(source, lead, xi)] for xi in range(matrix.shape[1])]
    outs = [out[_along(out, axis, j)] for j in range(matrix.shape[0])]
    for j, target in enumerate(outs):
        terms = [(float(c), views[xi]) for xi, c in enumerate(matrix[j]) if c != 0]
        _combine(target, terms, tmp)


def _transform_tiles(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, step: int,
                     tiles: Tuple[int, ...], name: str) -> None:
    """Transform the tiles of ``source`` (*S, n, C) along every axis into ``out`` (α^r, *T, n, C).

    Tile t of axis a starts at ``step·t`` and spans ``matrix.shape[1]``
    samples; axis by axis, a pass replaces that axis by its T tiles and
    prepends its α transformed positions (after those of earlier axes).
    """
    r = len(tiles)
    if r <= _GEMM_TRANSFORM_RANK:
        _gemm_transform_tiles(source, out, matrix, step, tiles, name)
        return
    lead = 0
    alpha = matrix.shape[0]
    current = source
    for axis in range(r):
        # `current`: (ξ_1..ξ_axis, T_1..T_axis, S_{axis+1}, ..., n, C)
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

#: Ranks up to which a block's transforms are one GEMM with the Kronecker
#: product of the 1-D transforms (α^r × α^r: 36 × 36 for F(4×4, 3×3), 216 ×
#: 216 for F(4×4×4, 3×3×3)) on the tiles gathered by one strided copy,
#: instead of r passes of ufuncs (about 40 for F(4×4, 3×3)). Measured (one
#: core, f+b CPU time): resnet3x3 F(4, 3) 69 -> 57 ms, conv3d F(4, 3)
#: 85 -> 71 ms, F(2, 3) 71 -> 63 ms. From rank 4 (1296 × 1296) the passes.
_GEMM_TRANSFORM_RANK = 3

#: The output transform as a GEMM needs a copy into y that interleaves m-sized
#: runs (y's rows are tile by tile): for m = 2 those runs are too short, and
#: F(2, 3) measured faster with the passes into channels-last staging and one
#: moveaxis (resnet3x3, one core: 15 against 23 ms per f+b).
_GEMM_OUTPUT_TILE = 4

_KRON: Dict[Tuple[bytes, Tuple[int, ...], int, str], np.ndarray] = {}


def _kron(matrix: np.ndarray, rank: int, dtype: np.dtype) -> np.ndarray:
    """``matrix ⊗ ... ⊗ matrix`` (rank factors) in ``dtype``: the r-d transform of a tile."""
    key = (matrix.tobytes(), matrix.shape, rank, dtype.str)
    cached = _KRON.get(key)
    if cached is None:
        cached = matrix
        for _ in range(rank - 1):
            cached = np.kron(cached, matrix)
        cached = _KRON[key] = np.ascontiguousarray(cached, dtype=dtype)
    return cached


def _small_products(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a · b`` ((P, Q) · (Q, N) -> (P, N)) in column panels whose GEMMs BLAS runs
    in the calling thread (M·N·K up to :data:`_SMALL_GEMM`), so that it may run inside
    a threaded part; one batched ``matmul`` over the full panels, one for the rest."""
    p, q = a.shape
    n = b.shape[1]
    width = max(16, _SMALL_GEMM // (p * q) // 16 * 16)
    full = n // width * width
    if full:
        np.matmul(a, b[:, :full].reshape(q, -1, width).transpose(1, 0, 2),
                  out=out[:, :full].reshape(p, -1, width).transpose(1, 0, 2))
    if full < n:
        np.matmul(a, b[:, full:], out=out[:, full:])


def _flat(array: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """A view of ``array`` with ``shape`` (never a copy: raises if the strides forbid it)."""
    view = array.view()
    view.shape = shape
    return view


def _gemm_transform_tiles(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, step: int,
                          tiles: Tuple[int, ...], name: str) -> None:
    """:func:`_transform_tiles` as one strided gather and one GEMM (Kronecker power of ``matrix``).

    ``source`` (*S, n, C) must be C-contiguous; tile t of axis a is
    ``source[step·t : step·t + s]`` along a (s = ``matrix.shape[1]``). The
    gather copies every tile's s^r samples to ``(s^r, *T, n·C)`` (inner loops
    of n·C contiguous elements); the GEMM maps them to the α^r positions.
    """
    r = len(tiles)
    alpha, span = matrix.shape
    lanes = source.shape[-2] * source.shape[-1]
    item = source.itemsize
    strides = source.strides[:r]
    view = np.lib.stride_tricks.as_strided(
        source, (span,) * r + tuple(tiles) + (lanes,),
        tuple(strides) + tuple(step * stride for stride in strides) + (item,), writeable=False)
    gathered = scratch(f"{name}.gather", (span ** r, math.prod(tiles) * lanes), out.dtype)
    np.copyto(_flat(gathered, view.shape), view)
    _small_products(_kron(matrix, r, out.dtype), gathered,
                    _flat(out, (alpha ** r, gathered.shape[1])))


def _untransform_tiles(source: np.ndarray, out: np.ndarray, matrix: np.ndarray, rank: int,
                       name: str) -> None:
    """Inverse layout of :func:`_transform_tiles` for the output transform.

    ``source`` (α^r, T_1..T_r, n, C) becomes ``out`` (T_1, m, ..., T_r, m, n, C):
    axis by axis from the last, a pass removes that axis's ξ and puts its m
    outputs right after its tile index.
    """
    lead = 0
    m = matrix.shape[0]
    current = source
    for axis in reversed(range(rank)):
        # `current`: (ξ_1..ξ_{axis+1}, T_1, .., T_{axis+1}, [m, T, m ...], n, C)
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
    """U = G w Gᵀ per axis, in float64, as (α^r, G, C_in/G, C_out/G) in ``dtype``."""
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
    u = u.reshape(positions, groups, out_per_group, -1).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(u, dtype=dtype)


def _untransform_weight_gradient(du: np.ndarray, geometry: ConvGeometry,
                                 tile: int) -> np.ndarray:
    """dW = Gᵀ dU G per axis: (α^r, G, C_in/G, C_out/G) -> (C_out, C_in/G, 3, ..., 3)."""
    _, filt, _ = _MATRICES[tile]
    r = geometry.rank
    alpha = tile + 2
    d = du.astype(np.float64).transpose(0, 1, 3, 2)
    d = d.reshape((alpha,) * r + (geometry.out_channels, -1))
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


def _fill(block: np.ndarray, source: np.ndarray, offset: Sequence[int], start: int) -> None:
    """Place ``source`` (n, C, *S) at coordinates ``offset`` into ``block`` (*R, n, C).

    ``block`` covers ``[start, start + R_1)`` on the first spatial axis and
    ``[0, R_a)`` on the others; what ``source`` does not cover is zero. Casts
    to the block's dtype; moves samples and channels last (one copy).
    """
    block_slices = []
    source_slices = []
    full = True
    for axis, size in enumerate(block.shape[:-2]):
        low = start if axis == 0 else 0
        begin = max(low, offset[axis])
        end = min(low + size, offset[axis] + source.shape[2 + axis])
        if begin >= end:
            block[...] = 0
            return
        full = full and begin == low and end == low + size
        block_slices.append(slice(begin - low, end - low))
        source_slices.append(slice(begin - offset[axis], end - offset[axis]))
    if not full:
        block[...] = 0
    target = block[tuple(block_slices)]
    order = tuple(range(1, source.ndim - 1)) + (0,)
    for sample in range(source.shape[0]):  # one (C, *S) -> (*S, C) transpose each: faster
        target[..., sample, :] = source[(sample, slice(None)) + tuple(source_slices)].transpose(
            order)


def _input_source(x_part: np.ndarray, geometry: ConvGeometry,
                  dtype: np.dtype) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """What the tiles are cut from, and where it sits in padded coordinates.

    Zero padding needs no copy (the blocks are zero where x is not); the
    other modes pad the chunk once, into scratch.
    """
    window = geometry.window
    if window.padding_mode == "zeros":
        return x_part, tuple(before for before, _ in window.padding)
    padded = scratch("winograd.modepad", x_part.shape[:2] + window.padded_size, dtype)
    pad_into(x_part, window, padded)
    return padded, (0,) * geometry.rank


def _transform_input(source: np.ndarray, offset: Tuple[int, ...], geometry: ConvGeometry,
                     tile: int, rows: slice, v: np.ndarray) -> None:
    """V (α^r, rows, *T_rest, n, C_in) = Bᵀ d B of the input tiles in tile ``rows``."""
    bt, _, _ = _MATRICES[tile]
    tiles = _tiles(geometry, tile)
    aligned = tuple(t * tile + 2 for t in tiles)
    n, channels = source.shape[:2]
    nrows = rows.stop - rows.start
    block = scratch("winograd.block", (nrows * tile + 2,) + aligned[1:] + (n, channels),
                    v.dtype)
    _fill(block, source, offset, rows.start * tile)
    _transform_tiles(block, v, bt, tile, (nrows,) + tiles[1:], "winograd.in")


def _multiply(u: np.ndarray, v: np.ndarray, m: np.ndarray, groups: int) -> None:
    """M_ξ = V_ξ · U_ξ per group: (α^r, T·n, C_in) x (α^r, G, C_in/G, C_out/G) -> M."""
    positions, ci, co = u.shape[0], u.shape[2], u.shape[3]
    v3 = v.reshape(positions, -1, groups, ci)
    m3 = m.reshape(positions, -1, groups, co)
    if groups == 1:
        np.matmul(v3[:, :, 0], u[:, 0], out=m3[:, :, 0])
    elif ci == 1:  # depthwise: a broadcast product, no GEMM
        np.multiply(v3, u.reshape(positions, 1, groups, co), out=m3)
    else:
        m3[...] = np.matmul(v3.transpose(0, 2, 1, 3), u).transpose(0, 2, 1, 3)


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
    fewer) for F(4×4, 3×3). The transforms cost α^r·α^r multiply-adds per
    tile and channel as GEMMs up to 3-D (O(α^r) adds as passes from 4-D)
    and, with the copies in and out, are memory-bound.

    Error bound (float32, ``max|error| / max|exact|`` against float64, standard
    normal data): :data:`ERROR_BOUNDS` — F(2, 3) 2e-6 (3e-6 in 3-D); F(4, 3)
    3e-6 in 1-D, 8e-6 in 2-D, 1.5e-5 in 3-D. Float64: 1e-13.

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
    y = np.empty((batch, geometry.out_channels) + geometry.window.out_size, dtype=dtype)
    if y.size == 0:
        return y
    if geometry.in_channels == 0:
        y[...] = 0
        return y
    u = _transform_weight(weight, geometry, tile, dtype)  # (α^r, G, C_in/G, C_out/G)
    planned = (samples_per_chunk * winograd_sample_bytes(geometry, tile, dtype.itemsize)
               + winograd_fixed_bytes(geometry, tile, dtype.itemsize, weight_gradient=False))
    with scratch_scope(planned):
        for part in chunk_slices(batch, samples_per_chunk):
            source, offset = _input_source(x[part], geometry, dtype)
            y_part = y[part]

            def run(block: Tuple[slice, slice], source=source, offset=offset,
                    y_part=y_part) -> None:
                samples, rows = block
                _forward_block(u, source[samples], offset, y_part[samples], geometry, tile,
                               rows)

            _run_blocks(run, _work_blocks(geometry, tile, part.stop - part.start, dtype),
                        x[part].nbytes + y_part.nbytes)
    return y


def _forward_block(u: np.ndarray, source: np.ndarray, offset: Tuple[int, ...],
                   y_part: np.ndarray, geometry: ConvGeometry, tile: int, rows: slice) -> None:
    """Transform, multiply and transform back one block: tile ``rows`` of ``source``'s samples.

    Inside a threaded block (:func:`_run_blocks`) everything runs in the
    calling thread; a block run alone splits its transforms over threads by
    tile rows (:func:`_in_threads`) around the GEMMs, which BLAS threads.
    """
    r = geometry.rank
    n = source.shape[0]
    block = (tile + 2,) * r + (rows.stop - rows.start,) + _tiles(geometry, tile)[1:]
    v = scratch("winograd.v", block + (n, geometry.in_channels), u.dtype)
    m = scratch("winograd.m", block + (n, geometry.out_channels), u.dtype)
    _in_threads(rows, v.nbytes, lambda sub, inner: _transform_input(
        source, offset, geometry, tile, sub, v[inner]), r)
    _multiply(u, v, m, geometry.groups)
    _in_threads(rows, m.nbytes, lambda sub, inner: _output_transform(
        m[inner], y_part, geometry, tile, sub), r)


#: M·N·K of one GEMM up to which OpenBLAS runs it in the calling thread
#: (0.3.31, SkylakeX, measured: 36 GEMMs of 224×64×64, M·N·K = 917504, ran in
#: the caller at 150 GFLOP/s; of 448×64×64 on 2 threads at 57 GFLOP/s in
#: all). A block whose GEMMs stay below this runs whole (transform, GEMM,
#: back-transform) in a worker thread, blocks side by side.
_SMALL_GEMM = 900_000


def _work_blocks(geometry: ConvGeometry, tile: int, n: int,
                 dtype: np.dtype) -> Tuple[Sequence[Tuple[slice, slice]], bool]:
    """The blocks (sample range, tile rows) a chunk of n samples runs in, and whether
    they run side by side in threads.

    A unit is one tile row (first spatial axis) of one sample. A block holds
    about :func:`_block_bytes` of source (all samples, as many tile rows as
    fit). When a unit's GEMMs are small (M·N·K up to :data:`_SMALL_GEMM`:
    BLAS then runs them in the calling thread, at about 2.5 times the speed
    it reaches splitting them over 2 threads), blocks shrink so that their
    GEMMs stay small; when the thread limit is above 1 they then run side by
    side, each thread's block a share of the cache budget (so that
    :func:`winograd_fixed_bytes` holds for any thread count).
    """
    tiles = _tiles(geometry, tile)
    aligned = tuple(t * tile + 2 for t in tiles)
    channels = max(geometry.in_channels, geometry.out_channels)
    unit_bytes = max(1, tile * math.prod(aligned[1:]) * channels * dtype.itemsize)
    budget = max(1, _block_bytes(geometry, tile) // unit_bytes)  # units per block
    groups = geometry.groups
    gemm = math.prod(tiles[1:]) * (geometry.in_channels // groups) * (
        geometry.out_channels // groups)
    small = gemm <= _SMALL_GEMM
    threads = get_thread_limit()
    threaded = small and threads > 1
    if small:  # GEMMs BLAS runs in the caller: fast, and blocks may run side by side
        budget = max(1, min(budget // (threads if threaded else 1), _SMALL_GEMM // max(gemm, 1)))
    if budget >= n:  # all samples, several tile rows (as many in every block as can be)
        rows = -(-tiles[0] // -(-tiles[0] // (budget // n)))
        blocks = [(slice(0, n), slice(start, min(tiles[0], start + rows)))
                  for start in range(0, tiles[0], rows)]
    else:  # a few samples (as many in every block as can be), one tile row
        samples = -(-n // -(-n // budget))
        blocks = [(slice(first, min(n, first + samples)), slice(row, row + 1))
                  for row in range(tiles[0]) for first in range(0, n, samples)]
    return blocks, threaded and len(blocks) > 1


def _run_blocks(function: Callable[[Tuple[slice, slice]], None],
                planned: Tuple[Sequence[Tuple[slice, slice]], bool], work_bytes: int) -> None:
    """``function(block)`` for every block of :func:`_work_blocks`, side by side when threaded."""
    blocks, threaded = planned
    if not threaded:
        for block in blocks:
            function(block)
        return

    def part(piece: slice) -> None:
        with scratch_scope():
            for block in blocks[piece]:
                function(block)

    parallel_for(part, len(blocks), work_bytes)


def _in_threads(rows: slice, work_bytes: int, function, rank: int) -> None:
    """Run ``function(sub, inner)`` over parts of the block's tile ``rows``, in threads.

    ``sub`` is a part's tile rows (absolute), ``inner`` the index of its rows
    in the block's buffers (whose tile-row axis follows the α^r positions).
    Parts write disjoint tile rows; each part's temporaries come from its own
    thread's scratch pool. Bounded by :func:`im2colbp.thread_limit`.
    """
    def part(piece: slice) -> None:
        with scratch_scope():
            function(slice(rows.start + piece.start, rows.start + piece.stop),
                     (slice(None),) * rank + (piece,))

    parallel_for(part, rows.stop - rows.start, work_bytes)


def _output_transform(m: np.ndarray, y_part: np.ndarray, geometry: ConvGeometry, tile: int,
                      rows: slice) -> None:
    """y_part (n, C_out, *O) in tile ``rows`` = Aᵀ M A of the block's tiles, cropped to O."""
    _, _, at = _MATRICES[tile]
    r = geometry.rank
    tiles = _tiles(geometry, tile)
    out_size = geometry.window.out_size
    n, channels = y_part.shape[:2]
    block_tiles = (rows.stop - rows.start,) + tiles[1:]
    first = rows.start * tile
    if r <= _GEMM_TRANSFORM_RANK and tile >= _GEMM_OUTPUT_TILE:
        # Y (m^r, *T, n, C) = (Aᵀ ⊗ ... ⊗ Aᵀ) · M, then one copy into y's tiles
        lanes = math.prod(block_tiles) * n * channels
        product = scratch("winograd.out.gemm", (tile ** r, lanes), m.dtype)
        _small_products(_kron(at, r, m.dtype), _flat(m, ((tile + 2) ** r, lanes)), product)
        # (i_1..i_r, T_1..T_r, n, C) -> (n, C, T_1, i_1, ..., T_r, i_r)
        order = (2 * r, 2 * r + 1) + sum(((r + a, a) for a in range(r)), ())
        tiled = product.reshape((tile,) * r + block_tiles + (n, channels)).transpose(order)
        valid = (min(block_tiles[0] * tile, out_size[0] - first),) + out_size[1:]
        target = y_part[:, :, first:first + valid[0]]
        if all(t * tile == v for t, v in zip(block_tiles, valid)):
            _flat(target, (n, channels) + sum(((t, tile) for t in block_tiles), ()))[...] = tiled
        else:  # ragged: the last tiles reach beyond O
            stage = scratch("winograd.stage", (n, channels) + sum(
                ((t, tile) for t in block_tiles), ()), m.dtype)
            stage[...] = tiled
            stage = stage.reshape((n, channels) + tuple(t * tile for t in block_tiles))
            target[...] = stage[(slice(None),) * 2 + tuple(slice(0, v) for v in valid)]
        return
    stage = scratch("winograd.stage", sum(((t, tile) for t in block_tiles), ()) + (n, channels),
                    m.dtype)
    _untransform_tiles(m, stage, at, r, "winograd.out")
    valid = (min(block_tiles[0] * tile, out_size[0] - first),) + out_size[1:]
    stage = stage.reshape(tuple(t * tile for t in block_tiles) + (n, channels))
    stage = stage[tuple(slice(0, v) for v in valid)]
    y_part[:, :, first:first + valid[0]] = np.moveaxis(stage, (-2, -1), (0, 1))


def _transform_delta(dy_part: np.ndarray, geometry: ConvGeometry, tile: int, rows: slice,
                     delta: np.ndarray) -> None:
    """Δ (α^r, rows, *T_rest, n, C_out) = A δ Aᵀ of the m-sized δ tiles (zero beyond O)."""
    _, _, at = _MATRICES[tile]
    tiles = _tiles(geometry, tile)
    aligned = tuple(t * tile for t in tiles)
    n, channels = dy_part.shape[:2]
    nrows = rows.stop - rows.start
    block = scratch("winograd.dblock", (nrows * tile,) + aligned[1:] + (n, channels),
                    delta.dtype)
    _fill(block, dy_part, (0,) * geometry.rank, rows.start * tile)
    _transform_tiles(block, delta, at.T, tile, (nrows,) + tiles[1:], "winograd.delta")


def _weight_block(du: np.ndarray, source: np.ndarray, offset: Tuple[int, ...],
                  dy_part: np.ndarray, geometry: ConvGeometry, tile: int, rows: slice) -> None:
    """``du += Σ_tiles Vᵀ·Δ`` over one block: tile ``rows`` of the samples of ``source``."""
    r = geometry.rank
    groups = geometry.groups
    positions, ci, co = du.shape[0], du.shape[2], du.shape[3]
    n = source.shape[0]
    block = (tile + 2,) * r + (rows.stop - rows.start,) + _tiles(geometry, tile)[1:]
    v = scratch("winograd.v", block + (n, geometry.in_channels), du.dtype)
    delta = scratch("winograd.m", block + (n, geometry.out_channels), du.dtype)

    def both(sub: slice, inner: tuple) -> None:
        _transform_input(source, offset, geometry, tile, sub, v[inner])
        _transform_delta(dy_part, geometry, tile, sub, delta[inner])

    _in_threads(rows, v.nbytes + delta.nbytes, both, r)
    v3 = v.reshape(positions, -1, groups, ci)
    d3 = delta.reshape(positions, -1, groups, co)
    if groups == 1:
        du[:, 0] += np.matmul(v3[:, :, 0].swapaxes(1, 2), d3[:, :, 0])
    elif ci == 1 and co == 1:  # depthwise: per-position dot products
        du[:, :, 0, 0] += np.einsum("ptg,ptg->pg", v3[..., 0], d3[..., 0])
    else:
        du += np.matmul(v3.transpose(0, 2, 3, 1), d3.transpose(0, 2, 1, 3))


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
    Error bound (float32, relative to ``max|dW|``): :data:`ERROR_BOUNDS`, as for
    :func:`winograd_forward` (resnet3x3 measured 4.5e-7 for F(2, 3), 1.6e-6
    for F(4, 3)). The sum over n·T tiles runs in the GEMM's precision like
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
    _check_arrays(geometry, dy, "dy",
                  (batch, geometry.out_channels) + geometry.window.out_size,
                  tile, samples_per_chunk)
    r = geometry.rank
    groups = geometry.groups
    ci, co = geometry.in_channels // groups, geometry.out_channels // groups
    positions = (tile + 2) ** r
    if batch == 0 or geometry.out_channels == 0 or geometry.in_channels == 0:
        return np.zeros(geometry.weight_shape, dtype=dtype)
    du = np.zeros((positions, groups, ci, co), dtype=dtype)
    planned = (samples_per_chunk * winograd_sample_bytes(geometry, tile, dtype.itemsize)
               + winograd_fixed_bytes(geometry, tile, dtype.itemsize))
    with scratch_scope(planned):
        for part in chunk_slices(batch, samples_per_chunk):
            source, offset = _input_source(x[part], geometry, dtype)
            dy_part = dy[part]
            blocks, threaded = _work_blocks(geometry, tile, part.stop - part.start, dtype)
            if not threaded:
                for samples, rows in blocks:
                    _weight_block(du, source[samples], offset, dy_part[samples], geometry,
                                  tile, rows)
                continue
            partials: Dict[int, np.ndarray] = {}

            def run(piece: slice, source=source, offset=offset, dy_part=dy_part,
                    blocks=blocks, partials=partials, shape=du.shape) -> None:
                own = np.zeros(shape, dtype)  # each thread sums its blocks, then they are added
                with scratch_scope():
                    for samples, rows in blocks[piece]:
                        _weight_block(own, source[samples], offset, dy_part[samples],
                                      geometry, tile, rows)
                partials[piece.start] = own

            parallel_for(run, len(blocks), x[part].nbytes + dy_part.nbytes)
            for start in sorted(partials):
                du += partials[start]
    return np.ascontiguousarray(_untransform_weight_gradient(du, geometry, tile), dtype=dtype)
