"""The fast lowering: columns as contiguous runs of a phase-split, widened input.

:func:`im2colbp.lowering.im2col_into` copies, per kernel offset, a *strided*
slice of the padded input: inner runs are only ``O_r`` elements long (56 for a
56×56 image) and, with a stride, not even contiguous. NumPy's copy, and even
more its ``+=`` (which col2im needs), are several times slower on such slices
than on contiguous memory. This module rearranges the input once so that every
kernel offset reads **one contiguous run**:

1. *Phase split* (removes the stride). Padded position ``p`` on an axis with
   stride S is stored as ``(phase, j) = (p mod S, p div S)``. Window position
   ``o`` with kernel offset ``k`` reads ``p = o*S + k*D``, i.e. phase
   ``(k*D) mod S`` at ``j = o + (k*D) div S``: consecutive ``o`` are
   consecutive ``j``. Every phase plane is a grid of ``J = ceil(P/S)``
   samples per axis (P the padded size).
2. *Widening* (removes the row breaks). Within a phase plane, flattened in C
   order, offset ``q = (k*D) div S`` reads the grid starting at flat index
   ``Σ q_i * stride_i``. Computing output for the whole grid width
   (``O_1 × J_2 × … × J_r`` "wide" positions instead of ``O_1 × … × O_r``)
   makes that read one contiguous run. The extra positions (``j_i >= O_i``
   for ``i >= 2``) are garbage: they are cropped from y, and δ is zero there,
   so they add nothing to dW or dx.

The price is ``L_wide / L`` times more GEMM columns (about ``J/O``, 3.6% for a
3×3 kernel on 56×56), one copy of the input in and one copy of the output out.
:func:`wide_layout` declines (returns None) when that waste is too large.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from .geometry import WindowGeometry
from .lowering import pad_into, unpad_add

__all__ = ["WideLayout", "wide_layout"]

#: Largest accepted ratio of wide to true window positions.
MAX_WASTE = 1.25


@dataclass(frozen=True)
class WideLayout:
    """Index arithmetic of the phase-split, widened columns of one window geometry.

    Attributes
    ----------
    window : WindowGeometry
    grid : tuple of int
        J, samples per axis of one phase plane: ``ceil(P / S)``.
    phases : tuple of int
        The stride S (number of phases) per axis.
    wide_out : tuple of int
        ``(O_1, J_2, ..., J_r)``: the positions the GEMMs compute.
    plane : int
        ``prod(J)``, elements of one phase plane.
    row_length : int
        Elements per (sample, channel) of the phase-split input, including a
        zero tail so the last runs stay inside it.
    run_starts : tuple of int
        Per kernel offset (C order), where its run starts in that row.
    """

    window: WindowGeometry
    grid: Tuple[int, ...]
    phases: Tuple[int, ...]
    wide_out: Tuple[int, ...]
    plane: int
    row_length: int
    run_starts: Tuple[int, ...]

    @property
    def wide_positions(self) -> int:
        """L_wide, the GEMM's column count per sample."""
        return math.prod(self.wide_out)

    @property
    def extended_size(self) -> Tuple[int, ...]:
        """``J * S`` per axis: the padded size rounded up to whole phases."""
        return tuple(j * s for j, s in zip(self.grid, self.phases))


def wide_layout(window: WindowGeometry, max_waste: Optional[float] = None) -> Optional[WideLayout]:
    """Plan the wide columns of ``window``, or None when they would waste too much.

    Examples
    --------
    >>> from im2colbp.geometry import window_geometry
    >>> layout = wide_layout(window_geometry((56, 56), 3, 1, 1))
    >>> layout.grid, layout.wide_out, layout.wide_positions / 56**2
    ((58, 58), (56, 58), 1.0357142857142858)
    """
    if max_waste is None:
        max_waste = MAX_WASTE
    stride, dilation = window.stride, window.dilation
    grid = tuple(-(-p // s) for p, s in zip(window.padded_size, stride))
    wide_out = (window.out_size[0],) + grid[1:]
    if math.prod(wide_out) > max_waste * window.out_volume:
        return None
    extended = math.prod(g * s for g, s in zip(grid, stride))
    if extended > max_waste * math.prod(window.padded_size):
        return None  # a stride much larger than the input: mostly empty phase planes
    plane = math.prod(grid)
    grid_strides = [math.prod(grid[axis + 1:]) for axis in range(window.rank)]
    phase_strides = [math.prod(stride[axis + 1:]) for axis in range(window.rank)]
    starts = []
    for offset in np.ndindex(*window.kernel_size):
        taps = [k * d for k, d in zip(offset, dilation)]
        phase = sum((t % s) * ps for t, s, ps in zip(taps, stride, phase_strides))
        shift = sum((t // s) * gs for t, s, gs in zip(taps, stride, grid_strides))
        starts.append(phase * plane + shift)
    wide = math.prod(wide_out)
    row_length = max(math.prod(stride) * plane, max(starts) + wide)
    return WideLayout(window, grid, tuple(stride), wide_out, plane, row_length, tuple(starts))


def _phase_views(layout: WideLayout, rows: np.ndarray,
                 extended: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Pairs (phase plane of ``rows``, matching strided view of ``extended``)."""
    n, channels = rows.shape[:2]
    for index, phase in enumerate(np.ndindex(*layout.phases)):
        plane = rows[:, :, index * layout.plane:(index + 1) * layout.plane]
        spatial = tuple(slice(p, None, s) for p, s in zip(phase, layout.phases))
        yield plane.reshape((n, channels) + layout.grid), extended[(Ellipsis,) + spatial]


def split_phases_into(x: np.ndarray, layout: WideLayout, rows: np.ndarray,
                      extended: Optional[np.ndarray]) -> None:
    """Pad ``x`` (n, C, *I) and store it phase-split in ``rows`` (n, C, row_length).

    ``extended`` (n, C, *(J*S)) is scratch for the padded input when a stride
    needs splitting; with stride 1 the padded input is written in place.
    """
    window = layout.window
    interior = tuple(slice(0, p) for p in window.padded_size)
    if extended is None:  # stride 1 everywhere: one phase, grid == padded size
        pad_into(x, window, rows[:, :, :layout.plane].reshape(x.shape[:2] + layout.grid))
    else:
        pad_into(x, window, extended[(Ellipsis,) + interior])
        for axis, (size, total) in enumerate(zip(window.padded_size, layout.extended_size)):
            if total > size:  # the round-up to whole phases: read only by garbage positions
                index = (Ellipsis,) + (slice(None),) * axis + (slice(size, None),)
                index += (slice(None),) * (window.rank - axis - 1)
                extended[index] = 0
        for plane, view in _phase_views(layout, rows, extended):
            plane[...] = view
    rows[:, :, math.prod(layout.phases) * layout.plane:] = 0


def merge_phases(rows: np.ndarray, layout: WideLayout,
                 extended: Optional[np.ndarray]) -> np.ndarray:
    """Inverse of :func:`split_phases_into` for gradients: returns the (n, C, *I)
    input gradient (a view into ``extended`` or ``rows`` scratch; copy it out)."""
    window = layout.window
    n, channels = rows.shape[:2]
    padded: np.ndarray  # (n, C, *padded grid)
    if math.prod(layout.phases) == 1:
        padded = rows[:, :, :layout.plane].reshape((n, channels) + layout.grid)
    else:
        if extended is None:
            raise ValueError("merge_phases: a strided wide layout needs the extended scratch "
                             "array (n, C, *extended_size), got None")
        for plane, view in _phase_views(layout, rows, extended):
            view[...] = plane
        padded = extended
    padded = padded[(Ellipsis,) + tuple(slice(0, p) for p in window.padded_size)]
    return unpad_add(padded, window)


def wide_im2col_into(rows: np.ndarray, layout: WideLayout, cols: np.ndarray,
                     positions: slice = slice(None)) -> None:
    """Fill ``cols`` (n, C, prod(K), P) with the columns of the wide ``positions``
    (all L_wide by default, P of them): one contiguous copy per kernel offset."""
    first, stop, _ = positions.indices(layout.wide_positions)
    for tap, start in enumerate(layout.run_starts):
        cols[:, :, tap] = rows[:, :, start + first:start + stop]


def wide_col2im_add(cols: np.ndarray, layout: WideLayout, rows: np.ndarray,
                    positions: slice = slice(None)) -> None:
    """Scatter-add ``cols`` (n, C, prod(K), P) of the wide ``positions`` into
    ``rows``: the adjoint of :func:`wide_im2col_into`."""
    first, stop, _ = positions.indices(layout.wide_positions)
    for tap, start in enumerate(layout.run_starts):
        rows[:, :, start + first:start + stop] += cols[:, :, tap]


def garbage_mask(layout: WideLayout) -> np.ndarray:
    """Boolean (L_wide,): True at the wide layout's garbage positions."""
    mask = np.zeros(layout.wide_out, dtype=bool)
    for index in _garbage_indices(layout):
        mask[index] = True
    return mask.reshape(-1)


def _garbage_indices(layout: WideLayout):
    """Indices (over the trailing r axes of a ``wide_out`` grid) of the garbage
    positions: ``j_i >= O_i`` on each axis i >= 2 (axis 1 is never widened)."""
    window = layout.window
    for axis in range(1, window.rank):
        index = (Ellipsis,) + (slice(None),) * axis + (slice(window.out_size[axis], None),)
        yield index + (slice(None),) * (window.rank - axis - 1)


def widen(array: np.ndarray, layout: WideLayout, out: np.ndarray) -> None:
    """Write ``array`` (n, F, *O) into ``out`` (n, F, L_wide), zero at garbage positions."""
    n, filters = array.shape[:2]
    grid = out.reshape((n, filters) + layout.wide_out)
    window = layout.window
    grid[(Ellipsis,) + tuple(slice(0, o) for o in window.out_size)] = array
    for index in _garbage_indices(layout):
        grid[index] = 0


def narrow(wide: np.ndarray, layout: WideLayout) -> np.ndarray:
    """View of the true positions (n, F, *O) of ``wide`` (n, F, L_wide)."""
    n, filters = wide.shape[:2]
    grid = wide.reshape((n, filters) + layout.wide_out)
    return grid[(Ellipsis,) + tuple(slice(0, o) for o in layout.window.out_size)]


def zero_garbage(cols: np.ndarray, layout: WideLayout) -> None:
    """Zero the garbage positions of ``cols`` (n, C, prod(K), L_wide), so that
    inf/nan read there cannot turn ``garbage * 0`` into nan in the weight gradient."""
    n, channels, taps = cols.shape[:3]
    grid = cols.reshape((n, channels, taps) + layout.wide_out)
    for index in _garbage_indices(layout):
        grid[index] = 0
