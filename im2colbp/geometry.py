"""Argument parsing, validation and size arithmetic — all of it, in one place.

Every public function of im2colbp turns its arguments into a frozen
:class:`WindowGeometry` (the spatial part: sizes, stride, padding, dilation)
and, for convolutions, a :class:`ConvGeometry` (adds batch, channels, groups).
Nothing below this module parses an argument again.

Symbols: N batch, C_in / C_out channels, G groups, r spatial rank, I input
size, K kernel size, O output size, S stride, P padding, D dilation.

Output size per axis (the defining inequality): O is the number of window
positions ``o >= 0`` with ``o*S + D*(K-1) <= I + P_before + P_after - 1``, i.e.::

    O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Literal, Optional, Sequence, Tuple, Union, overload

import numpy as np

from .memory import check_allocation

__all__ = [
    "PADDING_MODES",
    "WindowGeometry",
    "ConvGeometry",
    "window_geometry",
    "conv_geometry",
    "conv_transpose_geometry",
    "as_float_array",
    "result_dtype",
    "parse_wrt",
    "size_culprit",
    "MAX_ELEMENTS",
    "MAX_ARRAY_DIMS",
    "MAX_RANK",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")

#: ``np.pad``'s names of the padding modes used here (a Literal, as NumPy's stubs want).
NumpyPadMode = Literal["constant", "reflect", "edge", "wrap"]

#: ``np.pad`` mode of each non-zero padding mode (the same semantics, NumPy's names).
NUMPY_PAD_MODES: Dict[str, NumpyPadMode] = {"zeros": "constant", "reflect": "reflect",
                                            "replicate": "edge", "circular": "wrap"}

#: Largest number of elements any single array may need (padded input, output
#: or the columns of one sample). 2**37 float64 elements is one TiB: anything
#: larger is certainly a mistake and is refused before allocation.
MAX_ELEMENTS = 2**37


def _max_array_dims() -> int:
    """The most dimensions a NumPy array may have (64 on NumPy 2, 32 on NumPy 1),
    found by asking NumPy for a one-element array of each candidate rank."""
    for dims in (64, 32):
        try:
            np.empty((1,) * dims, dtype=np.uint8)
        except ValueError:
            continue
        return dims
    return 32  # pragma: no cover


#: NumPy's limit on the number of dimensions of an array.
MAX_ARRAY_DIMS = _max_array_dims()

#: Largest spatial rank r: the widest array of the engine, the columns
#: (N, C, *K, *O), has 2 + 2r dimensions, which must not exceed MAX_ARRAY_DIMS.
MAX_RANK = (MAX_ARRAY_DIMS - 2) // 2

#: Names of the gradients ``wrt`` may ask for, in ConvGrads order.
WRT_NAMES = ("input", "weight", "bias")

#: An int for every spatial axis, or one per axis (stride, dilation, kernel_size, ...).
IntOrTuple = Union[int, Sequence[int]]
#: ``padding``: an int, ``'valid'``/``'same'``, one int or one ``(before, after)`` pair per axis.
Padding = Union[int, str, Sequence[Union[int, Sequence[int]]]]
#: A shape: a sequence of ints (``x.shape``, a list, a tuple, a 1-d integer array).
ShapeLike = Sequence[int]
#: ``wrt``: one of ``'input'``, ``'weight'``, ``'bias'``, or an iterable of them.
Wrt = Union[str, Iterable[str]]

Pairs = Tuple[Tuple[int, int], ...]


# --------------------------------------------------------------------------
# scalars and tuples
# --------------------------------------------------------------------------
def is_int(value: Any) -> bool:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]  # a 0-d integer array counts as its integer
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_scalar(value: Any) -> bool:
    """Not a sequence: a number, None, a 0-d array (strings are handled by callers)."""
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    return not isinstance(value, (Sequence, bytes))


def as_int(value: Any, name: str, minimum: Optional[int]) -> int:
    """Return ``value`` as a Python int ``>= minimum`` (if given) or raise a clear error."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def as_int_tuple(value: Any, rank: int, name: str,
                 minimum: Optional[int] = 1) -> Tuple[int, ...]:
    """Normalise an int or a length-``rank`` sequence of ints to a tuple."""
    if is_int(value) or _is_scalar(value):
        return (as_int(value, name, minimum),) * rank
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(
            f"{name} must be an int or a tuple of {rank} ints, got {value!r}"
        )
    items = tuple(value)
    if len(items) != rank:
        raise ValueError(
            f"{name} must be an int or a tuple of {rank} ints (one per spatial axis), "
            f"got {len(items)} values: {value!r}"
        )
    return tuple(as_int(item, f"{name}[{axis}]", minimum) for axis, item in enumerate(items))


@overload
def parse_padding(padding: Any, rank: int, allow_same: Literal[False]) -> Pairs: ...


@overload
def parse_padding(padding: Any, rank: int, allow_same: bool) -> Union[str, Pairs]: ...


def parse_padding(padding: Any, rank: int, allow_same: bool) -> Union[str, Pairs]:
    """Return ``'same'`` or r ``(before, after)`` pairs of non-negative ints."""
    if isinstance(padding, str):
        accepted = ("valid", "same") if allow_same else ("valid",)
        if padding == "valid":
            return ((0, 0),) * rank
        if padding == "same" and allow_same:
            return "same"
        if padding == "same":
            raise ValueError(
                "padding='same' is not defined for transposed convolution; "
                "give padding as an int, a tuple, (before, after) pairs or 'valid'"
            )
        raise ValueError(
            f"padding string must be one of {accepted}, got {padding!r}"
        )
    if is_int(padding) or _is_scalar(padding):
        amount = as_int(padding, "padding", 0)
        return ((amount, amount),) * rank
    if isinstance(padding, bytes) or not isinstance(padding, (Sequence, np.ndarray)):
        raise TypeError(
            f"padding must be an int, a string, a tuple of {rank} ints or {rank} "
            f"(before, after) pairs, got {padding!r}"
        )
    items = tuple(padding)
    if len(items) != rank:
        hint = ""
        if rank == 1 and len(items) == 2:
            hint = f"; for (before, after) padding of a 1-D input write ({tuple(items)!r},)"
        raise ValueError(
            f"padding must have one entry per spatial axis ({rank}), got {len(items)}: "
            f"{padding!r}{hint}"
        )
    pairs = []
    for axis, item in enumerate(items):
        if is_int(item):
            amount = as_int(item, f"padding[{axis}]", 0)
            pairs.append((amount, amount))
            continue
        if isinstance(item, (str, bytes)) or not isinstance(item, (Sequence, np.ndarray)):
            raise TypeError(
                f"padding[{axis}] must be an int or a (before, after) pair, got {item!r}"
            )
        pair = tuple(item)
        if len(pair) != 2:
            raise ValueError(
                f"padding[{axis}] must be an int or a (before, after) pair, got {item!r}"
            )
        pairs.append(
            (as_int(pair[0], f"padding[{axis}][0]", 0), as_int(pair[1], f"padding[{axis}][1]", 0))
        )
    return tuple(pairs)


def _same_padding(in_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int],
                  dilation: Sequence[int]) -> Pairs:
    """TF/JAX 'same': O = ceil(I/S); total padding split before = total // 2."""
    pairs = []
    for size, kernel, step, dil in zip(in_size, kernel_size, stride, dilation):
        out = -(-size // step)
        total = max((out - 1) * step + dil * (kernel - 1) + 1 - size, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


def parse_padding_mode(padding_mode: Any) -> str:
    if not isinstance(padding_mode, str):
        raise TypeError(
            f"padding_mode must be a string, one of {PADDING_MODES}, got {padding_mode!r}"
        )
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    return padding_mode


def _check_elements(count: int, what: str, argument: str) -> None:
    """Refuse an array of more than MAX_ELEMENTS elements, naming the argument to blame."""
    if count > MAX_ELEMENTS:
        raise ValueError(
            f"{what} would need {count:.3g} elements (more than 2**37 = {MAX_ELEMENTS:.3g}, "
            f"a TiB in float64); refusing to allocate it — {argument} makes it this large"
        )


def parse_wrt(wrt: Any) -> Tuple[bool, bool, bool]:
    """``(input, weight, bias)`` flags of the gradients ``wrt`` asks for.

    ``wrt`` is one name or an iterable of names drawn from
    ``('input', 'weight', 'bias')``; anything else is refused with a
    ``TypeError`` (not iterable) or ``ValueError`` (an entry that is not one of
    the names, e.g. an array).

    Examples
    --------
    >>> from im2colbp.geometry import parse_wrt
    >>> parse_wrt("weight"), parse_wrt(["bias", "input"]), parse_wrt(())
    ((False, True, False), (True, False, True), (False, False, False))
    """
    if isinstance(wrt, str):
        wrt = (wrt,)
    if isinstance(wrt, np.ndarray) and wrt.ndim == 0:
        wrt = (wrt[()],)
    try:
        names = tuple(wrt)
    except TypeError:
        raise TypeError(
            f"wrt must be a name or a tuple drawn from {WRT_NAMES}, got {wrt!r} of type "
            f"{type(wrt).__name__}"
        ) from None
    for name in names:
        if not isinstance(name, str) or name not in WRT_NAMES:
            raise ValueError(f"wrt entries must be in {WRT_NAMES}, got {name!r}")
    return "input" in names, "weight" in names, "bias" in names  # WRT_NAMES' order


# --------------------------------------------------------------------------
# geometry objects
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowGeometry:
    """The spatial arithmetic of a sliding window (all tuples have length r).

    Attributes
    ----------
    in_size : tuple of int
        I, the unpadded input size.
    kernel_size, stride, dilation : tuple of int
        K, S, D.
    padding : tuple of (int, int)
        (P_before, P_after) per axis, already resolved (``'same'`` included).
    out_size : tuple of int
        O, the number of window positions per axis.
    padding_mode : str
        One of ``PADDING_MODES``.
    """

    in_size: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Pairs
    dilation: Tuple[int, ...]
    out_size: Tuple[int, ...]
    padding_mode: str = "zeros"

    @property
    def rank(self) -> int:
        return len(self.in_size)

    @property
    def padded_size(self) -> Tuple[int, ...]:
        return tuple(i + b + a for i, (b, a) in zip(self.in_size, self.padding))

    @property
    def kernel_volume(self) -> int:
        return math.prod(self.kernel_size)

    @property
    def out_volume(self) -> int:
        """L, the number of window positions (columns per sample)."""
        return math.prod(self.out_size)

    @property
    def is_padded(self) -> bool:
        return any(b or a for b, a in self.padding)

    def transposition_padding(self, padded_input: bool = False) -> Pairs:
        """Padding of the zero-inserted δ for the stride-1 backward convolution.

        The input gradient is the stride-1 convolution (dilation D) of δ with
        stride-1 zeros inserted, padded by ``(D*(K-1) - P_before, D*(K-1) - P_after + R)``
        per axis (negative: crop), with the channel-swapped, flipped kernel. The
        two amounts add up to ``I - Z + D*(K-1)``, so that output has size I.
        With ``padded_input``, the gradient w.r.t. the *padded* input instead:
        ``(D*(K-1), D*(K-1) + R)``.
        """
        return tuple(
            (d * (k - 1) - (0 if padded_input else before),
             d * (k - 1) - (0 if padded_input else after) + rem)
            for d, k, (before, after), rem in zip(self.dilation, self.kernel_size, self.padding,
                                                  self.remainder)
        )

    @property
    def remainder(self) -> Tuple[int, ...]:
        """R per axis: trailing padded samples after the last one any window reads
        (they exist when the stride does not divide the span; they get zero gradient)."""
        return tuple(
            p - ((o - 1) * s + d * (k - 1) + 1)
            for p, o, s, d, k in zip(self.padded_size, self.out_size, self.stride,
                                     self.dilation, self.kernel_size)
        )


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution ``(N, C_in, *I) * (C_out, C_in/G, *K) -> (N, C_out, *O)``.

    For a transposed convolution this describes the *forward* convolution whose
    input gradient it is: ``in_channels``/``window.in_size`` belong to the
    transposed convolution's output.
    """

    window: WindowGeometry
    batch: int
    batched: bool
    in_channels: int
    out_channels: int
    groups: int

    @property
    def rank(self) -> int:
        return self.window.rank

    @property
    def input_shape(self) -> Tuple[int, ...]:
        lead = (self.batch,) if self.batched else ()
        return lead + (self.in_channels,) + self.window.in_size

    @property
    def output_shape(self) -> Tuple[int, ...]:
        lead = (self.batch,) if self.batched else ()
        return lead + (self.out_channels,) + self.window.out_size

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups) + self.window.kernel_size

    @property
    def column_rows(self) -> int:
        """C_in·∏K, the rows of one sample's column matrix."""
        return self.in_channels * self.window.kernel_volume


def window_geometry(
    in_size: Sequence[int],
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    padding_mode: str = "zeros",
    *,
    allow_same: bool = True,
    out_size: Optional[Sequence[int]] = None,
) -> WindowGeometry:
    """Validate spatial arguments and compute the output size.

    ``out_size`` may be given to *crop* the output to fewer positions than
    fit (used by transposed convolution when ``output_padding >= stride``).
    """
    in_size = as_shape(in_size, "spatial size")
    rank = len(in_size)
    if rank < 1:
        raise ValueError("convolution needs at least one spatial axis (rank r >= 1)")
    _check_rank(rank)
    for axis, size in enumerate(in_size):
        if size < 1:
            raise ValueError(
                f"spatial size must be positive, got {size} on spatial axis {axis} "
                f"(input spatial size {in_size})"
            )
    kernel = as_int_tuple(kernel_size, rank, "kernel_size", 1)
    stride = as_int_tuple(stride, rank, "stride", 1)
    dilation = as_int_tuple(dilation, rank, "dilation", 1)
    mode = parse_padding_mode(padding_mode)
    parsed = parse_padding(padding, rank, allow_same)
    # parse_padding's only string answer is "same"
    pairs = _same_padding(in_size, kernel, stride, dilation) if isinstance(parsed, str) else parsed
    padded = tuple(i + b + a for i, (b, a) in zip(in_size, pairs))
    _check_elements(math.prod(kernel), f"a kernel of size {kernel}", "kernel_size")
    _check_elements(math.prod(padded), f"the padded input of spatial size {padded}",
                    _padded_culprit(in_size, pairs, kernel, stride, dilation))

    if mode == "reflect":
        for axis, (size, (before, after)) in enumerate(zip(in_size, pairs)):
            if max(before, after) >= size:
                raise ValueError(
                    f"reflect padding must be smaller than the input size it reflects: "
                    f"padding {(before, after)} on spatial axis {axis} of size {size}"
                )

    fitting = []
    for axis, (size, k, s, d) in enumerate(zip(padded, kernel, stride, dilation)):
        extent = d * (k - 1) + 1
        if extent > size:
            raise ValueError(
                f"kernel larger than the padded input on spatial axis {axis}: dilated kernel "
                f"extent {extent} (kernel_size {k}, dilation {d}) > padded size {size} "
                f"(input {in_size[axis]} + padding {pairs[axis]}); output size would be < 1"
            )
        fitting.append((size - extent) // s + 1)
    if out_size is None:
        out = tuple(fitting)
    else:
        out = tuple(int(o) for o in out_size)
        if len(out) != rank or any(o < 1 or o > f for o, f in zip(out, fitting)):
            raise ValueError(f"out_size {out} must be between 1 and {tuple(fitting)} per axis")
    window = WindowGeometry(in_size, kernel, stride, pairs, dilation, out, mode)
    _check_elements(math.prod(out) * math.prod(kernel), "the columns of one channel",
                    size_culprit(window, "columns"))
    return window


def _check_rank(rank: int) -> None:
    if rank > MAX_RANK:
        raise ValueError(
            f"spatial rank r = {rank} is too large: at most {MAX_RANK} spatial axes are "
            f"supported (the columns have 2 + 2r dimensions and NumPy {np.__version__} "
            f"allows {MAX_ARRAY_DIMS}); drop size-1 axes or merge axes"
        )


def _padded_culprit(in_size, pairs, kernel, stride, dilation) -> str:
    """The argument that makes the padded input large: the padding (and, when it is the
    'same' padding of a large dilation, the dilation), or the input's own size."""
    volume = math.prod(in_size)
    growth = math.prod(i + b + a for i, (b, a) in zip(in_size, pairs)) / volume
    if growth <= volume:
        return f"the input's spatial size {tuple(in_size)}"
    if any(d > 1 for d in dilation) and pairs == _same_padding(in_size, kernel, stride,
                                                                dilation):
        return (f"dilation {tuple(dilation)} (through padding='same', which pads "
                "D*(K-1) in total per axis)")
    return f"padding {tuple(pairs)}"


def size_culprit(window: WindowGeometry, array: str, *, transposed: bool = False,
                 batch: int = 1, channels: int = 1) -> str:
    """Name the argument that makes one array of a call large, for error messages.

    Parameters
    ----------
    window : WindowGeometry
        The geometry of the (forward) convolution.
    array : {'input', 'padded', 'output', 'columns'}
        Which array: the unpadded input ``(N, C, *I)``, the padded input, the
        output ``(N, C, *O)`` or the columns ``(N, C, *K, *O)``. For a
        transposed convolution (``transposed=True``) the window is that of
        the forward convolution, so its ``in_size`` is the transposed
        convolution's output.
    batch, channels : int, optional
        N and the channels of that array, blamed when they are the largest factor.

    Returns
    -------
    str
        E.g. ``"padding ((1000000, 1000000),)"``, ``"stride (100000, 100000)"``,
        ``"kernel_size (1000000,)"``, ``"the batch size N = 100000"``.

    Examples
    --------
    >>> from im2colbp.geometry import window_geometry, size_culprit
    >>> size_culprit(window_geometry((2,), 1, padding=10**6), "padded")
    'padding ((1000000, 1000000),)'
    >>> size_culprit(window_geometry((5,), 3, dilation=2**31, padding="same"), "padded")
    "dilation (2147483648,) (through padding='same', which pads D*(K-1) in total per axis)"
    """
    arrays = ("input", "padded", "output", "columns")
    if array not in arrays:
        raise ValueError(f"array must be one of {arrays}, got {array!r}")
    input_size = window.out_size if transposed else window.in_size  # the call's input
    if array == "columns":
        spatial = window.kernel_volume * window.out_volume
        what = (f"kernel_size {window.kernel_size}" if window.kernel_volume > window.out_volume
                else size_culprit(window, "input" if transposed else "output"))
    elif array == "input":
        spatial = math.prod(input_size)
        what = f"the input's spatial size {input_size}"
    elif transposed:  # the output (I_t - 1)*S + D*(K-1) + 1 - P, or the same padded
        spatial = math.prod(window.padded_size if array == "padded" else window.in_size)
        factors = {
            f"stride {window.stride}": math.prod(window.stride),
            f"dilation {window.dilation}": math.prod(window.dilation),
            f"kernel_size {window.kernel_size}": window.kernel_volume,
            f"the input's spatial size {input_size}": math.prod(input_size),
        }
        what = max(factors, key=factors.__getitem__)
        if array == "padded" and math.prod(window.padded_size) > 2 * math.prod(window.in_size):
            what = f"padding {window.padding}"
    elif array == "padded":
        spatial = math.prod(window.padded_size)
        what = _padded_culprit(window.in_size, window.padding, window.kernel_size,
                               window.stride, window.dilation)
    else:  # the output: larger than the input only through padding
        spatial = window.out_volume
        volume = math.prod(window.in_size)
        what = (f"the input's spatial size {window.in_size}" if spatial <= volume * volume
                else f"padding {window.padding}")
    if batch > spatial and batch >= channels:
        return f"the batch size N = {batch}"
    if channels > spatial:
        return f"the number of channels ({channels})"
    return what


def rank_and_batching(ndim: int, kernel_size: Any, name: str,
                      what: str = "kernel_size") -> Tuple[int, bool]:
    """(r, batched) of an array with ``ndim`` dimensions lowered with ``kernel_size``:
    a tuple kernel fixes r (then (C, *I) is unbatched); an int means r = ndim - 2."""
    if is_int(kernel_size):
        if ndim < 3:
            raise ValueError(
                f"{name} must be batched (N, C, *spatial) with at least one spatial axis when "
                f"{what} is an int, got {ndim} dimensions; give {what} as a tuple "
                "for unbatched input"
            )
        return ndim - 2, True
    try:
        rank = len(kernel_size)
    except TypeError:
        raise TypeError(f"{what} must be an int or a tuple of ints, got {kernel_size!r}") \
            from None
    if rank < 1:
        raise ValueError(f"{what} must have at least one entry (rank r >= 1)")
    if ndim == rank + 2:
        return rank, True
    if ndim == rank + 1:
        return rank, False
    raise ValueError(
        f"{name} must have {rank + 2} dimensions (N, C, *spatial) or {rank + 1} (C, *spatial) "
        f"for {what} {tuple(kernel_size)}, got {ndim} dimensions"
    )


# --------------------------------------------------------------------------
# shapes of arrays
# --------------------------------------------------------------------------
def as_shape(value: Any, name: str) -> Tuple[int, ...]:
    """Return ``value`` as a tuple of non-negative ints or raise a clear error."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise TypeError(
            f"{name} must be a tuple of ints, got a {value.ndim}-d array {value!r} "
            "(a shape is a 1-d sequence)"
        )
    items = tuple(value)
    if not all(is_int(item) for item in items):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    shape = tuple(int(item) for item in items)
    if any(s < 0 for s in shape):
        raise ValueError(f"{name} must not contain negative sizes, got {shape}")
    for axis, size in enumerate(shape):
        _check_elements(size, f"{name}[{axis}] = {size}", f"{name}")
    return shape


def _split_input(shape, rank, name) -> Tuple[bool, int, int, Tuple[int, ...]]:
    """(batched, N, C, spatial) for a batched or unbatched channels-first shape."""
    if len(shape) == rank + 2:
        return True, shape[0], shape[1], tuple(shape[2:])
    if len(shape) == rank + 1:
        return False, 1, shape[0], tuple(shape[1:])
    raise ValueError(
        f"{name} must have {rank + 2} dimensions (N, C, *spatial) or {rank + 1} (C, *spatial) "
        f"for a rank-{rank} convolution (weight has {rank + 2} dimensions), "
        f"got {len(shape)} dimensions: shape {tuple(shape)}"
    )


def _weight_rank(weight_shape, name="weight") -> int:
    if len(weight_shape) < 3:
        raise ValueError(
            f"{name} must have at least 3 dimensions (C_out, C_in/groups, *kernel_size), "
            f"got shape {tuple(weight_shape)}"
        )
    return len(weight_shape) - 2


def _check_bias(bias_shape, channels) -> None:
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ValueError(
            f"bias must have shape ({channels},) (one value per output channel), "
            f"got {tuple(bias_shape)}"
        )


def _check_total(geometry: ConvGeometry, transposed: bool = False) -> None:
    n = max(geometry.batch, 1)
    win = geometry.window
    c_in, c_out = geometry.in_channels, geometry.out_channels
    _check_elements(n * c_in * math.prod(win.padded_size),
                    "the padded output" if transposed else "the padded input",
                    size_culprit(win, "padded", transposed=transposed, batch=n, channels=c_in))
    _check_elements(n * c_out * win.out_volume, "the input" if transposed else "the output",
                    size_culprit(win, "input" if transposed else "output",
                                 transposed=transposed, batch=n, channels=c_out))
    _check_elements(geometry.column_rows * win.out_volume, "the columns of one sample",
                    size_culprit(win, "columns", transposed=transposed,
                                 channels=geometry.column_rows // win.kernel_volume))


def conv_geometry(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Optional[Sequence[int]] = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """Validate a convolution's arguments; see :func:`im2colbp.conv`."""
    weight_shape = as_shape(weight_shape, "weight shape")
    rank = _weight_rank(weight_shape)
    input_shape = as_shape(input_shape, "input shape")
    batched, batch, channels, in_size = _split_input(input_shape, rank, "input")
    groups = as_int(groups, "groups", 1)
    out_channels, group_channels = weight_shape[0], weight_shape[1]
    if out_channels % groups:
        raise ValueError(
            f"groups={groups} must divide the output channels C_out={out_channels} "
            f"(weight shape {weight_shape})"
        )
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={channels}")
    if group_channels * groups != channels:
        raise ValueError(
            f"input has C_in={channels} channels but weight expects "
            f"C_in/groups * groups = {group_channels} * {groups} = {group_channels * groups} "
            f"(weight shape {weight_shape}, input shape {input_shape})"
        )
    _check_bias(bias_shape, out_channels)
    window = window_geometry(
        in_size, weight_shape[2:], stride, padding, dilation, padding_mode
    )
    geometry = ConvGeometry(window, batch, batched, channels, out_channels, groups)
    _check_total(geometry)
    return geometry


def as_output_padding(output_padding: Any, stride: Tuple[int, ...],
                      dilation: Tuple[int, ...]) -> Tuple[int, ...]:
    """Validate ``output_padding`` against PyTorch's range ``0 <= op < max(S, D)``."""
    out_pad = as_int_tuple(output_padding, len(stride), "output_padding", None)
    for axis, (op, s, d) in enumerate(zip(out_pad, stride, dilation)):
        if not 0 <= op < max(s, d):
            raise ValueError(
                f"output_padding must satisfy 0 <= output_padding < max(stride, dilation) = "
                f"{max(s, d)} on spatial axis {axis}, got {op}"
            )
    return out_pad


def conv_transpose_geometry(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    bias_shape: Optional[Sequence[int]] = None,
    *,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    dilation: Any = 1,
    groups: Any = 1,
    output_size: Optional[Sequence[int]] = None,
    padding_mode: str = "zeros",
) -> ConvGeometry:
    """Validate a transposed convolution's arguments.

    Returns the geometry of the forward convolution whose input gradient the
    transposed convolution is: its input is the transposed convolution's
    output ``(N, C_out, *O_t)`` and its output is ``x`` ``(N, C_in, *I_t)``.
    """
    weight_shape = as_shape(weight_shape, "weight shape")
    rank = _weight_rank(weight_shape)
    input_shape = as_shape(input_shape, "input shape")
    batched, batch, channels, in_size = _split_input(input_shape, rank, "input")
    for axis, size in enumerate(in_size):
        if size < 1:
            raise ValueError(
                f"spatial size must be positive, got {size} on spatial axis {axis} "
                f"(input shape {input_shape})"
            )
    groups = as_int(groups, "groups", 1)
    if weight_shape[0] != channels:
        raise ValueError(
            f"transposed-convolution weight must have shape (C_in, C_out/groups, *kernel_size) "
            f"with C_in={channels} (the input's channels), got weight shape {weight_shape}"
        )
    if channels % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={channels}")
    out_channels = weight_shape[1] * groups
    _check_bias(bias_shape, out_channels)

    kernel = as_int_tuple(weight_shape[2:], rank, "kernel_size", 1)
    stride_t = as_int_tuple(stride, rank, "stride", 1)
    dilation_t = as_int_tuple(dilation, rank, "dilation", 1)
    pairs = parse_padding(padding, rank, allow_same=False)
    out_pad = as_output_padding(output_padding, stride_t, dilation_t)
    smallest = tuple(
        (i - 1) * s - b - a + d * (k - 1) + 1
        for i, s, (b, a), d, k in zip(in_size, stride_t, pairs, dilation_t, kernel)
    )
    limit = tuple(max(s, d) for s, d in zip(stride_t, dilation_t))
    if output_size is not None:
        requested = as_shape(output_size, "output_size")
        if len(requested) in (rank + 1, rank + 2):
            lead = tuple(requested[:-rank])
            leading = ((batch,) if batched else ()) + (out_channels,)
            expected = leading[-len(lead):] if len(lead) <= len(leading) else None
            if expected is None or lead != expected:
                raise ValueError(
                    f"output_size {requested}: leading sizes {lead} must match the output's "
                    f"(N, C_out) = {((batch,) if batched else ()) + (out_channels,)}"
                )
            requested = requested[-rank:]
        if len(requested) != rank:
            raise ValueError(
                f"output_size must give the {rank} spatial sizes (or the full output shape), "
                f"got {tuple(output_size)}"
            )
        largest = tuple(s + lim - 1 for s, lim in zip(smallest, limit))
        for axis, (want, low, high) in enumerate(zip(requested, smallest, largest)):
            if not low <= want <= high:
                raise ValueError(
                    f"output_size {requested} is not reachable: on spatial axis {axis} the "
                    f"admissible sizes are {low}..{high} (output_padding 0..{high - low}), "
                    f"got {want}"
                )
        derived = tuple(w - s for w, s in zip(requested, smallest))
        for axis, (given, want) in enumerate(zip(out_pad, derived)):
            if given and given != want:
                raise ValueError(
                    f"output_padding {out_pad} conflicts with output_size {requested}: "
                    f"spatial axis {axis} needs output_padding {want}"
                )
        out_pad = derived
    out_size = tuple(s + op for s, op in zip(smallest, out_pad))
    for axis, size in enumerate(out_size):
        if size < 1:
            raise ValueError(
                f"transposed-convolution output size must be positive, got {size} on spatial "
                f"axis {axis}: (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1 "
                f"with I={in_size[axis]}, S={stride_t[axis]}, P={pairs[axis]}, "
                f"D={dilation_t[axis]}, K={kernel[axis]}, output_padding={out_pad[axis]}"
            )
    factors = {"stride": math.prod(stride_t), "dilation": math.prod(dilation_t),
               "kernel_size": math.prod(kernel), "the input's spatial size": math.prod(in_size)}
    _check_rank(rank)
    _check_elements(
        math.prod(out_size),
        f"the transposed-convolution output of spatial size {out_size} (input {in_size}, "
        f"stride {stride_t}, dilation {dilation_t}, kernel {kernel})",
        max(factors, key=factors.__getitem__),
    )
    window = window_geometry(
        out_size, kernel, stride_t, pairs, dilation_t, padding_mode,
        allow_same=False, out_size=in_size,
    )
    geometry = ConvGeometry(window, batch, batched, out_channels, channels, groups)
    _check_total(geometry, transposed=True)
    return geometry


def check_array_shape(shape: Sequence[int], expected: Sequence[int], name: str, why: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``shape == expected``."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({why}), got {tuple(shape)}")


# --------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------
def as_float_array(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a real floating array without copying when possible.

    float32/float64 (and longer floats) stay; float16 becomes float32; bool
    and integers become float64; complex and non-numeric data are refused.
    A masked array (:mod:`numpy.ma`) with any masked element is refused
    (``TypeError``): NumPy would drop the mask and compute with the hidden
    values; one without masked elements is its data. A broadcast array that
    needs converting stays broadcast (one conversion per distinct element).
    """
    if isinstance(value, np.ma.MaskedArray) and np.ma.getmask(value) is not np.ma.nomask \
            and np.ma.getmask(value).any():
        raise TypeError(
            f"{name} is a masked array with {np.count_nonzero(np.ma.getmask(value))} masked "
            f"element(s); masks are not supported (ignoring one would compute with the "
            f"masked values): pass {name}.filled(v), with the value v a masked sample "
            "should take"
        )
    try:
        # asarray also strips subclasses (np.matrix would keep 2-D shapes)
        array = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as error:  # RuntimeError: torch grad tensors
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}: "
                        f"{error}") from None
    kind = array.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} must be real; complex dtype {array.dtype} is not supported")
    if kind in "biu":
        return _converted(array, np.dtype(np.float64), name)
    if kind != "f":
        raise TypeError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.dtype.itemsize < 4:
        return _converted(array, np.dtype(np.float32), name)
    if not array.dtype.isnative:  # e.g. '>f4' from a file: compute in the machine's order
        return _converted(array, array.dtype.newbyteorder("="), name)
    return array


def _converted(array: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """``array.astype(dtype)``; a broadcast array (zero strides) is converted once per
    distinct element and broadcast again, so a view of 10¹⁰ copies of one value stays small."""
    repeated = tuple(axis for axis, (size, step) in enumerate(zip(array.shape, array.strides))
                     if step == 0 and size > 1)
    if repeated:
        compact = array[tuple(slice(0, 1) if axis in repeated else slice(None)
                              for axis in range(array.ndim))]
        check_allocation(compact.size * dtype.itemsize, name,
                         f"converting {name} {array.shape} to {dtype}")
        return np.broadcast_to(compact.astype(dtype), array.shape)
    check_allocation(array.size * dtype.itemsize, name,
                     f"converting {name} {array.shape} from {array.dtype} to {dtype}")
    return array.astype(dtype)


def result_dtype(*arrays: Optional[np.ndarray]) -> np.dtype:
    """The floating dtype NumPy promotion gives for the (converted) arrays."""
    return np.result_type(*[a.dtype for a in arrays if a is not None])
