"""Backprop through a convolution *as* convolutions: Aggarwal's channel transposition.

The lowering computes the gradients as GEMMs (``dx = col2im(Wᵀ·δ)``,
``dW = δ·X_colᵀ``). This module computes the same two gradients the way the
textbooks draw them (Aggarwal 2018, §8.3), each as one call of
:func:`im2colbp.conv` — slower, but every role is visible:

input gradient
    a *stride-1* convolution of δ, zero-inserted by the stride and padded by
    ``D*(K-1) - P_before``, with :func:`backprop_kernel` (per group: in/out
    channels swapped, every spatial axis flipped);
weight gradient
    a correlation of the padded input with δ, zero-inserted by the stride,
    acting as the kernel; batch and channel roles swap (N is summed like a
    channel, C_in is looped over like a batch) and the forward dilation
    becomes the stride.

Both are proved equal to :func:`im2colbp.conv_grad_input` and
:func:`im2colbp.conv_grad_weight` by the tests, for every geometry.

Symbols: N batch, C_in / C_out channels, G groups, r spatial rank, I input
size, K kernel size, O output size, S stride, P padding (before, after),
D dilation, δ = dL/dy; ``Z = (O-1)*S + 1`` is the zero-inserted size and
``R = (I + P_before + P_after - D*(K-1) - 1) mod S`` the remainder: trailing
padded samples no window of the forward stride reaches.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from .calls import geometry_kwargs, grad_input_call, grad_weight_call
from .convolution import conv
from .geometry import IntOrTuple, Padding, ShapeLike
from .kernels import backprop_kernel, zero_insert
from .lowering import pad, unpad_add

__all__ = [
    "backprop_kernel",
    "zero_insert",
    "conv_grad_input_by_transposition",
    "conv_grad_weight_by_correlation",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _pad_or_crop(z: np.ndarray, pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Pad the r trailing axes of ``z`` with zeros, or crop where an amount is negative.

    ``out[..., q] = z[..., q - before]`` (0 outside ``z``), ``q < Z + before + after``.
    Handles a crop larger than ``z`` itself (then only zeros remain).
    """
    rank = len(pairs)
    lead = z.shape[: z.ndim - rank]
    spatial = z.shape[z.ndim - rank:]
    size = tuple(n + b + a for n, (b, a) in zip(spatial, pairs))
    out = np.zeros(lead + size, dtype=z.dtype)
    source, target = [], []
    for n, (before, after) in zip(spatial, pairs):
        start = max(-before, 0)  # first sample of z kept
        stop = n - max(-after, 0)  # one past the last sample of z kept
        if stop <= start:  # the whole of z is cropped away
            return out
        source.append(slice(start, stop))
        target.append(slice(start + before, stop + before))
    out[(Ellipsis,) + tuple(target)] = z[(Ellipsis,) + tuple(source)]
    return out


# --------------------------------------------------------------------------
# the two gradients
# --------------------------------------------------------------------------
def conv_grad_input_by_transposition(
    dy: ArrayLike,
    weight: ArrayLike,
    input_shape: ShapeLike,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Input gradient as a stride-1 convolution of the zero-inserted, padded δ.

    ``dx = conv(pad(zero_insert(δ, S)), backprop_kernel(w), stride=1, dilation=D,
    groups=G)``: the same numbers as :func:`im2colbp.conv_grad_input`, computed
    the way Aggarwal (2018, §8.3) draws them. N-d, any geometry.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O) or (C_out, *O)
        δ, the gradient of the loss w.r.t. the convolution's output.
    weight : array_like, shape (C_out, C_in/G, *K)
    input_shape : tuple of int
        ``x.shape``, (N, C_in, *I) or (C_in, *I); resolves the stride ambiguity.
    stride, padding, dilation, groups, padding_mode
        As for :func:`im2colbp.conv`.

    Returns
    -------
    dx : ndarray, shape ``input_shape``
        Equal to ``conv_grad_input(dy, weight, input_shape, ...)``.

    See Also
    --------
    im2colbp.conv_grad_input : the lowered route (col2im of ``Wᵀ·δ``).
    backprop_kernel, zero_insert : the building blocks.

    Notes
    -----
    One axis, one channel (groups and channels follow from
    :func:`backprop_kernel`). The forward pass is
    ``y[o] = Σ_k w[k] x_pad[o*S + k*D]``, so by the chain rule

    .. code-block:: text

        dx_pad[p] = Σ_{o,k : o*S + k*D = p} δ[o] w[k]
                  = Σ_k z[p - k*D] w[k]                      z = zero_insert(δ, S), size Z
                  = Σ_k z[p - D*(K-1) + k*D] w[K-1-k]        (k -> K-1-k: the flip)

    With ``i = p - P_before`` (zeros mode) this is a stride-1 correlation,
    dilation D, of ``z`` shifted by ``D*(K-1) - P_before``:

    .. code-block:: text

        dx[i] = Σ_k w_flip[k] z_pad[i + k*D],   z_pad[q] = z[q - (D*(K-1) - P_before)]

    The output must have I samples, so ``z_pad`` has ``I + D*(K-1)``:

    .. code-block:: text

        pad_before = D*(K-1) - P_before
        pad_after  = I + P_before - Z = D*(K-1) - P_after + R
        R = (I + P_before + P_after - D*(K-1) - 1) mod S

    The R remainder rows are the padded samples after the last one the
    forward stride reached; their gradient is 0 (only padding lands there).
    A negative amount means *crop*: a padding larger than ``D*(K-1)``
    removes zero-inserted samples whose windows started in the padding
    (their gradient fell on padded samples and is dropped).

    For ``padding_mode`` other than ``'zeros'`` the same route computes the
    gradient w.r.t. the *padded* input (``P = 0``: ``pad_before = D*(K-1)``,
    ``pad_after = D*(K-1) + R``), and the border is folded back onto the
    samples it was copied from.

    Cost: the zero-inserted δ is about ``S**r`` times larger than δ, so this
    route does ``S**r`` times the work of the lowered one; it is for teaching
    and checking.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.transposition import conv_grad_input_by_transposition
    >>> dy = np.ones((1, 1, 2)); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> conv_grad_input_by_transposition(dy, w, (1, 1, 6), stride=2)  # last sample: remainder
    array([[[1., 2., 4., 2., 3., 0.]]])
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 4, 7, 6)); w = rng.standard_normal((6, 2, 3, 2))
    >>> geometry = dict(stride=(2, 3), padding=((1, 0), (2, 2)), dilation=(1, 2), groups=2)
    >>> dy = rng.standard_normal(ib.conv(x, w, **geometry).shape)
    >>> dx = conv_grad_input_by_transposition(dy, w, x.shape, **geometry)
    >>> bool(np.allclose(dx, ib.conv_grad_input(dy, w, x.shape, **geometry)))
    True
    """
    call = grad_input_call(dy, weight, input_shape, geometry_kwargs(
        stride, padding, dilation, groups, padding_mode))
    geometry, window = call.geometry, call.geometry.window
    dyb = call.dy.astype(call.dtype, copy=False)  # (N, C_out, *O)
    # (C_in, C_out/G, *K): per group, channels swapped and every spatial axis flipped
    kernel = backprop_kernel(call.weight, geometry.groups)
    z = zero_insert(dyb, window.stride)  # (N, C_out, *Z)

    if window.padding_mode == "zeros":
        # straight to dx: pad (or crop) by D*(K-1) - P_before, and so on
        z_padded = _pad_or_crop(z, window.transposition_padding())  # (N, C_out, *(I + D*(K-1)))
        dx = conv(z_padded, kernel, stride=1, dilation=window.dilation, groups=geometry.groups)
    else:
        # gradient w.r.t. the padded input (a convolution with P = 0), then fold the border
        z_padded = _pad_or_crop(z, window.transposition_padding(padded_input=True))
        # z_padded: (N, C_out, *(padded + D*(K-1)))
        dx_padded = conv(z_padded, kernel, stride=1, dilation=window.dilation,
                         groups=geometry.groups)  # (N, C_in, *padded)
        dx = unpad_add(dx_padded, window).copy()  # (N, C_in, *I)
    return call.result(dx)


def conv_grad_weight_by_correlation(
    dy: ArrayLike,
    x: ArrayLike,
    weight_shape: ShapeLike,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Weight gradient as a correlation of the padded input with the zero-inserted δ.

    δ plays the kernel, the batch plays the channels (it is summed), the
    input channels play the batch, and the forward dilation becomes the
    stride: the same numbers as :func:`im2colbp.conv_grad_weight`, computed
    by one call of :func:`im2colbp.conv`. N-d, any geometry.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O) or (C_out, *O)
        δ.
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
        The forward input.
    weight_shape : tuple of int
        ``weight.shape`` = (C_out, C_in/G, *K).
    stride, padding, dilation, groups, padding_mode
        As for :func:`im2colbp.conv`.

    Returns
    -------
    dw : ndarray, shape ``weight_shape``
        Equal to ``conv_grad_weight(dy, x, weight_shape, ...)``.

    See Also
    --------
    im2colbp.conv_grad_weight : the lowered route (``Σ_n δ · X_colᵀ``).
    zero_insert

    Notes
    -----
    The chain rule, per group (``c`` an input channel of the group, ``f`` one
    of its filters)::

        dW[f, c, k] = Σ_n Σ_o δ[n, f, o] x_pad[n, c, o*S + k*D]
                    = Σ_n Σ_m z[n, f, m] x_pad[n, c, k*D + m]     z = zero_insert(δ, S)

    Read the second line as a convolution *over k*: input
    ``x_pad[c, n, :]`` (c as the batch, n as the channel that is summed),
    kernel ``z[f, n, :]`` (f as the output channel, n as its depth), window
    step ``D`` — the forward dilation is the stride of this correlation and
    the forward stride is the dilation of its kernel (here spelled out as
    zero insertion). Groups stay groups: input channel ``(g, n)`` of the
    rearranged input feeds only the filters of group g. The result
    ``(C_in/G, C_out, *K)`` is transposed to ``(C_out, C_in/G, *K)``.

    The padded input is cropped to ``(O-1)*S + D*(K-1) + 1`` samples per axis
    first: the R remainder samples after it are never read by the forward
    pass, so they do not enter dW (and the correlation then has exactly K
    window positions).

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.transposition import conv_grad_weight_by_correlation
    >>> x = np.arange(5.0)[None, None]; dy = np.ones((1, 1, 3))
    >>> conv_grad_weight_by_correlation(dy, x, (1, 1, 3))    # tap k sees x[k], x[k+1], x[k+2]
    array([[[3., 6., 9.]]])
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((3, 4, 9)); w_shape = (6, 2, 3)
    >>> geometry = dict(stride=2, padding=1, dilation=2, groups=2, padding_mode="circular")
    >>> dy = rng.standard_normal(ib.conv(x, np.zeros(w_shape), **geometry).shape)
    >>> dw = conv_grad_weight_by_correlation(dy, x, w_shape, **geometry)
    >>> bool(np.allclose(dw, ib.conv_grad_weight(dy, x, w_shape, **geometry)))
    True
    """
    call = grad_weight_call(dy, x, weight_shape, geometry_kwargs(
        stride, padding, dilation, groups, padding_mode))
    geometry, window = call.geometry, call.geometry.window
    groups, batch = geometry.groups, geometry.batch
    c_group = geometry.in_channels // groups
    spatial = tuple(range(3, 3 + window.rank))
    xb = call.x.astype(call.dtype, copy=False)  # (N, C_in, *I)
    dyb = call.dy.astype(call.dtype, copy=False)  # (N, C_out, *O)
    reached = tuple(slice(0, p - rem) for p, rem in zip(window.padded_size, window.remainder))
    x_pad = pad(xb, window)[(Ellipsis,) + reached]  # (N, C_in, *(Z + D*(K-1)))
    # batch <-> channel: (N, G, C_in/G, *) -> (C_in/G, G, N, *) -> (C_in/G, G*N, *)
    x_swapped = (
        x_pad.reshape((batch, groups, c_group) + x_pad.shape[2:])
        .transpose((2, 1, 0) + spatial)
        .reshape((c_group, groups * batch) + x_pad.shape[2:])
    )
    z = zero_insert(dyb, window.stride)  # (N, C_out, *Z)
    kernel = z.swapaxes(0, 1)  # (C_out, N, *Z): filter f, depth n
    # the forward dilation is this correlation's stride: (C_in/G, C_out, *K)
    dw_swapped = conv(x_swapped, kernel, stride=window.dilation, groups=groups)
    return np.ascontiguousarray(dw_swapped.swapaxes(0, 1))  # (C_out, C_in/G, *K)
