"""Where the lowering's time goes: a phase breakdown of forward + backward per configuration.

For each configuration of the benchmark suite, runs ``conv_forward`` + ``conv_backward`` with
``method="im2col"`` (or ``--method auto``) and attributes the time to the engine's phases:

- ``im2col``: building the columns (padding, phase split, one copy per kernel offset);
- ``GEMM``: the three matrix products (and, for depthwise, the outer product of col2im);
- ``col2im``: the scatter-add of the input gradient's columns (and the phase merge);
- ``δ/y copies``: moving δ into the GEMM's layout and y out of it;
- ``other``: everything else (allocation, argument handling, bias, planning).

Then prints the ratio of the whole to the GEMM phase alone — the part a fused kernel could not
remove — next to what the GEMMs would cost if the lowering were free. One process, NumPy only
(no other contender runs here, so no thread pools fight); medians over ``--rounds``.

    .venv/bin/python scripts/phases.py [--configs resnet3x3 ...] [--rounds 7] [--method im2col]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List

import numpy as np

import im2colbp as ib
from im2colbp import engine
from im2colbp.benchmark import CONFIGS, _arrays

PHASES = ("im2col", "GEMM", "col2im", "δ/y copies", "other")


class _TimedNumPy:
    """Stands in for ``numpy`` inside the engine: times matmul and multiply."""

    def __init__(self, clock: Dict[str, float]):
        self._clock = clock

    def __getattr__(self, name: str):
        return getattr(np, name)

    def matmul(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return np.matmul(*args, **kwargs)
        finally:
            self._clock["GEMM"] += time.perf_counter() - start

    def multiply(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return np.multiply(*args, **kwargs)
        finally:
            self._clock["GEMM"] += time.perf_counter() - start


def _timed(clock: Dict[str, float], phase: str, method: Callable) -> Callable:
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            clock[phase] += time.perf_counter() - start
    return run


#: The engine's leaf operations, by phase (wrapped where the engine calls them, so that
#: the whole-sample and the block-by-block passes are counted alike).
_PHASES = {
    "im2col": ("pad_into", "im2col_into", "split_phases_into", "wide_im2col_into"),
    "col2im": ("col2im_add", "unpad_add", "wide_col2im_add", "merge_phases"),
}
_COPY_METHODS = ("gemm_operand", "copy_from_gemm")


@contextmanager
def _instrumented(clock: Dict[str, float]) -> Iterator[None]:
    columns = engine._Columns
    saved_functions = {name: getattr(engine, name) for names in _PHASES.values() for name in names}
    saved_methods = {name: getattr(columns, name) for name in _COPY_METHODS}
    saved_np = engine.np
    for phase, names in _PHASES.items():
        for name in names:
            setattr(engine, name, _timed(clock, phase, saved_functions[name]))
    for name in _COPY_METHODS:
        setattr(columns, name, _timed(clock, "δ/y copies", saved_methods[name]))
    engine.np = _TimedNumPy(clock)  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, function in saved_functions.items():
            setattr(engine, name, function)
        for name, method in saved_methods.items():
            setattr(columns, name, method)
        engine.np = saved_np


def breakdown(name: str, method: str, rounds: int) -> Dict[str, float]:
    """Median seconds per phase of one forward + backward of configuration ``name``."""
    config = CONFIGS[name]
    x, w, b, dy = _arrays(config, np.dtype(np.float32))
    kwargs = dict(stride=config.stride, padding=config.padding, dilation=config.dilation,
                  groups=config.groups)

    def step() -> None:
        _, ctx = ib.conv_forward(x, w, b, method=method, **kwargs)
        ib.conv_backward(dy, ctx)

    step()  # warm the scratch pool and the caches of the plan
    samples: Dict[str, List[float]] = defaultdict(list)
    for _ in range(rounds):
        clock: Dict[str, float] = defaultdict(float)
        with _instrumented(clock):
            start = time.perf_counter()
            step()
            total = time.perf_counter() - start
        accounted = sum(clock.values())
        clock["other"] = max(total - accounted, 0.0)
        clock["total"] = total
        for phase, seconds in clock.items():
            samples[phase].append(seconds)
    return {phase: statistics.median(values) for phase, values in samples.items()}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS),
                        default=[n for n, c in CONFIGS.items() if c.gemm_bound])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--method", default="im2col", choices=["auto", "im2col"])
    args = parser.parse_args(argv)
    header = ["config", "total ms"] + [f"{p} ms" for p in PHASES] + ["total/GEMM"]
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for name in args.configs:
        times = breakdown(name, args.method, args.rounds)
        row = [name, f"{1e3 * times['total']:.1f}"]
        row += [f"{1e3 * times.get(p, 0.0):.1f}" for p in PHASES]
        row.append(f"{times['total'] / max(times.get('GEMM', 0.0), 1e-12):.2f}")
        print("| " + " | ".join(row) + " |", flush=True)
    print(f"\nmethod={args.method!r}, float32, medians of {args.rounds} rounds; the timers add "
          "a few µs per call, charged to the phase they wrap.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
