"""Convolution layers: parameters, gradients and a context, on top of the functional API.

A layer owns its ``weight`` and ``bias``, the gradient buffers ``grad_weight``
and ``grad_bias``, and the context of its most recent forward pass::

    y  = layer.forward(x)       # conv_forward(x, weight, bias, ...), keeps the context
    dx = layer.backward(dy)     # conv_backward(dy, ctx); grad_weight += dW, grad_bias += db

Gradients *accumulate* (``+=``) until :meth:`zero_grad`, as in PyTorch: a layer
used twice in a loss (weight sharing) collects both contributions.

Constructor arguments, weight layouts, default initialisation and the
``state_dict`` keys are PyTorch's, so weights move between ``torch.nn.Conv2d``
and :class:`Conv2d` through NumPy arrays. N-d throughout: :class:`Conv` and
:class:`ConvTranspose` take the spatial rank r from a tuple ``kernel_size``
(or ``ndim=``); ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d`` fix it.

Deliberate differences from PyTorch (the functional API's semantics):

- ``padding='same'`` also works with stride > 1 (TensorFlow/JAX rule:
  ``O = ceil(I / S)``); PyTorch refuses it.
- ``padding`` may be ``(before, after)`` pairs per axis (asymmetric).
- Transposed layers accept every ``padding_mode``: the layer is then the exact
  adjoint of the convolution with that padding. PyTorch allows only ``'zeros'``.
- NumPy dtype promotion: a float32 layer given float64 input computes (and
  returns) float64; gradients are still accumulated in the layer's dtype.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Union

import numpy as np

from .convolution import ConvContext, conv_backward, conv_forward, conv_transpose_forward
from .geometry import (
    as_float_array,
    as_int,
    as_int_tuple,
    as_output_padding,
    check_array_shape,
    is_int,
    parse_padding,
    parse_padding_mode,
)

__all__ = [
    "Conv",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
]

PaddingArg = Union[int, str, Tuple[Any, ...]]


# --------------------------------------------------------------------------
# constructor helpers (values are validated by geometry's parsers)
# --------------------------------------------------------------------------
def _rank(kernel_size: Any, ndim: Any) -> int:
    """r from ``ndim`` when given, else from a tuple ``kernel_size``."""
    if ndim is not None:
        return as_int(ndim, "ndim", 1)
    if is_int(kernel_size):
        raise ValueError(
            f"cannot tell the spatial rank from kernel_size={kernel_size!r}: give kernel_size "
            "as a tuple (one entry per spatial axis) or pass ndim=, or use Conv1d/Conv2d/Conv3d"
        )
    if isinstance(kernel_size, (str, bytes)) or not hasattr(kernel_size, "__len__"):
        raise TypeError(f"kernel_size must be an int or a tuple of ints, got {kernel_size!r}")
    if len(kernel_size) < 1:
        raise ValueError("kernel_size must have at least one entry (rank r >= 1), got ()")
    return len(kernel_size)


def _padding_attribute(padding: Any, rank: int, allow_same: bool) -> PaddingArg:
    """Validate ``padding``; keep strings, symmetric padding as r ints, else r pairs."""
    pairs = parse_padding(padding, rank, allow_same)
    if isinstance(padding, str):
        return padding
    if all(before == after for before, after in pairs):
        return tuple(before for before, _ in pairs)
    return tuple(pairs)


def _float_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32)
    try:
        result = np.dtype(dtype)
    except TypeError:
        result = None
    if result is None or result.kind != "f" or result.itemsize < 4:
        raise TypeError(
            f"dtype must be a NumPy floating dtype of at least 32 bits (float32, float64), "
            f"got {dtype!r}"
        )
    return result


def _generator(rng: Any) -> np.random.Generator:
    if isinstance(rng, (bool, np.bool_)):
        raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"rng must be None, an int seed (>= 0) or a numpy.random.Generator, got {rng!r} "
            f"({error})"
        ) from None


def _as_bias_flag(bias: Any) -> bool:
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(
            f"bias must be True or False (whether the layer has a bias), got {bias!r}; "
            "to set the bias values use load_state_dict or assign layer.bias"
        )
    return bool(bias)


# --------------------------------------------------------------------------
# the shared machinery
# --------------------------------------------------------------------------
class _ConvLayer:
    """Parameters, gradients, context, state_dict and repr shared by all layers."""

    transposed = False

    def _setup(
        self,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: Any,
        bias: Any,
        padding_mode: Any,
        ndim: Any,
        dtype: Any,
        rng: Any,
        output_padding: Any = 0,
    ) -> None:
        rank = _rank(kernel_size, ndim)
        self.in_channels = as_int(in_channels, "in_channels", 1)
        self.out_channels = as_int(out_channels, "out_channels", 1)
        self.groups = as_int(groups, "groups", 1)
        for name, channels in (("in_channels", self.in_channels),
                               ("out_channels", self.out_channels)):
            if channels % self.groups:
                raise ValueError(
                    f"{name} must be divisible by groups: {name}={channels}, groups={self.groups}"
                )
        self.kernel_size = as_int_tuple(kernel_size, rank, "kernel_size", 1)
        self.stride = as_int_tuple(stride, rank, "stride", 1)
        self.dilation = as_int_tuple(dilation, rank, "dilation", 1)
        self.padding = _padding_attribute(padding, rank, allow_same=not self.transposed)
        self.padding_mode = parse_padding_mode(padding_mode)
        self.output_padding = as_output_padding(output_padding, self.stride, self.dilation)
        has_bias = _as_bias_flag(bias)
        self.dtype = _float_dtype(dtype)

        if self.transposed:
            # (C_in, C_out/G, *K): the layout of the convolution whose adjoint this is
            weight_shape = (self.in_channels, self.out_channels // self.groups) + self.kernel_size
        else:
            # (C_out, C_in/G, *K)
            weight_shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        self._weight = np.zeros(weight_shape, dtype=self.dtype)
        self._bias = np.zeros(self.out_channels, dtype=self.dtype) if has_bias else None
        self.grad_weight = np.zeros_like(self._weight)
        self.grad_bias = None if self._bias is None else np.zeros_like(self._bias)
        self._ctx: Optional[ConvContext] = None
        self.reset_parameters(rng)

    # ---------------------------------------------------------------- parameters
    @property
    def weight(self) -> np.ndarray:
        """The filters: ``(C_out, C_in/G, *K)``, or ``(C_in, C_out/G, *K)`` when transposed.

        Assigning copies the new values into the existing array (shape checked),
        so references held by optimisers stay valid.
        """
        return self._weight

    @weight.setter
    def weight(self, value: Any) -> None:
        np.copyto(self._weight, self._checked("weight", value, "weight"), casting="same_kind")

    @property
    def bias(self) -> Optional[np.ndarray]:
        """``(C_out,)``, or None for a layer built with ``bias=False``."""
        return self._bias

    @bias.setter
    def bias(self, value: Any) -> None:
        if self._bias is None:
            raise ValueError(
                f"this {type(self).__name__} has no bias (built with bias=False); "
                "build a new layer with bias=True"
            )
        np.copyto(self._bias, self._checked("bias", value, "bias"), casting="same_kind")

    @property
    def ndim(self) -> int:
        """r, the number of spatial axes."""
        return len(self.kernel_size)

    def reset_parameters(self, rng: Any = None) -> None:
        """Draw weight and bias as PyTorch's default initialisation does.

        Both are uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` with
        ``fan_in = weight.shape[1] * prod(kernel_size)`` — ``C_in/G * prod(K)``
        for a convolution, ``C_out/G * prod(K)`` for a transposed one (that
        is ``kaiming_uniform_(a=sqrt(5))`` and PyTorch's bias rule). Weight
        first, then bias, from ``numpy.random.default_rng(rng)``.
        """
        generator = _generator(rng)
        fan_in = self._weight.shape[1] * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        self._weight[...] = generator.uniform(-bound, bound, self._weight.shape)
        if self._bias is not None:
            self._bias[...] = generator.uniform(-bound, bound, self._bias.shape)

    def parameters(self) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(name, value, grad)`` for ``'weight'`` and (when present) ``'bias'``.

        ``value`` and ``grad`` are the layer's own arrays: update them in place
        (``value -= lr * grad``).
        """
        yield "weight", self._weight, self.grad_weight
        if self._bias is not None:
            yield "bias", self._bias, self.grad_bias

    def zero_grad(self) -> None:
        """Set ``grad_weight`` and ``grad_bias`` to zero (in place)."""
        self.grad_weight[...] = 0
        if self.grad_bias is not None:
            self.grad_bias[...] = 0

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters under PyTorch's keys ``'weight'`` and ``'bias'``.

        ``'bias'`` is absent for a layer without bias, as in PyTorch.
        """
        state = {"weight": self._weight.copy()}
        if self._bias is not None:
            state["bias"] = self._bias.copy()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy ``state_dict['weight']`` (and ``['bias']``) into the parameters.

        Values may be any real array-like (NumPy arrays, lists, CPU torch
        tensors); they are cast to the layer's dtype. Keys and shapes must
        match exactly; nothing is changed unless everything is valid.

        Raises
        ------
        TypeError
            ``state_dict`` is not a mapping, or a value is not a real numeric array.
        ValueError
            Missing or unexpected keys, or a shape that is not the parameter's.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping with keys 'weight' and 'bias', "
                f"got {type(state_dict).__name__}"
            )
        expected = {name: value for name, value, _ in self.parameters()}
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        if missing or unexpected:
            hint = ""
            if "bias" in unexpected:
                hint = " (this layer was built with bias=False)"
            elif "bias" in missing:
                hint = " (this layer has a bias; the state comes from a layer without one?)"
            raise ValueError(
                f"state_dict for {type(self).__name__} must have keys {sorted(expected)}; "
                f"missing {missing}, unexpected {unexpected}{hint}"
            )
        values = {key: self._checked(key, state_dict[key], f"state_dict[{key!r}]")
                  for key in expected}
        for key, value in values.items():
            np.copyto(expected[key], value, casting="same_kind")

    def _checked(self, key: str, value: Any, name: str) -> np.ndarray:
        """``value`` as a real array of parameter ``key``'s shape; errors say ``name``."""
        target = self._weight if key == "weight" else self._bias
        value = as_float_array(value, name)
        layout = "weight layout " + (
            "(C_in, C_out/groups, *kernel_size)" if self.transposed
            else "(C_out, C_in/groups, *kernel_size)"
        ) if key == "weight" else "(C_out,)"
        check_array_shape(value.shape, target.shape, name, f"{type(self).__name__} {key}, {layout}")
        return value

    # ---------------------------------------------------------------- passes
    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(x, *args, **kwargs)

    def _context(self) -> ConvContext:
        if self._ctx is None:
            raise ValueError(
                f"{type(self).__name__}.backward called before forward: call forward(x) first "
                "(backward uses the context of the most recent forward pass)"
            )
        return self._ctx

    def backward(self, dy: Any) -> np.ndarray:
        """Back-propagate δ = dL/dy through the most recent forward pass.

        Adds dW to ``grad_weight`` and db to ``grad_bias`` (accumulating,
        cast to the layer's dtype) and returns dx.

        Parameters
        ----------
        dy : array_like
            δ, exactly the shape of the last forward output.

        Returns
        -------
        dx : ndarray
            The shape of the last forward input.

        Raises
        ------
        ValueError
            Called before forward, or ``dy`` has the wrong shape.
        """
        grads = conv_backward(dy, self._context())
        self.grad_weight += grads.weight
        if self.grad_bias is not None:
            self.grad_bias += grads.bias
        return grads.input

    # ---------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        """The arguments that differ from the defaults, as PyTorch's ``extra_repr``."""
        parts = [
            f"{self.in_channels}, {self.out_channels}",
            f"kernel_size={self.kernel_size}",
            f"stride={self.stride}",
        ]
        if isinstance(self.padding, str) or any(
            p != 0 and p != (0, 0) for p in self.padding
        ):
            parts.append(f"padding={self.padding!r}")
        if any(d != 1 for d in self.dilation):
            parts.append(f"dilation={self.dilation}")
        if self.transposed and any(self.output_padding):
            parts.append(f"output_padding={self.output_padding}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self._bias is None:
            parts.append("bias=False")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode!r}")
        if self.dtype != np.float32:
            parts.append(f"dtype={self.dtype.name}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
class Conv(_ConvLayer):
    """N-d convolution layer: ``y = conv(x, weight, bias)`` with parameters and gradients.

    Channels first, any spatial rank r >= 1: r is ``len(kernel_size)`` for a
    tuple ``kernel_size``, else ``ndim``. Arguments as in
    :func:`im2colbp.conv` and ``torch.nn.Conv2d``.

    Parameters
    ----------
    in_channels, out_channels : int
        C_in and C_out, positive and divisible by ``groups``.
    kernel_size : int or tuple of int
        K; a tuple fixes r.
    stride, dilation : int or tuple of int, optional
        S and D, positive.
    padding : int, tuple of int, tuple of (int, int), 'valid' or 'same', optional
        ``'same'`` gives ``O = ceil(I / S)`` and, unlike PyTorch, is allowed
        with stride > 1 (TensorFlow/JAX rule).
    groups : int, optional
        G.
    bias : bool, optional
        Whether the layer has a bias.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, optional
    ndim : int, optional
        r, needed when ``kernel_size`` is an int.
    dtype : float32 or float64, optional
        Of the parameters and gradients (None means float32).
    rng : None, int or numpy.random.Generator, optional
        Source of the initial values (see :meth:`reset_parameters`); an int
        seed makes them reproducible.

    Attributes
    ----------
    weight : ndarray, shape (C_out, C_in/G, *K)
    bias : ndarray, shape (C_out,), or None
    grad_weight, grad_bias : ndarray
        Accumulated gradients, shaped and typed like the parameters.

    See Also
    --------
    Conv1d, Conv2d, Conv3d : the rank fixed, PyTorch's positional order.
    im2colbp.conv_forward, im2colbp.conv_backward : what forward and backward call.

    Notes
    -----
    Forward returns ``(N, C_out, *O)`` (``(C_out, *O)`` for unbatched input)
    with ``O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1``. The
    context keeps references to x and to ``weight`` (and the column matrix
    when it is small): modify neither in place between
    forward and backward (update the weights after backward, as optimisers
    do). Backward pairs with the most recent forward only; calling it again
    accumulates the same gradients a second time.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import Conv
    >>> layer = Conv(3, 8, (3, 3), stride=2, padding=1, rng=0)
    >>> layer
    Conv(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
    >>> layer.weight.shape, layer.weight.dtype
    ((8, 3, 3, 3), dtype('float32'))
    >>> x = np.ones((2, 3, 7, 7), dtype=np.float32)
    >>> y = layer(x)
    >>> y.shape
    (2, 8, 4, 4)
    >>> dx = layer.backward(np.ones_like(y))        # grad_bias: 2 samples x 16 positions
    >>> dx.shape, layer.grad_bias[:3]
    ((2, 3, 7, 7), array([32., 32., 32.], dtype=float32))
    >>> Conv(4, 4, 5, ndim=1, padding="same", groups=2)(np.ones((4, 10))).shape   # unbatched
    (4, 10)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        *,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        ndim: Optional[int] = None,
        dtype: Any = np.float32,
        rng: Any = None,
    ) -> None:
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, ndim, dtype, rng)

    def forward(self, x: Any) -> np.ndarray:
        """``y = conv(x, weight, bias)``; keeps the context for :meth:`backward`.

        Parameters
        ----------
        x : array_like, shape (N, C_in, *I) or (C_in, *I)

        Returns
        -------
        y : ndarray, shape (N, C_out, *O) or (C_out, *O)
        """
        y, self._ctx = conv_forward(
            x, self._weight, self._bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, groups=self.groups, padding_mode=self.padding_mode,
        )
        return y


class _ConvNd(Conv):
    """Conv with the rank fixed by the subclass and PyTorch's positional argument order."""

    _fixed_rank: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: Any = np.float32,
        rng: Any = None,
    ) -> None:
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, self._fixed_rank, dtype, rng)


class Conv1d(_ConvNd):
    """1-d convolution layer (``torch.nn.Conv1d``'s arguments and positional order).

    See :class:`Conv` for the parameters. Input ``(N, C_in, L)`` or ``(C_in, L)``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import Conv1d
    >>> layer = Conv1d(2, 4, 3, 2, 1, rng=0)     # stride 2, padding 1
    >>> layer
    Conv1d(2, 4, kernel_size=(3,), stride=(2,), padding=(1,))
    >>> layer(np.zeros((5, 2, 9))).shape
    (5, 4, 5)
    """

    _fixed_rank = 1


class Conv2d(_ConvNd):
    """2-d convolution layer (``torch.nn.Conv2d``'s arguments and positional order).

    See :class:`Conv` for the parameters. Input ``(N, C_in, H, W)`` or ``(C_in, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import Conv2d
    >>> layer = Conv2d(3, 6, 3, padding="same", groups=3, bias=False, rng=0)
    >>> layer
    Conv2d(3, 6, kernel_size=(3, 3), stride=(1, 1), padding='same', groups=3, bias=False)
    >>> layer.weight.shape                        # (C_out, C_in/groups, K, K)
    (6, 1, 3, 3)
    >>> layer(np.zeros((1, 3, 5, 5), dtype=np.float32)).shape
    (1, 6, 5, 5)
    """

    _fixed_rank = 2


class Conv3d(_ConvNd):
    """3-d convolution layer (``torch.nn.Conv3d``'s arguments and positional order).

    See :class:`Conv` for the parameters. Input ``(N, C_in, D, H, W)`` or ``(C_in, D, H, W)``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import Conv3d
    >>> layer = Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1), padding_mode="circular", rng=0)
    >>> layer.kernel_size, layer.padding, layer.padding_mode
    ((1, 3, 3), (0, 1, 1), 'circular')
    >>> layer(np.zeros((1, 1, 4, 6, 6))).shape
    (1, 2, 4, 6, 6)
    """

    _fixed_rank = 3


# --------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------
class ConvTranspose(_ConvLayer):
    """N-d transposed-convolution layer: ``y = conv_transpose(x, weight, bias)``.

    The adjoint of a convolution as a function of its input (the layer that
    upsamples in decoders and GAN generators). Any spatial rank r >= 1, from
    a tuple ``kernel_size`` or ``ndim``. Arguments as in
    :func:`im2colbp.conv_transpose` and ``torch.nn.ConvTranspose2d``.

    Parameters
    ----------
    in_channels, out_channels : int
        C_in and C_out, positive and divisible by ``groups``.
    kernel_size : int or tuple of int
    stride, dilation : int or tuple of int, optional
    padding : int, tuple of int, tuple of (int, int) or 'valid', optional
        The padding of the forward convolution: it removes samples from the
        output. ``'same'`` is refused.
    output_padding : int or tuple of int, optional
        ``0 <= output_padding < max(stride, dilation)``, added at the end.
    groups : int, optional
    bias : bool, optional
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, optional
        Unlike PyTorch (zeros only), every mode is accepted: the layer is then
        the exact adjoint of the convolution with that padding mode.
    ndim : int, optional
    dtype : float32 or float64, optional
    rng : None, int or numpy.random.Generator, optional

    Attributes
    ----------
    weight : ndarray, shape (C_in, C_out/G, *K)
        PyTorch's transposed layout.
    bias : ndarray, shape (C_out,), or None
    grad_weight, grad_bias : ndarray

    See Also
    --------
    ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
    im2colbp.conv_transpose_forward, im2colbp.conv_transpose_backward

    Notes
    -----
    Output size ``O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1``.
    Initialisation uses ``fan_in = C_out/G * prod(K)`` (``weight.shape[1]``),
    exactly as PyTorch computes it for this layout.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import ConvTranspose
    >>> up = ConvTranspose(8, 3, (3, 3), stride=2, padding=1, output_padding=1, rng=0)
    >>> up
    ConvTranspose(8, 3, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1))
    >>> up.weight.shape                            # (C_in, C_out/groups, K, K)
    (8, 3, 3, 3)
    >>> y = up(np.ones((2, 8, 4, 4), dtype=np.float32))
    >>> y.shape                                    # (4-1)*2 - 2 + 2 + 1 + 1 = 8
    (2, 3, 8, 8)
    >>> up.backward(np.ones_like(y)).shape
    (2, 8, 4, 4)
    >>> up(np.ones((2, 8, 4, 4)), output_size=(7, 7)).shape   # picks output_padding 0
    (2, 3, 7, 7)
    """

    transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        *,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        ndim: Optional[int] = None,
        dtype: Any = np.float32,
        rng: Any = None,
    ) -> None:
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, ndim, dtype, rng, output_padding)

    def forward(self, x: Any, output_size: Any = None) -> np.ndarray:
        """``y = conv_transpose(x, weight, bias)``; keeps the context for :meth:`backward`.

        Parameters
        ----------
        x : array_like, shape (N, C_in, *I) or (C_in, *I)
        output_size : tuple of int, optional
            The r spatial sizes (or the full output shape) wanted. As in
            PyTorch, it replaces the layer's ``output_padding`` for this call;
            sizes no legal output_padding reaches are refused.

        Returns
        -------
        y : ndarray, shape (N, C_out, *O) or (C_out, *O)
        """
        output_padding = self.output_padding if output_size is None else 0
        y, self._ctx = conv_transpose_forward(
            x, self._weight, self._bias, stride=self.stride, padding=self.padding,
            output_padding=output_padding, dilation=self.dilation, groups=self.groups,
            output_size=output_size, padding_mode=self.padding_mode,
        )
        return y


class _ConvTransposeNd(ConvTranspose):
    """ConvTranspose with the rank fixed by the subclass and PyTorch's positional order."""

    _fixed_rank: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        output_padding: Any = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Any = 1,
        padding_mode: str = "zeros",
        *,
        dtype: Any = np.float32,
        rng: Any = None,
    ) -> None:
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, self._fixed_rank, dtype, rng, output_padding)


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution (``torch.nn.ConvTranspose1d``'s arguments and order).

    See :class:`ConvTranspose` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import ConvTranspose1d
    >>> layer = ConvTranspose1d(4, 2, 4, 2, 1, rng=0)   # stride 2, padding 1: doubles L
    >>> layer(np.zeros((1, 4, 10))).shape
    (1, 2, 20)
    """

    _fixed_rank = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed convolution (``torch.nn.ConvTranspose2d``'s arguments and order).

    See :class:`ConvTranspose` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import ConvTranspose2d
    >>> layer = ConvTranspose2d(4, 2, 3, 2, 1, 1, rng=0)   # stride 2, padding 1, output_padding 1
    >>> layer
    ConvTranspose2d(4, 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), output_padding=(1, 1))
    >>> layer(np.zeros((4, 5, 5))).shape                  # unbatched
    (2, 10, 10)
    """

    _fixed_rank = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed convolution (``torch.nn.ConvTranspose3d``'s arguments and order).

    See :class:`ConvTranspose` for the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import ConvTranspose3d
    >>> layer = ConvTranspose3d(2, 2, 2, 2, groups=2, dtype=np.float64, rng=0)
    >>> layer
    ConvTranspose3d(2, 2, kernel_size=(2, 2, 2), stride=(2, 2, 2), groups=2, dtype=float64)
    >>> layer(np.zeros((1, 2, 3, 3, 3))).shape
    (1, 2, 6, 6, 6)
    """

    _fixed_rank = 3
