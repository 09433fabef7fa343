"""The ``im2colbp`` command."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import numpy as np

from . import reference
from .conv import conv_backward, conv_forward
from .examples import edge_filters, rgb_image
from .gradcheck import numerical_gradient
from .lowering import im2col


def _max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def demo(out=sys.stdout) -> int:
    """Lower a small strided, padded, multi-channel, multi-filter convolution and check it."""

    def say(text: str = "") -> None:
        print(text, file=out)

    image = rgb_image(5)
    x = np.stack([image, image[:, ::-1, :]])  # N=2: the image and its upside-down copy
    weight, bias = edge_filters()
    geometry = dict(stride=2, padding=1)
    say("im2colbp demo: one convolution, lowered to a GEMM, and its backprop")
    say(f"  x      (N, C_in, H, W)        = {x.shape}   a 5x5 RGB image and its flip")
    say(f"  weight (C_out, C_in, K, K)    = {weight.shape}  Sobel-x on red, Sobel-y on green")
    say(f"  bias   (C_out,)               = {bias.shape}        {bias.tolist()}")
    say(f"  stride 2, padding 1  ->  O = floor((5 + 2 - 3) / 2) + 1 = 3")
    cols = im2col(x, 3, **geometry)
    say(f"  X_col  (N, C_in*K*K, O*O)     = {cols.shape}  (27 taps x 9 windows per image)")
    say(f"  W      (C_out, C_in*K*K)      = {weight.reshape(2, -1).shape}")
    y, ctx = conv_forward(x, weight, bias, **geometry)
    say(f"  y = W @ X_col + b             = {y.shape}")
    say("  y[0, 0] (vertical edges of the red ramp):")
    for row in y[0, 0]:
        say("      " + " ".join(f"{v:6.2f}" for v in row))
    rng = np.random.default_rng(0)
    dy = rng.standard_normal(y.shape)
    grads = conv_backward(dy, ctx)
    say()
    say("backprop with a random delta = dL/dy:")
    say("  dW = delta @ X_col^T  (summed over the batch)   dX = col2im(W^T @ delta)   db = sum(delta)")
    checks = [
        ("y ", y, reference.conv(x, weight, bias, **geometry), None),
        ("dX", grads.input, reference.conv_grad_input(dy, weight, x.shape, **geometry),
         numerical_gradient(lambda v: reference.conv(v, weight, bias, **geometry), x, dy)),
        ("dW", grads.weight, reference.conv_grad_weight(dy, x, weight.shape, **geometry),
         numerical_gradient(lambda v: reference.conv(x, v, bias, **geometry), weight, dy)),
        ("db", grads.bias, reference.conv_grad_bias(dy),
         numerical_gradient(lambda v: reference.conv(x, weight, v, **geometry), bias, dy)),
    ]
    worst = 0.0
    say(f"  {'':4}{'shape':>16}  {'vs direct':>10}  {'vs finite diff':>14}")
    for name, ours, direct, numeric in checks:
        err_direct = _max_error(ours, direct)
        err_numeric = _max_error(ours, numeric) if numeric is not None else None
        worst = max(worst, err_direct, err_numeric or 0.0)
        numeric_text = f"{err_numeric:14.1e}" if err_numeric is not None else f"{'-':>14}"
        say(f"  {name:4}{str(ours.shape):>16}  {err_direct:10.1e}  {numeric_text}")
    ok = worst < 1e-6
    say()
    say("every gradient agrees with the direct reference" if ok else "MISMATCH")
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="im2colbp",
        description="Convolution lowered to im2col + GEMM, with every gradient.",
        epilog="example: im2colbp demo",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "demo", help="lower a small RGB example and check every gradient",
        description="Lower a small multi-channel, multi-filter, strided, padded convolution, "
        "print the shapes and check every gradient against the direct reference.",
        epilog="example: im2colbp demo",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
