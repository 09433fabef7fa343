"""Finite differences and the dot-product (adjoint) test, in float64.

Generic tools: they take callables and arrays and know nothing about
convolution, so they can check any gradient in the package independently.

For a map ``f`` and an upstream gradient δ (``dy``), the scalar checked is
``L(x) = sum(f(x) * δ)``, whose gradient is ``dL/dx = J_f(x)^T δ`` — exactly
what a backward pass returns. Central differences approximate it with error
``O(eps**2)`` (exact for maps that are linear in ``x``, up to rounding).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

#: What :func:`numpy.random.default_rng` accepts as a seed.
SeedLike = Union[None, int, Sequence[int], np.random.SeedSequence, np.random.BitGenerator,
                 np.random.Generator]

__all__ = [
    "numerical_gradient",
    "directional_derivative_check",
    "adjoint_mismatch",
    "max_relative_error",
]

_TINY = float(np.finfo(np.float64).tiny)


def _float64(value: Any, name: str) -> np.ndarray:
    """A float64 copy of ``value``; complex, non-numeric and masked data are refused."""
    if isinstance(value, np.ma.MaskedArray) and np.ma.getmask(value) is not np.ma.nomask \
            and np.ma.getmask(value).any():
        raise TypeError(
            f"{name} is a masked array with masked elements; masks are not supported: pass "
            f"{name}.filled(v), with the value v a masked sample should take"
        )
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    return np.array(array, dtype=np.float64)


def _loss(f: Callable[[np.ndarray], ArrayLike], x: np.ndarray, dy: np.ndarray) -> float:
    """``L(x) = sum(f(x) * dy)`` in float64; ``f`` gets its own copy of ``x``."""
    y = np.asarray(f(x.copy()), dtype=np.float64)
    if y.shape != dy.shape:
        raise ValueError(f"dy must have the shape of f(x), {y.shape}, got {dy.shape}")
    return float(np.sum(y * dy))


def numerical_gradient(
    f: Callable[[np.ndarray], ArrayLike], x: ArrayLike, dy: ArrayLike, eps: float = 1e-6
) -> np.ndarray:
    """Central-difference gradient of ``L(x) = sum(f(x) * dy)`` with respect to ``x``.

    Perturbs one element at a time, so it costs ``2 * x.size`` calls of ``f``:
    use it on small arrays (see :func:`directional_derivative_check` for big ones).

    Parameters
    ----------
    f : callable
        ``f(x) -> y``; called with float64 arrays of ``x``'s shape.
    x : array_like
        The point, converted to float64 (never modified).
    dy : array_like
        δ, the weights of the scalar; shape of ``f(x)``.
    eps : float, optional
        Step ``h``; the estimate is ``(L(x + h e_i) - L(x - h e_i)) / (2h)``.

    Returns
    -------
    grad : ndarray
        float64, the shape of ``x``: the numerical ``J_f(x)^T δ``.

    See Also
    --------
    directional_derivative_check, max_relative_error

    Notes
    -----
    Truncation error ``O(eps**2)`` times the third derivative, rounding error
    about ``1e-16 * |L| / eps``; ``eps = 1e-6`` balances them for
    well-scaled float64 functions.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.gradcheck import numerical_gradient
    >>> x = np.array([1.0, 2.0, 3.0])
    >>> g = numerical_gradient(lambda x: x**2, x, np.ones(3))   # d/dx sum(x^2) = 2x
    >>> np.allclose(g, 2 * x)
    True
    >>> g = numerical_gradient(lambda x: x.sum(keepdims=True), x, np.array([5.0]))
    >>> np.allclose(g, [5.0, 5.0, 5.0])
    True
    """
    x = _float64(x, "x")
    dy = _float64(dy, "dy")
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        original = x[index]
        x[index] = original + eps
        above = _loss(f, x, dy)
        x[index] = original - eps
        below = _loss(f, x, dy)
        x[index] = original
        grad[index] = (above - below) / (2 * eps)
    return grad


def directional_derivative_check(
    f: Callable[[np.ndarray], ArrayLike],
    x: ArrayLike,
    grad_x: ArrayLike,
    dy: ArrayLike,
    *,
    rng: SeedLike = None,
    eps: float = 1e-6,
) -> Tuple[float, float]:
    """Compare an analytic gradient with finite differences along one random direction.

    Two calls of ``f`` whatever the size of ``x``: a cheap check for big arrays.
    A wrong gradient almost surely gives a different directional derivative.

    Parameters
    ----------
    f : callable
        ``f(x) -> y``.
    x : array_like
        The point (float64).
    grad_x : array_like
        The analytic gradient of ``L(x) = sum(f(x) * dy)``, shape of ``x``.
    dy : array_like
        δ, shape of ``f(x)``.
    rng : None, int or numpy.random.Generator, optional
        Source of the direction ``v`` (standard normal), via
        :func:`numpy.random.default_rng`.
    eps : float, optional
        Step along ``v``.

    Returns
    -------
    numerical, analytic : float
        ``(L(x + eps v) - L(x - eps v)) / (2 eps)`` and ``<grad_x, v>``; they
        agree to about ``1e-8`` relative for a correct float64 gradient.

    See Also
    --------
    numerical_gradient

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.gradcheck import directional_derivative_check
    >>> x = np.linspace(-1.0, 1.0, 1000)
    >>> f = lambda x: np.sin(x)
    >>> numerical, analytic = directional_derivative_check(f, x, np.cos(x), np.ones(1000), rng=0)
    >>> bool(np.isclose(numerical, analytic, rtol=1e-6))
    True
    >>> numerical, wrong = directional_derivative_check(f, x, -np.cos(x), np.ones(1000), rng=0)
    >>> bool(np.isclose(numerical, wrong, rtol=1e-6))
    False
    """
    x = _float64(x, "x")
    grad_x = _float64(grad_x, "grad_x")
    dy = _float64(dy, "dy")
    if grad_x.shape != x.shape:
        raise ValueError(f"grad_x must have the shape of x, {x.shape}, got {grad_x.shape}")
    direction = np.random.default_rng(rng).standard_normal(x.shape)  # v, shape of x
    numerical = (
        _loss(f, x + eps * direction, dy) - _loss(f, x - eps * direction, dy)
    ) / (2 * eps)
    analytic = float(np.sum(grad_x * direction))
    return numerical, analytic


def adjoint_mismatch(
    forward: Callable[[np.ndarray], ArrayLike],
    adjoint: Callable[[np.ndarray], ArrayLike],
    x: ArrayLike,
    y: ArrayLike,
) -> float:
    """Relative failure of the dot-product test ``<A x, y> = <x, A^T y>``.

    For a linear map ``A`` (``forward``) and a claimed adjoint ``A^T``
    (``adjoint``), returns
    ``|<A x, y> - <x, A^T y>| / (|<A x, y>| + |<x, A^T y>| + tiny)``. With
    random ``x`` and ``y`` this is at rounding level (about ``1e-15`` in
    float64) if and only if, almost surely, ``adjoint`` is the adjoint.

    Parameters
    ----------
    forward : callable
        ``A``: maps arrays shaped like ``x`` to arrays shaped like ``y``.
    adjoint : callable
        ``A^T``: maps arrays shaped like ``y`` to arrays shaped like ``x``.
    x, y : array_like
        Test vectors, passed to the callables as given (so a float32 map can be
        tested in float32); the inner products are taken in float64.

    Returns
    -------
    mismatch : float
        In ``[0, 1]``; 0 when both inner products vanish.

    See Also
    --------
    max_relative_error

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.gradcheck import adjoint_mismatch
    >>> rng = np.random.default_rng(0)
    >>> a = rng.standard_normal((3, 4))
    >>> x, y = rng.standard_normal(4), rng.standard_normal(3)
    >>> bool(adjoint_mismatch(lambda v: a @ v, lambda u: a.T @ u, x, y) < 1e-12)
    True
    >>> bool(adjoint_mismatch(lambda v: a @ v, lambda u: 2 * a.T @ u, x, y) < 1e-12)
    False
    """
    x = np.asarray(x)
    y = np.asarray(y)
    ax = np.asarray(forward(x.copy()))
    if ax.shape != y.shape:
        raise ValueError(f"forward(x) has shape {ax.shape} but y has shape {y.shape}")
    aty = np.asarray(adjoint(y.copy()))
    if aty.shape != x.shape:
        raise ValueError(f"adjoint(y) has shape {aty.shape} but x has shape {x.shape}")
    left = float(np.sum(_float64(ax, "forward(x)") * _float64(y, "y")))
    right = float(np.sum(_float64(x, "x") * _float64(aty, "adjoint(y)")))
    return abs(left - right) / (abs(left) + abs(right) + _TINY)


def max_relative_error(actual: ArrayLike, expected: ArrayLike) -> float:
    """Largest absolute difference, relative to the larger array's largest magnitude.

    ``max|a - b| / max(max|a|, max|b|, tiny)``: scaled by the arrays as a
    whole rather than element by element, so entries near zero (common in
    gradients) do not blow the error up.

    Parameters
    ----------
    actual, expected : array_like
        Arrays of the same shape.

    Returns
    -------
    error : float
        0 for identical (or empty) arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from im2colbp.gradcheck import max_relative_error
    >>> max_relative_error(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 4.5]))
    0.1111111111111111
    >>> max_relative_error(np.zeros(3), np.zeros(3))
    0.0
    """
    a = _float64(actual, "actual")
    b = _float64(expected, "expected")
    if a.shape != b.shape:
        raise ValueError(f"actual has shape {a.shape} but expected has shape {b.shape}")
    if a.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), _TINY)
    return float(np.max(np.abs(a - b))) / scale

