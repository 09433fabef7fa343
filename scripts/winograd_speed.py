"""Time forward + backward with ``method="winograd"`` (F(2, 3) and F(4, 3)) against ``"im2col"``.

Run under the shared lock, e.g.::

    flock /work/notes/bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        .venv/bin/python scripts/winograd_speed.py --configs resnet3x3 --rounds 9

Every contender runs ``conv_forward`` + ``conv_backward`` (y, then dx, dw,
db) on the benchmark suite's configuration (``im2colbp.benchmark.CONFIGS``),
float32 unless ``--dtype``. The Winograd tile is forced through the plan's
table (``plan.WINOGRAD_TILES``, the plan cache cleared). Rounds alternate
the contenders; in each round a contender makes one untimed call, then
``--repeats`` timed ones; the table gives the median over rounds of each
round's median, wall clock and process CPU time (all threads), in ms.
``--threads 1`` also times each Winograd tile under ``ib.thread_limit(1)``.

All contenders share one process (unlike ``scripts/bench.py``, whose workers
each have their own): take the floor and a cross-check of im2col from
``scripts/bench.py --contenders floor im2col``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

import im2colbp as ib
from im2colbp import plan
from im2colbp.benchmark import CONFIGS

Contender = Tuple[Callable[[], None], Callable[[], contextlib.AbstractContextManager]]


def _contenders(name: str, dtype: np.dtype, thread_counts: List[int]) -> Dict[str, Contender]:
    config = CONFIGS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(config.input_shape).astype(dtype)
    w = rng.standard_normal(config.weight_shape).astype(dtype)
    b = np.zeros(config.weight_shape[0], dtype)
    y, _ = ib.conv_forward(x, w, b, **config.kwargs, method="im2col")
    dy = rng.standard_normal(y.shape).astype(dtype)

    def run(method: str) -> Callable[[], None]:
        def call() -> None:
            _, ctx = ib.conv_forward(x, w, b, **config.kwargs, method=method)
            ib.conv_backward(dy, ctx)
        return call

    @contextlib.contextmanager
    def tile(m: int, threads: int):
        old = plan.WINOGRAD_TILES[dtype.itemsize]
        plan.WINOGRAD_TILES[dtype.itemsize] = m
        plan._cached_plan.cache_clear()
        try:
            with ib.thread_limit(threads):
                yield
        finally:
            plan.WINOGRAD_TILES[dtype.itemsize] = old
            plan._cached_plan.cache_clear()

    found = {"im2col": (run("im2col"), contextlib.nullcontext)}
    for m in (2, 4):
        for threads in thread_counts:
            label = f"winograd F({m},3)" + ("" if threads == thread_counts[0] else
                                           f" {threads} thread")
            found[label] = (run("winograd"), lambda m=m, threads=threads: tile(m, threads))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["teach", "resnet3x3", "depthwise",
                                                          "conv3d"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, nargs="*", default=[],
                        help="also time the Winograd tiles under these thread limits")
    args = parser.parse_args()
    dtype = np.dtype(args.dtype)
    thread_counts = [ib.get_thread_limit()] + [t for t in args.threads
                                               if t != ib.get_thread_limit()]
    print(f"{args.dtype}, forward + backward, im2colbp threads {thread_counts[0]}; "
          f"median over {args.rounds} rounds of the median of {args.repeats} calls")
    print(f"{'config':10s} {'contender':26s} {'wall ms':>8s} {'cpu ms':>8s} {'vs im2col':>9s}")
    for name in args.configs:
        contenders = _contenders(name, dtype, thread_counts)
        walls: Dict[str, List[float]] = {label: [] for label in contenders}
        cpus: Dict[str, List[float]] = {label: [] for label in contenders}
        labels = list(contenders)
        for round_ in range(args.rounds):
            order = labels[round_ % len(labels):] + labels[:round_ % len(labels)]
            for label in order:
                call, context = contenders[label]
                with context():
                    call()  # untimed: caches, scratch, plan
                    wall, cpu = [], []
                    for _ in range(args.repeats):
                        start, start_cpu = time.perf_counter(), time.process_time()
                        call()
                        wall.append(time.perf_counter() - start)
                        cpu.append(time.process_time() - start_cpu)
                walls[label].append(float(np.median(wall)))
                cpus[label].append(float(np.median(cpu)))
        base = float(np.median(walls["im2col"]))
        for label in labels:
            wall_ms = 1e3 * float(np.median(walls[label]))
            cpu_ms = 1e3 * float(np.median(cpus[label]))
            print(f"{name:10s} {label:26s} {wall_ms:8.2f} {cpu_ms:8.2f} "
                  f"{wall_ms / (1e3 * base):8.2f}x")


if __name__ == "__main__":
    main()
