"""Convolution, its gradients and transposed convolution: the public functions.

Per sample n and group g, with ``cols = im2col(x)`` laid out channel-major,
``(C_in/G * prod(K), L)`` per group, and ``W_g`` the group's filters as a
``(C_out/G, C_in/G * prod(K))`` matrix::

    forward            y[n, g]  = W_g · cols[n, g]            (+ b)
    weight gradient    dW_g    += δ[n, g] · cols[n, g]ᵀ        (summed over n)
    input gradient     dx[n]    = col2im(W_gᵀ · δ[n, g])       (scatter-add)
    bias gradient      db       = Σ_{n, o} δ[n, :, o]

(The row-major textbook form ``Y = X_col·W`` is the same product transposed.)

A transposed convolution *is* the input gradient of a convolution, so it runs
the same passes with the roles of x and δ exchanged:

    conv_transpose(x, w)        = conv_grad_input(δ=x, w)
    its input gradient          = conv(δ_t, w)       (cropped to x's size)
    its weight gradient         = conv_grad_weight(δ=x, x=δ_t)

Each function validates its arguments once (:mod:`im2colbp.calls`), asks
:mod:`im2colbp.plan` for a plan and hands it to the passes of
:mod:`im2colbp.engine`. A forward context carries its plan to backward.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import engine
from .calls import (
    PLAIN_DTYPES,
    ForwardCall,
    forward_call,
    frozen_arguments,
    geometry_kwargs,
    grad_input_call,
    grad_weight_call,
    known_forward_call,
)
from .calls import batched as _batched
from .calls import unbatched as _unbatched
from .geometry import (
    ConvGeometry,
    IntOrTuple,
    Padding,
    ShapeLike,
    Wrt,
    as_float_array,
    check_array_shape,
    parse_wrt,
    result_dtype,
    size_culprit,
)
from .memory import check_allocation, format_bytes, get_memory_limit
from .plan import ConvPlan, Step, make_plan, plan_context, replan

__all__ = [
    "ConvGrads",
    "ConvContext",
    "conv",
    "conv_forward",
    "conv_backward",
    "conv_grad_input",
    "conv_grad_weight",
    "conv_grad_bias",
    "conv_transpose",
    "conv_transpose_forward",
    "conv_transpose_backward",
]

_WRT = ("input", "weight", "bias")  # the order of ConvGrads and of parse_wrt's answer


class ConvGrads(NamedTuple):
    """Gradients of a (transposed) convolution; a field is None when not requested."""

    input: Optional[np.ndarray]
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]


@dataclass(frozen=True, eq=False)
class ConvContext:
    """What backward needs from forward: the plan and the values forward saw.

    Backward computes the gradients *at the point forward evaluated*: editing
    ``x`` or ``weight`` in place between forward and backward does not change
    them. For that the context holds private copies — of the weight, and of
    ``x`` unless the column matrix is kept (``columns``: only when the whole
    batch's columns are small, at most 2 MiB and within the workspace limit;
    then x itself is not needed) or the conversion to a floating dtype
    already made a copy.

    Attributes
    ----------
    plan : ConvPlan
        Every decision of forward, and those backward will follow.
    x : ndarray or None
        (N, C_in, *I), batched: the forward input (for a transposed
        convolution, its input, which plays δ in the weight gradient). None
        when ``columns`` are kept.
    weight : ndarray
        The weight in the plan's dtype.
    columns : KeptColumns, DepthwiseKept or None
        The forward pass's columns, ``(C_in, prod(K), N, L_s)``, or the direct
        depthwise path's loaded input.
    """

    plan: ConvPlan
    x: Optional[np.ndarray]
    weight: np.ndarray
    columns: Optional[engine.Kept] = None

    @property
    def geometry(self) -> ConvGeometry:
        return self.plan.geometry

    @property
    def has_bias(self) -> bool:
        return self.plan.has_bias

    @property
    def transposed(self) -> bool:
        return self.plan.transposed


def _snapshot(call: ForwardCall, keep_x: bool) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """Private copies of x (when backward needs it) and of the weight, for the context."""
    x = None
    if keep_x:
        x = call.x if call.x_private else np.array(call.x)
    weight = call.weight if call.weight_private else np.array(call.weight)
    return x, weight


@functools.lru_cache(maxsize=1024)
def _requirement(plan: ConvPlan, results: Tuple[str, ...], steps: Tuple[Step, ...],
                 context: bool) -> Tuple[int, Tuple[Tuple[str, int], ...], Any]:
    """The bytes a call needs at once: ``(total, parts, biggest pass)``. A function of
    the plan only (plans and steps hash by identity), so it is remembered."""
    sizes = plan.result_bytes
    parts = {name: sizes[name] for name in results}
    passes = [p for step in steps for p in step.passes]
    biggest = max(passes, key=lambda p: p.scratch_bytes)
    parts["scratch"] = biggest.scratch_bytes
    if context:
        parts["weight"] = parts.get("weight", 0) + sizes["weight"]
        parts["context"] = plan.kept_bytes or sizes["input"]  # the columns, or a copy of x
    return sum(parts.values()), tuple(parts.items()), biggest


def _refuse_if_too_large(plan: ConvPlan, function: str, results: Tuple[str, ...],
                         steps: Tuple[Step, ...], context: bool = False) -> None:
    """Raise AllocationError, before anything is allocated, when the call's results,
    its context's copies and its largest pass's scratch cannot fit in memory."""
    total, items, biggest = _requirement(plan, results, steps, context)
    if total <= get_memory_limit():
        return
    parts = dict(items)
    g, window = plan.geometry, plan.geometry.window
    largest = max(parts, key=parts.__getitem__)
    if largest == "weight":
        culprit = f"the weight shape {g.weight_shape}"
    elif largest == "scratch":  # the columns, or the padded copies they are cut from
        staged = biggest.sample_bytes - biggest.column_bytes
        culprit = size_culprit(window, "columns" if biggest.column_bytes >= staged else "padded",
                               transposed=plan.transposed, channels=g.in_channels)
    else:
        array = "output" if largest == "output" else "input"
        channels = g.out_channels if (array == "output") != plan.transposed else g.in_channels
        culprit = size_culprit(window, array, transposed=plan.transposed, batch=g.batch,
                               channels=channels)
    shapes = ", ".join(f"{name} {format_bytes(n)}" for name, n in parts.items())
    check_allocation(total, culprit, f"{function} ({shapes})")


# --------------------------------------------------------------------------
# the small-call fast path: what a repeated call's setup computes, remembered
# --------------------------------------------------------------------------
#: How many forward setups (geometry, dtype and plan of one call signature) the
#: entry points remember; the oldest is forgotten first.
SETUP_CACHE_SIZE = 256

_setups: Dict[Any, Tuple[ConvGeometry, np.dtype, ConvPlan]] = {}
_setups_lock = threading.Lock()


def _setup_key(function: str, x: Any, weight: Any, bias: Any, method: Any,
               arguments: Tuple[Any, ...]) -> Any:
    """The cache key of a forward call, or None when the call is not cached.

    Only calls whose arrays are exact ndarrays of native float32/float64 (which
    the conversion returns unchanged, so nothing about their values is
    validated) and whose other arguments are plain Python values are cached;
    the key holds everything the setup depends on: the shapes and dtypes, the
    arguments, the method, the workspace limit and the forced choices.
    """
    if type(x) is not np.ndarray or type(weight) is not np.ndarray or type(method) is not str:
        return None
    if x.dtype not in PLAIN_DTYPES or weight.dtype not in PLAIN_DTYPES:
        return None
    if bias is None:
        bias_key = None
    elif type(bias) is np.ndarray and bias.dtype in PLAIN_DTYPES:
        bias_key = (bias.shape, bias.dtype.char)  # the char tells the plain dtypes apart
    else:
        return None
    try:
        key = (function, x.shape, x.dtype.char, weight.shape, weight.dtype.char, bias_key, method,
               frozen_arguments(*arguments), plan_context())
        hash(key)
    except TypeError:
        return None
    return key


def _forward_setup(function: str, x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike],
                   method: str, arguments: Tuple[Any, ...], kwargs: Dict[str, Any], *,
                   transposed: bool = False,
                   keep_for_backward: bool = True) -> Tuple[ForwardCall, ConvPlan]:
    """:func:`~im2colbp.calls.forward_call` and :func:`~im2colbp.plan.make_plan`, or, for
    a call whose signature was set up before, the same two from the remembered
    geometry, dtype and plan (``arguments``: the geometry arguments as given,
    the key; ``kwargs``: the same as keywords). Invalid calls raise every time:
    only successful setups are remembered."""
    key = _setup_key(function, x, weight, bias, method, arguments)
    known = None if key is None else _setups.get(key)
    if known is not None:
        geometry, dtype, plan = known
        return known_forward_call(geometry, dtype, x, weight, bias), plan  # type: ignore[arg-type]
    call = forward_call(x, weight, bias, kwargs, transposed=transposed)
    plan = make_plan(call.geometry, call.dtype, method=method, transposed=transposed,
                     has_bias=bias is not None, keep_for_backward=keep_for_backward)
    if key is not None:
        with _setups_lock:
            _setups[key] = (call.geometry, call.dtype, plan)
            while len(_setups) > SETUP_CACHE_SIZE:
                del _setups[next(iter(_setups))]
    return call, plan


def clear_setup_cache() -> None:
    """Forget every remembered forward setup (tests; the cache is bounded anyway)."""
    with _setups_lock:
        _setups.clear()


def _add_bias(y: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    if bias is not None:
        y += bias.reshape((1, -1) + (1,) * (y.ndim - 2))
    return y


def _sum_bias(dy_batched: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # accumulate in float64: a float32 running sum over N·∏O terms loses digits
    axes = (0,) + tuple(range(2, dy_batched.ndim))
    return dy_batched.sum(axis=axes, dtype=np.float64).astype(dtype)


def _backward_plan(ctx: ConvContext, dtype: np.dtype) -> ConvPlan:
    """The context's plan, or the same choices re-sized for a wider δ dtype (made under
    the forward's :func:`~im2colbp.plan.forced` choices, so that its routes and layouts
    read what the forward kept)."""
    plan = ctx.plan
    if dtype == plan.dtype:
        return plan
    return replan(plan, dtype)


def _delta(dy: ArrayLike, ctx: ConvContext, expected: Tuple[int, ...]) -> Tuple[np.ndarray,
                                                                               np.dtype]:
    dtype = ctx.plan.dtype
    if type(dy) is np.ndarray and dy.dtype == dtype and dy.shape == expected:
        # the common call: δ of the forward's own dtype and shape needs no conversion
        # (result_dtype(δ, weight) is the plan's dtype: the weight has it)
        return _batched(dy, ctx.geometry), dtype
    dy_array = as_float_array(dy, "dy")
    check_array_shape(dy_array.shape, expected, "dy", "the forward output's shape")
    return _batched(dy_array, ctx.geometry), result_dtype(dy_array, ctx.weight)


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def conv_forward(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> Tuple[np.ndarray, ConvContext]:
    """Convolution that also returns the context :func:`conv_backward` needs.

    Same arguments and result as :func:`conv`. The context keeps references
    to ``x`` and ``weight`` and, when the whole batch's columns are small (at
    most 2 MiB and the workspace limit), the column matrix, so that backward
    does not rebuild it.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4); w = np.ones((2, 1, 3, 3)); b = np.array([0., 1.])
    >>> y, ctx = ib.conv_forward(x, w, b, padding=1)
    >>> grads = ib.conv_backward(np.ones_like(y), ctx)
    >>> grads.bias                               # each filter's δ summed over the 4×4 outputs
    array([16., 16.])
    >>> grads.input[0, 0, 0]                     # corner pixels sit in 4 windows, 2 filters
    array([ 8., 12., 12.,  8.])
    """
    call, plan = _forward_setup(
        "conv_forward", x, weight, bias, method, (stride, padding, dilation, groups, padding_mode),
        geometry_kwargs(stride, padding, dilation, groups, padding_mode))
    _refuse_if_too_large(plan, "conv_forward", ("output",), (plan.forward,), context=True)
    keep = bool(plan.keep_columns.choice)
    y, kept = engine.forward(plan.forward, plan.dtype, call.x, call.weight, keep=keep)
    _add_bias(y, call.bias)
    # kept columns make x unnecessary; the direct path's loaded input serves only
    # backward in the same dtype, so x stays in the context beside it
    # kept columns or the direct path's loaded input are copies of x: no second copy
    saved_x, saved_weight = _snapshot(
        call, keep_x=not isinstance(kept, (engine.KeptColumns, engine.DepthwiseKept)))
    ctx = ConvContext(plan, saved_x, saved_weight, kept)
    return call.result(y), ctx


def conv(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> np.ndarray:
    """N-d convolution (cross-correlation, as in deep learning) lowered to GEMM.

    Parameters
    ----------
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
        Input, channels first; r = ``weight.ndim - 2`` spatial axes, any r >= 1.
    weight : array_like, shape (C_out, C_in/G, *K)
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of int, optional
        S and D, positive.
    padding : int, tuple of int, tuple of (int, int), 'valid' or 'same', optional
        Symmetric per axis, or ``(before, after)`` pairs. ``'same'`` gives
        ``O = ceil(I / S)`` with total padding split ``before = total // 2``
        (TensorFlow/JAX rule; works with stride > 1).
    groups : int, optional
        G; C_in and C_out must be divisible by G.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, optional
        zeros
            pad with 0
        reflect
            mirror without repeating the edge (padding must be < I)
        replicate
            repeat the edge sample
        circular
            wrap around periodically (padding may exceed I)
    method : {'auto', 'im2col', 'winograd', 'direct'}, optional
        ``'im2col'``: exactly the taught lowering. ``'winograd'``: Winograd's
        minimal filtering (3×3 kernels, stride 1, dilation 1). ``'direct'``:
        depthwise convolution (one input channel per group) without columns
        (banded GEMMs). ``'auto'``: any
        route the library has; :func:`plan_conv` says which and why. A method
        that cannot serve the geometry raises ValueError naming those that can.

    Returns
    -------
    y : ndarray, shape (N, C_out, *O) or (C_out, *O)
        ``O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1`` and
        ``y[n, f, o] = b[f] + Σ_{c in group(f), k} w[f, c, k] · x_padded[n, c, o*S + k*D]``.
        dtype: float32 stays float32, ints and bools compute in float64.

    See Also
    --------
    conv_forward, conv_backward : the same with gradients.
    im2col : the lowering.

    Notes
    -----
    Cost: ``2·N·C_out·(C_in/G)·∏K·∏O`` flops in one GEMM per chunk of samples
    and group, ``(C_out/G) × (C_in/G·∏K) × (n·∏O)``, plus an im2col copy of
    ``C_in·∏K·∏O`` elements per sample. The column buffer is bounded by
    :func:`workspace_limit`. For large kernels on small inputs a direct or FFT
    method may be cheaper; for depthwise convolution (one channel per group)
    the GEMMs degenerate to matrix-vector products.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(5.0)[None, None]             # (N=1, C=1, I=5)
    >>> ib.conv(x, np.array([[[1.0, 0.0, -1.0]]]))  # x[o] - x[o+2]
    array([[[-2., -2., -2.]]])
    >>> x = np.ones((2, 3, 7, 7)); w = np.ones((8, 3, 3, 3))
    >>> ib.conv(x, w, stride=2, padding=1).shape
    (2, 8, 4, 4)
    >>> ib.conv(x, np.ones((6, 1, 3, 3)), groups=3, padding="same").shape
    (2, 6, 7, 7)
    """
    call, plan = _forward_setup(
        "conv", x, weight, bias, method, (stride, padding, dilation, groups, padding_mode),
        geometry_kwargs(stride, padding, dilation, groups, padding_mode),
        keep_for_backward=False)
    _refuse_if_too_large(plan, "conv", ("output",), (plan.forward,))
    y, _ = engine.forward(plan.forward, plan.dtype, call.x, call.weight)
    return call.result(_add_bias(y, call.bias))


def conv_backward(dy: ArrayLike, ctx: ConvContext, *, wrt: Wrt = _WRT) -> ConvGrads:
    """Gradients of the loss w.r.t. input, weight and bias of a forward pass.

    Parameters
    ----------
    dy : array_like, shape of the forward output
        δ = dL/dy.
    ctx : ConvContext
        From :func:`conv_forward` (or :func:`conv_transpose_forward`).
    wrt : tuple of {'input', 'weight', 'bias'}, optional
        Which gradients to compute; the others are None and cost nothing.

    Returns
    -------
    ConvGrads
        ``(input, weight, bias)``, shaped like x, weight and bias; ``bias``
        is None when the forward pass had no bias.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> y, ctx = ib.conv_forward(np.ones((1, 2, 3)), np.ones((1, 2, 2)))
    >>> ib.conv_backward(np.ones_like(y), ctx, wrt=("weight",))
    ConvGrads(input=None, weight=array([[[2., 2.],
            [2., 2.]]]), bias=None)
    """
    if not isinstance(ctx, ConvContext):
        raise TypeError(
            f"ctx must be the ConvContext returned by forward, got {type(ctx).__name__}"
        )
    if ctx.transposed:
        return conv_transpose_backward(dy, ctx, wrt=wrt)
    want_input, want_weight, want_bias = (True, True, True) if wrt is _WRT else parse_wrt(wrt)
    dyb, dtype = _delta(dy, ctx, ctx.geometry.output_shape)
    plan = _backward_plan(ctx, dtype)
    _refuse_if_too_large(plan, "conv_backward", ("input", "weight"),
                         (plan.input_gradient, plan.weight_gradient))
    dw = dx = None
    if want_weight:
        dw = engine.weight_gradient(plan.weight_gradient, dtype, ctx.x, dyb, kept=ctx.columns)
    if want_input:
        dx = _unbatched(engine.adjoint(plan.input_gradient, dtype,
                                       ctx.weight.astype(dtype, copy=False), dyb), ctx.geometry)
    db = _sum_bias(dyb, dtype) if (want_bias and ctx.has_bias) else None
    return ConvGrads(dx, dw, db)


def conv_grad_input(
    dy: ArrayLike,
    weight: ArrayLike,
    input_shape: ShapeLike,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> np.ndarray:
    """Input gradient ``dx = col2im(Wᵀ · δ)`` of a convolution.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O) or (C_out, *O)
        δ, the gradient of the loss w.r.t. the convolution's output.
    weight : array_like, shape (C_out, C_in/G, *K)
    input_shape : tuple of int
        ``x.shape``; needed because with stride > 1 several input sizes give
        the same output size.
    stride, padding, dilation, groups, padding_mode, method
        As for :func:`conv`.

    Returns
    -------
    dx : ndarray, shape ``input_shape``
        Samples the forward windows never reached (stride remainders) get 0.

    See Also
    --------
    conv_transpose : the same operator with its own size arguments.
    conv_grad_input_by_transposition : the same gradient as a stride-1 convolution.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> dy = np.ones((1, 1, 2)); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> ib.conv_grad_input(dy, w, (1, 1, 6), stride=2)   # the last sample is never read
    array([[[1., 2., 4., 2., 3., 0.]]])
    """
    call = grad_input_call(dy, weight, input_shape,
                           geometry_kwargs(stride, padding, dilation, groups, padding_mode))
    plan = make_plan(call.geometry, call.dtype, method=method, keep_for_backward=False)
    _refuse_if_too_large(plan, "conv_grad_input", ("input",), (plan.input_gradient,))
    return call.result(engine.adjoint(plan.input_gradient, plan.dtype, call.weight, call.dy))


def conv_grad_weight(
    dy: ArrayLike,
    x: ArrayLike,
    weight_shape: ShapeLike,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> np.ndarray:
    """Weight gradient ``dW = Σ_n δ · X_colᵀ`` of a convolution.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O) or (C_out, *O)
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
        The forward input.
    weight_shape : tuple of int
        ``weight.shape`` = (C_out, C_in/G, *K).
    stride, padding, dilation, groups, padding_mode, method
        As for :func:`conv`.

    Returns
    -------
    dw : ndarray, shape ``weight_shape``

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.arange(5.0)[None, None]; dy = np.ones((1, 1, 3))
    >>> ib.conv_grad_weight(dy, x, (1, 1, 3))    # tap k sees x[k], x[k+1], x[k+2]
    array([[[3., 6., 9.]]])
    """
    call = grad_weight_call(dy, x, weight_shape,
                            geometry_kwargs(stride, padding, dilation, groups, padding_mode))
    plan = make_plan(call.geometry, call.dtype, method=method, keep_for_backward=False)
    _refuse_if_too_large(plan, "conv_grad_weight", ("weight",), (plan.weight_gradient,))
    return engine.weight_gradient(plan.weight_gradient, plan.dtype, call.x, call.dy)


def conv_grad_bias(dy: ArrayLike) -> np.ndarray:
    """Bias gradient: δ summed over batch and space, ``db[f] = Σ_{n, o} δ[n, f, o]``.

    Parameters
    ----------
    dy : array_like, shape (N, C_out, *O)
        Batched δ. An unbatched δ ``(C_out, *O)`` cannot be told apart when it
        has two or more spatial axes: add the batch axis (``dy[None]``) first.

    Returns
    -------
    db : ndarray, shape (C_out,)

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> ib.conv_grad_bias(np.ones((2, 3, 4, 4)))
    array([32., 32., 32.])
    """
    dy = as_float_array(dy, "dy")
    if dy.ndim < 3:
        raise ValueError(
            f"dy must be batched, (N, C_out, *out_size) with at least 3 dimensions, "
            f"got shape {dy.shape}"
        )
    return _sum_bias(dy, dy.dtype)


# --------------------------------------------------------------------------
# transposed convolution
# --------------------------------------------------------------------------
def conv_transpose_forward(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
    *,
    output_size: Optional[ShapeLike] = None,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> Tuple[np.ndarray, ConvContext]:
    """Transposed convolution that also returns the context for backward.

    Same arguments and result as :func:`conv_transpose`.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> y, ctx = ib.conv_transpose_forward(np.ones((1, 1, 2)), np.ones((1, 1, 3)), stride=2)
    >>> y
    array([[[1., 1., 2., 1., 1.]]])
    >>> ib.conv_transpose_backward(np.ones_like(y), ctx).input
    array([[[3., 3.]]])
    """
    kwargs = dict(geometry_kwargs(stride, padding, dilation, groups, padding_mode),
                  output_padding=output_padding, output_size=output_size)
    call, plan = _forward_setup(
        "conv_transpose_forward", x, weight, bias, method,
        (stride, padding, dilation, groups, padding_mode, output_padding, output_size),
        kwargs, transposed=True)
    _refuse_if_too_large(plan, "conv_transpose_forward", ("output",), (plan.forward,),
                         context=True)
    y = engine.adjoint(plan.forward, plan.dtype, call.weight, call.x)
    _add_bias(y, call.bias)
    saved_x, saved_weight = _snapshot(call, keep_x=True)
    return call.result(y), ConvContext(plan, saved_x, saved_weight)


def conv_transpose(
    x: ArrayLike,
    weight: ArrayLike,
    bias: Optional[ArrayLike] = None,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
    *,
    output_size: Optional[ShapeLike] = None,
    padding_mode: str = "zeros",
    method: str = "auto",
) -> np.ndarray:
    """N-d transposed convolution: the adjoint of :func:`conv` as a function of x.

    Parameters
    ----------
    x : array_like, shape (N, C_in, *I) or (C_in, *I)
    weight : array_like, shape (C_in, C_out/G, *K)
        PyTorch's transposed layout: the forward convolution's weight.
    bias : array_like, shape (C_out,), optional
    stride, dilation : int or tuple of int, optional
    padding : int, tuple of int, tuple of (int, int) or 'valid', optional
        The padding of the forward convolution; it *removes* samples from
        the output. ``'same'`` is refused.
    output_padding : int or tuple of int, optional
        Extra samples after the end, ``0 <= output_padding < max(S, D)``:
        with stride > 1 several sizes map to the same convolution output,
        and this picks one.
    groups : int, optional
    output_size : tuple of int, optional
        The r spatial sizes (or the whole output shape) wanted; picks
        ``output_padding``, as PyTorch's ``ConvTranspose.forward(output_size=)``.
    padding_mode : {'zeros', 'reflect', 'replicate', 'circular'}, optional
        Non-zero modes give the exact adjoint of the convolution with that
        padding: output that lands on the padded border folds back onto the
        samples the border was copied from.
    method : {'auto', 'im2col', 'winograd', 'direct'}, optional
        As for :func:`conv` (the forward of a transposed convolution is the
        input gradient of a convolution, so ``'auto'`` may take the
        channel-transposition route).

    Returns
    -------
    y : ndarray, shape (N, C_out, *O) or (C_out, *O)
        ``O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1``.

    See Also
    --------
    conv_grad_input : the same operator, sized by the forward input's shape.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.array([[[1.0, 10.0]]]); w = np.array([[[1.0, 2.0, 3.0]]])
    >>> ib.conv_transpose(x, w, stride=2)    # each input stamps a scaled copy of w
    array([[[ 1.,  2., 13., 20., 30.]]])
    >>> ib.conv_transpose(x, w, stride=2, output_padding=1)
    array([[[ 1.,  2., 13., 20., 30.,  0.]]])
    >>> ib.conv_transpose(np.ones((1, 4, 5, 5)), np.ones((4, 2, 3, 3)), stride=2,
    ...                   padding=1, output_size=(10, 10)).shape
    (1, 2, 10, 10)
    """
    kwargs = dict(geometry_kwargs(stride, padding, dilation, groups, padding_mode),
                  output_padding=output_padding, output_size=output_size)
    call, plan = _forward_setup(
        "conv_transpose", x, weight, bias, method,
        (stride, padding, dilation, groups, padding_mode, output_padding, output_size),
        kwargs, transposed=True, keep_for_backward=False)
    _refuse_if_too_large(plan, "conv_transpose", ("output",), (plan.forward,))
    y = engine.adjoint(plan.forward, plan.dtype, call.weight, call.x)
    return call.result(_add_bias(y, call.bias))


def conv_transpose_backward(dy: ArrayLike, ctx: ConvContext, *, wrt: Wrt = _WRT) -> ConvGrads:
    """Gradients of a transposed convolution from its context.

    ``dx = conv(δ, w)`` (cropped to x's size), ``dw = conv_grad_weight(x, δ)``
    with the roles of input and δ exchanged, ``db = Σ δ``.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> y, ctx = ib.conv_transpose_forward(np.ones((1, 1, 2)), np.ones((1, 1, 3)))
    >>> ib.conv_transpose_backward(np.ones_like(y), ctx).weight
    array([[[2., 2., 2.]]])
    """
    if not isinstance(ctx, ConvContext) or not ctx.transposed:
        raise TypeError("ctx must be the ConvContext returned by conv_transpose_forward")
    want_input, want_weight, want_bias = (True, True, True) if wrt is _WRT else parse_wrt(wrt)
    dyb, dtype = _delta(dy, ctx, ctx.geometry.input_shape)
    plan = _backward_plan(ctx, dtype)
    _refuse_if_too_large(plan, "conv_transpose_backward", ("input", "weight"),
                         (plan.input_gradient, plan.weight_gradient))
    # δ_t plays the convolution's input; x plays its output gradient.
    dx = dw = None
    if want_input:
        dx, _ = engine.forward(plan.input_gradient, dtype, dyb,
                               ctx.weight.astype(dtype, copy=False))
        dx = _unbatched(dx, ctx.geometry)
    if want_weight:
        if ctx.x is None:
            raise RuntimeError("a transposed convolution's context holds its input")
        dw = engine.weight_gradient(plan.weight_gradient, dtype, dyb, ctx.x)
    db = _sum_bias(dyb, dtype) if (want_bias and ctx.has_bias) else None
    return ConvGrads(dx, dw, db)
