"""A direct path for depthwise convolution: banded GEMMs, no columns.

Depthwise means one input channel per group (``C_in/G = 1``); every group's
``M = C_out/G >= 1`` filters (the *channel multiplier*) read that one channel.
im2col turns each group into a matrix-*vector* product over ``∏K`` times the
input, which runs at memory speed at best. This module makes it a GEMM again
by moving the kernel into the matrix instead of copying the input.

The banded (Toeplitz) lowering
------------------------------
Flatten one channel of one padded sample. An output *row* (the positions
``o_1..o_{r-1}`` fixed, ``T`` positions ``t`` along the last axis) reads one
contiguous *run* of the flat input that starts at ``j·step`` (``j`` the row,
``step = S_{r-1}·P_r`` in 2-D) and is ``R`` samples long. Tap ``k`` of
output ``t`` reads the run's sample ``offset_k + t·S_r``. So the row is
``run · B`` with the banded matrix::

    B[offset_k + t·S_r, m·T + t] = w[g·M + m, 0, k]        (R, M·T), zero elsewhere

one per channel (its ``M`` filters side by side). Runs of neighbouring rows
overlap; but the runs of every ``Q``-th row (``Q = ceil(R/step)``) do not, and
laid end to end they are just the flat buffer read ``Q·step`` at a time —
a *reshape*, no copy. So each of the ``Q`` phases ``p`` is one batched GEMM
over the channels, straight on the padded input::

    A_p = flat[p·step : ...].reshape(rows, Q·step)[:, :R]       (rows, R) per channel
    Y_p = A_p · B                                                rows j = slot·Q + p

The weight gradient is the same product transposed, summed along the bands
(``dw[.., k] = Σ_t (Σ_p A_pᵀ·δ_p)[offset_k + t·S_r, m·T + t]``), and the input
gradient is its adjoint, ``dA_p = δ_p · Bᵀ``, added back onto the runs it came
from (then folded through the padding with :func:`~im2colbp.lowering.unpad_add`).

In 2-D a row is a whole output row (``T = O_r``); in 1-D the signal is cut into
rows of ``T`` outputs (``step = T·S``). The cost is ``R`` multiply-adds per
output instead of ``∏K`` (``R ≈ K_1·P_2`` in 2-D): more arithmetic, but in
a GEMM on both cores instead of ``∏K`` single-threaded passes over memory.

Ranks ≥ 3 (and any chunk whose data hold inf/nan, where ``inf·0`` of a band's
zero would spread NaN along a row) take the *tap loop*: one strided
multiply-accumulate per kernel offset, exact for every geometry.

Wide rows are cut into tiles of about ``TILE_OUTPUTS`` outputs, each
lowered as a sample of its own (its columns copied out with the neighbours'
overlap; with zero padding straight from x, one copy): ``R`` drops from
``K_1·P_2`` to ``K_1·(T + K_2 - 1)``. At stride 1 with ``M = 1`` the input
gradient is Aggarwal's transposition — the forward path on δ padded by
``D·(K-1) - P`` with the flipped kernel — else the adjoint above.
``depthwise_forward(..., keep=True)`` hands its loaded input to the weight
gradient (about x's size, not ∏K times it), which then needs no x at all
(its inf/nan fallback reads the padded x back from the kept copy).

The layout copies between the GEMMs (loading the padded tiles, gathering the
phases' products into y, δ into the phases) are NumPy copies with short inner
rows (a tile is ~14 wide). They run in the calling thread: split over two
threads of channel slabs on an idle 2-core machine, the
depthwise benchmark's forward + backward went from 8.8 ms to 13.3 ms (OpenBLAS's
threads, woken by the GEMMs between the copies, spin on the core the second
copy thread needs).

Why not shifted multiply-adds (``y += w_k · x_shifted`` per tap on the padded
flat buffer, no GEMM)? Measured (3×3 on 28×28, float32, one thread): 17 NumPy
passes of ~0.1 ns per element each, 3.0 ms forward against the banded path's
2.8; and 2-4× slower with a stride, 1-D, or small chunks (NumPy's
scalar-broadcast multiply costs ~0.2 µs per row).

When it beats im2col (float32 forward + both gradients, 2 threads, Xeon with
AVX-512, shared machine; ``scripts/depthwise_speed.py``, direct / im2col):
M = 1: 0.45 (1-D, K 9, L 4000), 0.55 (5×5), 0.6-0.8 (3×3 at 28..112 wide),
1.0 (3×3 at 14×14, 7×7 or stride 2); M = 2: 1.5 (slower). So: use it for
M = 1 when the last output axis is at least ~20 wide (or rank 1); im2col
otherwise.

Symbols: N batch, C_in / C_out channels, G groups, M = C_out/G, r rank,
I input, K kernel, O output, S stride, P padding, D dilation, δ = dL/dy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import DTypeLike

from .geometry import ConvGeometry, Pairs, WindowGeometry, conv_geometry
from .lowering import pad_into, unpad_add
from .workspace import chunk_slices, scratch, scratch_scope

__all__ = [
    "MAX_TAPS",
    "DepthwiseKept",
    "depthwise_reason_not",
    "depthwise_sample_bytes",
    "depthwise_fixed_bytes",
    "depthwise_forward",
    "depthwise_input_gradient",
    "depthwise_weight_gradient",
]

#: Kernels with more taps than this are declined (the tap loop's Python loop and
#: the bands' length both grow with the kernel): im2col serves them.
MAX_TAPS = 64

#: Outputs per row of the 1-D banded lowering (the GEMM's inner width).
ROW_OUTPUTS_1D = 16

#: Preferred outputs per tile of a wide 2-D row (rows of at least twice this are tiled).
TILE_OUTPUTS = 12


# --------------------------------------------------------------------------
# applicability and the banded layout
# --------------------------------------------------------------------------
def depthwise_reason_not(geometry: ConvGeometry) -> Optional[str]:
    """Why the direct depthwise path cannot serve ``geometry``, or None if it can.

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> print(depthwise_reason_not(conv_geometry((2, 4, 9, 9), (8, 1, 3, 3), groups=4)))
    None
    >>> depthwise_reason_not(conv_geometry((2, 4, 9, 9), (4, 2, 3, 3), groups=2))
    'not depthwise: 2 input channels per group (C_in/G must be 1)'
    """
    per_group = geometry.in_channels // geometry.groups if geometry.groups else 0
    if geometry.in_channels and per_group != 1:
        return f"not depthwise: {per_group} input channels per group (C_in/G must be 1)"
    taps = geometry.window.kernel_volume
    if taps > MAX_TAPS:
        return f"kernel of {taps} taps (more than {MAX_TAPS}): im2col serves large kernels"
    return None


@dataclass(frozen=True)
class _Bands:
    """Index arithmetic of the banded lowering of one window (rank 1 or 2).

    Per sample (and tile) and channel the padded input sits at the start of a
    flat region of ``region`` samples (zeros after it); rows ``j < rows``
    start at ``j·step``; phase ``p`` reads slots ``s`` as rows ``s·Q + p``.
    In 2-D the last axis may be cut into ``tiles`` tiles of ``outputs``
    positions, each lowered as a sample of its own (its ``width`` padded
    columns copied out of the padded row, neighbours overlapping): shorter
    runs, fewer wasted multiplications, one more copy.
    """

    step: int          # flat distance between consecutive rows' runs
    run: int           # R, the samples one row reads
    phases: int        # Q = ceil(R / step)
    outputs: int       # T, outputs per row (per tile)
    rows: int          # J, rows per sample that hold real outputs
    slots: int         # runs per sample and phase (slots·Q ≥ J)
    offsets: Tuple[int, ...]   # offset_k in the run, kernel offsets in C order
    inner_stride: int  # S_r
    tiles: int = 1     # tiles along the last axis (2-D)
    width: int = 0     # padded columns of one tile (2-D, tiled)

    @property
    def region(self) -> int:
        return self.slots * self.phases * self.step

    def slack(self) -> int:
        """Samples past the last region that the last slot's runs may read."""
        return self.phases * self.step

    @property
    def extended(self) -> int:
        """Padded columns the tiles span (2-D, tiled): ``(tiles-1)·T·S + width``."""
        return (self.tiles - 1) * self.outputs * self.inner_stride + self.width


def _tiling(width: int) -> Tuple[int, int]:
    """(tiles, T) for ``width`` outputs: T near TILE_OUTPUTS, dividing the width when a
    divisor within [TILE_OUTPUTS/2, 3·TILE_OUTPUTS/2] exists (no staging copy then)."""
    low, high = max(1, TILE_OUTPUTS // 2), max(1, (3 * TILE_OUTPUTS) // 2)
    divisors = [t for t in range(low, high + 1) if width % t == 0 and t < width]
    if divisors:
        outputs = min(divisors, key=lambda t: (abs(t - TILE_OUTPUTS), -t))
        return width // outputs, outputs
    tiles = -(-width // TILE_OUTPUTS)
    return tiles, -(-width // tiles)


def _bands(window: WindowGeometry, tiled: bool = False) -> Optional[_Bands]:
    """The banded layout of a rank-1 or rank-2 window (None for other ranks)."""
    tiles, tile_width = 1, 0
    if window.rank == 2:
        (s_h, s_w), (d_h, d_w) = window.stride, window.dilation
        (k_h, k_w), (o_h, o_w) = window.kernel_size, window.out_size
        p_h, p_w = window.padded_size
        outputs = o_w
        if tiled and o_w >= 2 * TILE_OUTPUTS:
            tiles, outputs = _tiling(o_w)
            tile_width = p_w = (outputs - 1) * s_w + d_w * (k_w - 1) + 1
        step = s_h * p_w
        offsets = tuple(kh * d_h * p_w + kw * d_w for kh in range(k_h) for kw in range(k_w))
        run = d_h * (k_h - 1) * p_w + (outputs - 1) * s_w + d_w * (k_w - 1) + 1
        rows, data = o_h, p_h * p_w
    elif window.rank == 1:
        (s,), (d,), (k,), (o,) = (window.stride, window.dilation, window.kernel_size,
                                  window.out_size)
        outputs = min(ROW_OUTPUTS_1D, o)
        step = outputs * s
        offsets = tuple(kk * d for kk in range(k))
        run = (outputs - 1) * s + d * (k - 1) + 1
        rows, data = -(-o // outputs), window.padded_size[0]
    else:
        return None
    phases = -(-run // step)
    slots = max(-(-rows // phases), -(-data // (phases * step)))
    return _Bands(step, run, phases, outputs, rows, slots, offsets, window.stride[-1],
                  tiles, tile_width)


def depthwise_sample_bytes(geometry: ConvGeometry, itemsize: int) -> int:
    """Scratch one sample of a chunk needs on the direct path (any of the three passes).

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> depthwise_sample_bytes(conv_geometry((8, 128, 28, 28), (128, 1, 3, 3), padding=1,
    ...                                      groups=128), 4) > 0
    True
    """
    backward = _transposition_geometry(geometry)
    own = _sample_bytes(geometry, itemsize)
    return own if backward is None else max(own, _sample_bytes(backward, itemsize))


def _sample_bytes(geometry: ConvGeometry, itemsize: int) -> int:
    window = geometry.window
    c, c_out = geometry.in_channels, geometry.out_channels
    # the tap loop (ranks >= 3, chunks with inf/nan): padded input or its gradient, a product
    taps = (c * math.prod(window.padded_size) + 2 * c_out * window.out_volume) * itemsize
    bands = _bands(window, tiled=True)  # None exactly where the untiled layout is None
    if bands is None:
        return taps
    multiplier = c_out // max(geometry.groups, 1)
    largest = math.prod(window.padded_size) + 2 * multiplier * window.out_volume  # per channel
    per_phase = bands.tiles * bands.slots * multiplier * bands.outputs
    flat = bands.tiles * bands.region + bands.slack()
    staged = bands.tiles * bands.rows * bands.outputs * multiplier  # uneven rows, tiles
    extended = 0
    if bands.tiles > 1:  # the padded rows the tiles are cut from (and folded back into)
        core = bands.outputs * bands.inner_stride
        extended = window.padded_size[0] * (bands.tiles + -(-bands.width // core)) * core
    # input regions, the phases' δ/y, one dA_p (input gradient), staging
    largest = max(largest, flat + bands.phases * per_phase + bands.tiles * bands.slots
                  * bands.run + staged + extended)
    return c * largest * itemsize


def depthwise_fixed_bytes(geometry: ConvGeometry, itemsize: int) -> int:
    """Scratch the direct path needs once per call, whatever the chunk: the banded
    matrices ``(C, R, M·T)`` and the weight gradient's two accumulators of that shape.

    Examples
    --------
    >>> from im2colbp.geometry import conv_geometry
    >>> depthwise_fixed_bytes(conv_geometry((8, 4, 9, 9), (4, 1, 3, 3), groups=4), 4) > 0
    True
    """
    backward = _transposition_geometry(geometry)
    own = _fixed_bytes(geometry, itemsize)
    return own if backward is None else max(own, _fixed_bytes(backward, itemsize))


def _fixed_bytes(geometry: ConvGeometry, itemsize: int) -> int:
    bands = _bands(geometry.window, tiled=True)
    if bands is None:
        return 0
    multiplier = geometry.out_channels // max(geometry.groups, 1)
    largest = bands.run * multiplier * bands.outputs
    return 3 * geometry.in_channels * largest * itemsize


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _planned(geometry: ConvGeometry, dtype: np.dtype, samples_per_chunk: int) -> int:
    return (samples_per_chunk * depthwise_sample_bytes(geometry, dtype.itemsize)
            + depthwise_fixed_bytes(geometry, dtype.itemsize))


def _finite(array: np.ndarray) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(np.sum(array)))


def _multiplier(geometry: ConvGeometry) -> int:
    return geometry.out_channels // geometry.groups


def _empty(geometry: ConvGeometry) -> bool:
    return geometry.batch == 0 or geometry.in_channels == 0 or geometry.out_channels == 0


def _band_matrix(bands: _Bands, weight: np.ndarray, channels: int, multiplier: int,
                 dtype: np.dtype) -> np.ndarray:
    """B (C, R, M·T): ``B[c, offset_k + t·S_r, m·T + t] = w[c·M + m, 0, k]``."""
    taps = len(bands.offsets)
    t = np.arange(bands.outputs)
    rows = np.asarray(bands.offsets)[:, None] + t[None, :] * bands.inner_stride  # (∏K, T)
    band = scratch("depthwise_band", (channels, bands.run, multiplier, bands.outputs), dtype)
    band[...] = 0
    w = weight.reshape(channels, multiplier, taps)  # (C, M, ∏K)
    # advanced indices (∏K, T) on axes 1 and 3 come first: target (∏K, T, C, M)
    band[:, rows, :, t[None, :]] = w.transpose(2, 0, 1)[:, None]
    return band.reshape(channels, bands.run, multiplier * bands.outputs)


def _runs(flat: np.ndarray, bands: _Bands, phase: int, n: int) -> np.ndarray:
    """A_p (C, n·slots, R): phase p's runs, a view of ``flat`` (C, n·region + slack)."""
    start = phase * bands.step
    stop = start + n * bands.region
    return flat[:, start:stop].reshape(flat.shape[0], n * bands.slots,
                                       bands.phases * bands.step)[:, :, :bands.run]


def _padded_view(flat: np.ndarray, window: WindowGeometry, bands: _Bands, n: int) -> np.ndarray:
    """(C, n, *padded) view of the samples' padded inputs in ``flat`` (untiled)."""
    regions = flat[:, :n * bands.region].reshape(flat.shape[0], n, bands.region)
    return regions[:, :, :math.prod(window.padded_size)].reshape(
        (flat.shape[0], n) + window.padded_size)


def _load(source: np.ndarray, window: WindowGeometry, bands: _Bands, dtype: np.dtype,
          name: str, flat: Optional[np.ndarray] = None) -> np.ndarray:
    """Padded ``source`` (n, C, *I) into ``flat`` (C, n·tiles·region + slack), by default a
    scratch named ``name``."""
    n, channels = source.shape[:2]
    samples = n * bands.tiles
    if flat is None:
        flat = scratch(name, (channels, samples * bands.region + bands.slack()), dtype)
    regions = flat[:, :samples * bands.region].reshape(channels, samples, bands.region)
    flat[:, samples * bands.region:] = 0
    if bands.tiles == 1:
        regions[:, :, math.prod(window.padded_size):] = 0
        pad_into(source.swapaxes(0, 1), window, _padded_view(flat, window, bands, n))
        return flat
    p_h, p_w = window.padded_size
    data = p_h * bands.width
    regions[:, :, data:] = 0
    target = regions[:, :, :data].reshape(channels, n, bands.tiles, p_h, bands.width)
    core = bands.outputs * bands.inner_stride  # columns between neighbouring tiles
    if window.padding_mode == "zeros":
        # one pass: each tile's part of x straight into the tile, zeros around it
        (top, _), (left, _) = window.padding
        height, width = window.in_size
        rows = source.swapaxes(0, 1)  # (c, n, I_h, I_w)
        for tile in range(bands.tiles):
            first = tile * core  # the tile's first padded column
            start = max(first, left)
            stop = min(first + bands.width, left + width)
            view = target[:, :, tile]  # (c, n, P_h, width)
            if start >= stop:
                view[...] = 0
                continue
            view[:, :, :top] = 0
            view[:, :, top + height:] = 0
            inner = view[:, :, top:top + height]
            inner[..., :start - first] = 0
            inner[..., stop - first:] = 0
            inner[..., start - first:stop - first] = rows[..., start - left:stop - left]
        return flat
    padded = scratch("depthwise_extended", (channels, n, p_h, max(bands.extended, p_w)), dtype)
    padded[..., p_w:] = 0
    pad_into(source.swapaxes(0, 1), window, padded[..., :p_w])
    windows = np.lib.stride_tricks.sliding_window_view(padded, bands.width, axis=-1)
    tiles = windows[..., ::core, :][..., :bands.tiles, :]  # (C, n, P_h, tiles, width)
    target[...] = tiles.transpose(0, 1, 3, 2, 4)
    return flat


def _unload(flat: np.ndarray, window: WindowGeometry, bands: _Bands, n: int,
            dtype: np.dtype) -> np.ndarray:
    """Adjoint of :func:`_load`'s layout: the gradient w.r.t. the padded input (C, n, *padded)
    from the regions' gradient in ``flat`` (a view into ``flat`` or into a scratch)."""
    if bands.tiles == 1:
        return _padded_view(flat, window, bands, n)
    channels = flat.shape[0]
    p_h, p_w = window.padded_size
    core = bands.outputs * bands.inner_stride  # columns between neighbouring tiles
    pieces = -(-bands.width // core)
    extended = scratch("depthwise_extended", (channels, n, p_h, (bands.tiles + pieces) * core),
                       dtype)
    extended[...] = 0
    data = p_h * bands.width
    regions = flat[:, :n * bands.tiles * bands.region].reshape(channels, n, bands.tiles,
                                                                 bands.region)
    tiles = regions[..., :data].reshape(channels, n, bands.tiles, p_h, bands.width)
    tiles = tiles.transpose(0, 1, 3, 2, 4)  # (C, n, P_h, tiles, width)
    for piece in range(pieces):  # columns [piece·core, ...) of tile t land at (t + piece)·core
        start = piece * core
        length = min(core, bands.width - start)
        target = extended[..., start:start + bands.tiles * core].reshape(
            channels, n, p_h, bands.tiles, core)
        target[..., :length] += tiles[..., start:start + length]
    return extended[..., :p_w]


def _rows(array: np.ndarray, window: WindowGeometry, bands: _Bands, channels: int,
          multiplier: int, dtype: np.dtype, name: str) -> Tuple[np.ndarray, bool]:
    """(n, C, M, J, tiles, T) view of ``array`` (n, C·M, *O), or a scratch of that shape
    when rows and tiles do not tile the output exactly; and whether it is a scratch."""
    n = array.shape[0]
    shape = (n, channels, multiplier, bands.rows, bands.tiles, bands.outputs)
    last = window.out_size[-1] if window.rank == 2 else window.out_size[0]
    covered = bands.tiles * bands.outputs if window.rank == 2 else bands.rows * bands.outputs
    if covered == last:
        return array.reshape(shape), False
    return scratch(name, shape, dtype), True


def _staged_part(rows: np.ndarray, window: WindowGeometry) -> np.ndarray:
    """The part of a staged (n, C, M, J, tiles, T) scratch that holds (n, C·M, *O)."""
    n, channels, multiplier = rows.shape[:3]
    view: np.ndarray
    if window.rank == 2:
        view = rows.reshape(n, channels * multiplier, rows.shape[3], -1)
    else:
        view = rows.reshape(n, channels * multiplier, -1)
    return view[..., :window.out_size[-1]]


def _gather(gemm: np.ndarray, bands: _Bands, target: np.ndarray) -> None:
    """The phases' ``gemm`` (Q, C, n·tiles·slots, M·T) into ``target`` (n, C, M, J, tiles, T)."""
    n, channels, multiplier = target.shape[:3]
    for phase in range(bands.phases):
        count = len(range(phase, bands.rows, bands.phases))  # rows j = slot·Q + phase
        source = gemm[phase].reshape(channels, n, bands.tiles, bands.slots, multiplier,
                                     bands.outputs)[:, :, :, :count]
        target[:, :, :, phase::bands.phases] = source.transpose(1, 0, 4, 3, 2, 5)


def _output(gemm: np.ndarray, window: WindowGeometry, bands: _Bands, channels: int,
            multiplier: int, dtype: np.dtype, out: np.ndarray) -> None:
    """The phases' ``gemm`` into ``out`` (n, C·M, *O)."""
    rows, staged = _rows(out, window, bands, channels, multiplier, dtype, "depthwise_rows")
    _gather(gemm, bands, rows)
    if staged:
        out[...] = _staged_part(rows, window)


def _delta_phases(delta: np.ndarray, window: WindowGeometry, bands: _Bands,
                  channels: int, multiplier: int, dtype: np.dtype) -> np.ndarray:
    """δ (n, C·M, *O) into scratch (Q, C, n·tiles·slots, M·T), zero beyond the output."""
    n = delta.shape[0]
    gemm = scratch("depthwise_delta", (bands.phases, channels, n * bands.tiles * bands.slots,
                                       multiplier * bands.outputs), dtype)
    rows, staged = _rows(delta, window, bands, channels, multiplier, dtype, "depthwise_rows")
    if staged:
        rows[...] = 0
        _staged_part(rows, window)[...] = delta

    for phase in range(bands.phases):
        count = len(range(phase, bands.rows, bands.phases))
        target = gemm[phase].reshape(channels, n, bands.tiles, bands.slots, multiplier,
                                     bands.outputs)
        target[:, :, :, :count] = rows[:, :, :, phase::bands.phases].transpose(1, 0, 4, 3, 2, 5)
        target[:, :, :, count:] = 0
    return gemm


# --------------------------------------------------------------------------
# the tap loop: one strided multiply-accumulate per kernel offset (any rank)
# --------------------------------------------------------------------------
def _tap_slices(window: WindowGeometry
                ) -> Iterator[Tuple[Tuple[int, ...], Tuple[slice, ...]]]:
    for offset in np.ndindex(*window.kernel_size):
        yield offset, tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, d, s, o in zip(offset, window.dilation, window.stride, window.out_size))


def _padded_chunk(source: np.ndarray, window: WindowGeometry, dtype: np.dtype) -> np.ndarray:
    padded = scratch("depthwise_padded", source.shape[:2] + window.padded_size, dtype)
    pad_into(source, window, padded)
    return padded


def _taps_forward(x: np.ndarray, weight: np.ndarray, window: WindowGeometry,
                  multiplier: int, dtype: np.dtype, out: np.ndarray) -> None:
    """y (n, C·M, *O) = Σ_k w[.., k] · x_pad[.., o·S + k·D], into ``out``."""
    n, channels = x.shape[:2]
    padded = _padded_chunk(x, window, dtype)  # (n, C, *padded)
    y = out.reshape((n, channels, multiplier) + window.out_size)
    w = weight.reshape((channels, multiplier) + window.kernel_size)
    spread = (None,) * window.rank
    y[...] = 0
    term = scratch("depthwise_term", y.shape, dtype)
    for offset, spatial in _tap_slices(window):
        # (n, C, 1, *O) · (C, M, 1..1) -> (n, C, M, *O)
        np.multiply(padded[(slice(None), slice(None), None) + spatial],
                    w[(slice(None), slice(None)) + offset + spread], out=term)
        y += term


def _taps_input_gradient(delta: np.ndarray, weight: np.ndarray, window: WindowGeometry,
                         multiplier: int, dtype: np.dtype, out: np.ndarray) -> None:
    """dx_pad[.., o·S + k·D] += Σ_m δ[.., m, o] · w[.., m, k], folded into ``out``."""
    n = delta.shape[0]
    channels = out.shape[1]
    d = delta.reshape((n, channels, multiplier) + window.out_size)
    w = weight.reshape((channels, multiplier) + window.kernel_size)
    grad = scratch("depthwise_padded", (n, channels) + window.padded_size, dtype)
    grad[...] = 0
    for offset, spatial in _tap_slices(window):
        grad[(slice(None), slice(None)) + spatial] += np.einsum(
            "ncm...,cm->nc...", d, w[(slice(None), slice(None)) + offset], dtype=dtype)
    out[...] = unpad_add(grad, window)


def _taps_weight_gradient(x: np.ndarray, delta: np.ndarray, window: WindowGeometry,
                          multiplier: int, dtype: np.dtype, padded: bool = False) -> np.ndarray:
    """dw (C, M, *K): ``Σ_{n,o} δ[n, c·M + m, o] · x_pad[n, c, o·S + k·D]``; ``x`` is
    x_pad (n, C, *padded) itself if ``padded``."""
    n, channels = x.shape[:2]
    if not padded:
        x = _padded_chunk(x, window, dtype)
    d = delta.reshape((n, channels, multiplier) + window.out_size)
    dw = np.empty((channels, multiplier) + window.kernel_size, dtype)
    axes = "opqrstuvwxyz"[:window.rank]  # the spatial axes o_1..o_r, summed
    for offset, spatial in _tap_slices(window):
        dw[(slice(None), slice(None)) + offset] = np.einsum(
            f"ncm{axes},nc{axes}->cm", d, x[(slice(None), slice(None)) + spatial], dtype=dtype)
    return dw


# --------------------------------------------------------------------------
# the three passes
# --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DepthwiseKept:
    """The forward pass's loaded input, kept for the weight gradient (``keep=True``).

    ``flat`` is ``(C_in, N·tiles·region + slack)``: every sample's padded input
    laid out for the banded GEMMs, a little more than x itself (the padding,
    the tiles' overlap, row slack) — far less than im2col's ∏K times x — so
    that the weight gradient does not pad and tile x again.
    """

    flat: np.ndarray
    bands: _Bands

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes


def _sample_slice(flat: np.ndarray, bands: _Bands, part: slice) -> np.ndarray:
    """The chunk ``part``'s view of a whole batch's ``flat`` (runs read on into the next)."""
    size = bands.tiles * bands.region
    return flat[:, part.start * size:part.stop * size + bands.slack()]


def _kept_input(kept: DepthwiseKept, window: WindowGeometry, part: slice) -> np.ndarray:
    """The chunk ``part`` of the padded x (n, C, *padded) from the kept loaded input, in its
    dtype: every position some output reads (the others, which no output reads, zeros)."""
    bands = kept.bands
    n = part.stop - part.start
    flat = _sample_slice(kept.flat, bands, part)
    channels = flat.shape[0]
    if bands.tiles == 1:
        padded = _padded_view(flat, window, bands, n)  # (C, n, *padded)
    else:
        p_h, p_w = window.padded_size
        regions = flat[:, :n * bands.tiles * bands.region].reshape(
            channels, n, bands.tiles, bands.region)[..., :p_h * bands.width]
        tiles = regions.reshape(channels, n, bands.tiles, p_h, bands.width)
        padded = np.zeros((channels, n, p_h, p_w), flat.dtype)
        core = bands.outputs * bands.inner_stride  # columns between neighbouring tiles
        for tile in range(bands.tiles):
            first = tile * core
            last = tile == bands.tiles - 1
            stop = min(first + (bands.width if last else min(core, bands.width)), p_w)
            if first < stop:
                padded[..., first:stop] = tiles[:, :, tile, :, :stop - first]
    return np.ascontiguousarray(padded.swapaxes(0, 1))  # the tap loop's own layout


def _check(geometry: ConvGeometry) -> None:
    why = depthwise_reason_not(geometry)
    if why is not None:
        raise ValueError(f"the direct depthwise path cannot serve this geometry: {why}")


@overload
def depthwise_forward(geometry: ConvGeometry, x: np.ndarray, weight: np.ndarray, *,
                      dtype: DTypeLike, samples_per_chunk: int,
                      keep: Literal[False] = ...) -> np.ndarray: ...


@overload
def depthwise_forward(geometry: ConvGeometry, x: np.ndarray, weight: np.ndarray, *,
                      dtype: DTypeLike, samples_per_chunk: int,
                      keep: Literal[True]) -> Tuple[np.ndarray, Optional[DepthwiseKept]]: ...


@overload
def depthwise_forward(geometry: ConvGeometry, x: np.ndarray, weight: np.ndarray, *,
                      dtype: DTypeLike, samples_per_chunk: int, keep: bool = ...
                      ) -> Union[np.ndarray, Tuple[np.ndarray, Optional[DepthwiseKept]]]: ...


def depthwise_forward(geometry: ConvGeometry, x: np.ndarray, weight: np.ndarray, *,
                      dtype: DTypeLike, samples_per_chunk: int, keep: bool = False
                      ) -> Union[np.ndarray, Tuple[np.ndarray, Optional[DepthwiseKept]]]:
    """The depthwise convolution ``y = conv(x, w, groups=C_in)``, without columns.

    Parameters
    ----------
    geometry : ConvGeometry
        A depthwise geometry (``C_in/G = 1``; see :func:`depthwise_reason_not`).
    x : ndarray, shape (N, C_in, *I)
        Any floating dtype (cast chunk by chunk); not modified.
    weight : ndarray, shape (C_out, 1, *K)
        Contiguous, of ``dtype``.
    dtype : dtype
        The compute and result dtype.
    samples_per_chunk : int
        Samples per chunk (the scratch is about that many times
        :func:`depthwise_sample_bytes`).
    keep : bool, optional
        Also return the loaded input (:class:`DepthwiseKept`, or None where
        the tap loop serves) for :func:`depthwise_weight_gradient`.

    Returns
    -------
    y : ndarray, shape (N, C_out, *O)
        A new array of ``dtype``. No bias. With ``keep``: ``(y, kept)``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((1, 2, 5), (2, 1, 3), padding=1, groups=2)
    >>> x = np.arange(10.0).reshape(1, 2, 5); w = np.ones((2, 1, 3))
    >>> depthwise_forward(g, x, w, dtype=np.float64, samples_per_chunk=1)
    array([[[ 1.,  3.,  6.,  9.,  7.],
            [11., 18., 21., 24., 17.]]])
    """
    _check(geometry)
    dtype = np.dtype(dtype)
    window = geometry.window
    y = np.empty((geometry.batch, geometry.out_channels) + window.out_size, dtype)
    kept: Optional[DepthwiseKept] = None
    bands = _bands(window, tiled=True)
    if keep and bands is not None and not _empty(geometry):
        size = bands.tiles * bands.region
        kept = DepthwiseKept(np.empty((geometry.in_channels,
                                       geometry.batch * size + bands.slack()), dtype), bands)
    _forward_into(geometry, x, weight, dtype, samples_per_chunk, y, kept)
    return (y, kept) if keep else y


def _forward_into(geometry: ConvGeometry, x: np.ndarray, weight: np.ndarray, dtype: np.dtype,
                  samples_per_chunk: int, y: np.ndarray,
                  kept: Optional[DepthwiseKept] = None) -> np.ndarray:
    """depthwise_forward's work, into ``y`` (N, C_out, *O), C-contiguous."""
    window = geometry.window
    if _empty(geometry):
        y[...] = 0
        return y
    channels, multiplier = geometry.in_channels, _multiplier(geometry)
    bands = _bands(window, tiled=True)
    with scratch_scope(_planned(geometry, dtype, samples_per_chunk)), \
            np.errstate(invalid="ignore", over="ignore"):  # inf·0 of a band: the chunk reruns
        band = None if bands is None else _band_matrix(bands, weight, channels, multiplier,
                                                       dtype)
        for part in chunk_slices(geometry.batch, samples_per_chunk):
            n = part.stop - part.start
            if bands is not None:
                if band is None:
                    raise RuntimeError("banded layout without its band matrix")
                flat = _load(x[part], window, bands, dtype, "depthwise_input",
                             None if kept is None else _sample_slice(kept.flat, bands, part))
                gemm = scratch("depthwise_delta", (bands.phases, channels,
                                                   n * bands.tiles * bands.slots,
                                                   multiplier * bands.outputs), dtype)
                for phase in range(bands.phases):
                    np.matmul(_runs(flat, bands, phase, n * bands.tiles), band,
                              out=gemm[phase])
                _output(gemm, window, bands, channels, multiplier, dtype, y[part])
                if _finite(y[part]):
                    continue
                # inf/nan (or overflow): a band's zero times inf spreads NaN along a row
            _taps_forward(x[part], weight, window, multiplier, dtype, y[part])
    return y


def _transposition_pairs(geometry: ConvGeometry) -> Pairs:
    window = geometry.window
    return window.transposition_padding(padded_input=window.padding_mode != "zeros")


def _transposition_geometry(geometry: ConvGeometry,
                            batch: Optional[int] = None) -> Optional[ConvGeometry]:
    """The stride-1 depthwise convolution of δ whose output is dx (or, for a non-zero
    padding mode, the gradient w.r.t. the padded x), or None where it cannot serve:
    stride 1, one filter per channel, paddings within D·(K-1), a banded rank."""
    window = geometry.window
    pairs = _transposition_pairs(geometry)
    if not (window.rank <= 2 and not _empty(geometry) and _multiplier(geometry) == 1
            and all(s == 1 for s in window.stride)
            and all(b >= 0 and a >= 0 for b, a in pairs)):
        return None
    batch = geometry.batch if batch is None else batch
    return conv_geometry((batch, geometry.out_channels) + window.out_size,
                         geometry.weight_shape, padding=pairs, dilation=window.dilation,
                         groups=geometry.groups)


def _transposition_serves(geometry: ConvGeometry, weight: np.ndarray) -> bool:
    """The transposition geometry exists and the weight is finite (inf·0 at δ's padding
    would be NaN): dx is a depthwise forward of δ."""
    return _transposition_geometry(geometry) is not None and _finite(weight)


def _input_gradient_by_transposition(geometry: ConvGeometry, weight: np.ndarray,
                                     dy: np.ndarray, dtype: np.dtype, samples_per_chunk: int,
                                     dx: np.ndarray) -> np.ndarray:
    """dx = conv(δ padded by D·(K-1) - P, flipped w): Aggarwal's transposition, which at
    stride 1 is the forward path again (the gradient w.r.t. the padded input, folded back,
    for a non-zero padding mode)."""
    window = geometry.window
    spatial = tuple(range(2, 2 + window.rank))
    flipped = np.ascontiguousarray(np.flip(weight, axis=spatial), dtype=dtype)
    if window.padding_mode == "zeros":  # dx is the forward of δ itself
        backward = _transposition_geometry(geometry)
        if backward is None:
            raise RuntimeError("transposition geometry missing where it was found to serve")
        return _forward_into(backward, dy, flipped, dtype, samples_per_chunk, dx)
    for part in chunk_slices(geometry.batch, samples_per_chunk):
        n = part.stop - part.start
        backward = _transposition_geometry(geometry, n)
        if backward is None:
            raise RuntimeError("transposition geometry missing where it was found to serve")
        grad = depthwise_forward(backward, dy[part], flipped, dtype=dtype,
                                 samples_per_chunk=n)  # (n, C, *padded)
        dx[part] = unpad_add(grad, window)
    return dx


def depthwise_input_gradient(geometry: ConvGeometry, weight: np.ndarray, dy: np.ndarray, *,
                             dtype: DTypeLike, samples_per_chunk: int) -> np.ndarray:
    """The input gradient ``dx`` of the depthwise convolution, without columns.

    Parameters
    ----------
    geometry : ConvGeometry
        A depthwise geometry.
    weight : ndarray, shape (C_out, 1, *K)
        Contiguous, of ``dtype``.
    dy : ndarray, shape (N, C_out, *O)
        δ, any floating dtype; not modified.
    dtype : dtype
    samples_per_chunk : int

    Returns
    -------
    dx : ndarray, shape (N, C_in, *I)
        A new array; border gradients folded back per ``padding_mode``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((1, 1, 5), (1, 1, 3), padding=1)
    >>> depthwise_input_gradient(g, np.ones((1, 1, 3)), np.ones((1, 1, 5)),
    ...                          dtype=np.float64, samples_per_chunk=1)
    array([[[2., 3., 3., 3., 2.]]])
    """
    _check(geometry)
    dtype = np.dtype(dtype)
    window = geometry.window
    dx = np.empty((geometry.batch, geometry.in_channels) + window.in_size, dtype)
    if _empty(geometry):
        dx[...] = 0
        return dx
    channels, multiplier = geometry.in_channels, _multiplier(geometry)
    if _transposition_serves(geometry, weight):
        return _input_gradient_by_transposition(geometry, weight, dy, dtype, samples_per_chunk,
                                                dx)
    bands = _bands(window, tiled=True)
    with scratch_scope(_planned(geometry, dtype, samples_per_chunk)), \
            np.errstate(invalid="ignore", over="ignore"):  # inf·0 of a band: the chunk reruns
        band_t: Optional[np.ndarray] = None
        if bands is not None:
            band_t = _band_matrix(bands, weight, channels, multiplier, dtype).transpose(0, 2, 1)
        for part in chunk_slices(geometry.batch, samples_per_chunk):
            n = part.stop - part.start
            if bands is not None:
                if band_t is None:
                    raise RuntimeError("banded layout without its band matrix")
                delta = _delta_phases(dy[part], window, bands, channels, multiplier, dtype)
                samples = n * bands.tiles
                flat = scratch("depthwise_input",
                               (channels, samples * bands.region + bands.slack()), dtype)
                flat[...] = 0
                runs_grad = scratch("depthwise_runs",
                                    (channels, samples * bands.slots, bands.run), dtype)
                for phase in range(bands.phases):
                    np.matmul(delta[phase], band_t, out=runs_grad)  # dA_p = δ_p · Bᵀ
                    _runs(flat, bands, phase, samples)[...] += runs_grad
                folded = unpad_add(_unload(flat, window, bands, n, dtype), window)  # (C, n, *I)
                dx[part] = folded.swapaxes(0, 1)
                if _finite(dx[part]):
                    continue
            _taps_input_gradient(dy[part], weight, window, multiplier, dtype, dx[part])
    return dx


def depthwise_weight_gradient(geometry: ConvGeometry, x: Optional[np.ndarray], dy: np.ndarray, *,
                              dtype: DTypeLike, samples_per_chunk: int,
                              kept: Optional[DepthwiseKept] = None) -> np.ndarray:
    """The weight gradient ``dw`` of the depthwise convolution, without columns.

    Parameters
    ----------
    geometry : ConvGeometry
        A depthwise geometry.
    x : ndarray, shape (N, C_in, *I), or None
        The forward input, any floating dtype; not modified. May be None when
        ``kept`` is given (the tap loop's inf/nan fallback then reads x back
        from it).
    dy : ndarray, shape (N, C_out, *O)
        δ, any floating dtype; not modified.
    dtype : dtype
    samples_per_chunk : int
    kept : DepthwiseKept, optional
        The forward's loaded x (``depthwise_forward(..., keep=True)``, same
        geometry and dtype): x is then read only if a chunk holds inf/nan.

    Returns
    -------
    dw : ndarray, shape (C_out, 1, *K)
        A new array of ``dtype``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.geometry import conv_geometry
    >>> g = conv_geometry((1, 1, 5), (1, 1, 3))
    >>> x = np.arange(5.0).reshape(1, 1, 5)
    >>> depthwise_weight_gradient(g, x, np.ones((1, 1, 3)), dtype=np.float64,
    ...                           samples_per_chunk=1)
    array([[[3., 6., 9.]]])
    """
    _check(geometry)
    dtype = np.dtype(dtype)
    window = geometry.window
    channels, multiplier = geometry.in_channels, _multiplier(geometry)
    dw = np.zeros(geometry.weight_shape, dtype)
    if _empty(geometry):
        return dw
    dw_cm = dw.reshape((channels, multiplier) + window.kernel_size)
    bands = _bands(window, tiled=True)
    if x is None and (kept is None or bands is None):
        raise ValueError("depthwise_weight_gradient needs x unless the forward's kept input "
                         "is given")
    taps = window.kernel_volume
    with scratch_scope(_planned(geometry, dtype, samples_per_chunk)), \
            np.errstate(invalid="ignore", over="ignore"):  # inf·0 of a band: the chunk reruns
        if bands is not None:
            t = np.arange(bands.outputs)
            rows = np.asarray(bands.offsets)[:, None] + t[None, :] * bands.inner_stride
            product = scratch("depthwise_product", (channels, bands.run,
                                                    multiplier * bands.outputs), dtype)
            total = scratch("depthwise_total", product.shape, dtype)
        for part in chunk_slices(geometry.batch, samples_per_chunk):
            n = part.stop - part.start
            if bands is not None:
                if kept is not None:
                    if kept.bands != bands or kept.flat.dtype != dtype:
                        raise RuntimeError("kept input and the weight-gradient pass disagree")
                    flat = _sample_slice(kept.flat, bands, part)
                elif x is not None:
                    flat = _load(x[part], window, bands, dtype, "depthwise_input")
                else:
                    raise RuntimeError("no input for the weight gradient")
                delta = _delta_phases(dy[part], window, bands, channels, multiplier, dtype)
                for phase in range(bands.phases):
                    # G += A_pᵀ · δ_p: (C, R, n·slots) @ (C, n·slots, M·T)
                    target = total if phase == 0 else product
                    np.matmul(_runs(flat, bands, phase, n * bands.tiles).transpose(0, 2, 1),
                              delta[phase],
                              out=target)
                    if phase:
                        total += product
                # the bands: (∏K, T, C, M) -> sum over t
                along = total.reshape(channels, bands.run, multiplier, bands.outputs)[
                    :, rows, :, t[None, :]]
                chunk_dw = along.sum(axis=1).transpose(1, 2, 0)  # (C, M, ∏K)
                if _finite(chunk_dw):
                    dw_cm += chunk_dw.reshape(dw_cm.shape)
                    continue
            if x is not None:
                dw_cm += _taps_weight_gradient(x[part], dy[part], window, multiplier, dtype)
            elif kept is not None:  # the padded x, read back
                dw_cm += _taps_weight_gradient(_kept_input(kept, window, part), dy[part],
                                               window, multiplier, dtype, padded=True)
            else:
                raise RuntimeError("no input for the tap loop")
    del taps
    return dw
