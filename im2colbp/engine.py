"""The passes: execute a :class:`~im2colbp.plan.ConvPlan`, decide nothing.

Per chunk of n samples and group g, with the chunk's columns laid out
*batch inside*, ``(C_in/G·∏K, n·L_s)`` per group (L_s = L, or L_wide for the
wide layout), each of the three passes is one GEMM::

    product           y[:, g]  = W_g · cols_g                  (C_out/G, n·L_s)
    weight gradient   dW_g    += δ_g · cols_gᵀ                 (C_out/G, C_in/G·∏K)
    col2im            dx       = col2im(W_gᵀ · δ_g)             scatter-add

y and δ move between ``(n, C_out, *O)`` and the GEMM's ``(C_out, n, L_s)``
with one transposing copy each — cheap next to the columns, which are
``∏K·C_in/C_out`` times larger. The arrays a pass reads may have any floating
dtype: every copy into scratch casts to the plan's dtype, so no whole-array
conversion is ever made.

Which passes ran can be observed with :func:`record_passes` (the tests use it
to prove that a route they ask for is the route that ran).
"""

from __future__ import annotations

import functools
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from .depthwise import (
    DepthwiseKept,
    depthwise_forward,
    depthwise_input_gradient,
    depthwise_weight_gradient,
)
from .kernels import backprop_kernel
from .lowering import col2im_add, im2col_into, pad_into, unpad_add
from .plan import PassPlan, Step
from .wide_lowering import (
    WideLayout,
    garbage_mask,
    merge_phases,
    narrow,
    split_phases_into,
    wide_col2im_add,
    wide_im2col_into,
    widen,
    zero_garbage,
)
from .winograd import winograd_forward, winograd_weight_gradient
from .workspace import chunk_slices, scratch, scratch_scope

__all__ = ["KeptColumns", "record_passes", "forward", "adjoint", "weight_gradient"]

_record: ContextVar[Optional[List[Tuple[str, str, str, int]]]] = ContextVar(
    "im2colbp_recorded_passes", default=None)


@contextmanager
def record_passes() -> Iterator[List[Tuple[str, str, str, int]]]:
    """Record every pass executed inside the block as ``(kind, route, layout, chunk)``.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.engine import record_passes
    >>> with record_passes() as passes:
    ...     _ = ib.conv(np.ones((2, 1, 12, 12)), np.ones((1, 1, 3, 3)))
    >>> passes
    [('product', 'im2col', 'wide', 2)]
    """
    passes: List[Tuple[str, str, str, int]] = []
    token = _record.set(passes)
    try:
        yield passes
    finally:
        _record.reset(token)


def _note(p: PassPlan, route: str) -> None:
    passes = _record.get()
    if passes is not None:
        passes.append((p.kind, route, p.layout.choice, p.samples_per_chunk))


@dataclass(frozen=True, eq=False)
class KeptColumns:
    """A forward pass's columns, kept for the weight gradient (only when small)."""

    cols: np.ndarray  # (C_in, prod(K), N, L_s)
    wide: bool


class _Columns:
    """The columns of one pass: build them from a source, scatter them back.

    Either layout keeps a chunk's columns as a ``(C_in, prod(K), n, L_s)``
    array, so that every group's column matrix ``(C_in/G·prod(K), n·L_s)`` is
    contiguous and each GEMM covers the whole chunk.
    """

    def __init__(self, p: PassPlan, dtype: np.dtype):
        self.window = p.geometry.window
        self.dtype = dtype
        self.channels = p.geometry.in_channels
        self.layout = p.wide
        self.positions = (self.layout.wide_positions if self.layout is not None
                          else self.window.out_volume)  # L_s

    def buffer(self, n: int, positions: Optional[int] = None) -> np.ndarray:
        """The chunk's column scratch, (C_in, prod(K), n, L_s), or for a block of one
        sample's ``positions`` (C_in, prod(K), n, positions)."""
        width = self.positions if positions is None else positions
        return scratch("columns", (self.channels, self.window.kernel_volume, n, width),
                       self.dtype)

    def per_sample_view(self, cols: np.ndarray) -> np.ndarray:
        """(n, C_in, prod(K), L_s) or (n, C_in, *K, *O) view of the batch-inside buffer."""
        view = cols.transpose(2, 0, 1, 3)
        if self.layout is None:
            window = self.window
            view = view.reshape(view.shape[:2] + window.kernel_size + window.out_size)
        return view

    def build(self, source: np.ndarray, cols: np.ndarray) -> None:
        """Columns of ``source`` (n, C_in, *I) into ``cols`` (C_in, prod(K), n, L_s)."""
        if self.layout is not None:
            self.gather(self.stage(source), slice(None), cols)
            return
        window = self.window
        padded = source
        if window.is_padded:
            padded = scratch("padded", source.shape[:2] + window.padded_size, self.dtype)
            pad_into(source, window, padded)
        im2col_into(padded, window, self.per_sample_view(cols))

    def scatter(self, cols: np.ndarray, dx: np.ndarray) -> None:
        """col2im of ``cols`` (C_in, prod(K), n, L_s) into ``dx`` (n, C_in, *I)."""
        if self.layout is not None:
            rows = self.zero_rows(dx.shape[0])
            self.scatter_block(cols, slice(None), rows)
            self.unstage(rows, dx)
            return
        window = self.window
        if not window.is_padded:
            dx[...] = 0
            col2im_add(self.per_sample_view(cols), window, dx)
            return
        grad_padded = scratch("padded", dx.shape[:2] + window.padded_size, self.dtype)
        grad_padded[...] = 0
        col2im_add(self.per_sample_view(cols), window, grad_padded)
        dx[...] = unpad_add(grad_padded, window)

    def _wide(self) -> WideLayout:
        if self.layout is None:
            raise RuntimeError("a block-by-block pass needs the wide layout")
        return self.layout

    # the wide layout, piece by piece: a sample's columns can be built (and
    # scattered back) a block of consecutive wide positions at a time
    def stage(self, source: np.ndarray) -> np.ndarray:
        """``source`` (n, C_in, *I) padded and phase-split into rows (n, C_in, row_length)."""
        layout = self._wide()
        n = source.shape[0]
        rows = scratch("rows", (n, self.channels, layout.row_length), self.dtype)
        split_phases_into(source, layout, rows, self._extended(n))
        return rows

    def gather(self, rows: np.ndarray, positions: slice, cols: np.ndarray) -> None:
        """The columns of wide ``positions`` into ``cols`` (C_in, prod(K), n, P)."""
        wide_im2col_into(rows, self._wide(), cols.transpose(2, 0, 1, 3), positions)

    def zero_rows(self, n: int) -> np.ndarray:
        """Zeroed rows scratch (n, C_in, row_length), for :meth:`scatter_block`."""
        rows = scratch("rows", (n, self.channels, self._wide().row_length), self.dtype)
        rows[...] = 0
        return rows

    def scatter_block(self, cols: np.ndarray, positions: slice, rows: np.ndarray) -> None:
        """Scatter-add ``cols`` (C_in, prod(K), n, P) of wide ``positions`` into ``rows``."""
        wide_col2im_add(cols.transpose(2, 0, 1, 3), self._wide(), rows, positions)

    def unstage(self, rows: np.ndarray, dx: np.ndarray) -> None:
        """Inverse of :meth:`stage` for gradients: ``dx`` (n, C_in, *I) from ``rows``."""
        dx[...] = merge_phases(rows, self._wide(), self._extended(dx.shape[0]))

    def garbage_in(self, positions: slice) -> np.ndarray:
        """Boolean mask of the garbage among wide ``positions``."""
        return garbage_mask(self._wide())[positions]

    def _extended(self, n: int) -> Optional[np.ndarray]:
        if self.layout is None or math.prod(self.window.stride) == 1:
            return None
        return scratch("extended", (n, self.channels) + self.layout.extended_size, self.dtype)

    def zero_garbage(self, cols: np.ndarray) -> None:
        """Zero the wide layout's garbage positions of ``cols`` (C_in, prod(K), n, L_s)."""
        if self.layout is not None:
            zero_garbage(self.per_sample_view(cols), self.layout)

    def to_gemm(self, array: np.ndarray, out: np.ndarray) -> None:
        """``array`` (n, F, *O) into ``out`` (F, n, L_s), zero at wide-only positions."""
        transposed = array.swapaxes(0, 1)  # (F, n, *O)
        if self.layout is None:
            out.reshape(transposed.shape)[...] = transposed
        else:
            widen(transposed, self.layout, out)

    @property
    def gemm_is_sample_layout(self) -> bool:
        """No garbage positions: one sample's (F, 1, L_s) GEMM operand is (F, *O) itself."""
        return self.positions == self.window.out_volume

    def gemm_operand(self, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """``array`` (n, F, *O) as the GEMM's (F, n, L_s): the array itself for one
        contiguous sample of the right dtype and no garbage positions, else a copy."""
        n, filters = array.shape[:2]
        if (n == 1 and self.gemm_is_sample_layout and array.dtype == dtype
                and array.flags.c_contiguous):
            return array.reshape(filters, 1, self.positions)
        out = scratch("gemm", (filters, n, self.positions), dtype)
        self.to_gemm(array, out)
        return out

    def from_gemm(self, gemm: np.ndarray) -> np.ndarray:
        """View (n, F, *O) of ``gemm`` (F, n, L_s)."""
        if self.layout is None:
            view = gemm.reshape(gemm.shape[:2] + self.window.out_size)
        else:
            view = narrow(gemm, self.layout)
        return view.swapaxes(0, 1)

    def copy_from_gemm(self, gemm: np.ndarray, out: np.ndarray) -> None:
        """``out`` (n, F, *O) = the true positions of ``gemm`` (F, n, L_s)."""
        out[...] = self.from_gemm(gemm)


def _scoped(function):
    """Run a pass (first argument: its PassPlan) inside a scratch scope sized by its
    plan (see :func:`~im2colbp.workspace.scratch_scope`)."""
    @functools.wraps(function)
    def run(p: PassPlan, *args, **kwargs):
        with scratch_scope(p.scratch_bytes):
            return function(p, *args, **kwargs)
    return run


#: Up to this many elements :func:`_all_finite` makes one isfinite pass (its
#: boolean temporary is small, and no floating-point error state is saved and
#: restored: for a small call that costs more than the pass); above, one sum.
SMALL_FINITE_CHECK = 1 << 16


def _all_finite(array: np.ndarray) -> bool:
    """No inf/nan in ``array``: one isfinite pass for a small array, else one sum
    (where mere overflow answers False, harmlessly)."""
    if array.size <= SMALL_FINITE_CHECK:
        return bool(np.isfinite(array).all())
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(np.sum(array)))


def _empty(p: PassPlan) -> bool:
    g = p.geometry
    return g.batch == 0 or g.in_channels == 0 or g.out_channels == 0


def _grouped_weight(p: PassPlan, weight: np.ndarray) -> np.ndarray:
    """(G, F, R) view of a contiguous weight (C_out, C_in/G, *K)."""
    g = p.geometry
    return weight.reshape(g.groups, g.out_channels // g.groups, g.column_rows // g.groups)


# --------------------------------------------------------------------------
# the three passes
# --------------------------------------------------------------------------
@_scoped
def _product(p: PassPlan, dtype: np.dtype, source: np.ndarray, weight: np.ndarray, *,
            keep: bool = False, route: str = "im2col",
            out: Optional[np.ndarray] = None) -> Tuple[np.ndarray, Optional[KeptColumns]]:
    """``y = W · cols(source)`` per chunk: (N, C_in, *I) -> (N, C_out, *O).

    With ``keep`` (the plan's ``keep_columns``, whose pass is one chunk) the
    columns are built in a fresh array and returned for backward. With
    ``p.fold`` the result is the gradient w.r.t. a padded input, folded back
    per chunk into ``out`` (N, C, *I) of the padding's window (the
    transposition route under a non-zero padding mode).
    """
    _note(p, route)
    g, window = p.geometry, p.geometry.window
    y = out if out is not None else np.empty((g.batch, g.out_channels) + window.out_size, dtype)
    if _empty(p):
        y[...] = 0
        return y, None
    if p.layout.choice == "identity":
        _identity_product(p, dtype, source, _grouped_weight(p, weight), y)
        return y, None
    columns = _Columns(p, dtype)
    w_groups = _grouped_weight(p, weight)  # (G, F, R)
    groups, filters_g, rows_g = w_groups.shape
    positions = columns.positions
    kept = None
    for part in chunk_slices(g.batch, p.samples_per_chunk):
        n = part.stop - part.start
        if p.block_positions:  # one sample, its columns a block of positions at a time
            _product_by_blocks(p, columns, dtype, source[part], w_groups, y[part])
            continue
        if keep:  # a fresh array: the context owns it, scratch would be overwritten
            cols = np.empty((g.in_channels, window.kernel_volume, n, positions), dtype=dtype)
            kept = KeptColumns(cols, columns.layout is not None)
        else:
            cols = columns.buffer(n)  # (C_in, prod(K), n, L_s)
        columns.build(source[part], cols)
        if n == 1 and columns.gemm_is_sample_layout and p.fold is None:
            # one sample, no garbage positions: (C_out, 1, L) is y[i]'s own layout
            np.matmul(w_groups, cols.reshape(groups, rows_g, positions),
                      out=y[part].reshape(groups, filters_g, positions))
            continue
        y_gemm = scratch("gemm", (g.out_channels, n, positions), dtype)
        np.matmul(w_groups, cols.reshape(groups, rows_g, n * positions),
                  out=y_gemm.reshape(groups, filters_g, n * positions))
        if p.fold is not None:
            folded = scratch("folded", (n, g.out_channels) + window.out_size, dtype)
            folded[...] = columns.from_gemm(y_gemm)
            y[part] = unpad_add(folded, p.fold)
        else:
            columns.copy_from_gemm(y_gemm, y[part])
    if kept is not None and kept.wide and not _all_finite(source):
        # garbage positions read real samples: keep inf/nan out of the other taps' dW
        columns.zero_garbage(kept.cols)
    return y, kept


@_scoped
def _weight_gradient(p: PassPlan, dtype: np.dtype, source: Optional[np.ndarray],
                    delta: np.ndarray, kept: Optional[KeptColumns] = None) -> np.ndarray:
    """``dW = Σ_n δ · cols(source)ᵀ``: (N, C_in, *I), (N, C_out, *O) -> weight shape.

    ``kept`` columns (from forward) replace ``source``; they are read as they
    are when the whole batch is one chunk of the plan's dtype, else cast chunk
    by chunk.
    """
    _note(p, "im2col")
    g = p.geometry
    dw = np.zeros(g.weight_shape, dtype=dtype)
    if _empty(p):
        return dw
    if p.layout.choice == "identity":
        if source is None:
            raise RuntimeError("the weight gradient of a 1×1 convolution needs its source")
        _identity_weight_gradient(p, dtype, source, delta, dw)
        return dw
    columns = _Columns(p, dtype)
    if kept is not None and kept.wide != (columns.layout is not None):
        raise RuntimeError("kept columns and the weight-gradient pass disagree on the layout")
    groups = g.groups
    filters_g, rows_g = g.out_channels // groups, g.column_rows // groups
    dw_groups = dw.reshape(groups, filters_g, rows_g)
    dw_part = scratch("weight_grad", (groups, filters_g, rows_g), dtype)
    positions = columns.positions
    chunk = p.samples_per_chunk
    use_kept_as_is = (kept is not None and kept.cols.dtype == dtype
                      and kept.cols.shape[2] == g.batch)
    if use_kept_as_is:
        chunk = g.batch
    if kept is None and source is None:
        raise RuntimeError("the weight gradient needs the source or the kept columns")

    def accumulate(clean: bool) -> None:
        for part in chunk_slices(g.batch, chunk):
            n = part.stop - part.start
            if p.block_positions and kept is None and source is not None:
                _weight_gradient_by_blocks(p, columns, dtype, source[part], delta[part],
                                           dw_part, dw_groups, clean)
                continue
            if kept is not None and use_kept_as_is:
                cols = kept.cols
            else:
                cols = columns.buffer(n)
                if kept is not None:
                    cols[...] = kept.cols[:, :, part]
                elif source is not None:
                    columns.build(source[part], cols)
                    if clean:
                        columns.zero_garbage(cols)
            delta_gemm = columns.gemm_operand(delta[part], dtype)
            # (G, F, n·L_s) @ (G, n·L_s, R) -> (G, F, R)
            np.matmul(delta_gemm.reshape(groups, filters_g, n * positions),
                      cols.reshape(groups, rows_g, n * positions).transpose(0, 2, 1),
                      out=dw_part)
            np.add(dw_groups, dw_part, out=dw_groups)

    if columns.layout is None or kept is not None:
        accumulate(clean=False)
        return dw
    # The wide layout's garbage positions meet δ = 0: exact zeros unless the source
    # holds inf/nan there (then 0·inf = nan). A finite dW proves no garbage position
    # held any; otherwise compute again with the garbage zeroed (and its warnings).
    with np.errstate(invalid="ignore", over="ignore"):
        accumulate(clean=False)
    if not _all_finite(dw):
        dw[...] = 0
        accumulate(clean=True)
    return dw


@_scoped
def _col2im(p: PassPlan, dtype: np.dtype, weight: np.ndarray, delta: np.ndarray,
            route: str) -> np.ndarray:
    """``dx = col2im(Wᵀ · δ)``: (N, C_out, *O) -> (N, C_in, *I)."""
    _note(p, route)
    g, window = p.geometry, p.geometry.window
    dx = np.empty((g.batch, g.in_channels) + window.in_size, dtype=dtype)
    if _empty(p):
        dx[...] = 0
        return dx
    if p.layout.choice == "identity":
        _identity_col2im(p, dtype, _grouped_weight(p, weight), delta, dx)
        return dx
    columns = _Columns(p, dtype)
    w_groups_t = _grouped_weight(p, weight).transpose(0, 2, 1)  # (G, R, F)
    groups, rows_g, filters_g = w_groups_t.shape
    positions = columns.positions
    # garbage positions hold Wᵀ·0: exact zeros unless the weight holds inf/nan
    clean = columns.layout is not None and not _all_finite(weight)
    for part in chunk_slices(g.batch, p.samples_per_chunk):
        n = part.stop - part.start
        if p.block_positions:
            _col2im_by_blocks(p, columns, dtype, w_groups_t, delta[part], dx[part], clean)
            continue
        delta_gemm = columns.gemm_operand(delta[part], dtype)
        delta_g = delta_gemm.reshape(groups, filters_g, n * positions)  # (G, F, n·L_s)
        cols = columns.buffer(n)
        cols_g = cols.reshape(groups, rows_g, n * positions)
        if filters_g == 1:
            # one filter per group (depthwise): Wᵀ·δ is an outer product, which
            # broadcasting does faster than a GEMM with inner dimension 1
            np.multiply(w_groups_t, delta_g, out=cols_g)
        else:
            np.matmul(w_groups_t, delta_g, out=cols_g)  # (G, R, n·L_s): dx's columns
        if clean:
            columns.zero_garbage(cols)
        columns.scatter(cols, dx[part])
    return dx


# --------------------------------------------------------------------------
# the identity layout: a 1×1 kernel at stride 1 without padding needs no columns
# --------------------------------------------------------------------------
def _operand(array: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``array`` itself when it is C-contiguous in ``dtype``, else a copy in scratch."""
    if array.dtype == dtype and array.flags.c_contiguous:
        return array
    out = scratch(name, array.shape, dtype)
    out[...] = array
    return out


def _per_group(array: np.ndarray, groups: int) -> np.ndarray:
    """(n, G, C/G, L) view of a contiguous (n, C, *S)."""
    return array.reshape(array.shape[0], groups, array.shape[1] // groups, -1)


def _product_of(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """``out = w @ x`` for (G, F, C) and (n, G, C, L); a broadcast product when C = 1."""
    if w.shape[-1] == 1:
        np.multiply(w, x, out=out)
    else:
        np.matmul(w, x, out=out)


def _identity_product(p: PassPlan, dtype: np.dtype, source: np.ndarray, w_groups: np.ndarray,
                      y: np.ndarray) -> None:
    """``y[i] = W · x[i]`` per sample and group, straight into y (N, C_out, *O)."""
    groups = w_groups.shape[0]
    for part in chunk_slices(p.geometry.batch, p.samples_per_chunk):
        x_g = _per_group(_operand(source[part], dtype, "identity.x"), groups)
        _product_of(w_groups, x_g, _per_group(y[part], groups))


def _identity_col2im(p: PassPlan, dtype: np.dtype, w_groups: np.ndarray, delta: np.ndarray,
                     dx: np.ndarray) -> None:
    """``dx[i] = Wᵀ · δ[i]`` per sample and group, straight into dx (N, C_in, *I)."""
    groups = w_groups.shape[0]
    w_t = w_groups.transpose(0, 2, 1)  # (G, C_in/G, F)
    for part in chunk_slices(p.geometry.batch, p.samples_per_chunk):
        delta_g = _per_group(_operand(delta[part], dtype, "identity.delta"), groups)
        _product_of(w_t, delta_g, _per_group(dx[part], groups))


def _identity_weight_gradient(p: PassPlan, dtype: np.dtype, source: np.ndarray,
                              delta: np.ndarray, dw: np.ndarray) -> None:
    """``dW = Σ_i δ[i] · x[i]ᵀ``: one GEMM per sample and group, summed into dw."""
    g = p.geometry
    groups = g.groups
    dw_groups = _grouped_weight(p, dw)  # (G, F, C_in/G)
    dw_part = scratch("weight_grad", dw_groups.shape, dtype)
    for part in chunk_slices(g.batch, p.samples_per_chunk):
        x_g = _per_group(_operand(source[part], dtype, "identity.x"), groups)
        delta_g = _per_group(_operand(delta[part], dtype, "identity.delta"), groups)
        for x_i, delta_i in zip(x_g, delta_g):  # (G, C/G, L), (G, F, L)
            np.matmul(delta_i, x_i.transpose(0, 2, 1), out=dw_part)
            dw_groups += dw_part


# --------------------------------------------------------------------------
# the same passes for one sample whose columns come a block of positions at a time
# --------------------------------------------------------------------------
def _position_blocks(p: PassPlan, positions: int) -> Iterator[slice]:
    return chunk_slices(positions, p.block_positions)


def _product_by_blocks(p: PassPlan, columns: _Columns, dtype: np.dtype, source: np.ndarray,
                       w_groups: np.ndarray, y_part: np.ndarray) -> None:
    """``y_part`` (1, C_out, *O) = W · cols(source), the columns block by block."""
    groups, filters_g, rows_g = w_groups.shape
    positions = columns.positions
    rows = columns.stage(source)
    y_gemm = scratch("gemm", (p.geometry.out_channels, 1, positions), dtype)
    y_groups = y_gemm.reshape(groups, filters_g, positions)
    for block in _position_blocks(p, positions):
        width = block.stop - block.start
        cols = columns.buffer(1, width)
        columns.gather(rows, block, cols)
        np.matmul(w_groups, cols.reshape(groups, rows_g, width), out=y_groups[:, :, block])
    columns.copy_from_gemm(y_gemm, y_part)


def _weight_gradient_by_blocks(p: PassPlan, columns: _Columns, dtype: np.dtype,
                               source: np.ndarray, delta: np.ndarray, dw_part: np.ndarray,
                               dw_groups: np.ndarray, clean: bool) -> None:
    """``dw_groups += δ · cols(source)ᵀ`` for one sample, the columns block by block."""
    groups, filters_g, rows_g = dw_part.shape
    positions = columns.positions
    delta_g = columns.gemm_operand(delta, dtype).reshape(groups, filters_g, positions)
    rows = columns.stage(source)
    for block in _position_blocks(p, positions):
        width = block.stop - block.start
        cols = columns.buffer(1, width)
        columns.gather(rows, block, cols)
        if clean:  # inf/nan read at garbage positions must not meet δ = 0 there
            cols[..., columns.garbage_in(block)] = 0
        np.matmul(delta_g[:, :, block], cols.reshape(groups, rows_g, width).transpose(0, 2, 1),
                  out=dw_part)
        dw_groups += dw_part


def _col2im_by_blocks(p: PassPlan, columns: _Columns, dtype: np.dtype, w_groups_t: np.ndarray,
                      delta: np.ndarray, dx_part: np.ndarray, clean: bool) -> None:
    """``dx_part`` (1, C_in, *I) = col2im(Wᵀ · δ), the columns block by block."""
    groups, rows_g, filters_g = w_groups_t.shape
    positions = columns.positions
    delta_g = columns.gemm_operand(delta, dtype).reshape(groups, filters_g, positions)
    rows = columns.zero_rows(1)
    for block in _position_blocks(p, positions):
        width = block.stop - block.start
        cols = columns.buffer(1, width)
        cols_g = cols.reshape(groups, rows_g, width)
        if filters_g == 1:
            np.multiply(w_groups_t, delta_g[:, :, block], out=cols_g)
        else:
            np.matmul(w_groups_t, delta_g[:, :, block], out=cols_g)
        if clean:  # Wᵀ·0 at garbage positions is nan for a weight with inf/nan
            cols[..., columns.garbage_in(block)] = 0
        columns.scatter_block(cols, block, rows)
    columns.unstage(rows, dx_part)


def adjoint(step: Step, dtype: np.dtype, weight: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The input gradient ``dx`` of the convolution, by the step's route.

    ``col2im``: one col2im pass. ``transposition``: the product pass of the
    stride-1 convolution of δ with :func:`~im2colbp.kernels.backprop_kernel`
    (its geometry pads δ by ``D·(K-1) - P``), folded back for non-zero
    padding modes; the step's col2im fallback runs for a weight with inf/nan.
    """
    route = step.route.choice
    if route == "col2im":
        return _col2im(step.passes[0], dtype, weight, delta, route)
    if route == "direct":
        return _direct_input_gradient(step.passes[0], dtype, weight, delta)
    if route not in ("transposition", "winograd"):
        raise RuntimeError(f"unknown input-gradient route {route!r}")
    fallback = step.fallback
    if fallback is None:
        raise RuntimeError(f"the {route} route needs its col2im fallback")
    if not _all_finite(weight) or (route == "winograd" and not _all_finite(delta)):
        # inf·(padded zero) would be nan, and a Winograd tile mixes its inputs;
        # col2im forms neither
        return _col2im(fallback, dtype, weight, delta, "col2im")
    p = step.passes[0]
    forward = fallback.geometry  # the convolution whose input gradient this is
    kernel = backprop_kernel(weight, forward.groups)  # (C_in, C_out/G, *K), flipped
    if route == "winograd":
        dx = _winograd_or_none(_winograd_forward, p, dtype, delta,
                               np.ascontiguousarray(kernel, dtype=dtype))
        return dx if dx is not None else _col2im(fallback, dtype, weight, delta, "col2im")
    out = np.empty((forward.batch, forward.in_channels) + forward.window.in_size, dtype)
    dx, _ = _product(p, dtype, delta, np.ascontiguousarray(kernel, dtype=dtype), out=out,
                     route=route)
    return dx


@_scoped
def _winograd_forward(p: PassPlan, dtype: np.dtype, source: np.ndarray,
                      weight: np.ndarray) -> np.ndarray:
    """Winograd's forward pass, folded back through ``p.fold``'s padding if set."""
    _note(p, "winograd")
    y = winograd_forward(p.geometry, source, weight, tile=p.tile, dtype=dtype,
                         samples_per_chunk=p.samples_per_chunk)
    if p.fold is None:
        return y
    return np.ascontiguousarray(unpad_add(y, p.fold))


Kept = Union[KeptColumns, DepthwiseKept]


def forward(step: Step, dtype: np.dtype, source: np.ndarray, weight: np.ndarray, *,
            keep: bool = False) -> Tuple[np.ndarray, Optional[Kept]]:
    """``y = conv(source, weight)`` by the step's route (``im2col``, ``winograd``, ``direct``).

    ``keep``: return what the weight gradient can reuse (the im2col route's
    columns, the direct route's loaded input): the plan's ``keep_columns``.
    Winograd falls back to im2col for inf/nan operands.
    """
    route = step.route.choice
    if route == "im2col":
        return _product(step.passes[0], dtype, source, weight, keep=keep)
    if route == "direct":
        return _direct_forward(step.passes[0], dtype, source, weight, keep)
    if route != "winograd" or step.fallback is None:
        raise RuntimeError(f"unknown forward route {route!r}")
    if not (_all_finite(source) and _all_finite(weight)):
        return _product(step.fallback, dtype, source, weight, keep=keep)
    y = _winograd_or_none(_winograd_forward, step.passes[0], dtype, source, weight)
    if y is None:
        return _product(step.fallback, dtype, source, weight, keep=keep)
    return y, None


def weight_gradient(step: Step, dtype: np.dtype, source: Optional[np.ndarray],
                    delta: np.ndarray, kept: Optional[Kept] = None) -> np.ndarray:
    """``dW`` by the step's route; ``kept`` columns (im2col route) replace ``source``."""
    route = step.route.choice
    if route == "im2col":
        columns = kept if isinstance(kept, KeptColumns) else None
        return _weight_gradient(step.passes[0], dtype, source, delta, columns)
    if route == "direct":
        loaded = kept if isinstance(kept, DepthwiseKept) else None
        if loaded is not None and loaded.flat.dtype != dtype:  # a backward in another dtype
            loaded = DepthwiseKept(loaded.flat.astype(dtype), loaded.bands)
        return _direct_weight_gradient(step.passes[0], dtype, source, delta, loaded)
    if route != "winograd" or step.fallback is None or source is None:
        raise RuntimeError(f"unknown weight-gradient route {route!r} or no source")
    if not (_all_finite(source) and _all_finite(delta)):
        return _weight_gradient(step.fallback, dtype, source, delta, kept)
    dw = _winograd_or_none(_winograd_weight_gradient, step.passes[0], dtype, source, delta)
    if dw is None:
        return _weight_gradient(step.fallback, dtype, source, delta, kept)
    return dw


def _winograd_or_none(winograd_pass, p: PassPlan, dtype: np.dtype, *operands: np.ndarray
                      ) -> Optional[np.ndarray]:
    """A Winograd pass on finite operands, or None if its result is not finite.

    The transforms scale values by up to 14 per axis (Bᵀ's row sums) and 8 (Aᵀ),
    so operands near the dtype's largest value can overflow inside them where the
    lowering's sums do not: the caller then runs the lowering instead.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        result = winograd_pass(p, dtype, *operands)
    return result if _all_finite(result) else None


@_scoped
def _winograd_weight_gradient(p: PassPlan, dtype: np.dtype, source: np.ndarray,
                              delta: np.ndarray) -> np.ndarray:
    _note(p, "winograd")
    return winograd_weight_gradient(p.geometry, source, delta, tile=p.tile, dtype=dtype,
                                    samples_per_chunk=p.samples_per_chunk)


@_scoped
def _direct_forward(p: PassPlan, dtype: np.dtype, source: np.ndarray, weight: np.ndarray,
                    keep: bool) -> Tuple[np.ndarray, Optional[Kept]]:
    _note(p, "direct")
    if keep:
        y, kept = depthwise_forward(p.geometry, source, weight, dtype=dtype,
                                    samples_per_chunk=p.samples_per_chunk, keep=True)
        return y, kept
    return depthwise_forward(p.geometry, source, weight, dtype=dtype,
                             samples_per_chunk=p.samples_per_chunk), None


@_scoped
def _direct_input_gradient(p: PassPlan, dtype: np.dtype, weight: np.ndarray,
                           delta: np.ndarray) -> np.ndarray:
    _note(p, "direct")
    return depthwise_input_gradient(p.geometry, weight, delta, dtype=dtype,
                                    samples_per_chunk=p.samples_per_chunk)


@_scoped
def _direct_weight_gradient(p: PassPlan, dtype: np.dtype, source: Optional[np.ndarray],
                            delta: np.ndarray, kept: Optional[DepthwiseKept]) -> np.ndarray:
    _note(p, "direct")
    if source is None and kept is None:
        raise RuntimeError("the direct weight gradient needs the forward input or its kept copy")
    return depthwise_weight_gradient(p.geometry, source, delta, dtype=dtype,
                                     samples_per_chunk=p.samples_per_chunk, kept=kept)
