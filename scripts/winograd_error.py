"""Float32 error of the Winograd kernels against a float64 reference on the benchmark's 3×3 shapes.

For each configuration (teach, resnet3x3, depthwise, conv3d: the suite's 3×3
(×3) stride-1 shapes) and each tile (F(2, 3), F(4, 3)), computes forward, input gradient
and weight gradient in float32 from standard-normal data and reports
``max |result - exact| / max |exact|`` with ``exact`` the float64 lowering
(itself checked against :mod:`im2colbp.reference` by the test suite), next to
the float32 lowering's own error::

    .venv/bin/python scripts/winograd_error.py [--seeds 3]
"""

from __future__ import annotations

import argparse

import numpy as np

import im2colbp as ib
from im2colbp import winograd as wg
from im2colbp.geometry import conv_geometry
from im2colbp.kernels import backprop_kernel

#: name: (input shape, weight shape, groups); padding 1, stride 1.
CONFIGS = {
    "teach": ((1, 3, 32, 32), (8, 3, 3, 3), 1),
    "resnet3x3": ((8, 64, 56, 56), (64, 64, 3, 3), 1),
    "depthwise": ((8, 128, 28, 28), (128, 1, 3, 3), 128),
    "conv3d": ((2, 16, 16, 32, 32), (32, 16, 3, 3, 3), 1),
}


def relative(result: np.ndarray, exact: np.ndarray) -> float:
    return float(np.abs(result.astype(np.float64) - exact).max() / np.abs(exact).max())


def errors(name: str, seed: int) -> dict:
    xs, ws, groups = CONFIGS[name]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    g = conv_geometry(xs, ws, padding=1, groups=groups)
    dy = rng.standard_normal(g.output_shape)
    kw = dict(padding=1, groups=groups)
    exact = {"forward": ib.conv(x, w, **kw),
             "input grad": ib.conv_grad_input(dy, w, xs, **kw),
             "weight grad": ib.conv_grad_weight(dy, x, ws, **kw)}
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    rows = {"im2col": {"forward": ib.conv(x32, w32, **kw),
                       "input grad": ib.conv_grad_input(dy32, w32, xs, **kw),
                       "weight grad": ib.conv_grad_weight(dy32, x32, ws, **kw)}}
    bk = backprop_kernel(w32, groups)
    gi = conv_geometry(dy.shape, bk.shape, padding=1, groups=groups)  # 2 - P
    f32 = np.float32
    for tile in wg.TILES:
        rows[f"F({tile},3)"] = {
            "forward": wg.winograd_forward(g, x32, w32, tile=tile, dtype=f32,
                                           samples_per_chunk=2),
            "input grad": wg.winograd_forward(gi, dy32, bk, tile=tile, dtype=f32,
                                              samples_per_chunk=2),
            "weight grad": wg.winograd_weight_gradient(g, x32, dy32, tile=tile, dtype=f32,
                                                       samples_per_chunk=2),
        }
    return {method: {k: relative(v, exact[k]) for k, v in results.items()}
            for method, results in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'config':10s} {'method':8s} {'forward':>9s} {'input grad':>11s} {'weight grad':>12s}"
          "   (max over seeds of max|err|/max|exact|, float32 vs float64)")
    for name in CONFIGS:
        worst: dict = {}
        for seed in range(args.seeds):
            for method, values in errors(name, seed).items():
                for kind, value in values.items():
                    worst.setdefault(method, {})[kind] = max(
                        value, worst.get(method, {}).get(kind, 0.0))
        for method, values in worst.items():
            print(f"{name:10s} {method:8s} {values['forward']:9.2e} {values['input grad']:11.2e} "
                  f"{values['weight grad']:12.2e}")


if __name__ == "__main__":
    main()
