"""A typed user of the public API: tests/test_types.py type-checks it with mypy and runs it.

Written as a user porting from PyTorch would write it, annotated where a user relies on the
library's types: a public signature that states wrong types makes mypy report this file, and
running it checks that the annotated calls really work (the numbers against an oracle). That
the types are not merely ``Any`` is checked by test_types.py's misuse snippets.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

import im2colbp as ib
from im2colbp.gradcheck import adjoint_mismatch, max_relative_error, numerical_gradient
from im2colbp.reference import conv as reference_conv


def functional() -> float:
    """``ib.conv`` in torch.nn.functional's positional order, then the gradients."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 7, 7))
    w = rng.standard_normal((6, 2, 3, 3))
    b = np.zeros(6)
    y: np.ndarray = ib.conv(x, w, b, 2, 1, 1, 2)  # stride, padding, dilation, groups
    same: np.ndarray = ib.conv(x, w, None, stride=(1, 1), padding="same", groups=2)
    pairs: np.ndarray = ib.conv(x.tolist(), w, padding=((1, 0), (0, 1)), groups=2)
    out, ctx = ib.conv_forward(x, w, b, padding=1, groups=2)
    grads: ib.ConvGrads = ib.conv_backward(np.ones_like(out), ctx)
    dx: Optional[np.ndarray] = grads.input
    if dx is None or grads.weight is None:  # the fields are Optional: narrow before use
        raise AssertionError("conv_backward returns every gradient by default")
    dw: np.ndarray = grads.weight
    gi: np.ndarray = ib.conv_grad_input(np.ones_like(out), w, x.shape, 1, 1, 1, 2)
    gw: np.ndarray = ib.conv_grad_weight(np.ones_like(out), x, w.shape, 1, 1, 1, 2)
    db: np.ndarray = ib.conv_grad_bias(np.ones_like(out))
    error: float = max_relative_error(dx, gi) + max_relative_error(dw, gw)
    error += max_relative_error(y, reference_conv(x, w, b, stride=2, padding=1, groups=2))
    shapes: List[Tuple[int, ...]] = [same.shape, pairs.shape, db.shape]
    if shapes != [(2, 6, 7, 7), (2, 6, 6, 6), (6,)]:
        raise AssertionError(shapes)
    return error


def transposed() -> float:
    """conv_transpose's positional order (output_padding before groups) and its adjoint."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 4))
    w = rng.standard_normal((3, 2, 3))
    y: np.ndarray = ib.conv_transpose(x, w, None, 2, 1, 1)  # stride, padding, output_padding
    z, ctx = ib.conv_transpose_forward(x, w, stride=2, padding=1, output_size=(8,))
    back: ib.ConvGrads = ib.conv_transpose_backward(np.ones_like(z), ctx, wrt="input")
    if back.weight is not None or y.shape != z.shape:
        raise AssertionError((back.weight, y.shape, z.shape))
    mismatch: float = adjoint_mismatch(
        lambda v: ib.conv_transpose(v, w, stride=2, padding=1, output_padding=1),
        lambda u: ib.conv(u, w, stride=2, padding=1), x, rng.standard_normal(y.shape))
    return mismatch


def layers() -> float:
    """Layers: forward, backward, parameters and a state dict."""
    conv = ib.Conv2d(3, 4, 3, stride=2, padding=1, rng=0)
    up = ib.ConvTranspose2d(4, 3, (2, 2), stride=2, dtype=np.float64, rng=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8))
    y: np.ndarray = up(conv(x))
    dx: np.ndarray = conv.backward(up.backward(np.ones_like(y)))
    state: Dict[str, np.ndarray] = conv.state_dict(prefix="encoder.")
    copy = ib.Conv2d(3, 4, 3, stride=2, padding=1)
    copy.load_state_dict(state, prefix="encoder.")
    names: List[str] = [name for name, _, _ in conv.parameters()]
    if names != ["weight", "bias"] or dx.shape != x.shape:
        raise AssertionError((names, dx.shape))
    with ib.no_grad():
        again: np.ndarray = copy(x)
    return max_relative_error(again, conv.forward(x))


def lowering() -> float:
    """im2col and its adjoint col2im, a plan, and a finite-difference gradient."""
    x = np.arange(2.0 * 5 * 5).reshape(1, 2, 5, 5)
    cols: np.ndarray = ib.im2col(x, (3, 3), stride=2, padding=1)
    back: np.ndarray = ib.col2im(cols, x.shape[2:], (3, 3), stride=2, padding=1)
    plan: ib.ConvPlan = ib.plan_conv(x.shape, (4, 2, 3, 3), padding=1)
    grad: np.ndarray = numerical_gradient(lambda v: ib.conv(v, np.ones((1, 2, 3, 3))),
                                          x[:, :, :3, :3], np.ones((1, 1, 1, 1)))
    if back.shape != x.shape or not isinstance(plan, ib.ConvPlan):
        raise AssertionError(back.shape)
    return max_relative_error(grad, np.ones_like(grad))


def main() -> None:
    for check in (functional, transposed, layers, lowering):
        error = check()
        if not error < 1e-6:
            raise AssertionError(f"{check.__name__}: relative error {error:.3g}")


if __name__ == "__main__":
    main()
