"""im2col and col2im: receptive fields to columns and back, any spatial rank.

The lowering loops over the ``prod(K)`` kernel *offsets*, not over the
``prod(O)`` window positions: for a fixed offset ``(k_1..k_r)`` the input
samples it touches form one strided slice of the padded input, so each
iteration is a single NumPy copy. ``col2im`` is the same loop with ``+=``,
which makes it the exact adjoint of ``im2col`` by construction: every copy
``cols[.., k, o] = xp[.., o*S + k*D]`` becomes ``xp[.., o*S + k*D] += cols[.., k, o]``.

The same copies can be grouped the other way: for a fixed window position
``o`` the taps it reads form one strided slice too (its receptive field).
When the kernel has more taps than there are window positions (a kernel as
large as the input: one output), the loop runs over the positions instead,
so it always makes ``min(prod(K), prod(O))`` Python iterations.

Padding is separable: a padded array is built axis by axis, each border
sample being a copy of one source sample (mode-dependent), all borders of an
axis in one indexed copy. Its adjoint (:func:`unpad_add`) walks the axes in
reverse and adds every border sample back onto its source (one unbuffered
``np.add.at`` per axis) — the "gradient that fell on a reflected sample
flows back to that sample" rule. Both cost time proportional to the padded
array, however many periods a circular padding wraps.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from .geometry import (
    IntOrTuple,
    Padding,
    WindowGeometry,
    as_float_array,
    as_shape,
    rank_and_batching,
    size_culprit,
    window_geometry,
)
from .memory import check_allocation

__all__ = ["im2col", "col2im", "pad", "unpad_add"]


# --------------------------------------------------------------------------
# padding and its adjoint
# --------------------------------------------------------------------------
def _border_sources(size: int, before: int, after: int, mode: str) -> Tuple[np.ndarray, ...]:
    """``(border, source)`` index arrays along one axis, in padded coordinates.

    ``border`` lists the padded positions ``0..before-1`` and
    ``before+size..before+size+after-1``; ``source[j]`` is the padded position of
    the real sample that ``border[j]`` copies. Both are (before + after,).
    """
    border = np.concatenate([np.arange(before), np.arange(before + size, before + size + after)])
    i = border - before  # position relative to the first real sample
    if mode == "replicate":
        source = np.clip(i, 0, size - 1)
    elif mode == "circular":
        source = i % size
    elif size == 1:  # reflect of one sample (only reachable with zero padding): itself
        source = np.zeros_like(i)
    else:  # reflect, edge not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        period = 2 * (size - 1)
        folded = i % period
        source = np.where(folded < size, folded, period - folded)
    return border, source + before


def _axis_index(ndim: int, axis: int, index) -> tuple:
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


#: Up to this many elements, :func:`pad_into` zero-pads by filling the whole
#: output before copying the interior (two NumPy operations instead of 1 + 2r:
#: for a small array the operations' overhead costs more than writing twice).
SMALL_PAD_ZERO_FILL = 1 << 15


def pad_into(x: np.ndarray, window: WindowGeometry, out: np.ndarray) -> None:
    """Write ``x`` (..., *I) padded per ``window`` into ``out`` (..., *padded).

    Every element of ``out`` is written, so ``out`` may hold anything before.
    """
    r = window.rank
    lead = x.ndim - r
    interior = (Ellipsis,) + tuple(
        slice(b, b + i) for i, (b, _) in zip(window.in_size, window.padding)
    )
    if window.padding_mode == "zeros" and out.size <= SMALL_PAD_ZERO_FILL:
        out[...] = 0  # one fill then the interior: fewer operations than 2r border slabs
        out[interior] = x
        return
    out[interior] = x
    if window.padding_mode == "zeros":
        for axis, (size, (before, _)) in enumerate(zip(window.in_size, window.padding)):
            out[_axis_index(out.ndim, lead + axis, slice(0, before))] = 0
            out[_axis_index(out.ndim, lead + axis, slice(before + size, None))] = 0
        return
    # Axis by axis: after axis a is done, every slab along a holds its value for
    # the interior of later axes, so later axes copy already-padded slabs.
    for axis, (size, (before, after)) in enumerate(zip(window.in_size, window.padding)):
        if not before and not after:
            continue
        border, source = _border_sources(size, before, after, window.padding_mode)
        # sources are real samples along this axis, borders are not: no overlap
        out[_axis_index(out.ndim, lead + axis, border)] = out[
            _axis_index(out.ndim, lead + axis, source)
        ]


def pad(x: np.ndarray, window: WindowGeometry) -> np.ndarray:
    """Return ``x`` (..., *I) padded per ``window`` as a new array (..., *padded)."""
    if not window.is_padded:
        return x
    out = np.empty(x.shape[: x.ndim - window.rank] + window.padded_size, dtype=x.dtype)
    pad_into(x, window, out)
    return out


def unpad_add(grad_padded: np.ndarray, window: WindowGeometry) -> np.ndarray:
    """Adjoint of :func:`pad`: fold border gradients back onto their sources.

    ``grad_padded`` (..., *padded) is modified in place (it is a scratch
    buffer of the caller); the returned (..., *I) array is a view into it.
    """
    r = window.rank
    lead = grad_padded.ndim - r
    if window.padding_mode != "zeros":
        for axis in reversed(range(r)):
            size = window.in_size[axis]
            before, after = window.padding[axis]
            if not before and not after:
                continue
            border, source = _border_sources(size, before, after, window.padding_mode)
            # many borders may feed one source (circular padding wraps): unbuffered add
            np.add.at(
                grad_padded,
                _axis_index(grad_padded.ndim, lead + axis, source),
                grad_padded[_axis_index(grad_padded.ndim, lead + axis, border)],
            )
    interior = (Ellipsis,) + tuple(
        slice(b, b + i) for i, (b, _) in zip(window.in_size, window.padding)
    )
    return grad_padded[interior]


# --------------------------------------------------------------------------
# the offset loop shared by im2col and col2im
# --------------------------------------------------------------------------
def _offset_slices(window: WindowGeometry) -> Tuple[Tuple[Tuple[int, ...], tuple], ...]:
    """For each kernel offset k, the strided slice of the padded input it reads
    (remembered per window: a repeated call does not build them again)."""
    return _offset_slices_of(window)


@functools.lru_cache(maxsize=256)
def _offset_slices_of(window: WindowGeometry) -> Tuple[Tuple[Tuple[int, ...], tuple], ...]:
    return tuple(_offset_slices_built(window))


def _offset_slices_built(window: WindowGeometry) -> Iterator[Tuple[Tuple[int, ...], tuple]]:
    """For each kernel offset k, the strided slice of the padded input it reads.

    Window position ``o`` with offset ``k`` reads padded sample ``o*S + k*D``,
    so for fixed k the samples are ``k*D, k*D + S, ..., k*D + (O-1)*S``.
    """
    for offset in np.ndindex(*window.kernel_size):
        yield offset, tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, d, s, o in zip(offset, window.dilation, window.stride, window.out_size)
        )


def _position_slices(window: WindowGeometry) -> Iterator[Tuple[Tuple[int, ...], tuple]]:
    """For each window position o, the strided slice of the padded input it reads.

    Position ``o`` reads padded samples ``o*S, o*S + D, ..., o*S + (K-1)*D``:
    its receptive field, one strided slice of K samples per axis.
    """
    for position in np.ndindex(*window.out_size):
        yield position, tuple(
            slice(o * s, o * s + d * (k - 1) + 1, d)
            for o, s, d, k in zip(position, window.stride, window.dilation, window.kernel_size)
        )


def _loop_over_positions(window: WindowGeometry) -> bool:
    """Loop over window positions rather than kernel offsets when there are fewer."""
    return window.out_volume < window.kernel_volume


def im2col_into(x_padded: np.ndarray, window: WindowGeometry, cols: np.ndarray) -> None:
    """Fill ``cols`` (n, C, *K, *O) from ``x_padded`` (n, C, *padded).

    ``min(prod(K), prod(O))`` Python iterations, each one strided NumPy copy.
    """
    lead = (slice(None), slice(None))
    if _loop_over_positions(window):
        every_tap = (slice(None),) * window.rank
        for position, field in _position_slices(window):
            # cols[:, :, :.., o_1..o_r] is (n, C, k_1..k_r); so is the receptive field
            cols[lead + every_tap + position] = x_padded[lead + field]
        return
    for offset, spatial in _offset_slices(window):
        # cols[:, :, k_1..k_r] is (n, C, o_1..o_r); so is the strided input slice
        cols[lead + offset] = x_padded[lead + spatial]


def col2im_add(cols: np.ndarray, window: WindowGeometry, grad_padded: np.ndarray) -> None:
    """Scatter-add ``cols`` (n, C, *K, *O) into ``grad_padded`` (n, C, *padded).

    The same loop as :func:`im2col_into` with ``+=`` (so its exact adjoint).
    """
    lead = (slice(None), slice(None))
    if _loop_over_positions(window):
        every_tap = (slice(None),) * window.rank
        for position, field in _position_slices(window):
            grad_padded[lead + field] += cols[lead + every_tap + position]  # (n, C, *K)
        return
    for offset, spatial in _offset_slices(window):
        grad_padded[lead + spatial] += cols[lead + offset]  # (n, C, *O)


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------
def im2col(
    x: ArrayLike,
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
) -> np.ndarray:
    """Lower every receptive field of ``x`` to a column (``torch.nn.functional.unfold``, N-d).

    Parameters
    ----------
    x : array_like, shape (N, C, *I) or (C, *I)
        Input. Unbatched input needs a tuple ``kernel_size``.
    kernel_size : int or tuple of int
        K. A tuple fixes the spatial rank ``r = len(kernel_size)``; an int
        means ``r = x.ndim - 2``.
    stride, dilation : int or tuple of int, optional
        S and D, positive.
    padding : int, tuple of int, tuple of (int, int) or {'valid', 'same'}, optional
        Zero padding P (symmetric, per axis, or ``(before, after)`` pairs).

    Returns
    -------
    cols : ndarray, shape (N, C * prod(K), L) or (C * prod(K), L)
        ``L = prod(O)``, ``O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1``.
        Row index runs over ``(c, k_1, ..., k_r)`` in C order, column index over
        the window positions ``(o_1, ..., o_r)`` in C order:
        ``cols[n, (c, k), (o)] = x_padded[n, c, o*S + k*D]``.

    See Also
    --------
    col2im : the adjoint (scatter-add back).

    Notes
    -----
    Memory: the result is ``prod(K) * prod(O) / prod(I)`` times the input
    (about ``prod(K)`` at stride 1). A call whose columns and padded copy
    cannot fit the memory bound (:func:`im2colbp.memory.memory_limit`) raises
    :class:`~im2colbp.memory.AllocationError` before allocating. The copy loop
    runs ``min(prod(K), prod(O))`` times.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(5.0).reshape(1, 1, 5)          # one 1-D signal 0 1 2 3 4
    >>> ib.im2col(x, 3)[0]                           # rows: kernel taps, columns: windows
    array([[0., 1., 2.],
           [1., 2., 3.],
           [2., 3., 4.]])
    >>> ib.im2col(x, 3, stride=2, padding=1)[0]
    array([[0., 1., 3.],
           [0., 2., 4.],
           [1., 3., 0.]])
    >>> ib.im2col(np.ones((2, 3, 8, 8)), (3, 3), padding=1).shape
    (2, 27, 64)
    """
    x = as_float_array(x, "x")
    rank, batched = rank_and_batching(x.ndim, kernel_size, "x")
    xb = x if batched else x[None]
    window = window_geometry(xb.shape[2:], kernel_size, stride, padding, dilation)
    n, channels = xb.shape[:2]
    shape = (n, channels * window.kernel_volume, window.out_volume)
    planes = n * channels
    nbytes = planes * window.kernel_volume * window.out_volume * x.itemsize
    padded = planes * math.prod(window.padded_size) * x.itemsize if window.is_padded else 0
    detail = f"im2col: the columns {shape if batched else shape[1:]}"
    if padded:
        detail += f" and the padded input {(n, channels) + window.padded_size}"
    culprit = size_culprit(window, "columns" if nbytes >= padded else "padded",
                           batch=n, channels=channels)
    check_allocation(nbytes + padded, culprit, detail)
    cols = np.empty((n, channels) + window.kernel_size + window.out_size, dtype=x.dtype)
    im2col_into(pad(xb, window), window, cols)
    cols = cols.reshape(n, channels * window.kernel_volume, window.out_volume)
    return cols if batched else cols[0]


def col2im(
    cols: ArrayLike,
    output_size: Sequence[int],
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
) -> np.ndarray:
    """Scatter-add columns back into an image: the exact adjoint of :func:`im2col`.

    Same as ``torch.nn.functional.fold``, for any spatial rank. Entries of
    overlapping windows add up; entries that fall in the padding are dropped.

    Parameters
    ----------
    cols : array_like, shape (N, C * prod(K), L) or (C * prod(K), L)
        Columns laid out as :func:`im2col` returns them.
    output_size : tuple of int
        I, the spatial size of the image; fixes ``r = len(output_size)``.
    kernel_size, stride, padding, dilation
        As for :func:`im2col`.

    Returns
    -------
    x : ndarray, shape (N, C, *I) or (C, *I)

    Notes
    -----
    ``<im2col(x), c> == <x, col2im(c)>`` for every x and c (the dot-product
    test). ``col2im(im2col(x))`` is *not* x: each sample is multiplied by the
    number of windows that contain it.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> cols = ib.im2col(np.ones((1, 1, 5)), 3)
    >>> ib.col2im(cols, (5,), 3)         # how many windows cover each sample
    array([[[1., 2., 3., 2., 1.]]])
    """
    cols = as_float_array(cols, "cols")
    output_size = as_shape(output_size, "output_size")
    window = window_geometry(output_size, kernel_size, stride, padding, dilation)
    if cols.ndim not in (2, 3):
        raise ValueError(
            f"cols must have 3 dimensions (N, C*prod(K), L) or 2 (C*prod(K), L), "
            f"got shape {cols.shape}"
        )
    batched = cols.ndim == 3
    colsb = cols if batched else cols[None]
    n, rows, positions = colsb.shape
    if rows % window.kernel_volume:
        raise ValueError(
            f"cols has {rows} rows, which is not a multiple of prod(kernel_size) = "
            f"{window.kernel_volume} (cols shape {cols.shape})"
        )
    if positions != window.out_volume:
        raise ValueError(
            f"cols has {positions} columns but output_size {output_size} with kernel_size "
            f"{window.kernel_size}, stride {window.stride}, padding {window.padding}, dilation "
            f"{window.dilation} gives {window.out_size} = {window.out_volume} window positions"
        )
    channels = rows // window.kernel_volume
    padded_bytes = n * channels * math.prod(window.padded_size) * cols.itemsize
    image_bytes = n * channels * math.prod(window.in_size) * cols.itemsize
    culprit = size_culprit(window, "padded" if window.is_padded else "input",
                           batch=n, channels=channels)
    culprit = culprit.replace("the input's spatial size", "output_size")
    check_allocation(
        padded_bytes + (image_bytes if window.is_padded else 0), culprit,
        f"col2im: the image {((n,) if batched else ()) + (channels,) + window.in_size}"
        + (f" and its padded copy {(n, channels) + window.padded_size}"
           if window.is_padded else ""),
    )
    grad_padded = np.zeros((n, channels) + window.padded_size, dtype=cols.dtype)
    col2im_add(
        colsb.reshape((n, channels) + window.kernel_size + window.out_size), window, grad_padded
    )
    image = unpad_add(grad_padded, window)
    if window.is_padded:
        image = image.copy()  # drop the padded buffer rather than keep it alive
    return image if batched else image[0]
