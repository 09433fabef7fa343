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

from typing import Any, Sequence, Tuple

import numpy as np

from .conv import conv
from .geometry import (
    as_float_array,
    as_int,
    as_int_tuple,
    check_array_shape,
    conv_geometry,
    rank_and_batching,
    result_dtype,
)
from .lowering import pad, unpad_add

__all__ = [
    "backprop_kernel",
    "zero_insert",
    "conv_grad_input_by_transposition",
    "conv_grad_weight_by_correlation",
]


# --------------------------------------------------------------------------
# the two building blocks
# --------------------------------------------------------------------------
def backprop_kernel(weight: Any, groups: int = 1) -> np.ndarray:
    """Aggarwal's filters for the input gradient: per group, swap in/out channels and flip.

    N-d: every one of the r spatial axes is flipped.

    Parameters
    ----------
    weight : array_like, shape (C_out, C_in/G, *K)
        The forward convolution's weight.
    groups : int, optional
        G; must divide C_out.

    Returns
    -------
    kernel : ndarray, shape (C_in, C_out/G, *K)
        ``kernel[g*C_in/G + c, f, k] = weight[g*C_out/G + f, c, K-1-k]`` for group
        ``g``, input channel ``c`` and filter ``f`` of that group. A new array
        (never a view of ``weight``), in ``weight``'s floating dtype.

    See Also
    --------
    conv_grad_input_by_transposition : uses it as the kernel of the backward convolution.

    Notes
    -----
    In the forward pass input channel ``c`` feeds every filter ``f`` of its
    group through the taps ``w[f, c, :]``; in the backward pass gradient flows
    the other way, so input channel ``c`` *collects* from every filter: the
    backward "filter" for ``c`` stacks the ``C_out/G`` slices ``w[f, c, :]``
    along its depth. The spatial flip turns the forward correlation's
    ``x[o + k]`` into the backward ``δ[i - k]`` (a true convolution written as
    a correlation). The result has the layout of a transposed-convolution
    weight, which is no coincidence: :func:`im2colbp.conv_transpose` takes the
    forward weight and does this regrouping implicitly.

    Examples
    --------
    Aggarwal's example: 20 filters of size 5×5 on an RGB volume (depth 3) give,
    for the input gradient, 3 filters of depth 20.

    >>> import numpy as np
    >>> from im2colbp.transposition import backprop_kernel
    >>> backprop_kernel(np.zeros((20, 3, 5, 5))).shape
    (3, 20, 5, 5)

    Two 1-D filters on one channel become one filter of depth two, flipped:

    >>> w = np.array([[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]]])    # (C_out=2, C_in=1, K=3)
    >>> backprop_kernel(w)
    array([[[3., 2., 1.],
            [6., 5., 4.]]])

    With groups, channels are swapped inside each group only:

    >>> backprop_kernel(np.zeros((6, 2, 3, 3)), groups=3).shape   # C_in = 2*3 = 6, C_out/G = 2
    (6, 2, 3, 3)
    """
    weight = as_float_array(weight, "weight")
    if weight.ndim < 3:
        raise ValueError(
            f"weight must have at least 3 dimensions (C_out, C_in/groups, *kernel_size), "
            f"got shape {weight.shape}"
        )
    groups = as_int(groups, "groups", 1)
    c_out, c_group = weight.shape[:2]
    kernel_size = weight.shape[2:]
    if c_out % groups:
        raise ValueError(
            f"groups={groups} must divide the output channels C_out={c_out} "
            f"(weight shape {weight.shape})"
        )
    f_group = c_out // groups
    grouped = weight.reshape((groups, f_group, c_group) + kernel_size)  # (G, C_out/G, C_in/G, *K)
    swapped = grouped.swapaxes(1, 2)  # (G, C_in/G, C_out/G, *K)
    flip = (slice(None),) * 3 + (slice(None, None, -1),) * len(kernel_size)
    # reshape copies the non-contiguous view; np.array makes "never a view" unconditional
    return np.array(swapped[flip].reshape((groups * c_group, f_group) + kernel_size))


def zero_insert(dy: Any, stride: Any) -> np.ndarray:
    """Put ``stride-1`` zeros between neighbours along each spatial axis.

    This is where the forward stride goes in the backward pass: the stride
    moves from the window steps into the *input* of the backward convolution.

    Parameters
    ----------
    dy : array_like, shape (N, C, *O) or (C, *O)
        Usually δ. Spatial sizes must be positive.
    stride : int or tuple of int
        S, positive. A tuple fixes the spatial rank ``r = len(stride)``, and
        ``dy`` may then be unbatched ``(C, *O)``; an int means
        ``r = dy.ndim - 2`` (``dy`` batched), as for :func:`im2colbp.im2col`.

    Returns
    -------
    z : ndarray, shape (N, C, *Z) or (C, *Z)
        ``Z = (O-1)*S + 1``; ``z[..., o*S] = dy[..., o]`` and every other
        sample is 0. Always a new array (also for stride 1), in ``dy``'s
        floating dtype (integers and bools become float64).

    Notes
    -----
    The forward pass only reads the padded input at ``o*S + k*D``. Written
    over *input* positions ``p``, the gradient ``Σ_{o,k: o*S + k*D = p}``
    is a sum over ``k`` of ``z[p - k*D]``: the zero-inserted δ is δ placed at
    the input positions its windows started from, zero where no window started.
    No trailing zeros follow the last sample; the rows after it (the
    remainder R of the forward stride) are supplied by padding.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.transposition import zero_insert
    >>> zero_insert(np.array([[[1.0, 2.0, 3.0]]]), 2)
    array([[[1., 0., 2., 0., 3.]]])
    >>> zero_insert(np.ones((1, 2, 2)), (3, 2))            # unbatched (C=1, 2, 2), tuple stride
    array([[[1., 0., 1.],
            [0., 0., 0.],
            [0., 0., 0.],
            [1., 0., 1.]]])
    """
    dy = as_float_array(dy, "dy")
    rank, _ = rank_and_batching(dy.ndim, stride, "dy", what="stride")
    steps = as_int_tuple(stride, rank, "stride", 1)
    spatial = dy.shape[dy.ndim - rank:]
    for axis, size in enumerate(spatial):
        if size < 1:
            raise ValueError(
                f"dy must have positive spatial sizes, got {size} on spatial axis {axis} "
                f"(shape {dy.shape})"
            )
    lead = dy.shape[: dy.ndim - rank]
    inserted = tuple((o - 1) * s + 1 for o, s in zip(spatial, steps))  # Z per axis
    z = np.zeros(lead + inserted, dtype=dy.dtype)  # (..., *Z)
    z[(Ellipsis,) + tuple(slice(None, None, s) for s in steps)] = dy
    return z


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
    dy = as_float_array(dy, "dy")
    weight = as_float_array(weight, "weight")
    geometry = conv_geometry(
        input_shape, weight.shape, stride=stride, padding=padding, dilation=dilation,
        groups=groups, padding_mode=padding_mode,
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy",
                      "the output of the convolution of input_shape")
    window = geometry.window
    dtype = result_dtype(dy, weight)
    dyb = (dy if geometry.batched else dy[None]).astype(dtype, copy=False)  # (N, C_out, *O)
    # (C_in, C_out/G, *K): per group, channels swapped and every spatial axis flipped
    kernel = backprop_kernel(weight.astype(dtype, copy=False), geometry.groups)
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
    return dx if geometry.batched else dx[0]


def conv_grad_weight_by_correlation(
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
    dy = as_float_array(dy, "dy")
    x = as_float_array(x, "x")
    geometry = conv_geometry(
        x.shape, weight_shape, stride=stride, padding=padding, dilation=dilation,
        groups=groups, padding_mode=padding_mode,
    )
    check_array_shape(dy.shape, geometry.output_shape, "dy", "the output of the convolution of x")
    window = geometry.window
    dtype = result_dtype(dy, x)
    groups, batch = geometry.groups, geometry.batch
    c_group = geometry.in_channels // groups
    rank = window.rank
    spatial = tuple(range(3, 3 + rank))

    xb = (x if geometry.batched else x[None]).astype(dtype, copy=False)  # (N, C_in, *I)
    dyb = (dy if geometry.batched else dy[None]).astype(dtype, copy=False)  # (N, C_out, *O)
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
