"""Direct convolution and its gradients, written for clarity: the independent oracle.

Nothing here lowers anything. Every function loops over window positions and
contracts one receptive field at a time with :func:`numpy.einsum`, so the code
reads like the definition it implements. It depends on
:mod:`im2colbp.geometry` (argument parsing) and NumPy only, never on the
im2col path it is meant to check. It is slow; use it on small arrays.

N-d throughout: spatial rank ``r = weight.ndim - 2`` is any ``r >= 1``.

Symbols: N batch, C_in / C_out channels, G groups, r spatial rank, I input
size, K kernel size, O output size, S stride, P padding (before, after),
D dilation, δ = dL/dy.

The definitions, per axis and per group ``g`` (``c`` runs over the group's
input channels, ``o`` over its output channels)::

    x_pad = pad(x, P, padding_mode)                       # (N, C_in, *(I + P_before + P_after))
    y[n, o, j]  = b[o] + sum_{c, k} x_pad[n, c, j*S + k*D] * w[o, c, k]
    dx_pad[n, c, j*S + k*D] += sum_o δ[n, o, j] * w[o, c, k]     # for every j, k
    dx = fold(dx_pad)       # padded samples add back onto the sample they copy
    dw[o, c, k] = sum_{n, j} δ[n, o, j] * x_pad[n, c, j*S + k*D]
    db[o]       = sum_{n, j} δ[n, o, j]

Transposed convolution is the scatter that the input gradient performs, with
its own weight layout ``(C_in, C_out/G, *K)``: every ``x[n, c, i]`` adds
``x[n, c, i] * w[c, o, k]`` at output position ``i*S - P_before + k*D``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from .geometry import (
    NUMPY_PAD_MODES,
    ConvGeometry,
    IntOrTuple,
    Padding,
    WindowGeometry,
    as_float_array,
    check_array_shape,
    conv_geometry,
    conv_transpose_geometry,
    result_dtype,
    size_culprit,
)
from .memory import check_allocation

__all__ = [
    "conv",
    "conv_grad_input",
    "conv_grad_weight",
    "conv_grad_bias",
    "conv_transpose",
]



# --------------------------------------------------------------------------
# helpers: padding, its adjoint, and the receptive field of one position
# --------------------------------------------------------------------------
def _pad(x: np.ndarray, window: WindowGeometry) -> np.ndarray:
    """Pad the r trailing (spatial) axes of ``x`` with ``np.pad`` (always a new array).

    ``x`` is ``(N, C, *I)``; the result is ``(N, C, *(I + P_before + P_after))``.
    """
    widths = ((0, 0),) * (x.ndim - window.rank) + window.padding
    return np.pad(x, widths, mode=NUMPY_PAD_MODES[window.padding_mode])


def _fold_padding(grad_padded: np.ndarray, window: WindowGeometry) -> np.ndarray:
    """Adjoint of :func:`_pad`: add every padded sample's gradient onto its source sample.

    Pad an array of flat sample indices with the same mode: each padded
    position then holds the index of the input sample it was copied from
    (``-1`` for a zero, which no sample feeds, so its gradient is dropped).
    ``grad_padded`` is ``(N, C, *padded_size)``; the result is ``(N, C, *I)``.
    """
    in_size = window.in_size
    index = np.arange(math.prod(in_size)).reshape(in_size)  # (*I): flat sample numbers
    if window.padding_mode == "zeros":
        padded_index = np.pad(index, window.padding, mode="constant", constant_values=-1)
    else:
        padded_index = np.pad(index, window.padding, mode=NUMPY_PAD_MODES[window.padding_mode])
    source = padded_index.ravel()  # (prod(padded_size),): source sample of each position
    keep = source >= 0
    lead = grad_padded.shape[: grad_padded.ndim - window.rank]  # (N, C)
    grad_flat = grad_padded.reshape(lead + (source.size,))  # (N, C, prod(padded_size))
    dx_flat = np.zeros(lead + (math.prod(in_size),), dtype=grad_padded.dtype)  # (N, C, prod(I))
    # NumPy's stubs type ufunc.at's indices as one integer array, but NumPy documents (and
    # does) tuple indices as in ``a[indices]``: here (..., sources) on the last axis
    np.add.at(dx_flat, (Ellipsis, source[keep]), grad_flat[..., keep])  # type: ignore[arg-type]
    return dx_flat.reshape(lead + in_size)


def _check_memory(what: str, parts: Sequence[Tuple[int, str]]) -> None:
    """Refuse, before allocating, a call whose arrays (``(bytes, culprit)`` each) cannot fit;
    the culprit of the largest array is named."""
    check_allocation(sum(nbytes for nbytes, _ in parts), max(parts)[1], what)


def _padded_parts(geometry: ConvGeometry, itemsize: int, transposed: bool = False,
                  fold: bool = False) -> list:
    """(bytes, culprit) of the padded array of ``geometry``'s input side (and, with
    ``fold``, of the scratch of :func:`_fold_padding`)."""
    window = geometry.window
    n, c = max(geometry.batch, 1), geometry.in_channels
    padded, volume = math.prod(window.padded_size), math.prod(window.in_size)
    culprit = size_culprit(window, "padded", transposed=transposed, batch=n, channels=c)
    parts = [(n * c * padded * itemsize, culprit)]
    if fold:  # index arrays, the kept gradient entries and the folded result
        parts.append((padded * 17 + volume * 8 + n * c * (padded + volume) * itemsize, culprit))
    return parts


def _output_part(geometry: ConvGeometry, itemsize: int) -> Tuple[int, str]:
    window = geometry.window
    n, c = max(geometry.batch, 1), geometry.out_channels
    return (n * c * window.out_volume * itemsize,
            size_culprit(window, "output", batch=n, channels=c))


def _receptive_field(position: Tuple[int, ...], window: WindowGeometry) -> Tuple[slice, ...]:
    """Spatial slices of the padded input read by output ``position``: ``j*S + k*D``, k < K."""
    return tuple(
        slice(j * s, j * s + d * (k - 1) + 1, d)
        for j, s, k, d in zip(position, window.stride, window.kernel_size, window.dilation)
    )


def _group_slices(geometry: ConvGeometry, group: int) -> Tuple[slice, slice]:
    """(input-channel slice, output-channel slice) of ``group``."""
    c_in = geometry.in_channels // geometry.groups
    c_out = geometry.out_channels // geometry.groups
    return (
        slice(group * c_in, (group + 1) * c_in),
        slice(group * c_out, (group + 1) * c_out),
    )


def _group_count(geometry: ConvGeometry) -> int:
    """The groups that hold any channel: all G, or none when there are no channels
    (then any G divides them; 10**20 groups of nothing are no work)."""
    return geometry.groups if geometry.in_channels or geometry.out_channels else 0


def _batched(array: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """View an unbatched ``(C, *size)`` array as a batch of one."""
    return array if geometry.batched else array[np.newaxis]


def _unbatched(array: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    return array if geometry.batched else array[0]


def _input_gradient(dy: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """δ ``(N, C_out, *O)`` -> dx ``(N, C_in, *I)`` for a validated geometry.

    ``geometry.window.out_size`` may be smaller than what fits (a cropped
    convolution, as transposed convolution with ``output_padding >= stride``
    needs); positions beyond it simply never contribute.
    """
    window = geometry.window
    kernel_volume = window.kernel_volume
    dx_padded = np.zeros((dy.shape[0], geometry.in_channels) + window.padded_size, dtype=dy.dtype)
    for position in np.ndindex(*window.out_size):
        field = dx_padded[(slice(None), slice(None)) + _receptive_field(position, window)]
        # field: a view (N, C_in, *K) into dx_padded, so += accumulates in place
        for group in range(_group_count(geometry)):
            ins, outs = _group_slices(geometry, group)
            w_group = w[outs].reshape(w[outs].shape[:2] + (kernel_volume,))  # (C_out/G, C_in/G, ∏K)
            dy_here = dy[(slice(None), outs) + position]  # (N, C_out/G)
            contribution = np.einsum("no,ock->nck", dy_here, w_group)  # (N, C_in/G, ∏K)
            field[:, ins] += contribution.reshape(field[:, ins].shape)
    return _fold_padding(dx_padded, window)


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------
def conv(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """N-d convolution (cross-correlation, as in PyTorch), computed directly.

    Pads the input with :func:`numpy.pad`, then for every output position and
    every group contracts the receptive field with the group's filters. No
    im2col: this is the oracle the lowered implementation is checked against.

    Parameters
    ----------
    x : array_like
        Input, ``(N, C_in, *I)`` or unbatched ``(C_in, *I)``.
    weight : array_like
        Filters, ``(C_out, C_in/G, *K)``; the spatial rank is ``r = weight.ndim - 2``.
    bias : array_like, optional
        ``(C_out,)``, added to every output position.
    stride, dilation : int or tuple of int, optional
        S and D, one per spatial axis or one for all.
    padding : int, tuple of int, tuple of (int, int), or str, optional
        P: an int, one int per axis, one ``(before, after)`` pair per axis,
        ``'valid'`` (none) or ``'same'`` (O = ceil(I/S), extra padding after).
    groups : int, optional
        G; input and output channels are split into G independent groups.
    padding_mode : str, optional
        How padded samples are made:

        ``'zeros'``
            zeros.
        ``'reflect'``
            mirror without repeating the edge sample (``np.pad`` ``'reflect'``).
        ``'replicate'``
            repeat the edge sample (``np.pad`` ``'edge'``).
        ``'circular'``
            wrap around periodically (``np.pad`` ``'wrap'``).

    Returns
    -------
    y : ndarray
        ``(N, C_out, *O)`` (``(C_out, *O)`` for an unbatched input), with
        ``O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1``; float64
        for integer or bool inputs, float32 when all inputs are float32.

    See Also
    --------
    conv_grad_input, conv_grad_weight, conv_grad_bias, conv_transpose

    Notes
    -----
    ``y[n, o, j] = b[o] + sum_{c, k} x_pad[n, c, j*S + k*D] * w[o, c, k]``, with
    ``c`` over the input channels of ``o``'s group. Cost: ∏O·G Python
    iterations of an einsum over ``N·(C_out/G)·(C_in/G)·∏K`` products.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp import reference
    >>> x = np.arange(5.0).reshape(1, 1, 5)          # (N, C_in, I) = (1, 1, 5)
    >>> w = np.array([[[1.0, 0.0, -1.0]]])           # (C_out, C_in, K) = (1, 1, 3)
    >>> reference.conv(x, w)                         # y[j] = x[j] - x[j + 2]
    array([[[-2., -2., -2.]]])
    >>> reference.conv(x, w, padding=1)              # a zero at each end
    array([[[-1., -2., -2., -2.,  3.]]])
    >>> reference.conv(x, w, padding=1, padding_mode="circular")   # [4, 0..4, 0]
    array([[[ 3., -2., -2., -2.,  3.]]])
    >>> x2 = np.ones((2, 4, 6, 6), dtype=np.float32)  # 2-D, grouped, strided
    >>> w2 = np.ones((6, 2, 3, 3), dtype=np.float32)
    >>> y2 = reference.conv(x2, w2, stride=2, padding="same", groups=2)
    >>> y2.shape, y2.dtype, float(y2[0, 0, 1, 1])
    ((2, 6, 3, 3), dtype('float32'), 18.0)
    """
    x = as_float_array(x, "x")
    w = as_float_array(weight, "weight")
    b = None if bias is None else as_float_array(bias, "bias")
    geometry = conv_geometry(
        x.shape, w.shape, None if b is None else b.shape,
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode,
    )
    dtype = result_dtype(x, w, b)
    _check_memory(f"reference.conv: the padded input and the output {geometry.output_shape}",
                  _padded_parts(geometry, dtype.itemsize) + [_output_part(geometry,
                                                                          dtype.itemsize)])
    window = geometry.window
    kernel_volume = window.kernel_volume
    x_padded = _pad(_batched(x, geometry).astype(dtype, copy=False), window)  # (N, C_in, *padded)
    w = w.astype(dtype, copy=False)
    batch = x_padded.shape[0]
    c_in = geometry.in_channels // geometry.groups
    y = np.zeros((batch, geometry.out_channels) + window.out_size, dtype=dtype)  # (N, C_out, *O)
    for position in np.ndindex(*window.out_size):
        field = x_padded[(slice(None), slice(None)) + _receptive_field(position, window)]
        # field: (N, C_in, *K), the samples output `position` reads
        for group in range(_group_count(geometry)):
            ins, outs = _group_slices(geometry, group)
            x_field = field[:, ins].reshape(batch, c_in, kernel_volume)  # (N, C_in/G, ∏K)
            w_group = w[outs].reshape(w[outs].shape[:2] + (kernel_volume,))  # (C_out/G, C_in/G, ∏K)
            y[(slice(None), outs) + position] = np.einsum("nck,ock->no", x_field, w_group)
    if b is not None:
        y += b.astype(dtype, copy=False).reshape(b.shape + (1,) * window.rank)
    return _unbatched(y, geometry)


def conv_grad_input(
    dy: ArrayLike,
    weight: ArrayLike,
    input_shape: Sequence[int],
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Gradient of :func:`conv` with respect to its input, computed directly.

    Every output position scatters ``δ · w`` back onto the padded samples it
    read; the padded gradient is then folded back onto the input: a sample
    copied into the border (reflect, replicate, circular) collects the
    gradient of every copy, a zero of ``'zeros'`` padding collects nothing.

    Parameters
    ----------
    dy : array_like
        δ = dL/dy, ``(N, C_out, *O)`` (or ``(C_out, *O)`` for an unbatched input),
        exactly the forward output's shape.
    weight : array_like
        ``(C_out, C_in/G, *K)``.
    input_shape : tuple of int
        ``x.shape`` of the forward call (it resolves the stride ambiguity of I).
    stride, padding, dilation, groups, padding_mode
        As for :func:`conv`.

    Returns
    -------
    dx : ndarray
        ``input_shape``, in the dtype promoted from ``dy`` and ``weight``.

    See Also
    --------
    conv, conv_transpose

    Notes
    -----
    ``dx_pad[n, c, j*S + k*D] += sum_o δ[n, o, j] * w[o, c, k]`` for every
    output position j and kernel offset k, then ``dx = fold(dx_pad)``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp import reference
    >>> w = np.array([[[1.0, 2.0]]])                 # (C_out, C_in, K) = (1, 1, 2)
    >>> dy = np.ones((1, 1, 3))                      # I = 4 -> O = 3
    >>> reference.conv_grad_input(dy, w, (1, 1, 4))
    array([[[1., 3., 3., 2.]]])
    >>> dy = np.ones((1, 1, 2))                      # padded [x0, x0, x1] -> O = 2
    >>> reference.conv_grad_input(dy, w, (1, 1, 2), padding=((1, 0),), padding_mode="replicate")
    array([[[4., 2.]]])
    """
    dy = as_float_array(dy, "dy")
    w = as_float_array(weight, "weight")
    geometry = conv_geometry(
        input_shape, w.shape,
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode,
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy", "the forward output's shape")
    dtype = result_dtype(dy, w)
    _check_memory(f"reference.conv_grad_input: dx {geometry.input_shape} and its padded copy",
                  _padded_parts(geometry, dtype.itemsize, fold=True))
    dx = _input_gradient(
        _batched(dy, geometry).astype(dtype, copy=False), w.astype(dtype, copy=False), geometry
    )
    return _unbatched(dx, geometry)


def conv_grad_weight(
    dy: ArrayLike,
    x: ArrayLike,
    weight_shape: Sequence[int],
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Gradient of :func:`conv` with respect to its weight, computed directly.

    For every output position, the receptive field of the padded input is
    weighted by δ at that position and summed over the batch.

    Parameters
    ----------
    dy : array_like
        δ, the forward output's shape ``(N, C_out, *O)`` (or ``(C_out, *O)``).
    x : array_like
        The forward input, ``(N, C_in, *I)`` or ``(C_in, *I)``.
    weight_shape : tuple of int
        ``(C_out, C_in/G, *K)``, the forward weight's shape.
    stride, padding, dilation, groups, padding_mode
        As for :func:`conv`.

    Returns
    -------
    dw : ndarray
        ``weight_shape``, in the dtype promoted from ``dy`` and ``x``.

    See Also
    --------
    conv, conv_grad_input, conv_grad_bias

    Notes
    -----
    ``dw[o, c, k] = sum_{n, j} δ[n, o, j] * x_pad[n, c, j*S + k*D]``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp import reference
    >>> x = np.arange(4.0).reshape(1, 1, 4)          # [0, 1, 2, 3]
    >>> dy = np.ones((1, 1, 3))                      # K = 2 -> O = 3
    >>> reference.conv_grad_weight(dy, x, (1, 1, 2))  # [0+1+2, 1+2+3]
    array([[[3., 6.]]])
    """
    dy = as_float_array(dy, "dy")
    x = as_float_array(x, "x")
    geometry = conv_geometry(
        x.shape, weight_shape,
        stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode,
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy", "the forward output's shape")
    dtype = result_dtype(dy, x)
    _check_memory("reference.conv_grad_weight: the padded input",
                  _padded_parts(geometry, dtype.itemsize))
    window = geometry.window
    kernel_volume = window.kernel_volume
    x_padded = _pad(_batched(x, geometry).astype(dtype, copy=False), window)  # (N, C_in, *padded)
    dy = _batched(dy, geometry).astype(dtype, copy=False)  # (N, C_out, *O)
    batch = x_padded.shape[0]
    c_in = geometry.in_channels // geometry.groups
    dw = np.zeros(geometry.weight_shape, dtype=dtype)  # (C_out, C_in/G, *K)
    for position in np.ndindex(*window.out_size):
        field = x_padded[(slice(None), slice(None)) + _receptive_field(position, window)]
        # field: (N, C_in, *K)
        for group in range(_group_count(geometry)):
            ins, outs = _group_slices(geometry, group)
            x_field = field[:, ins].reshape(batch, c_in, kernel_volume)  # (N, C_in/G, ∏K)
            dy_here = dy[(slice(None), outs) + position]  # (N, C_out/G)
            contribution = np.einsum("no,nck->ock", dy_here, x_field)  # (C_out/G, C_in/G, ∏K)
            dw[outs] += contribution.reshape(dw[outs].shape)
    return dw


def conv_grad_bias(dy: ArrayLike) -> np.ndarray:
    """Gradient of :func:`conv` with respect to its bias: δ summed over all axes but 1.

    Parameters
    ----------
    dy : array_like
        δ, batched: ``(N, C_out, *O)`` with at least one spatial axis.

    Returns
    -------
    db : ndarray
        ``(C_out,)``.

    See Also
    --------
    conv, conv_grad_weight

    Notes
    -----
    ``db[o] = sum_{n, j} δ[n, o, j]``: the bias is added at every output position.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp import reference
    >>> reference.conv_grad_bias(np.ones((2, 3, 4, 5)))   # N·∏O = 2·4·5
    array([40., 40., 40.])
    """
    dy = as_float_array(dy, "dy")
    if dy.ndim < 3:
        raise ValueError(
            f"dy must be batched, (N, C_out, *out_size) with at least one spatial axis, "
            f"got {dy.ndim} dimensions: shape {dy.shape}"
        )
    axes = (0,) + tuple(range(2, dy.ndim))
    return dy.sum(axis=axes)


def conv_transpose(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    output_padding: IntOrTuple = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    output_size: Optional[Sequence[int]] = None,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """N-d transposed convolution, computed directly as a scatter.

    Every input sample ``x[n, c, i]`` adds ``x[n, c, i] * w[c, o, k]`` at output
    position ``i*S - P_before + k*D``, for every kernel offset k and every output
    channel o of c's group. With ``'zeros'`` padding, positions outside the
    output are dropped. With another padding mode the result is the exact
    adjoint of :func:`conv` with that mode: a contribution landing in the
    padded border is added onto the sample that border position copies.

    Parameters
    ----------
    x : array_like
        Input, ``(N, C_in, *I)`` or unbatched ``(C_in, *I)``.
    weight : array_like
        ``(C_in, C_out/G, *K)`` (transposed layout, as in PyTorch).
    bias : array_like, optional
        ``(C_out,)``.
    stride, dilation : int or tuple of int, optional
        S and D.
    padding : int, tuple of int, tuple of (int, int), or 'valid', optional
        P, removed from the ends of the full output (``'same'`` is refused).
    output_padding : int or tuple of int, optional
        Extra samples at the end, ``0 <= output_padding < max(S, D)``.
    groups : int, optional
        G.
    output_size : tuple of int, optional
        The r spatial output sizes (or the full output shape); picks
        ``output_padding``.
    padding_mode : str, optional
        ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``; see above.

    Returns
    -------
    y : ndarray
        ``(N, C_out, *O)`` (``(C_out, *O)`` unbatched) with
        ``O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1``.

    See Also
    --------
    conv, conv_grad_input

    Notes
    -----
    The scatter writes into a buffer in padded coordinates (position
    ``i*S + k*D``), of size ``O + P_before + P_after``, which holds every
    contribution; the output is that buffer cropped (``'zeros'``) or folded
    back (other modes). Cost: ∏I·∏K·G Python iterations of an einsum over
    ``N·(C_in/G)·(C_out/G)`` products.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp import reference
    >>> x = np.array([[[1.0, 2.0]]])                 # (N, C_in, I) = (1, 1, 2)
    >>> w = np.array([[[1.0, 1.0, 1.0]]])            # (C_in, C_out, K) = (1, 1, 3)
    >>> reference.conv_transpose(x, w, stride=2)     # [1, 1, 1] + [0, 0, 2, 2, 2]
    array([[[1., 1., 3., 2., 2.]]])
    >>> reference.conv_transpose(x, w, stride=2, padding=1)
    array([[[1., 3., 2.]]])
    >>> reference.conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    array([[[1., 3., 2., 2.]]])
    """
    x = as_float_array(x, "x")
    w = as_float_array(weight, "weight")
    b = None if bias is None else as_float_array(bias, "bias")
    geometry = conv_transpose_geometry(
        x.shape, w.shape, None if b is None else b.shape,
        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        groups=groups, output_size=output_size, padding_mode=padding_mode,
    )
    # `geometry` is the forward convolution this is the input gradient of:
    # window.in_size is our output size O, window.out_size is x's size I,
    # in_channels is our C_out, out_channels is x's C_in.
    dtype = result_dtype(x, w, b)
    _check_memory(
        f"reference.conv_transpose: the output {geometry.input_shape} and its padded copy",
        _padded_parts(geometry, dtype.itemsize, transposed=True, fold=True),
    )
    window = geometry.window
    x = _batched(x, geometry).astype(dtype, copy=False)  # (N, C_in, *I)
    w = w.astype(dtype, copy=False)  # (C_in, C_out/G, *K)
    c_in = geometry.out_channels // geometry.groups  # x's channels per group
    c_out = geometry.in_channels // geometry.groups  # y's channels per group
    # every scattered position i*S + k*D lies in [0, (I-1)*S + D*(K-1)], inside the buffer
    y_padded = np.zeros((x.shape[0], geometry.in_channels) + window.padded_size, dtype=dtype)
    for i in np.ndindex(*window.out_size):
        for k in np.ndindex(*window.kernel_size):
            target = tuple(
                i_a * s + k_a * d for i_a, k_a, s, d in zip(i, k, window.stride, window.dilation)
            )
            for group in range(_group_count(geometry)):
                ins = slice(group * c_in, (group + 1) * c_in)
                outs = slice(group * c_out, (group + 1) * c_out)
                x_here = x[(slice(None), ins) + i]  # (N, C_in/G)
                w_here = w[(ins, slice(None)) + k]  # (C_in/G, C_out/G)
                y_padded[(slice(None), outs) + target] += np.einsum("nc,co->no", x_here, w_here)
    if window.padding_mode == "zeros":
        crop = tuple(slice(before, before + size)
                     for (before, _), size in zip(window.padding, window.in_size))
        y = y_padded[(slice(None), slice(None)) + crop].copy()
    else:
        y = _fold_padding(y_padded, window)
    if b is not None:
        y += b.astype(dtype, copy=False).reshape(b.shape + (1,) * window.rank)
    return _unbatched(y, geometry)
