"""Where the milliseconds of a ``method="winograd"`` forward + backward go (wall clock).

Wraps the module-level helpers of :mod:`im2colbp.winograd` (and the engine's
finiteness check) with timers, runs ``conv_forward`` + ``conv_backward`` with
``method="winograd"`` on a benchmark configuration a few times and prints the
median per helper (exclusive of the helpers it calls; in threaded phases the
parts' times are summed over the threads, so the rows add up to more than
the wall clock, and the "threaded phases" row is the wall time of those
phases minus the caller thread's own share)::

    flock /work/notes/bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        .venv/bin/python scripts/winograd_profile.py [--config resnet3x3] [--tile 4]

``--tile`` forces the tile through a patched plan table (default: the plan's).
Timers add a few microseconds per call; the totals are checked against an
unwrapped run.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import defaultdict
from typing import Dict, List

import numpy as np

import im2colbp as ib
from im2colbp import engine, plan
from im2colbp import winograd as wg

SHAPES = {"resnet3x3": ((8, 64, 56, 56), (64, 64, 3, 3), 1, 1),
          "depthwise": ((8, 128, 28, 28), (128, 1, 3, 3), 128, 1),
          "teach": ((1, 3, 32, 32), (8, 3, 3, 3), 1, 1),
          "conv3d": ((2, 16, 16, 32, 32), (32, 16, 3, 3, 3), 1, 1)}

_totals: Dict[str, float] = defaultdict(float)
_clock = time.perf_counter
_local = threading.local()


def _wrap(module, name: str, label: str) -> None:
    original = getattr(module, name)

    def timed(*args, **kwargs):
        _stack = _local.__dict__.setdefault("stack", [])
        _stack.append([0.0])
        start = _clock()
        try:
            return original(*args, **kwargs)
        finally:
            elapsed = _clock() - start
            children = _stack.pop()[0]
            _totals[label] += elapsed - children
            if _stack:
                _stack[-1][0] += elapsed

    setattr(module, name, timed)


HELPERS = [
    (wg, "_fill", "fill (copy in, NCHW -> tiles' layout)"),
    (wg, "_spread_pass", "input/δ transform passes"),
    (wg, "_multiply", "forward GEMMs (M = V·U)"),
    (wg, "_gather_pass", "output transform passes"),
    (wg, "_output_transform", "copy out (moveaxis into y)"),
    (wg, "_transform_weight", "weight transform U = G w Gᵀ"),
    (wg, "_untransform_weight_gradient", "dW = Gᵀ dU G"),
    (engine, "winograd_forward", "forward: rest (loop, scratch)"),
    (engine, "winograd_weight_gradient", "weight grad: GEMMs dU += Vᵀ·Δ + rest"),
    (engine, "_all_finite", "engine: finiteness checks"),
]
if hasattr(wg, "_small_products"):  # the Kronecker-GEMM transforms (rank <= 2)
    HELPERS[1:1] = [(wg, "_gemm_transform_tiles", "tile gather (strided copy)"),
                    (wg, "_small_products", "transform GEMMs (Kronecker, both ways)")]
if hasattr(wg, "_in_threads"):  # wall clock of the threaded phases, minus their parts' work
    HELPERS.append((wg, "_in_threads", "threaded phases: wall minus caller's part"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="resnet3x3", choices=sorted(SHAPES))
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time (meaningful with one thread everywhere: "
                             "OPENBLAS_NUM_THREADS=1 and --threads 1), robust on a busy machine")
    parser.add_argument("--threads", type=int, default=None,
                        help="im2colbp's thread limit (default: its default)")
    parser.add_argument("--block", type=int, default=None,
                        help="override winograd._BLOCK_BYTES (source bytes of a block)")
    args = parser.parse_args()
    xs, ws, groups, padding = SHAPES[args.config]
    global _clock
    if args.clock == "cpu":
        _clock = time.process_time
    if args.threads is not None:
        ib.set_thread_limit(args.threads)
    if args.block is not None:
        wg._BLOCK_BYTES = args.block
    if args.tile is not None:
        plan.WINOGRAD_TILES[4] = args.tile
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = np.zeros(ws[0], np.float32)
    y, ctx = ib.conv_forward(x, w, b, padding=padding, groups=groups, method="winograd")
    dy = rng.standard_normal(y.shape).astype(np.float32)

    def run() -> None:
        _, ctx = ib.conv_forward(x, w, b, padding=padding, groups=groups, method="winograd")
        ib.conv_backward(dy, ctx)

    run()
    plain = []
    for _ in range(args.repeats):
        start = _clock()
        run()
        plain.append(_clock() - start)
    for module, name, label in HELPERS:
        _wrap(module, name, label)
    run()
    per: Dict[str, List[float]] = defaultdict(list)
    totals = []
    for _ in range(args.repeats):
        _totals.clear()
        start = _clock()
        run()
        totals.append(_clock() - start)
        for _, _, label in HELPERS:
            per[label].append(_totals[label])
    tile = plan.WINOGRAD_TILES[4]
    print(f"{args.config} float32 F({tile},3) f+b, threads {ib.get_thread_limit()}, "
          f"{args.clock} clock: "
          f"{1e3 * np.median(plain):.1f} ms unwrapped, {1e3 * np.median(totals):.1f} ms wrapped"
          f" (medians of {args.repeats})")
    accounted = 0.0
    for _, _, label in HELPERS:
        value = 1e3 * float(np.median(per[label]))
        accounted += value
        print(f"  {label:44s} {value:6.1f} ms")
    print(f"  {'outside (engine, bias, allocations)':44s} "
          f"{1e3 * float(np.median(totals)) - accounted:6.1f} ms")


if __name__ == "__main__":
    main()
