"""im2col and convolution as explicit sparse matrices (``scipy.sparse`` CSR).

Every lowering in this package is linear in the input, so it *is* a matrix.
Writing the matrix down makes two facts literal:

- ``im2col`` is a 0/1 selection matrix ``S`` (one nonzero per row, none for a
  row that reads zero padding), and ``col2im`` is ``S.T``: scatter-add is
  the transpose of gather.
- a convolution is a matrix ``T`` whose rows are shifted copies of the
  filter, and the input gradient is ``T.T @ δ`` — which is why the operator
  that computes it is called the *transposed* convolution.

The matrices are built with index arithmetic over whole index grids (no
Python loop over window positions). They are for teaching, testing and
small problems: the matrix of a convolution has ``N · C_out · C_in/G ·
prod(K) · prod(O)`` entries, so both builders refuse, with a ``ValueError``,
operators that would store more than ``max_nonzeros`` entries (default
10,000,000, about 240 MB with the COO index arrays used to build them).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike

from .geometry import (
    NUMPY_PAD_MODES,
    IntOrTuple,
    Padding,
    WindowGeometry,
    as_float_array,
    as_int,
    as_shape,
    conv_geometry,
    rank_and_batching,
    size_culprit,
    window_geometry,
)
from .memory import check_allocation

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse

__all__ = ["DEFAULT_MAX_NONZEROS", "im2col_operator", "conv_operator"]

#: Largest number of stored entries an operator may have unless asked otherwise.
DEFAULT_MAX_NONZEROS = 10_000_000

#: im2colbp padding modes -> the ``mode`` of :func:`numpy.pad` that copies samples the same way.


# --------------------------------------------------------------------------
# index arithmetic
# --------------------------------------------------------------------------
def _padded_sources(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source sample of every padded position along one axis; -1 for a zero.

    Padding an index array with the same mode copies indices the way the
    padding copies samples: ``source[p]`` is the input sample that padded
    position ``p`` holds.
    """
    index = np.arange(size)  # (I,)
    if mode == "zeros":
        return np.pad(index, (before, after), mode="constant", constant_values=-1)
    return np.pad(index, (before, after), mode=NUMPY_PAD_MODES[mode])  # (I + P_b + P_a,)


def _axis_sources(window: WindowGeometry) -> List[np.ndarray]:
    """Per axis a, the input sample read by tap k at window position o: (K_a, O_a), -1 = zero."""
    along = []
    for axis in range(window.rank):
        size, (before, after) = window.in_size[axis], window.padding[axis]
        sources = _padded_sources(size, before, after, window.padding_mode)
        k = np.arange(window.kernel_size[axis])[:, None]  # (K_a, 1)
        o = np.arange(window.out_size[axis])[None, :]  # (1, O_a)
        along.append(sources[o * window.stride[axis] + k * window.dilation[axis]])  # (K_a, O_a)
    return along


def _axis_taps_reading_input(window: WindowGeometry, axis: int) -> int:
    """How many (k, o) pairs of one axis read a real sample, by arithmetic.

    With zero padding, tap k at position o reads ``o*S + k*D - P_before``, a real
    sample when it lies in ``0..I-1``. For each value of the shorter of the two
    index ranges (k or o) the admissible values of the other form an interval,
    so the count takes ``min(K, O)`` vectorised steps and no (K, O) array.
    """
    size, (before, _) = window.in_size[axis], window.padding[axis]
    kernel, out = window.kernel_size[axis], window.out_size[axis]
    stride, dilation = window.stride[axis], window.dilation[axis]
    if window.padding_mode != "zeros":
        return kernel * out  # every padded sample copies a real one
    if kernel <= out:  # per tap k: positions o with 0 <= o*S + k*D - P_b <= I - 1
        start = before - np.arange(kernel, dtype=object) * dilation
        step, length = stride, out
    else:  # per position o: taps k with 0 <= k*D + o*S - P_b <= I - 1
        start = before - np.arange(out, dtype=object) * stride
        step, length = dilation, kernel
    low = np.maximum(-((-start) // step), 0)  # ceil(start / step), at least 0
    high = np.minimum((start + size - 1) // step, length - 1)
    return int(np.maximum(high - low + 1, 0).sum())


def _taps_reading_input(window: WindowGeometry) -> int:
    """How many (k, o) pairs read a real sample: validity is separable, so count per axis."""
    return math.prod(_axis_taps_reading_input(window, axis) for axis in range(window.rank))


def _check_memory(window: WindowGeometry, entries: int, planes: int, itemsize: int,
                  what: str) -> None:
    """Refuse an operator whose index arrays and matrix cannot fit, before building them.

    Counted: the per-axis source tables, the ``(*K, *O)`` source and validity
    grids, and the COO triplets (row, column, value) with the CSR copy made
    from them.
    """
    tables = sum(p + k * o for p, k, o in zip(window.padded_size, window.kernel_size,
                                                 window.out_size)) * 8
    grids = window.kernel_volume * window.out_volume * (8 + 1) * 2
    triplets = entries * (8 + 8 + itemsize) * 2
    culprit = size_culprit(window, "columns", batch=planes)
    check_allocation(tables + grids + triplets,
                     culprit.replace("the input's spatial size", "input_shape"),
                     f"{what}: its index arrays and {entries:,} stored entries")


def _window_sources(window: WindowGeometry, along: List[np.ndarray]) -> Tuple[np.ndarray, ...]:
    """Flat input sample read by kernel offset k at window position o.

    Returns ``(source, valid)``, both shaped ``(*K, *O)``: ``source[k, o]`` is the
    C-order flat index into ``*I`` of the sample ``x_pad[o*S + k*D]`` copies,
    ``valid`` is False where that padded sample is a zero.
    """
    rank = window.rank
    source = np.zeros((1,) * (2 * rank), dtype=np.int64)
    valid = np.ones((1,) * (2 * rank), dtype=bool)
    flat_step = 1
    for axis in reversed(range(rank)):
        shape = [1] * (2 * rank)
        shape[axis], shape[rank + axis] = along[axis].shape
        axis_sources = along[axis].reshape(shape)  # K_a on axis a, O_a on axis r + a
        valid = valid & (axis_sources >= 0)
        source = source + axis_sources * flat_step
        flat_step *= window.in_size[axis]
    full = window.kernel_size + window.out_size
    return np.broadcast_to(source, full), np.broadcast_to(valid, full)


def _check_nonzeros(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise ValueError(
            f"{what} would need {count:,} nonzeros, more than max_nonzeros={limit:,}; "
            "pass a larger max_nonzeros, or use the lowered functions (im2col, conv, "
            "conv_grad_input), which never build the matrix"
        )


def _csr(rows, cols, data, shape) -> scipy.sparse.csr_array:
    import scipy.sparse  # a declared dependency, imported only when an operator is built

    matrix = scipy.sparse.coo_array((data, (rows, cols)), shape=shape).tocsr()
    matrix.sum_duplicates()  # several kernel taps may read the same source sample
    return matrix


# --------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------
def im2col_operator(
    input_shape: Sequence[int],
    kernel_size: IntOrTuple,
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    max_nonzeros: int = DEFAULT_MAX_NONZEROS,
) -> scipy.sparse.csr_array:
    """The im2col lowering as a sparse 0/1 matrix ``S``: ``S @ x.ravel() == im2col(x).ravel()``.

    Parameters
    ----------
    input_shape : tuple of int
        ``x.shape``: (N, C, *I), or (C, *I) when ``kernel_size`` is a tuple.
    kernel_size : int or tuple of int
        K. A tuple fixes ``r = len(kernel_size)``; an int means
        ``r = len(input_shape) - 2`` (batched), as for :func:`im2colbp.im2col`.
    stride, padding, dilation
        As for :func:`im2colbp.im2col` (zero padding).
    max_nonzeros : int, optional
        Refuse (``ValueError``) a matrix with more stored entries than this;
        default 10,000,000.

    Returns
    -------
    S : scipy.sparse.csr_array, shape (N*C*prod(K)*L, N*C*prod(I)), float64
        ``L = prod(O)``. Row ``(n, c, k, o)`` (C order, as ``im2col(x).ravel()``)
        has a single 1 in column ``(n, c, i)`` with ``i = o*S + k*D - P_before``,
        or no entry when that sample is zero padding. ``S.T`` is
        :func:`im2colbp.col2im`.

    See Also
    --------
    conv_operator

    Examples
    --------
    A 1-D signal of length 4 and a kernel of size 2: rows are (tap k, window o),
    columns the four samples.

    >>> import numpy as np
    >>> from im2colbp.operators import im2col_operator
    >>> S = im2col_operator((1, 1, 4), 2)
    >>> S.toarray()
    array([[1., 0., 0., 0.],
           [0., 1., 0., 0.],
           [0., 0., 1., 0.],
           [0., 1., 0., 0.],
           [0., 0., 1., 0.],
           [0., 0., 0., 1.]])
    >>> x = np.array([10.0, 20.0, 30.0, 40.0])
    >>> S @ x                                   # im2col(x).ravel(): tap 0 row, then tap 1 row
    array([10., 20., 30., 20., 30., 40.])
    >>> S.T @ np.ones(6)                        # col2im: how many windows read each sample
    array([1., 2., 2., 1.])

    With padding, rows that read the zero border are empty:

    >>> im2col_operator((1, 4), (2,), stride=2, padding=1).toarray()
    array([[0., 0., 0., 0.],
           [0., 1., 0., 0.],
           [0., 0., 0., 1.],
           [1., 0., 0., 0.],
           [0., 0., 1., 0.],
           [0., 0., 0., 0.]])
    """
    max_nonzeros = as_int(max_nonzeros, "max_nonzeros", 0)
    input_shape = as_shape(input_shape, "input_shape")
    rank, batched = rank_and_batching(len(input_shape), kernel_size, "input_shape")
    lead = input_shape[: len(input_shape) - rank]
    window = window_geometry(input_shape[len(lead):], kernel_size, stride, padding, dilation)
    planes = math.prod(lead)  # N*C (or C): independent (sample, channel) planes
    in_volume = math.prod(window.in_size)
    rows_per_plane = window.kernel_volume * window.out_volume
    entries = planes * _taps_reading_input(window)
    what = f"im2col_operator for input {input_shape}"
    _check_nonzeros(entries, max_nonzeros, what)
    _check_memory(window, entries, planes, 8, what)
    along = _axis_sources(window)
    source, valid = _window_sources(window, along)  # (*K, *O)

    row = np.flatnonzero(valid)  # (m,): flat (k, o) of the rows that read a real sample
    col = source[valid]  # (m,): the flat input sample each reads
    plane = np.arange(planes)[:, None]  # (N*C, 1)
    rows = (plane * rows_per_plane + row).ravel()  # (N*C*m,)
    cols = (plane * in_volume + col).ravel()  # (N*C*m,)
    shape = (planes * rows_per_plane, planes * in_volume)
    return _csr(rows, cols, np.ones(rows.size), shape)


def conv_operator(
    weight: ArrayLike,
    input_shape: Sequence[int],
    *,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    max_nonzeros: int = DEFAULT_MAX_NONZEROS,
) -> scipy.sparse.csr_array:
    """A convolution as a sparse matrix ``T``: ``T @ x.ravel() == conv(x, weight).ravel()``.

    The bias is not part of ``T`` (it is not linear in x). ``T.T`` is the input
    gradient, :func:`im2colbp.conv_grad_input`, and the transposed convolution,
    :func:`im2colbp.conv_transpose` — literally the transposed matrix.

    Parameters
    ----------
    weight : array_like, shape (C_out, C_in/G, *K)
    input_shape : tuple of int
        ``x.shape``, (N, C_in, *I) or (C_in, *I).
    stride, padding, dilation, groups, padding_mode
        As for :func:`im2colbp.conv`, every padding form and mode.
    max_nonzeros : int, optional
        Refuse (``ValueError``) a matrix that needs more stored entries than
        this (counted before duplicates are summed); default 10,000,000.

    Returns
    -------
    T : scipy.sparse.csr_array, shape (N*C_out*prod(O), N*C_in*prod(I))
        Rows in the C order of ``conv(x, weight).ravel()``, columns in that of
        ``x.ravel()``; the weight's floating dtype. Entry ``((n, f, o), (n, c, i))``
        is the sum of ``w[f, c', k]`` over the taps ``k`` whose padded sample
        ``o*S + k*D`` holds ``x[n, c, i]`` (``c' = c`` within its group): with
        ``'zeros'`` padding at most one tap; with the other modes a border
        sample points to the sample it copies, and taps that meet there add.

    See Also
    --------
    im2col_operator
    im2colbp.conv_transpose : ``T.T`` without the matrix, for any padding mode.

    Notes
    -----
    Dense ``T`` is ``N·C_out·prod(O) × N·C_in·prod(I)``; it stores at most
    ``N · C_out · C_in/G · prod(K) · prod(O)`` entries (block diagonal over
    the batch and the groups). The dot-product test
    ``<T x, y> = <x, T.T y>`` holds by construction, which makes ``T`` a
    handy oracle for adjoints of padded convolutions.

    Examples
    --------
    The difference filter ``[1, -1]`` on a signal of length 4: each row is the
    filter shifted by one window step.

    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.operators import conv_operator
    >>> w = np.array([[[1.0, -1.0]]])
    >>> T = conv_operator(w, (1, 1, 4))
    >>> T.toarray()
    array([[ 1., -1.,  0.,  0.],
           [ 0.,  1., -1.,  0.],
           [ 0.,  0.,  1., -1.]])
    >>> T.T.toarray()                         # the transposed convolution's matrix
    array([[ 1.,  0.,  0.],
           [-1.,  1.,  0.],
           [ 0., -1.,  1.],
           [ 0.,  0., -1.]])
    >>> dy = np.array([1.0, 2.0, 3.0])
    >>> T.T @ dy
    array([ 1.,  1.,  1., -3.])
    >>> ib.conv_transpose(dy[None, None], w)
    array([[[ 1.,  1.,  1., -3.]]])

    Circular padding wraps the filter around the matrix:

    >>> conv_operator(w, (1, 1, 4), padding=((0, 1),), padding_mode="circular").toarray()
    array([[ 1., -1.,  0.,  0.],
           [ 0.,  1., -1.,  0.],
           [ 0.,  0.,  1., -1.],
           [-1.,  0.,  0.,  1.]])
    """
    max_nonzeros = as_int(max_nonzeros, "max_nonzeros", 0)
    weight = as_float_array(weight, "weight")
    geometry = conv_geometry(
        input_shape, weight.shape, stride=stride, padding=padding, dilation=dilation,
        groups=groups, padding_mode=padding_mode,
    )
    window = geometry.window
    batch, groups = geometry.batch, geometry.groups
    if geometry.in_channels == geometry.out_channels == 0:
        groups = 1  # no channels: any G divides them, and every group is empty
    c_in, c_out = geometry.in_channels, geometry.out_channels
    c_group, f_group = c_in // groups, c_out // groups
    in_volume, out_volume = math.prod(window.in_size), window.out_volume
    entries = batch * c_out * c_group * _taps_reading_input(window)
    what = f"conv_operator for input {geometry.input_shape} and weight {weight.shape}"
    _check_nonzeros(entries, max_nonzeros, what)
    _check_memory(window, entries, batch * c_in, weight.itemsize, what)
    along = _axis_sources(window)
    source, valid = _window_sources(window, along)  # (*K, *O)

    tap, position = np.nonzero(
        valid.reshape(window.kernel_volume, out_volume)
    )  # (m,), (m,): flat k and flat o of every (tap, window) pair reading a real sample
    col = source.reshape(window.kernel_volume, out_volume)[tap, position]  # (m,)
    # broadcast over (n, g, f, c, m)
    n = np.arange(batch).reshape(-1, 1, 1, 1, 1)
    g = np.arange(groups).reshape(1, -1, 1, 1, 1)
    f = np.arange(f_group).reshape(1, 1, -1, 1, 1)
    c = np.arange(c_group).reshape(1, 1, 1, -1, 1)
    rows = ((n * c_out + g * f_group + f) * out_volume + position)  # (N, G, F, C, m)
    cols = ((n * c_in + g * c_group + c) * in_volume + col)  # (N, G, 1, C, m)
    taps = weight.reshape(groups, f_group, c_group, window.kernel_volume)[..., tap]  # (G,F,C,m)
    full = (batch, groups, f_group, c_group, tap.size)
    shape = (batch * c_out * out_volume, batch * c_in * in_volume)
    return _csr(
        np.broadcast_to(rows, full).ravel(),
        np.broadcast_to(cols, full).ravel(),
        np.broadcast_to(taps, full).ravel(),
        shape,
    )
