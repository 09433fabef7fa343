"""Convolution, its gradients and transposed convolution, lowered to GEMMs.

Per sample n and group g, with ``cols = im2col(x)`` laid out channel-major,
``(C_in/G * prod(K), L)`` per group, and ``W_g`` the group's filters as a
``(C_out/G, C_in/G * prod(K))`` matrix::

    forward            y[n, g]  = W_g · cols[n, g]            (+ b)
    weight gradient    dW_g    += δ[n, g] · cols[n, g]ᵀ        (summed over n)
    input gradient     dx[n]    = col2im(W_gᵀ · δ[n, g])       (scatter-add)
    bias gradient      db       = Σ_{n, o} δ[n, :, o]

(The row-major textbook form ``Y = X_col·W`` is the same product transposed.)
In memory the columns of a chunk of samples sit side by side, ``(C_in/G·∏K, n·L)``
per group, so each of the three products is *one* GEMM per chunk and group.

A transposed convolution *is* the input gradient of a convolution, so it runs
the same code with the roles of x and δ exchanged:

    conv_transpose(x, w)        = conv_grad_input(δ=x, w)
    its input gradient          = conv(δ_t, w)       (cropped to x's size)
    its weight gradient         = conv_grad_weight(δ=x, x=δ_t)

Every pass goes through :func:`_lowered_pass`, which walks the batch in chunks
whose columns fit the workspace limit (and, for speed, the cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from .geometry import (
    ConvGeometry,
    as_float_array,
    check_array_shape,
    conv_geometry,
    conv_transpose_geometry,
    result_dtype,
)
from .lowering import col2im_add, im2col_into, pad_into, unpad_add
from .wide_lowering import (
    merge_phases,
    narrow,
    split_phases_into,
    wide_col2im_add,
    wide_im2col_into,
    wide_layout,
    widen,
    zero_garbage,
)
from .workspace import chunk_slices, get_workspace_limit, samples_per_chunk, scratch

__all__ = [
    "ConvGrads",
    "ConvContext",
    "conv",
    "conv_forward",
    "conv_backward",
    "conv_grad_input",
    "conv_grad_weight",
    "conv_grad_bias",
    "conv_transpose",
    "conv_transpose_forward",
    "conv_transpose_backward",
]

_WRT = ("input", "weight", "bias")


class ConvGrads(NamedTuple):
    """Gradients of a (transposed) convolution; a field is None when not requested."""

    input: Optional[np.ndarray]
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]


@dataclass(frozen=True)
class ConvContext:
    """What backward needs from forward.

    ``x`` and ``weight`` are held by reference (not copied): modifying them
    between forward and backward changes the gradients. ``columns`` keeps the
    column matrix only when the whole batch's columns are small (at most
    ``KEEP_COLUMNS_BYTES``, 16 MiB, and the workspace limit); otherwise backward
    rebuilds them chunk by chunk, while they are still in cache — measured to be
    faster than streaming a large kept matrix back from memory.
    """

    geometry: ConvGeometry
    x: np.ndarray
    weight: np.ndarray
    has_bias: bool
    transposed: bool
    columns: Optional[_KeptColumns] = None


# --------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------
#: Use the phase-split, widened columns of :mod:`im2colbp.wide_lowering` where
#: they waste little (tests switch it off to cover the plain path too).
USE_WIDE_LOWERING = True

#: Preferred bytes of one chunk's column buffer (capped by the workspace limit):
#: small enough that the columns im2col writes are still in the last-level
#: cache when the GEMM reads them, large enough to keep the GEMMs efficient.
PREFERRED_CHUNK_BYTES = 8 * 2**20

#: Forward keeps the whole batch's columns for backward up to this size (and the
#: workspace limit); above it, backward rebuilds them chunk by chunk.
KEEP_COLUMNS_BYTES = 16 * 2**20


class _Columns:
    """How one pass lays out its columns: plain strided slices or the wide layout.

    Either way the chunk's columns live *batch inside*, as a
    ``(C_in, prod(K), n, L_s)`` array (L_s = L, or L_wide for the wide layout),
    so that every group's column matrix ``(C_in/G·prod(K), n·L_s)`` is
    contiguous and each GEMM covers the whole chunk at once. y and δ move
    between ``(n, C_out, *O)`` and the GEMM's ``(C_out, n, L_s)`` with one
    transposing copy each — cheap next to the columns, which are prod(K)·C_in/C_out
    times larger.
    """

    def __init__(self, geometry: ConvGeometry, dtype: np.dtype, wide: bool):
        self.window = window = geometry.window
        self.dtype = dtype
        self.channels = geometry.in_channels
        self.layout = wide_layout(window) if wide else None
        self.positions = (self.layout.wide_positions if self.layout is not None
                          else window.out_volume)  # L_s

    def sample_nbytes(self) -> int:
        return self.channels * self.window.kernel_volume * self.positions * self.dtype.itemsize

    def buffer(self, n: int) -> np.ndarray:
        """The chunk's column scratch, (C_in, prod(K), n, L_s)."""
        return scratch("columns", (self.channels, self.window.kernel_volume, n, self.positions),
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
        n = source.shape[0]
        if self.layout is not None:
            rows = scratch("rows", (n, self.channels, self.layout.row_length), self.dtype)
            split_phases_into(source, self.layout, rows, self._extended(n))
            wide_im2col_into(rows, self.layout, self.per_sample_view(cols))
        else:
            padded = source
            if self.window.is_padded:
                padded = scratch("padded", (n, self.channels) + self.window.padded_size,
                                 self.dtype)
                pad_into(source, self.window, padded)
            im2col_into(padded, self.window, self.per_sample_view(cols))

    def scatter(self, cols: np.ndarray, dx: np.ndarray) -> None:
        """col2im of ``cols`` (C_in, prod(K), n, L_s) into ``dx`` (n, C_in, *I)."""
        n = dx.shape[0]
        if self.layout is not None:
            rows = scratch("rows", (n, self.channels, self.layout.row_length), self.dtype)
            rows[...] = 0
            wide_col2im_add(self.per_sample_view(cols), self.layout, rows)
            dx[...] = merge_phases(rows, self.layout, self._extended(n))
            return
        if not self.window.is_padded:
            dx[...] = 0
            col2im_add(self.per_sample_view(cols), self.window, dx)
            return
        grad_padded = scratch("padded", (n, self.channels) + self.window.padded_size, self.dtype)
        grad_padded[...] = 0
        col2im_add(self.per_sample_view(cols), self.window, grad_padded)
        dx[...] = unpad_add(grad_padded, self.window)

    def _extended(self, n: int) -> Optional[np.ndarray]:
        if math.prod(self.window.stride) == 1:
            return None
        return scratch("extended", (n, self.channels) + self.layout.extended_size, self.dtype)

    def to_gemm(self, array: np.ndarray, out: np.ndarray) -> None:
        """``array`` (n, F, *O) into ``out`` (F, n, L_s), zero at wide-only positions."""
        transposed = array.swapaxes(0, 1)  # (F, n, *O)
        if self.layout is None:
            out.reshape(transposed.shape)[...] = transposed
        else:
            widen(transposed, self.layout, out)

    def from_gemm(self, gemm: np.ndarray) -> np.ndarray:
        """View (n, F, *O) of ``gemm`` (F, n, L_s)."""
        if self.layout is None:
            view = gemm.reshape(gemm.shape[:2] + self.window.out_size)
        else:
            view = narrow(gemm, self.layout)
        return view.swapaxes(0, 1)


def _lowered_pass(
    geometry: ConvGeometry,
    dtype: np.dtype,
    *,
    source: Optional[np.ndarray] = None,
    weight: Optional[np.ndarray] = None,
    delta: Optional[np.ndarray] = None,
    product: bool = False,
    weight_grad: bool = False,
    scatter: bool = False,
    keep_columns: bool = False,
    kept_columns: Optional[_KeptColumns] = None,
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray],
           Optional[_KeptColumns]]:
    """One pass over the batch in workspace-sized chunks; per chunk, one GEMM each.

    All arrays are batched and already of ``dtype``: ``source`` (N, C_in, *I)
    is the array whose columns are needed, ``weight`` (C_out, C_in/G, *K),
    ``delta`` (N, C_out, *O). Returns ``(product, weight_grad, scatter, kept)``:

    - product      ``W · cols``          -> (N, C_out, *O)
    - weight_grad  ``Σ_n δ · colsᵀ``     -> (C_out, C_in/G, *K)
    - scatter      ``col2im(Wᵀ · δ)``    -> (N, C_in, *I)
    - kept         with ``keep_columns``, the whole batch's columns when they
      are at most ``KEEP_COLUMNS_BYTES`` (then backward need not rebuild
      them); ``kept_columns`` passes them back in.
    """
    window = geometry.window
    batch, groups = geometry.batch, geometry.groups
    c_in, c_out = geometry.in_channels, geometry.out_channels
    y = np.empty((batch, c_out) + window.out_size, dtype=dtype) if product else None
    dw = np.zeros(geometry.weight_shape, dtype=dtype) if weight_grad else None
    dx = np.empty((batch, c_in) + window.in_size, dtype=dtype) if scatter else None
    if c_in == 0 or c_out == 0 or batch == 0:
        # Empty sums: nothing to lower (and `groups` may be anything that divides 0).
        if y is not None:
            y[...] = 0
        if dx is not None:
            dx[...] = 0
        return y, dw, dx, None

    rows_g = c_in // groups * window.kernel_volume  # R: rows of one group's column matrix
    filters_g = c_out // groups  # F: filters of one group
    if weight is not None:
        w_groups = weight.reshape(groups, filters_g, rows_g)  # (G, F, R)
    if dw is not None:
        dw_groups = dw.reshape(groups, filters_g, rows_g)
        dw_part = scratch("weight_grad", (groups, filters_g, rows_g), dtype)
    columns = _Columns(geometry, dtype, USE_WIDE_LOWERING)
    positions = columns.positions  # L_s
    chunk = samples_per_chunk(batch, columns.sample_nbytes(),
                              min(get_workspace_limit(), PREFERRED_CHUNK_BYTES))
    if kept_columns is not None and kept_columns.matches(columns, batch):
        chunk = batch
    else:
        kept_columns = None
    batch_nbytes = batch * columns.sample_nbytes()
    if keep_columns and batch_nbytes <= min(get_workspace_limit(), KEEP_COLUMNS_BYTES):
        chunk = batch  # one chunk, kept for backward: saves rebuilding the columns
    keep = keep_columns and chunk == batch and kept_columns is None
    # The wide layout's garbage positions are multiplied by δ = 0 (in dW) or hold
    # Wᵀ·0 (in dx's columns): exact zeros unless inf/nan is involved, so zero them
    # explicitly when the source or the weight is not finite.
    clean_columns = (columns.layout is not None and (weight_grad or keep)
                     and kept_columns is None and not _all_finite(source))
    clean_scatter = columns.layout is not None and scatter and not _all_finite(weight)

    for part in chunk_slices(batch, chunk):
        n = part.stop - part.start
        if kept_columns is not None:
            cols = kept_columns.cols
        elif keep:  # a fresh array: the context owns it, scratch would be overwritten
            cols = np.empty((c_in, window.kernel_volume, n, positions), dtype=dtype)
        else:
            cols = columns.buffer(n)  # (C_in, prod(K), n, L_s)
        cols_g = cols.reshape(groups, rows_g, n * positions)  # (G, R, n·L_s)
        if (product or weight_grad) and kept_columns is None:
            columns.build(source[part], cols)
            if clean_columns:
                zero_garbage(columns.per_sample_view(cols), columns.layout)
        if product:
            y_gemm = scratch("product", (c_out, n, positions), dtype)
            np.matmul(w_groups, cols_g, out=y_gemm.reshape(groups, filters_g, n * positions))
            y[part] = columns.from_gemm(y_gemm)
        if weight_grad or scatter:
            delta_gemm = scratch("delta", (c_out, n, positions), dtype)
            columns.to_gemm(delta[part], delta_gemm)
            delta_g = delta_gemm.reshape(groups, filters_g, n * positions)  # (G, F, n·L_s)
        if weight_grad:
            # (G, F, n·L_s) @ (G, n·L_s, R) -> (G, F, R)
            np.matmul(delta_g, cols_g.transpose(0, 2, 1), out=dw_part)
            dw_groups += dw_part
        if scatter:
            if kept_columns is not None:  # never overwrite what the context owns
                cols = columns.buffer(n)
                cols_g = cols.reshape(groups, rows_g, n * positions)
            w_groups_t = w_groups.transpose(0, 2, 1)  # (G, R, F)
            if filters_g == 1:
                # one filter per group (depthwise): Wᵀ·δ is an outer product, which
                # broadcasting does faster than a GEMM with inner dimension 1
                np.multiply(w_groups_t, delta_g, out=cols_g)
            else:
                np.matmul(w_groups_t, delta_g, out=cols_g)  # (G, R, n·L_s): dx's columns
            if clean_scatter:
                zero_garbage(columns.per_sample_view(cols), columns.layout)
            columns.scatter(cols, dx[part])
    kept = _KeptColumns(cols, columns.layout is not None, dtype) if keep else None
    return y, dw, dx, kept


def _all_finite(array: np.ndarray) -> bool:
    """No inf/nan in ``array``, from one sum (mere overflow answers False, harmlessly)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(np.sum(array)))


@dataclass(frozen=True)
class _KeptColumns:
    """A forward pass's columns, kept for backward (only when they are small)."""

    cols: np.ndarray  # (C_in, prod(K), N, L_s)
    wide: bool
    dtype: np.dtype

    def matches(self, columns: _Columns, batch: int) -> bool:
        return (self.wide == (columns.layout is not None) and self.dtype == columns.dtype
                and self.cols.shape[2:] == (batch, columns.positions))


#: Use the channel-transposition route for the input gradient at stride 1 when
#: it moves less memory than col2im (tests switch it off to cover both routes).
USE_TRANSPOSITION_ROUTE = True


def _input_gradient(geometry: ConvGeometry, dtype: np.dtype, weight: np.ndarray,
                    delta: np.ndarray) -> np.ndarray:
    """``dx = col2im(Wᵀ·δ)``, or at stride 1 the same as a forward convolution.

    At stride 1 the input gradient is the convolution of δ, padded by
    ``D·(K-1) - P_before`` before and ``D·(K-1) - P_after + R`` after, with the
    channel-swapped, flipped kernel (Aggarwal's transposition; see
    :mod:`im2colbp.transposition`). Its GEMM has the same flops, but instead of
    writing ``C_in·∏K·L`` column entries and scatter-adding them (col2im: a
    read-modify-write), it copies ``C_out·∏K·L`` entries of δ — cheaper unless
    there are many more filters than input channels.
    """
    window = geometry.window
    mode = window.padding_mode
    # other modes: the gradient w.r.t. the padded input, folded back below
    pairs = window.transposition_padding(padded_input=mode != "zeros")
    eligible = (USE_TRANSPOSITION_ROUTE and all(s == 1 for s in window.stride)
                and geometry.out_channels < 2 * geometry.in_channels
                and all(b >= 0 and a >= 0 for b, a in pairs)
                and geometry.batch > 0 and geometry.in_channels > 0
                and _all_finite(weight))  # inf·(padded zero) would be nan; col2im never forms it
    if not eligible:
        return _lowered_pass(geometry, dtype, weight=weight, delta=delta, scatter=True)[2]
    from .transposition import backprop_kernel  # (transposition builds on this module)

    kernel = backprop_kernel(weight, geometry.groups)  # (C_in, C_out/G, *K), flipped
    backward = conv_geometry(
        delta.shape, kernel.shape, stride=1, padding=pairs, dilation=window.dilation,
        groups=geometry.groups,
    )
    grad = _lowered_pass(backward, dtype, source=delta, weight=kernel, product=True)[0]
    if mode == "zeros":
        return grad
    return np.ascontiguousarray(unpad_add(grad, window))


# --------------------------------------------------------------------------
# argument handling shared by the public functions
# --------------------------------------------------------------------------
def _batched(array: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    return array if geometry.batched else array[None]


def _unbatched(array: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    return array if geometry.batched else array[0]


def _geometry_kwargs(stride, padding, dilation, groups, padding_mode) -> dict:
    return dict(
        stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode
    )


def _parse_wrt(wrt: Any) -> Tuple[bool, bool, bool]:
    if isinstance(wrt, str):
        wrt = (wrt,)
    try:
        names = tuple(wrt)
    except TypeError:
        raise TypeError(f"wrt must be a tuple drawn from {_WRT}, got {wrt!r}") from None
    for name in names:
        if name not in _WRT:
            raise ValueError(f"wrt entries must be in {_WRT}, got {name!r}")
    return tuple(name in names for name in _WRT)  # type: ignore[return-value]


def _add_bias(y: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    if bias is not None:
        y += bias.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def conv_forward(
    x: Any,
    weight: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Tuple[np.ndarray, ConvContext]:
    """Convolution that also returns the context :func:`conv_backward` needs.

    Same arguments and result as :func:`conv`. The context keeps references
    to ``x`` and ``weight`` and, when the whole batch's columns are small (at
    most 16 MiB and the workspace limit), the column matrix, so that backward
    does not rebuild it.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4); w = np.ones((2, 1, 3, 3)); b = np.array([0., 1.])
    >>> y, ctx = ib.conv_forward(x, w, b, padding=1)
    >>> grads = ib.conv_backward(np.ones_like(y), ctx)
    >>> grads.bias                               # each filter's δ summed over the 4×4 outputs
    array([16., 16.])
    >>> grads.input[0, 0, 0]                     # corner pixels sit in 4 windows, 2 filters
    array([ 8., 12., 12.,  8.])
    """
    x = as_float_array(x, "x")
    weight = as_float_array(weight, "weight")
    bias = None if bias is None else as_float_array(bias, "bias")
    geometry = conv_geometry(
        x.shape, weight.shape, None if bias is None else bias.shape,
        **_geometry_kwargs(stride, padding, dilation, groups, padding_mode),
    )
    dtype = result_dtype(x, weight, bias)
    xb = _batched(x, geometry).astype(dtype, copy=False)
    w = weight.astype(dtype, copy=False)
    y, _, _, kept = _lowered_pass(geometry, dtype, source=xb, weight=w, product=True,
                                  keep_columns=True)
    _add_bias(y, bias)
    ctx = ConvContext(geometry, x, weight, bias is not None, transposed=False, columns=kept)
    return _unbatched(y, geometry), ctx


def conv(
    x: Any,
    weight: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """N-d convolution (cross-correlation, as in deep learning) lowered to GEMM.

    Parameters
    ----------
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
        Input, channels first; r = ``weight.ndim - 2`` spatial axes, any r >= 1.
    weight : array_like, shape (C_out, C_in/G, *K)
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of int, optional
        S and D, positive.
    padding : int, tuple of int, tuple of (int, int), 'valid' or 'same', optional
        Symmetric per axis, or ``(before, after)`` pairs. ``'same'`` gives
        ``O = ceil(I / S)`` with total padding split ``before = total // 2``
        (TensorFlow/JAX rule; works with stride > 1).
    groups : int, optional
        G; C_in and C_out must be divisible by G.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, optional
        zeros
            pad with 0
        reflect
            mirror without repeating the edge (padding must be < I)
        replicate
            repeat the edge sample
        circular
            wrap around periodically (padding may exceed I)

    Returns
    -------
    y : ndarray, shape (N, C_out, *O) or (C_out, *O)
        ``O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1`` and
        ``y[n, f, o] = b[f] + Σ_{c in group(f), k} w[f, c, k] · x_padded[n, c, o*S + k*D]``.
        dtype: float32 stays float32, ints and bools compute in float64.

    See Also
    --------
    conv_forward, conv_backward : the same with gradients.
    im2col : the lowering.

    Notes
    -----
    Cost: ``2·N·C_out·(C_in/G)·∏K·∏O`` flops in one GEMM per chunk of samples
    and group, ``(C_out/G) × (C_in/G·∏K) × (n·∏O)``, plus an im2col copy of
    ``C_in·∏K·∏O`` elements per sample. The column buffer is bounded by
    :func:`workspace_limit`. For large kernels on small inputs a direct or FFT
    method may be cheaper; for depthwise convolution (one channel per group)
    the GEMMs degenerate to matrix-vector products.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(5.0)[None, None]             # (N=1, C=1, I=5)
    >>> ib.conv(x, np.array([[[1.0, 0.0, -1.0]]]))  # x[o] - x[o+2]
    array([[[-2., -2., -2.]]])
    >>> x = np.ones((2, 3, 7, 7)); w = np.ones((8, 3, 3, 3))
    >>> ib.conv(x, w, stride=2, padding=1).shape
    (2, 8, 4, 4)
    >>> ib.conv(x, np.ones((6, 1, 3, 3)), groups=3, padding="same").shape
    (2, 6, 7, 7)
    """
    return conv_forward(
        x, weight, bias,
        **_geometry_kwargs(stride, padding, dilation, groups, padding_mode),
    )[0]


def conv_backward(dy: Any, ctx: ConvContext, *, wrt: Any = _WRT) -> ConvGrads:
    """Gradients of the loss w.r.t. input, weight and bias of a forward pass.

    Parameters
    ----------
    dy : array_like, shape of the forward output
        δ = dL/dy.
    ctx : ConvContext
        From :func:`conv_forward` (or :func:`conv_transpose_forward`).
    wrt : tuple of {'input', 'weight', 'bias'}, optional
        Which gradients to compute; the others are None and cost nothing.

    Returns
    -------
    ConvGrads
        ``(input, weight, bias)``, shaped like x, weight and bias; ``bias``
        is None when the forward pass had no bias.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> y, ctx = ib.conv_forward(np.ones((1, 2, 3)), np.ones((1, 2, 2)))
    >>> ib.conv_backward(np.ones_like(y), ctx, wrt=("weight",))
    ConvGrads(input=None, weight=array([[[2., 2.],
            [2., 2.]]]), bias=None)
    """
    if not isinstance(ctx, ConvContext):
        raise TypeError(
            f"ctx must be the ConvContext returned by forward, got {type(ctx).__name__}"
        )
    if ctx.transposed:
        return conv_transpose_backward(dy, ctx, wrt=wrt)
    want_input, want_weight, want_bias = _parse_wrt(wrt)
    geometry = ctx.geometry
    dy = as_float_array(dy, "dy")
    check_array_shape(dy.shape, geometry.output_shape, "dy", "the forward output's shape")
    dtype = result_dtype(dy, ctx.x, ctx.weight)
    dyb = _batched(dy, geometry).astype(dtype, copy=False)
    weight = ctx.weight.astype(dtype, copy=False)
    dw = dx = None
    if want_weight:
        dw = _lowered_pass(
            geometry, dtype, source=_batched(ctx.x, geometry).astype(dtype, copy=False),
            delta=dyb, weight_grad=True, kept_columns=ctx.columns,
        )[1]
    if want_input:
        dx = _input_gradient(geometry, dtype, weight, dyb)
    db = _sum_bias(dyb) if (want_bias and ctx.has_bias) else None
    return ConvGrads(None if dx is None else _unbatched(dx, geometry), dw, db)


def _sum_bias(dy_batched: np.ndarray) -> np.ndarray:
    return dy_batched.sum(axis=(0,) + tuple(range(2, dy_batched.ndim)))


def conv_grad_input(
    dy: Any,
    weight: Any,
    input_shape: Any,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Input gradient ``dx = col2im(Wᵀ · δ)`` of a convolution.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O) or (C_out, *O)
        δ, the gradient of the loss w.r.t. the convolution's output.
    weight : array_like, shape (C_out, C_in/G, *K)
    input_shape : tuple of int
        ``x.shape``; needed because with stride > 1 several input sizes give
        the same output size.
    stride, padding, dilation, groups, padding_mode
        As for :func:`conv`.

    Returns
    -------
    dx : ndarray, shape ``input_shape``
        Samples the forward windows never reached (stride remainders) get 0.

    See Also
    --------
    conv_transpose : the same operator with its own size arguments.
    conv_grad_input_by_transposition : the same gradient as a stride-1 convolution.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> dy = np.ones((1, 1, 2)); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> ib.conv_grad_input(dy, w, (1, 1, 6), stride=2)   # the last sample is never read
    array([[[1., 2., 4., 2., 3., 0.]]])
    """
    dy = as_float_array(dy, "dy")
    weight = as_float_array(weight, "weight")
    geometry = conv_geometry(
        input_shape, weight.shape,
        **_geometry_kwargs(stride, padding, dilation, groups, padding_mode),
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy",
                      "the output of the convolution of input_shape")
    dtype = result_dtype(dy, weight)
    dx = _input_gradient(geometry, dtype, weight.astype(dtype, copy=False),
                         _batched(dy, geometry).astype(dtype, copy=False))
    return _unbatched(dx, geometry)


def conv_grad_weight(
    dy: Any,
    x: Any,
    weight_shape: Any,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Weight gradient ``dW = Σ_n δ · X_colᵀ`` of a convolution.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O) or (C_out, *O)
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
        The forward input.
    weight_shape : tuple of int
        ``weight.shape`` = (C_out, C_in/G, *K).
    stride, padding, dilation, groups, padding_mode
        As for :func:`conv`.

    Returns
    -------
    dw : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(5.0)[None, None]; dy = np.ones((1, 1, 3))
    >>> ib.conv_grad_weight(dy, x, (1, 1, 3))    # tap k sees x[k], x[k+1], x[k+2]
    array([[[3., 6., 9.]]])
    """
    dy = as_float_array(dy, "dy")
    x = as_float_array(x, "x")
    geometry = conv_geometry(
        x.shape, weight_shape,
        **_geometry_kwargs(stride, padding, dilation, groups, padding_mode),
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy", "the output of the convolution of x")
    dtype = result_dtype(dy, x)
    _, dw, _, _ = _lowered_pass(
        geometry, dtype, source=_batched(x, geometry).astype(dtype, copy=False),
        delta=_batched(dy, geometry).astype(dtype, copy=False), weight_grad=True,
    )
    return dw


def conv_grad_bias(dy: Any) -> np.ndarray:
    """Bias gradient: δ summed over batch and space, ``db[f] = Σ_{n, o} δ[n, f, o]``.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O)
        Batched δ. An unbatched δ ``(C_out, *O)`` cannot be told apart when it
        has two or more spatial axes: add the batch axis (``dy[None]``) first.

    Returns
    -------
    db : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> ib.conv_grad_bias(np.ones((2, 3, 4, 4)))
    array([32., 32., 32.])
    """
    dy = as_float_array(dy, "dy")
    if dy.ndim < 3:
        raise ValueError(
            f"dy must be batched, (N, C_out, *out_size) with at least 3 dimensions, "
            f"got shape {dy.shape}"
        )
    return _sum_bias(dy)


# --------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------
def conv_transpose_forward(
    x: Any,
    weight: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    output_size: Any = None,
    padding_mode: str = "zeros",
) -> Tuple[np.ndarray, ConvContext]:
    """Transposed convolution that also returns the context for backward.

    Same arguments and result as :func:`conv_transpose`.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> y, ctx = ib.conv_transpose_forward(np.ones((1, 1, 2)), np.ones((1, 1, 3)), stride=2)
    >>> y
    array([[[1., 1., 2., 1., 1.]]])
    >>> ib.conv_transpose_backward(np.ones_like(y), ctx).input
    array([[[3., 3.]]])
    """
    x = as_float_array(x, "x")
    weight = as_float_array(weight, "weight")
    bias = None if bias is None else as_float_array(bias, "bias")
    geometry = conv_transpose_geometry(
        x.shape, weight.shape, None if bias is None else bias.shape,
        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        groups=groups, output_size=output_size, padding_mode=padding_mode,
    )
    dtype = result_dtype(x, weight, bias)
    y = _input_gradient(geometry, dtype, weight.astype(dtype, copy=False),
                        _batched(x, geometry).astype(dtype, copy=False))
    _add_bias(y, bias)
    ctx = ConvContext(geometry, x, weight, bias is not None, transposed=True)
    return _unbatched(y, geometry), ctx


def conv_transpose(
    x: Any,
    weight: Any,
    bias: Any = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
    output_size: Any = None,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """N-d transposed convolution: the adjoint of :func:`conv` as a function of x.

    Parameters
    ----------
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
    weight : array_like, shape (C_in, C_out/G, *K)
        PyTorch's transposed layout: the forward convolution's weight.
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of int, optional
    padding : int, tuple of int, tuple of (int, int) or 'valid', optional
        The padding of the forward convolution; it *removes* samples from
        the output. ``'same'`` is refused.
    output_padding : int or tuple of int, optional
        Extra samples after the end, ``0 <= output_padding < max(S, D)``:
        with stride > 1 several sizes map to the same convolution output,
        and this picks one.
    groups : int, optional
    output_size : tuple of int, optional
        The r spatial sizes (or the whole output shape) wanted; picks
        ``output_padding``, as PyTorch's ``ConvTranspose.forward(output_size=)``.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, optional
        Non-zero modes give the exact adjoint of the convolution with that
        padding: output that lands on the padded border folds back onto the
        samples the border was copied from.

    Returns
    -------
    y : ndarray, shape (N, C_out, *O) or (C_out, *O)
        ``O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1``.

    See Also
    --------
    conv_grad_input : the same operator, sized by the forward input's shape.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.array([[[1.0, 10.0]]]); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> ib.conv_transpose(x, w, stride=2)    # each input stamps a scaled copy of w
    array([[[ 1.,  2., 13., 20., 30.]]])
    >>> ib.conv_transpose(x, w, stride=2, output_padding=1)
    array([[[ 1.,  2., 13., 20., 30.,  0.]]])
    >>> ib.conv_transpose(np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3)), stride=2,
    ...                   padding=1, output_size=(10, 10)).shape
    (1, 2, 10, 10)
    """
    return conv_transpose_forward(
        x, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups, output_size=output_size, padding_mode=padding_mode,
    )[0]


def conv_transpose_backward(dy: Any, ctx: ConvContext, *, wrt: Any = _WRT) -> ConvGrads:
    """Gradients of a transposed convolution from its context.

    ``dx = conv(δ, w)`` (cropped to x's size), ``dw = conv_grad_weight(x, δ)``
    with the roles of input and δ exchanged, ``db = Σ δ``.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> y, ctx = ib.conv_transpose_forward(np.ones((1, 1, 2)), np.ones((1, 1, 3)))
    >>> ib.conv_transpose_backward(np.ones_like(y), ctx).weight
    array([[[2., 2., 2.]]])
    """
    if not isinstance(ctx, ConvContext) or not ctx.transposed:
        raise TypeError("ctx must be the ConvContext returned by conv_transpose_forward")
    want_input, want_weight, want_bias = _parse_wrt(wrt)
    geometry = ctx.geometry
    dy = as_float_array(dy, "dy")
    check_array_shape(dy.shape, geometry.input_shape, "dy", "the forward output's shape")
    dtype = result_dtype(dy, ctx.x, ctx.weight)
    dyb = _batched(dy, geometry).astype(dtype, copy=False)
    # δ_t plays the convolution's input; x plays its output gradient.
    dx, dw, _, _ = _lowered_pass(
        geometry, dtype, source=dyb,
        weight=ctx.weight.astype(dtype, copy=False),
        delta=_batched(ctx.x, geometry).astype(dtype, copy=False),
        product=want_input, weight_grad=want_weight,
    )
    db = _sum_bias(dyb) if (want_bias and ctx.has_bias) else None
    return ConvGrads(None if dx is None else _unbatched(dx, geometry), dw, db)
