"""The setup every computing entry point shares: arrays in, geometry, dtype, batch axis.

A public function converts its arrays (:func:`~im2colbp.geometry.as_float_array`),
validates its arguments into a :class:`~im2colbp.geometry.ConvGeometry`, picks
the result dtype and adds the batch axis to unbatched arrays — in that order,
and only here. :mod:`im2colbp.convolution`, :mod:`im2colbp.transposition` and
:mod:`im2colbp.operators` build on it; :mod:`im2colbp.reference` keeps its own
path so that it stays an independent oracle.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
from numpy.typing import ArrayLike

from .geometry import (
    ConvGeometry,
    as_float_array,
    check_array_shape,
    conv_geometry,
    conv_transpose_geometry,
    result_dtype,
)

__all__ = ["ForwardCall", "GradInputCall", "GradWeightCall", "geometry_kwargs", "forward_call",
           "known_forward_call", "grad_input_call", "grad_weight_call", "batched", "unbatched",
           "is_private", "is_plain", "frozen_arguments", "shape_key", "PLAIN_DTYPES"]


def geometry_kwargs(stride: Any, padding: Any, dilation: Any, groups: Any,
                    padding_mode: Any) -> Dict[str, Any]:
    """The geometry keywords of a convolution as one dict."""
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                padding_mode=padding_mode)


def batched(array: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """``array`` with the batch axis (a view)."""
    return array if geometry.batched else array[None]


def unbatched(array: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """``array`` without the batch axis when the call was unbatched (a view)."""
    return array if geometry.batched else array[0]


def is_private(converted: np.ndarray, given: Any) -> bool:
    """True when ``converted`` is a fresh array no caller can reach (a conversion's copy)."""
    return converted is not given and converted.base is None and converted.flags.owndata


# Not frozen: these are built on every call (a frozen dataclass's __init__ costs a
# microsecond more), and nothing outside the entry points sees them.
@dataclass(eq=False)
class _Call:
    geometry: ConvGeometry
    dtype: np.dtype

    def result(self, array: np.ndarray) -> np.ndarray:
        return unbatched(array, self.geometry)


@dataclass(eq=False)
class ForwardCall(_Call):
    """A validated forward call: geometry, compute dtype and arrays, batched.

    Arrays keep their own floating dtype (the engine casts chunk by chunk, so
    a mixed-dtype call copies no whole array); ``weight`` is already contiguous
    in ``dtype`` (it is small, and a contiguous weight keeps long GEMM sums in
    BLAS's blocked, accurate accumulation even when the caller passed a
    broadcast view).
    """

    x: np.ndarray  # (N, C_in, *I); for a transposed convolution its input (N, C_out, *O)
    weight: np.ndarray
    bias: Optional[np.ndarray]
    x_private: bool  # x is a conversion's own copy
    weight_private: bool  # likewise the weight


@dataclass(eq=False)
class GradInputCall(_Call):
    """A validated ``conv_grad_input`` call (arrays batched, weight contiguous)."""

    weight: np.ndarray
    dy: np.ndarray  # (N, C_out, *O)


@dataclass(eq=False)
class GradWeightCall(_Call):
    """A validated ``conv_grad_weight`` call (arrays batched)."""

    x: np.ndarray  # (N, C_in, *I)
    dy: np.ndarray  # (N, C_out, *O)


_EXACT_TYPES = (int, str, float, type(None))


def _frozen(value: Any) -> Any:
    """A hashable key for an argument that tells apart what parsing tells apart
    (``True`` from ``1``, ``1.0`` from ``1``, a tuple from a list); TypeError for
    anything else. ints, strs and None stand for themselves (no other key equals
    them: every other value's key is a tuple tagged with its type)."""
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is float:
        return (kind, value)
    if kind is tuple or kind is list:
        return (kind, tuple([_frozen(item) for item in value]))
    if kind is dict:
        return (kind, tuple([(k, _frozen(v)) for k, v in value.items()]))
    raise TypeError("not cached")


def frozen_arguments(*values: Any) -> Any:
    """The hashable key of call arguments of plain Python types (see ``_frozen``);
    TypeError when one of them is of another type (such a call is not cached).
    Arguments that are all ints, strs or None are their own key (a tuple of them
    never equals a frozen one, whose first item is a type)."""
    for value in values:
        kind = type(value)
        if not (kind is int or kind is str or value is None):
            return _frozen(values)
    return values


#: The array dtypes :func:`~im2colbp.geometry.as_float_array` returns unchanged
#: (besides longer floats): an exact ``ndarray`` of these is used as it is.
PLAIN_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_plain(value: Any) -> bool:
    """True for an exact ``numpy.ndarray`` of native float32/float64, which
    :func:`~im2colbp.geometry.as_float_array` would return as it is."""
    return type(value) is np.ndarray and value.dtype in PLAIN_DTYPES


def shape_key(shape: Any) -> Any:
    """``shape`` itself when it is a tuple of ints (every array's ``.shape`` is), else
    its ``_frozen`` key; the two cannot be confused (a frozen tuple is tagged)."""
    if type(shape) is tuple:
        for item in shape:
            if type(item) is not int:
                return _frozen(shape)
        return ("shape",) + shape
    return _frozen(shape)


#: How many validated geometries :func:`_geometry` remembers.
GEOMETRY_CACHE_SIZE = 512

_geometries: OrderedDict[Any, ConvGeometry] = OrderedDict()
_geometries_lock = threading.Lock()


def _geometry(builder: Callable[..., ConvGeometry], *shapes: Any,
              **kwargs: Any) -> ConvGeometry:
    """``builder(*shapes, **kwargs)``, remembered for arguments of plain Python types
    (a layer or a training loop repeats the same call every step). Invalid
    arguments raise every time: only results are remembered."""
    try:
        key = (builder.__name__, tuple([shape_key(shape) for shape in shapes]),
               _frozen(tuple(kwargs.items())))
        hash(key)
    except TypeError:
        return builder(*shapes, **kwargs)
    with _geometries_lock:
        geometry = _geometries.get(key)
        if geometry is not None:
            _geometries.move_to_end(key)
            return geometry
    geometry = builder(*shapes, **kwargs)
    with _geometries_lock:
        _geometries[key] = geometry
        while len(_geometries) > GEOMETRY_CACHE_SIZE:
            _geometries.popitem(last=False)
    return geometry


def _contiguous_weight(weight: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(weight, dtype=dtype)


def forward_call(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike],
                 kwargs: Dict[str, Any], *, transposed: bool = False) -> ForwardCall:
    """Set up ``conv(x, weight, bias, **kwargs)`` (or ``conv_transpose``)."""
    x_array = as_float_array(x, "x")
    weight_array = as_float_array(weight, "weight")
    bias_array = None if bias is None else as_float_array(bias, "bias")
    bias_shape = None if bias_array is None else bias_array.shape
    if transposed:
        geometry = _geometry(conv_transpose_geometry, x_array.shape, weight_array.shape,
                             bias_shape, **kwargs)
    else:
        geometry = _geometry(conv_geometry, x_array.shape, weight_array.shape, bias_shape,
                             **kwargs)
    dtype = result_dtype(x_array, weight_array, bias_array)
    weight_contiguous = _contiguous_weight(weight_array, dtype)
    return ForwardCall(geometry, dtype, batched(x_array, geometry), weight_contiguous,
                       bias_array, x_private=is_private(x_array, x),
                       weight_private=is_private(weight_contiguous, weight))


def known_forward_call(geometry: ConvGeometry, dtype: np.dtype, x: np.ndarray,
                       weight: np.ndarray, bias: Optional[np.ndarray]) -> ForwardCall:
    """:func:`forward_call` for plain arrays (:func:`is_plain`) whose shapes, dtypes
    and arguments an earlier call validated into ``geometry`` and ``dtype``: the
    same ForwardCall, without repeating the validation."""
    weight_contiguous = weight
    if weight.dtype != dtype or not weight.flags.c_contiguous:
        weight_contiguous = _contiguous_weight(weight, dtype)
    return ForwardCall(geometry, dtype, batched(x, geometry), weight_contiguous,
                       bias, x_private=False,
                       weight_private=is_private(weight_contiguous, weight))


def grad_input_call(dy: ArrayLike, weight: ArrayLike, input_shape: Any,
                    kwargs: Dict[str, Any]) -> GradInputCall:
    """Set up ``conv_grad_input(dy, weight, input_shape, **kwargs)``."""
    dy_array = as_float_array(dy, "dy")
    weight_array = as_float_array(weight, "weight")
    geometry = _geometry(conv_geometry, input_shape, weight_array.shape, **kwargs)
    check_array_shape(dy_array.shape, geometry.output_shape, "dy",
                      "the output of the convolution of input_shape")
    dtype = result_dtype(dy_array, weight_array)
    return GradInputCall(geometry, dtype, weight=_contiguous_weight(weight_array, dtype),
                         dy=batched(dy_array, geometry))


def grad_weight_call(dy: ArrayLike, x: ArrayLike, weight_shape: Any,
                     kwargs: Dict[str, Any]) -> GradWeightCall:
    """Set up ``conv_grad_weight(dy, x, weight_shape, **kwargs)``."""
    dy_array = as_float_array(dy, "dy")
    x_array = as_float_array(x, "x")
    geometry = _geometry(conv_geometry, x_array.shape, weight_shape, **kwargs)
    check_array_shape(dy_array.shape, geometry.output_shape, "dy",
                      "the output of the convolution of x")
    dtype = result_dtype(dy_array, x_array)
    return GradWeightCall(geometry, dtype, x=batched(x_array, geometry),
                          dy=batched(dy_array, geometry))

