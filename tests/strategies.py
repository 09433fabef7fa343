"""Hypothesis strategies of valid convolution geometries, shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from im2colbp.geometry import conv_geometry, conv_transpose_geometry

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
MAX_SIZE = {1: 10, 2: 7, 3: 5, 4: 4}


@dataclass
class Case:
    """One drawn convolution: shapes plus the keyword arguments for the call."""

    rank: int
    input_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    bias: bool
    kwargs: dict = field(default_factory=dict)
    dtype: Any = np.float64
    output_padding: Any = 0

    def arrays(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal(self.input_shape).astype(self.dtype)
        w = rng.standard_normal(self.weight_shape).astype(self.dtype)
        b = rng.standard_normal(self.out_channels).astype(self.dtype) if self.bias else None
        return x, w, b

    @property
    def out_channels(self) -> int:
        return self.kwargs["_out_channels"]

    @property
    def call_kwargs(self) -> dict:
        return {k: v for k, v in self.kwargs.items() if not k.startswith("_")}


def _per_axis(draw, rank, strategy):
    return tuple(draw(strategy) for _ in range(rank))


def _int_or_tuple(draw, rank, strategy):
    values = _per_axis(draw, rank, strategy)
    if len(set(values)) == 1 and draw(st.booleans()):
        return values[0]
    return values


@st.composite
def paddings(draw, rank, allow_same=True):
    """Every padding form: int, r-tuple, (before, after) pairs, 'valid', 'same'."""
    forms = ["int", "tuple", "pairs", "valid"] + (["same"] if allow_same else [])
    form = draw(st.sampled_from(forms))
    amount = st.integers(0, 3)
    if form == "int":
        return draw(amount)
    if form == "tuple":
        return _per_axis(draw, rank, amount)
    if form == "pairs":
        return tuple((draw(amount), draw(amount)) for _ in range(rank))
    return form


@st.composite
def conv_cases(draw, ranks=(1, 2, 3, 4), modes=PADDING_MODES, dtypes=(np.float64,),
               allow_unbatched=True, max_batch=2, allow_empty=True) -> Case:
    """A valid convolution: rank 1-4, stride (also > kernel), dilation, groups,
    every padding form and mode, kernel larger than the input but fitting after
    padding, unbatched input, N = 0 and zero channels."""
    rank = draw(st.sampled_from(ranks))
    groups = draw(st.integers(1, 3))
    min_channels = 0 if allow_empty else 1
    c_in = groups * draw(st.integers(min_channels, 2) if draw(st.integers(0, 9)) == 0
                         else st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = _per_axis(draw, rank, st.integers(1, 4))
    stride = _int_or_tuple(draw, rank, st.integers(1, 4))
    dilation = _int_or_tuple(draw, rank, st.integers(1, 3))
    padding = draw(paddings(rank))
    mode = draw(st.sampled_from(modes))
    in_size = _per_axis(draw, rank, st.integers(1, MAX_SIZE[rank]))
    batch = draw(st.integers(0 if allow_empty else 1, max_batch))
    batched = not (allow_unbatched and draw(st.integers(0, 4)) == 0)
    input_shape = ((batch,) if batched else ()) + (c_in,) + in_size
    weight_shape = (c_out, c_in // groups) + kernel
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=mode)
    try:
        conv_geometry(input_shape, weight_shape, **kwargs)
    except ValueError:
        assume(False)
    kwargs["_out_channels"] = c_out
    return Case(rank, input_shape, weight_shape, draw(st.booleans()), kwargs,
                draw(st.sampled_from(dtypes)))


@st.composite
def conv_transpose_cases(draw, ranks=(1, 2, 3, 4), modes=("zeros",), dtypes=(np.float64,),
                         max_batch=2) -> Case:
    """A valid transposed convolution, output_padding anywhere in its range."""
    rank = draw(st.sampled_from(ranks))
    groups = draw(st.integers(1, 3))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    kernel = _per_axis(draw, rank, st.integers(1, 4))
    stride = _per_axis(draw, rank, st.integers(1, 3))
    dilation = _per_axis(draw, rank, st.integers(1, 3))
    padding = draw(paddings(rank, allow_same=False))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    mode = draw(st.sampled_from(modes))
    in_size = _per_axis(draw, rank, st.integers(1, MAX_SIZE[rank] - 1))
    batch = draw(st.integers(0, max_batch))
    batched = draw(st.integers(0, 4)) != 0
    input_shape = ((batch,) if batched else ()) + (c_in,) + in_size
    weight_shape = (c_in, c_out // groups) + kernel
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  output_padding=output_padding, padding_mode=mode)
    try:
        conv_transpose_geometry(input_shape, weight_shape, **kwargs)
    except ValueError:
        assume(False)
    kwargs["_out_channels"] = c_out
    return Case(rank, input_shape, weight_shape, draw(st.booleans()), kwargs,
                draw(st.sampled_from(dtypes)))


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: Optional[Any] = None,
                 scale: float = 1.0) -> None:
    """Tight tolerance in float64, float32-appropriate otherwise."""
    dtype = np.dtype(dtype or actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    tol = 1e-11 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(actual, expected, rtol=tol * 10, atol=tol * max(scale, 1.0))


def magnitude(*arrays) -> float:
    """The largest |entry| of the arrays given (at least 1): the scale of their rounding."""
    return max([1.0] + [float(np.abs(a).max()) for a in arrays if a is not None and a.size])


def assert_forward_and_gradients_match_reference(x, w, b, dy, y, grads, kwargs: dict) -> None:
    """y and the input and weight gradients of one forward + backward against
    :mod:`im2colbp.reference`, each to the rounding of the sums it adds up."""
    from im2colbp import reference

    expected = reference.conv(x, w, b, **kwargs)
    assert_close(y, expected, scale=magnitude(expected) * w[0].size)
    dx_ref = reference.conv_grad_input(dy, w, x.shape, **kwargs)
    dw_ref = reference.conv_grad_weight(dy, x, w.shape, **kwargs)
    assert_close(grads.input, dx_ref, scale=magnitude(dx_ref) * w.shape[0])
    assert_close(grads.weight, dw_ref, scale=magnitude(dw_ref) * max(y.size, 1))
