"""Convolution layers: parameters, gradients and the contexts of pending forwards.

A layer owns its ``weight`` and ``bias``, the gradient buffers ``grad_weight``
and ``grad_bias``, and the contexts of its forward passes that still wait for
their backward::

    y  = layer.forward(x)       # conv_forward(x, weight, bias, ...), keeps a context
    dx = layer.backward(dy)     # conv_backward(dy, ctx); grad_weight += dW, grad_bias += db

Gradients *accumulate* (``+=``) until :meth:`~Conv.zero_grad`, as in PyTorch.

Weight sharing (a layer used several times in one loss: siamese branches,
tied or recurrent layers): every forward keeps its own context, and each
backward consumes one. Without ``ctx=``, backward takes the most recent
pending forward — last-in, first-out, the order reverse-mode
differentiation visits them::

    y1 = layer(x1); y2 = layer(x2)
    layer.backward(dy2)         # through the forward of x2
    layer.backward(dy1)         # through the forward of x1: dW(dy1, x1) + dW(dy2, x2)

For any other order, take the context explicitly::

    y1, c1 = layer.forward_with_context(x1)
    y2, c2 = layer.forward_with_context(x2)
    layer.backward(dy1, ctx=c1); layer.backward(dy2, ctx=c2)

A backward that matches no pending forward is an error (none at all, all
already back-propagated, a ``dy`` of the wrong shape, a context of another
layer or one already used). Each forward is back-propagated at most once;
to back-propagate one forward twice use the functional API
(:func:`im2colbp.conv_forward` / :func:`im2colbp.conv_backward`).

Pending contexts hold what backward needs — a copy of the weight and of the
input (or, when small, its column matrix) — so they are bounded: forwards under :func:`no_grad` keep
no context (inference, evaluation), :meth:`~Conv.clear_contexts` drops the
pending ones, and a forward beyond ``layer.max_pending`` (default 256)
pending contexts is refused with an error that says so — an inference loop
that forgot ``no_grad`` fails loudly instead of filling the memory.

Constructor arguments, weight layouts, default initialisation and the
``state_dict`` keys are PyTorch's, so weights move between ``torch.nn.Conv2d``
and :class:`Conv2d` through NumPy arrays; ``state_dict(prefix=...)`` and
``load_state_dict(..., strict=, prefix=)`` follow PyTorch's conventions, so a
whole network's ``state_dict()`` loads layer by layer. N-d throughout:
:class:`Conv` and :class:`ConvTranspose` take the spatial rank r from a tuple
``kernel_size`` (or ``ndim=``); ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d/3d``
fix it.

Deliberate differences from PyTorch (the functional API's semantics):

- ``padding='same'`` also works with stride > 1 (TensorFlow/JAX rule:
  ``O = ceil(I / S)``); PyTorch refuses it.
- ``padding`` may be ``(before, after)`` pairs per axis (asymmetric).
- Transposed layers accept every ``padding_mode``: the layer is then the exact
  adjoint of the convolution with that padding. PyTorch allows only ``'zeros'``.
- NumPy dtype promotion: a float32 layer given float64 input computes (and
  returns) float64; gradients are still accumulated in the layer's dtype.
  float16 input is computed, and returned, in float32 (at least float32
  everywhere); parameters are float32 or float64 (float16 is refused).
- Sizes are checked before anything is allocated: a layer whose parameters
  cannot fit this machine's memory (or the process's address-space limit) is
  refused with a ValueError naming the argument and the bytes.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import (
    Any,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
    cast,
)

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .calls import is_plain
from .convolution import (
    ConvContext,
    conv,
    conv_backward,
    conv_forward,
    conv_transpose,
    conv_transpose_forward,
)
from .geometry import (
    MAX_ELEMENTS,
    Padding,
    as_float_array,
    as_int,
    as_int_tuple,
    as_output_padding,
    check_array_shape,
    is_int,
    parse_padding,
    parse_padding_mode,
)
from .memory import memory_bound

__all__ = [
    "Conv",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "IncompatibleKeys",
    "LayerContext",
    "no_grad",
]

#: ``layer.padding``: the string given, r ints (symmetric) or r (before, after) pairs.
PaddingArg = Union[str, Tuple[int, ...], Tuple[Tuple[int, int], ...]]
IntOrTuple = Union[int, Sequence[int]]
PaddingLike = Padding  # what the constructors accept (see im2colbp.conv)
RngLike = Union[None, int, np.random.Generator]


# --------------------------------------------------------------------------
# no_grad: forwards that keep no context
# --------------------------------------------------------------------------
_GRAD_STATE = threading.local()


def _grad_enabled() -> bool:
    return getattr(_GRAD_STATE, "enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Within this block (in this thread), layer forwards keep no context.

    For inference and evaluation: nothing is kept for backward (no copy of
    the input or the weight, no column matrix), so a loop over many batches uses no
    memory beyond each call, and the layers' ``pending`` contexts do not
    grow. A ``backward`` needs a forward made outside the block. Works as a
    decorator too. Like ``torch.no_grad``.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.layer import Conv2d, no_grad
    >>> layer = Conv2d(1, 2, 3, rng=0)
    >>> with no_grad():
    ...     y = layer(np.ones((4, 1, 5, 5), dtype=np.float32))
    >>> y.shape, len(layer.pending)
    ((4, 2, 3, 3), 0)
    """
    previous = _grad_enabled()
    _GRAD_STATE.enabled = False
    try:
        yield
    finally:
        _GRAD_STATE.enabled = previous


class LayerContext:
    """One forward pass of a layer, waiting for its backward.

    Returned by :meth:`Conv.forward_with_context` (and kept by every forward
    in the layer's ``pending`` tuple). Pass it as ``backward(dy, ctx=...)``
    to back-propagate that forward out of the last-in, first-out order.

    Attributes
    ----------
    number : int
        1 for the layer's first forward, 2 for the next, ...
    input_shape, output_shape : tuple of int
        x.shape and y.shape of that forward.
    conv_context : ConvContext
        The functional context (:func:`im2colbp.conv_forward`'s).
    state : {'pending', 'used', 'cleared'}
    """

    __slots__ = ("conv_context", "input_shape", "number", "output_shape", "state", "_owner")

    def __init__(self, owner: object, number: int, conv_context: ConvContext,
                 input_shape: Tuple[int, ...], output_shape: Tuple[int, ...]) -> None:
        self._owner = owner
        self.number = number
        self.conv_context = conv_context
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.state = "pending"

    def __repr__(self) -> str:
        return (f"LayerContext(forward #{self.number}, x {self.input_shape} -> "
                f"y {self.output_shape}, {self.state})")


class IncompatibleKeys(NamedTuple):
    """What :meth:`Conv.load_state_dict` returns, as PyTorch's ``_IncompatibleKeys``."""

    missing_keys: List[str]
    unexpected_keys: List[str]


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
    if isinstance(padding, str) or isinstance(pairs, str):
        return padding
    if all(before == after for before, after in pairs):
        return tuple(before for before, _ in pairs)
    return tuple(pairs)


_DTYPE_MESSAGE = ("dtype must be a NumPy floating dtype of at least 32 bits (float32, "
                  "float64); float16 inputs are computed in float32 anyway")


def _float_dtype(dtype: Any) -> np.dtype:
    if dtype is None:
        return np.dtype(np.float32)
    try:
        result = np.dtype(dtype)
    except Exception:  # NumPy raises TypeError, ValueError, ... for nonsense like ('f4', -1)
        raise TypeError(f"{_DTYPE_MESSAGE}, got {dtype!r}") from None
    if result.kind != "f" or result.itemsize < 4 or result.shape or result.fields:
        raise TypeError(f"{_DTYPE_MESSAGE}, got {dtype!r}")
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


def _format_bytes(nbytes: int) -> str:
    if nbytes < 2**30:
        return f"{nbytes:,} bytes ({nbytes / 2**20:.1f} MiB)"
    if nbytes < 2**60:
        return f"{nbytes:,} bytes ({nbytes / 2**30:.1f} GiB)"
    return f"about {float(nbytes):.3g} bytes"


# --------------------------------------------------------------------------
# the shared machinery
# --------------------------------------------------------------------------
class _ConvLayer:
    """Parameters, gradients, pending contexts, state_dict and repr shared by all layers."""

    transposed = False

    #: The most forward contexts a layer keeps waiting for backward; one more
    #: forward is refused (None: no bound). Raise it for long unrolled graphs.
    max_pending: Optional[int] = 256

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
        self._check_parameter_size(weight_shape)
        self._weight = np.zeros(weight_shape, dtype=self.dtype)
        self._bias = np.zeros(self.out_channels, dtype=self.dtype) if has_bias else None
        self.grad_weight = np.zeros_like(self._weight)
        self.grad_bias = None if self._bias is None else np.zeros_like(self._bias)
        self._pending: List[LayerContext] = []
        self._forwards = 0
        self.reset_parameters(rng)

    def _check_parameter_size(self, weight_shape: Tuple[int, ...]) -> None:
        """Refuse, before allocating, parameters that cannot fit in memory."""
        elements = math.prod(weight_shape)
        # weight and grad_weight in the layer's dtype, and the float64 draw of the
        # initialisation (the bias is at most as large as one weight row)
        nbytes = elements * (2 * self.dtype.itemsize + 8)
        limit, what = memory_bound()
        too_many = elements > MAX_ELEMENTS
        if not too_many and (limit <= 0 or nbytes <= limit):
            return
        factors = {
            "in_channels": self.in_channels // (1 if self.transposed else self.groups),
            "out_channels": self.out_channels // (self.groups if self.transposed else 1),
            "kernel_size": math.prod(self.kernel_size),
        }
        largest = max(factors.values())
        names = [f"{name}={getattr(self, name)!r}" for name, factor in factors.items()
                 if factor == largest]
        culprits = " and ".join(names) + (" make" if len(names) > 1 else " makes")
        bound = (f"the library's limit of {MAX_ELEMENTS:,} elements per array" if too_many
                 else f"{what}, {_format_bytes(limit or 0)}")
        shape = weight_shape if len(str(weight_shape)) <= 80 else f"of rank {len(weight_shape)}"
        count = f"{elements:,}" if elements < 10**20 else f"about {float(elements):.3g}"
        raise ValueError(
            f"{type(self).__name__}: {culprits} the weight {shape} too large: {count} "
            f"{self.dtype.name} elements, {_format_bytes(elements * self.dtype.itemsize)}; "
            f"{_format_bytes(nbytes)} with grad_weight and the initialisation, more than {bound}"
        )

    # ---------------------------------------------------------------- parameters
    @property
    def weight(self) -> np.ndarray:
        """The filters: ``(C_out, C_in/G, *K)``, or ``(C_in, C_out/G, *K)`` when transposed.

        Assigning copies the new values into the existing array (shape checked),
        so references held by optimisers stay valid.
        """
        return self._weight

    @weight.setter
    def weight(self, value: ArrayLike) -> None:
        np.copyto(self._weight, self._checked("weight", value, "weight"), casting="same_kind")

    @property
    def bias(self) -> Optional[np.ndarray]:
        """``(C_out,)``, or None for a layer built with ``bias=False``."""
        return self._bias

    @bias.setter
    def bias(self, value: ArrayLike) -> None:
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

    def reset_parameters(self, rng: RngLike = None) -> None:
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
        if self._bias is not None and self.grad_bias is not None:  # both or neither
            yield "bias", self._bias, self.grad_bias

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, np.ndarray]]:
        """Yield ``(prefix + name, value)``, as ``torch.nn.Module.named_parameters``.

        The names are the ``state_dict`` keys; the values are the layer's own
        arrays (not copies).

        Examples
        --------
        >>> from im2colbp.layer import Conv2d
        >>> [(name, value.shape) for name, value in Conv2d(3, 8, 3).named_parameters("conv1.")]
        [('conv1.weight', (8, 3, 3, 3)), ('conv1.bias', (8,))]
        """
        prefix = _as_prefix(prefix)
        for name, value, _ in self.parameters():
            yield prefix + name, value

    def zero_grad(self) -> None:
        """Set ``grad_weight`` and ``grad_bias`` to zero (in place)."""
        self.grad_weight[...] = 0
        if self.grad_bias is not None:
            self.grad_bias[...] = 0

    def state_dict(self, *, destination: Optional[Dict[str, np.ndarray]] = None,
                   prefix: str = "") -> Dict[str, np.ndarray]:
        """Copies of the parameters under PyTorch's keys ``prefix + 'weight'`` / ``'bias'``.

        ``'bias'`` is absent for a layer without bias, as in PyTorch. With
        ``destination``, the entries are added to that dict (which is returned),
        so several layers fill one state dict (``prefix='conv1.'`` ...).

        Examples
        --------
        >>> from im2colbp.layer import Conv1d
        >>> state = Conv1d(1, 2, 3).state_dict(prefix="encoder.0.")
        >>> sorted(state)
        ['encoder.0.bias', 'encoder.0.weight']
        """
        prefix = _as_prefix(prefix)
        state: Dict[str, np.ndarray] = {} if destination is None else destination
        for name, value, _ in self.parameters():
            state[prefix + name] = value.copy()
        return state

    def load_state_dict(self, state_dict: Mapping[str, ArrayLike], strict: bool = True, *,
                        prefix: str = "") -> IncompatibleKeys:
        """Copy ``state_dict[prefix + 'weight']`` (and ``'bias'``) into the parameters.

        Values may be any real array-like (NumPy arrays, lists, CPU torch
        tensors); they are cast to the layer's dtype. PyTorch's conventions:

        - ``prefix`` selects this layer's entries in a whole network's state
          dict (``'conv1.'``, ``'features.0.'``); keys that do not start with
          it belong to other layers and are ignored.
        - ``strict=True``: the keys under ``prefix`` must be exactly this
          layer's; ``strict=False`` loads what is there and reports the rest.
        - A shape that is not the parameter's is an error either way.

        Nothing is changed unless everything is valid.

        Parameters
        ----------
        state_dict : mapping of str to array_like
        strict : bool, optional
        prefix : str, optional

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, full keys (with the prefix);
            both empty after a strict load.

        Raises
        ------
        TypeError
            ``state_dict`` is not a mapping, or a value is not a real numeric array.
        ValueError
            Under ``strict``, missing or unexpected keys; a shape that is not
            the parameter's.

        Examples
        --------
        >>> import numpy as np
        >>> from im2colbp.layer import Conv1d
        >>> network = {"0.weight": np.ones((2, 1, 3)), "0.bias": np.zeros(2),
        ...            "2.weight": np.ones((4, 2, 1))}
        >>> first = Conv1d(1, 2, 3)
        >>> first.load_state_dict(network, prefix="0.")
        IncompatibleKeys(missing_keys=[], unexpected_keys=[])
        >>> first.weight[0, 0]
        array([1., 1., 1.], dtype=float32)
        >>> Conv1d(2, 4, 1).load_state_dict(network, strict=False, prefix="2.")
        IncompatibleKeys(missing_keys=['2.bias'], unexpected_keys=[])
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping with keys 'weight' and 'bias', "
                f"got {type(state_dict).__name__}"
            )
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"strict must be True or False, got {strict!r}")
        prefix = _as_prefix(prefix)
        expected = {prefix + name: (name, value) for name, value, _ in self.parameters()}
        # this layer's entries: all of them without a prefix, else those under it
        own = [key for key in state_dict
               if not prefix or (isinstance(key, str) and key.startswith(prefix))]
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in own if key not in expected]
        if strict and (missing or unexpected):
            raise ValueError(
                f"state_dict for {type(self).__name__} must have keys {sorted(expected)}; "
                f"missing {missing}, unexpected {unexpected}"
                f"{self._load_hint(state_dict, prefix, missing, unexpected)}"
            )
        values = {name: self._checked(name, state_dict[key], f"state_dict[{key!r}]")
                  for key, (name, _) in expected.items() if key in state_dict}
        for name, value in values.items():
            target = self._weight if name == "weight" else self._bias
            if target is not None:
                np.copyto(target, value, casting="same_kind")
        return IncompatibleKeys(missing, unexpected)

    def _load_hint(self, state_dict: Mapping[str, Any], prefix: str, missing: List[str],
                   unexpected: List[Any]) -> str:
        weight_key, bias_key = prefix + "weight", prefix + "bias"
        if weight_key in missing:
            nested = sorted({key[:-len("weight")] for key in state_dict
                             if isinstance(key, str) and key.startswith(prefix)
                             and key.endswith(".weight")})
            if nested:
                shown = ", ".join(repr(p) for p in nested[:4]) + (", ..." if len(nested) > 4
                                                                   else "")
                return (f" (the keys are nested, as in a network's state_dict: pass the layer's "
                        f"prefix, one of {shown}, as load_state_dict(state, prefix=...))")
            return ""
        if bias_key in unexpected:
            return " (this layer was built with bias=False)"
        if bias_key in missing:
            return (" (this layer has a bias but the state has none, as from a layer built "
                    "with bias=False: build this layer with bias=False, or pass strict=False "
                    "to keep its current bias)")
        if unexpected and prefix == "":
            return (" (if the state is a whole network's, pass this layer's prefix, e.g. "
                    "prefix='conv1.')")
        return ""

    def _checked(self, key: str, value: Any, name: str) -> np.ndarray:
        """``value`` as a real array of parameter ``key``'s shape; errors say ``name``."""
        target = self._weight if key == "weight" else self._bias
        if target is None:  # pragma: no cover - callers only ask for existing parameters
            raise ValueError(f"{type(self).__name__} has no {key}")
        value = as_float_array(value, name)
        layout = "weight layout " + (
            "(C_in, C_out/groups, *kernel_size)" if self.transposed
            else "(C_out, C_in/groups, *kernel_size)"
        ) if key == "weight" else "(C_out,)"
        check_array_shape(value.shape, target.shape, name,
                          f"{type(self).__name__} {key}, {layout}")
        return value

    # ---------------------------------------------------------------- passes
    def forward(self, x: ArrayLike, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - defined by Conv and ConvTranspose

    def __call__(self, x: ArrayLike, *args: Any, **kwargs: Any) -> np.ndarray:
        return self.forward(x, *args, **kwargs)

    def _run(self, x: ArrayLike, keep: bool, **kwargs: Any
             ) -> Tuple[np.ndarray, Optional[ConvContext]]:
        """The functional forward: ``(y, ctx)``, ctx None when ``keep`` is False."""
        raise NotImplementedError  # pragma: no cover - defined by Conv and ConvTranspose

    def _forward(self, x: ArrayLike, **kwargs: Any) -> Tuple[np.ndarray, Optional[LayerContext]]:
        if not _grad_enabled():
            return self._run(x, False, **kwargs)[0], None
        limit = self.max_pending
        if limit is not None and len(self._pending) >= limit:
            raise ValueError(
                f"{type(self).__name__}.forward: {len(self._pending)} forward passes are "
                f"already waiting for backward (layer.max_pending = {limit}); each holds a "
                "copy of its input and of the weight. For inference run the forwards under "
                "`with im2colbp.layer.no_grad():`, call backward for each forward, or drop "
                "them with layer.clear_contexts(); for longer unrolled graphs raise "
                "layer.max_pending"
            )
        y, ctx = self._run(x, True, **kwargs)
        if ctx is None:  # pragma: no cover - _run keeps a context when asked
            raise RuntimeError("the forward pass returned no context")
        self._forwards += 1
        x_shape = x.shape if type(x) is np.ndarray else tuple(np.shape(x))
        record = LayerContext(self, self._forwards, ctx, x_shape, y.shape)
        self._pending.append(record)
        return y, record

    def forward_with_context(self, x: ArrayLike, **kwargs: Any
                             ) -> Tuple[np.ndarray, LayerContext]:
        """``forward`` that also returns its context, for ``backward(dy, ctx=...)``.

        The context is pending like any forward's: backward without ``ctx=``
        may consume it too, in last-in, first-out order.

        Examples
        --------
        >>> import numpy as np
        >>> from im2colbp.layer import Conv1d
        >>> layer = Conv1d(1, 1, 2, bias=False, dtype=np.float64, rng=0)
        >>> y1, first = layer.forward_with_context(np.array([[1.0, 0.0, 0.0]]))
        >>> y2, second = layer.forward_with_context(np.array([[0.0, 0.0, 1.0]]))
        >>> first
        LayerContext(forward #1, x (1, 3) -> y (1, 2), pending)
        >>> _ = layer.backward(np.ones((1, 2)), ctx=first)   # first-in, first-out
        >>> layer.grad_weight                                 # dW from x1 only
        array([[[1., 0.]]])
        >>> _ = layer.backward(np.ones((1, 2)))               # the one left: x2
        >>> layer.grad_weight
        array([[[1., 1.]]])
        """
        if not _grad_enabled():
            raise ValueError(
                f"{type(self).__name__}.forward_with_context called under no_grad(): "
                "no context is kept there; call it outside the no_grad() block"
            )
        y, record = self._forward(x, **kwargs)
        if record is None:  # pragma: no cover - grad is enabled here
            raise RuntimeError("no context was recorded")
        return y, record

    @property
    def pending(self) -> Tuple[LayerContext, ...]:
        """The forwards waiting for backward, oldest first (backward takes the last)."""
        return tuple(self._pending)

    def clear_contexts(self) -> int:
        """Drop every pending forward context (their inputs can be freed); return how many.

        A later ``backward`` without a new forward is then an error. The
        accumulated gradients are kept (:meth:`zero_grad` clears those).
        """
        count = len(self._pending)
        for record in self._pending:
            record.state = "cleared"
        self._pending.clear()
        return count

    def _select(self, shape: Tuple[int, ...], ctx: Optional[LayerContext]) -> LayerContext:
        """The pending forward this backward goes through, or a clear error."""
        name = type(self).__name__
        if ctx is not None:
            if not isinstance(ctx, LayerContext):
                raise TypeError(
                    f"ctx must be a LayerContext from this layer's forward_with_context, "
                    f"got {type(ctx).__name__}"
                )
            if ctx._owner is not self:
                raise ValueError(
                    f"ctx is {ctx!r} of another layer; pass a context of this {name}"
                )
            if ctx.state != "pending":
                why = ("was already back-propagated (each forward is back-propagated once)"
                       if ctx.state == "used" else "was dropped by clear_contexts()")
                raise ValueError(f"{name}.backward: ctx, forward #{ctx.number}, {why}")
            record = ctx
            given = True
        else:
            if not self._pending:
                if self._forwards == 0:
                    raise ValueError(
                        f"{name}.backward called before forward: call forward(x) first "
                        "(backward goes through a pending forward pass)"
                    )
                raise ValueError(
                    f"{name}.backward: no forward is waiting for backward — all "
                    f"{self._forwards} were back-propagated (each forward once) or cleared; "
                    "call forward again"
                )
            record = self._pending[-1]
            given = False
        if shape != record.output_shape:
            which = (f"the output of forward #{record.number}, the ctx given" if given else
                     f"the output of forward #{record.number}, the most recent pending one: "
                     "backward goes last-in, first-out")
            others = [r.number for r in self._pending
                      if r is not record and r.output_shape == shape]
            hint = ""
            if others:
                hint = (f"; pending forward #{others[-1]} has that output shape: take its "
                        "context from forward_with_context and pass backward(dy, ctx=...)")
            raise ValueError(f"dy must have shape {record.output_shape} ({which}), "
                             f"got {shape}{hint}")
        return record

    def backward(self, dy: ArrayLike, ctx: Optional[LayerContext] = None) -> np.ndarray:
        """Back-propagate δ = dL/dy through one pending forward pass.

        Without ``ctx``, through the most recent pending forward (last-in,
        first-out: the order reverse-mode differentiation produces when a
        layer is used several times); with ``ctx`` (from
        :meth:`forward_with_context`), through that one. The forward is then
        no longer pending. Adds dW to ``grad_weight`` and db to ``grad_bias``
        (accumulating, cast to the layer's dtype) and returns dx.

        Parameters
        ----------
        dy : array_like
            δ, exactly the shape of that forward's output.
        ctx : LayerContext, optional

        Returns
        -------
        dx : ndarray
            The shape of that forward's input.

        Raises
        ------
        ValueError
            No forward is pending, ``dy`` has the wrong shape, or ``ctx`` is
            of another layer or was already used; nothing is accumulated.
        TypeError
            ``ctx`` is not a :class:`LayerContext`, ``dy`` is not numeric.
        """
        # a plain float array is what the conversion would return (conv_backward
        # converts δ again anyway when its dtype differs from the forward's)
        dy_array = cast(np.ndarray, dy) if is_plain(dy) else as_float_array(dy, "dy")
        record = self._select(dy_array.shape, ctx)
        grads = conv_backward(dy_array, record.conv_context)
        self._pending.remove(record)
        record.state = "used"
        if grads.input is None or grads.weight is None:  # pragma: no cover - all are requested
            raise RuntimeError("conv_backward left out a requested gradient")
        self.grad_weight += grads.weight
        if self.grad_bias is not None and grads.bias is not None:
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


def _as_prefix(prefix: Any) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string such as 'conv1.', got {prefix!r}")
    return prefix


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
    pending : tuple of LayerContext
        The forwards waiting for backward, oldest first.
    max_pending : int or None
        At most this many pending forwards (default 256); one more forward
        is refused. None: no bound.

    See Also
    --------
    Conv1d, Conv2d, Conv3d : the rank fixed, PyTorch's positional order.
    im2colbp.conv_forward, im2colbp.conv_backward : what forward and backward call.

    Notes
    -----
    Forward returns ``(N, C_out, *O)`` (``(C_out, *O)`` for unbatched input)
    with ``O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1``. Each
    forward keeps a context with copies of what backward needs (the weight,
    and x or its column matrix): backward computes the gradients at the point
    that forward evaluated, even when the weights are updated in between (as
    optimisers do). Backward consumes the pending forwards last-in, first-out, or the
    one given as ``ctx=`` (see the module docstring: weight sharing); under
    :func:`no_grad` forwards keep nothing. float16 input is computed and
    returned in float32.

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
        kernel_size: IntOrTuple,
        *,
        stride: IntOrTuple = 1,
        padding: PaddingLike = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        ndim: Optional[int] = None,
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
    ) -> None:
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, ndim, dtype, rng)

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``y = conv(x, weight, bias)``; keeps a context for :meth:`backward`.

        The context joins the layer's ``pending`` forwards (none under
        :func:`no_grad`).

        Parameters
        ----------
        x : array_like, shape (N, C_in, *I) or (C_in, *I)

        Returns
        -------
        y : ndarray, shape (N, C_out, *O) or (C_out, *O)
            The dtype NumPy promotion gives (float16 input: float32).
        """
        return self._forward(x)[0]

    def _run(self, x: ArrayLike, keep: bool, **kwargs: Any
             ) -> Tuple[np.ndarray, Optional[ConvContext]]:
        # positionally: (stride, padding, dilation, groups) as conv's signature orders them
        if not keep:
            return conv(x, self._weight, self._bias, self.stride, self.padding, self.dilation,
                        self.groups, padding_mode=self.padding_mode), None
        return conv_forward(x, self._weight, self._bias, self.stride, self.padding,
                            self.dilation, self.groups, padding_mode=self.padding_mode)


class _ConvNd(Conv):
    """Conv with the rank fixed by the subclass and PyTorch's positional argument order."""

    _fixed_rank: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingLike = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
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
    pending : tuple of LayerContext
    max_pending : int or None
        As for :class:`Conv`.

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
        kernel_size: IntOrTuple,
        *,
        stride: IntOrTuple = 1,
        padding: PaddingLike = 0,
        output_padding: IntOrTuple = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrTuple = 1,
        padding_mode: str = "zeros",
        ndim: Optional[int] = None,
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
    ) -> None:
        self._setup(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                    bias, padding_mode, ndim, dtype, rng, output_padding)

    def forward(self, x: ArrayLike, output_size: Optional[Sequence[int]] = None) -> np.ndarray:
        """``y = conv_transpose(x, weight, bias)``; keeps a context for :meth:`backward`.

        The context joins the layer's ``pending`` forwards (none under
        :func:`no_grad`).

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
        return self._forward(x, output_size=output_size)[0]

    def _run(self, x: ArrayLike, keep: bool, **kwargs: Any
             ) -> Tuple[np.ndarray, Optional[ConvContext]]:
        output_size = kwargs.pop("output_size", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        output_padding = self.output_padding if output_size is None else 0
        geometry: Dict[str, Any] = dict(
            stride=self.stride, padding=self.padding, output_padding=output_padding,
            dilation=self.dilation, groups=self.groups, output_size=output_size,
            padding_mode=self.padding_mode)
        if not keep:
            return conv_transpose(x, self._weight, self._bias, **geometry), None
        return conv_transpose_forward(x, self._weight, self._bias, **geometry)


class _ConvTransposeNd(ConvTranspose):
    """ConvTranspose with the rank fixed by the subclass and PyTorch's positional order."""

    _fixed_rank: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrTuple,
        stride: IntOrTuple = 1,
        padding: PaddingLike = 0,
        output_padding: IntOrTuple = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: IntOrTuple = 1,
        padding_mode: str = "zeros",
        *,
        dtype: DTypeLike = np.float32,
        rng: RngLike = None,
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
