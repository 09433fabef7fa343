"""The two kernels the backward pass needs besides the lowering.

- :func:`backprop_kernel`: Aggarwal's filters for the input gradient (per
  group, in/out channels swapped, every spatial axis flipped);
- :func:`zero_insert`: ``S-1`` zeros between neighbours, where the forward
  stride goes in the backward pass.

The engine uses :func:`backprop_kernel` for its stride-1 input-gradient route;
:mod:`im2colbp.transposition` builds the teaching routes from both. This
module depends on :mod:`im2colbp.geometry` only.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from .geometry import (
    IntOrTuple,
    as_float_array,
    as_int,
    as_int_tuple,
    rank_and_batching,
)
from .memory import check_allocation

__all__ = ["backprop_kernel", "zero_insert"]


# --------------------------------------------------------------------------
def backprop_kernel(weight: ArrayLike, groups: int = 1) -> np.ndarray:
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
    >>> from im2colbp import backprop_kernel
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


def zero_insert(dy: ArrayLike, stride: IntOrTuple) -> np.ndarray:
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
    >>> from im2colbp import zero_insert
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
    check_allocation(math.prod(lead + inserted) * dy.dtype.itemsize, f"stride {steps}",
                     f"zero_insert: the result {lead + inserted}")
    z = np.zeros(lead + inserted, dtype=dy.dtype)  # (..., *Z)
    z[(Ellipsis,) + tuple(slice(None, None, s) for s in steps)] = dy
    return z
