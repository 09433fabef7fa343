"""Time the Winograd kernels against ib.conv and the bare GEMM on resnet3x3 (N8 C64 56x56 K64 p1).

Run under the shared lock, e.g.::

    flock /work/notes/bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        .venv/bin/python scripts/winograd_speed.py

Reports medians (ms) of interleaved repeats, float32, wall-clock and process
CPU time (the latter is what to compare on a shared machine; BLAS runs on
every thread, the transforms on one); also a phase breakdown of the
Winograd forward (input transform, GEMMs, output transform) for one chunk
without the block fusion.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import im2colbp as ib
from im2colbp import winograd as wg
from im2colbp.geometry import conv_geometry
from im2colbp.kernels import backprop_kernel
from im2colbp.workspace import samples_per_chunk, scratch_scope

#: Chunk target for V and M together (the plan may pick otherwise).
CHUNK_BYTES = 32 * 2**20


def _chunk(geometry, tile, itemsize):
    limit = ib.get_workspace_limit()
    fixed = wg.winograd_fixed_bytes(geometry, tile, itemsize)
    return samples_per_chunk(geometry.batch, wg.winograd_sample_bytes(geometry, tile, itemsize),
                             min(limit - fixed, CHUNK_BYTES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", default="resnet3x3",
                        choices=["resnet3x3", "depthwise", "teach", "conv3d"])
    args = parser.parse_args()
    shapes = {"resnet3x3": ((8, 64, 56, 56), (64, 64, 3, 3), 1),
              "depthwise": ((8, 128, 28, 28), (128, 1, 3, 3), 128),
              "teach": ((1, 3, 32, 32), (8, 3, 3, 3), 1),
              "conv3d": ((2, 16, 16, 32, 32), (32, 16, 3, 3, 3), 1)}
    xs, ws, groups = shapes[args.config]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    g = conv_geometry(xs, ws, padding=1, groups=groups)
    dy = rng.standard_normal(g.output_shape).astype(np.float32)
    bk = backprop_kernel(w, groups)
    gi = conv_geometry(dy.shape, bk.shape, padding=1, groups=groups)  # 2 - P
    cols = ib.im2col(x, (3,) * (len(xs) - 2), padding=1)  # (N, C·∏K, L)
    wmat = w.reshape(ws[0], -1)
    f32 = np.float32
    contenders = {
        "ib.conv forward": lambda: ib.conv(x, w, padding=1, groups=groups),
        "ib.conv_grad_input": lambda: ib.conv_grad_input(dy, w, xs, padding=1, groups=groups),
        "ib.conv_grad_weight": lambda: ib.conv_grad_weight(dy, x, ws, padding=1, groups=groups),
    }
    if groups == 1:
        contenders["bare GEMM forward W·cols"] = lambda: np.matmul(wmat, cols)
        contenders["bare GEMM weight δ·colsᵀ"] = lambda: np.matmul(
            dy.reshape(xs[0], ws[0], -1), cols.transpose(0, 2, 1)).sum(0)
        contenders["bare GEMM input Wᵀ·δ"] = lambda: np.matmul(wmat.T, dy.reshape(xs[0], ws[0], -1))
    for tile in wg.TILES:
        ch = _chunk(g, tile, 4)
        chi = _chunk(gi, tile, 4)
        contenders[f"winograd F({tile},3) forward (chunk {ch})"] = (
            lambda tile=tile, ch=ch: wg.winograd_forward(g, x, w, tile=tile, dtype=f32,
                                                         samples_per_chunk=ch))
        contenders[f"winograd F({tile},3) input grad (chunk {chi})"] = (
            lambda tile=tile, ch=chi: wg.winograd_forward(gi, dy, bk, tile=tile, dtype=f32,
                                                          samples_per_chunk=ch))
        contenders[f"winograd F({tile},3) weight grad (chunk {ch})"] = (
            lambda tile=tile, ch=ch: wg.winograd_weight_gradient(g, x, dy, tile=tile, dtype=f32,
                                                                 samples_per_chunk=ch))
    times = {name: [] for name in contenders}
    cpu = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, run in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(f"{'':52s} {'wall':>9s} {'cpu (all threads)':>18s}   medians of {args.repeats}")
    for name in contenders:
        print(f"{name:52s} {1e3 * float(np.median(times[name])):6.1f} ms "
              f"{1e3 * float(np.median(cpu[name])):12.1f} ms")
    # phase breakdown of the forward, unfused: whole-chunk V and M, one block per chunk
    for tile in wg.TILES if len(xs) == 4 else ():
        ch = _chunk(g, tile, 4)
        tiles = wg._tiles(g, tile)
        u = wg._transform_weight(w, g, tile, np.dtype(f32))
        phases = {"input transform": [], "GEMMs": [], "output transform": []}
        for _ in range(args.repeats):
            with scratch_scope():
                t = {k: 0.0 for k in phases}
                for part in ib.workspace.chunk_slices(xs[0], ch):
                    n = part.stop - part.start
                    rows = slice(0, tiles[0])
                    v = np.empty((tile + 2,) * 2 + tiles + (n, xs[1]), f32)
                    m = np.empty((tile + 2,) * 2 + tiles + (n, ws[0]), f32)
                    s = time.process_time()
                    source, offset = wg._input_source(x[part], g, np.dtype(f32))
                    wg._transform_input(source, offset, g, tile, rows, v)
                    t["input transform"] += time.process_time() - s
                    s = time.process_time()
                    wg._multiply(u, v, m, groups)
                    t["GEMMs"] += time.process_time() - s
                    s = time.process_time()
                    wg._output_transform(m, np.empty((n, ws[0]) + g.window.out_size, f32), g,
                                         tile, rows)
                    t["output transform"] += time.process_time() - s
                for k in phases:
                    phases[k].append(t[k])
        print(f"F({tile},3) forward phases (cpu, unfused): " + ", ".join(
            f"{k} {1e3 * float(np.median(v)):.1f} ms" for k, v in phases.items()))


if __name__ == "__main__":
    main()
