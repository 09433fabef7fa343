"""Benchmark suite: our lowering against its own GEMMs, PyTorch CPU and direct convolution.

Every ratio in the table is measured side by side in one process: the timers
of one configuration run interleaved (ours, GEMM floor, torch, ...) for
``repeats`` rounds and the table reports medians, so that a noisy shared
machine slows all contestants alike. Speed is never asserted in the tests;
it lives here.

Run ``python scripts/bench.py`` or ``im2colbp bench`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import reference
from .convolution import conv_backward, conv_forward
from .geometry import conv_geometry
from .lowering import im2col
from .workspace import get_workspace_limit

__all__ = ["CONFIGS", "BenchResult", "run_suite", "main"]


@dataclass(frozen=True)
class Config:
    input_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    gemm_bound: bool = True  # the 1.3x GEMM-floor target applies


#: The suite of issue 5 (NCHW, float32).
CONFIGS: Dict[str, Config] = {
    "teach": Config((1, 3, 32, 32), (8, 3, 3, 3), dict(stride=1, padding=1), gemm_bound=False),
    "resnet3x3": Config((8, 64, 56, 56), (64, 64, 3, 3), dict(stride=1, padding=1)),
    "resnet_s2": Config((8, 128, 28, 28), (256, 128, 3, 3), dict(stride=2, padding=1)),
    "pointwise": Config((8, 256, 14, 14), (1024, 256, 1, 1)),
    "stem7x7": Config((4, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    "depthwise": Config((8, 128, 28, 28), (128, 1, 3, 3), dict(stride=1, padding=1, groups=128),
                        gemm_bound=False),
    "dilated": Config((4, 64, 32, 32), (64, 64, 3, 3), dict(dilation=2, padding=2)),
    "conv1d": Config((8, 32, 16000), (32, 32, 9), dict(stride=2, padding=4)),
    "conv3d": Config((2, 16, 16, 32, 32), (32, 16, 3, 3, 3), dict(stride=1, padding=1)),
}


@dataclass
class BenchResult:
    name: str
    forward_ms: float
    forward_backward_ms: float
    gemm_floor_ms: float
    torch_ms: Optional[float]
    direct_ms: Optional[float]
    peak_extra_mib: float
    memory_bound_mib: float
    gemm_bound: bool

    @property
    def vs_floor(self) -> float:
        return self.forward_backward_ms / self.gemm_floor_ms

    @property
    def vs_torch(self) -> Optional[float]:
        return None if self.torch_ms is None else self.forward_backward_ms / self.torch_ms

    @property
    def vs_direct(self) -> Optional[float]:
        return None if self.direct_ms is None else self.forward_backward_ms / self.direct_ms


# --------------------------------------------------------------------------
# the contestants
# --------------------------------------------------------------------------
def _arrays(config: Config, dtype) -> Tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(config.input_shape).astype(dtype)
    w = (rng.standard_normal(config.weight_shape) * 0.1).astype(dtype)
    b = rng.standard_normal(config.weight_shape[0]).astype(dtype)
    y = conv_forward(x, w, b, **config.kwargs)[0]
    dy = rng.standard_normal(y.shape).astype(dtype)
    return x, w, b, dy


def _ours(config: Config, x, w, b, dy) -> Tuple[Callable[[], None], Callable[[], None]]:
    def forward():
        conv_forward(x, w, b, **config.kwargs)

    def forward_backward():
        _, ctx = conv_forward(x, w, b, **config.kwargs)
        conv_backward(dy, ctx)

    return forward, forward_backward


def _gemm_floor(config: Config, x, w, dy) -> Callable[[], None]:
    """The three bare GEMMs of forward + backward on pre-built matrices laid out for
    the fastest formulation (the whole batch in one GEMM per group):
    Y = W·C, dW = δ·Cᵀ and dC = Wᵀ·δ, with C the (C_in/G·∏K, N·L) columns."""
    geometry = conv_geometry(x.shape, w.shape, **config.kwargs)
    groups = geometry.groups
    n, positions = geometry.batch, geometry.window.out_volume
    rows = geometry.column_rows // groups
    filters = geometry.out_channels // groups
    kernel = geometry.window.kernel_size
    kw = {k: v for k, v in config.kwargs.items() if k in ("stride", "padding", "dilation")}
    cols = im2col(x, kernel, **kw).reshape(n, groups, rows, positions)
    cols = np.ascontiguousarray(cols.transpose(1, 2, 0, 3)).reshape(groups, rows, n * positions)
    cols_t = np.ascontiguousarray(cols.transpose(0, 2, 1))
    w_g = np.ascontiguousarray(w.reshape(groups, filters, rows))
    w_gt = np.ascontiguousarray(w_g.transpose(0, 2, 1))
    delta = dy.reshape(n, groups, filters, positions).transpose(1, 2, 0, 3)
    delta = np.ascontiguousarray(delta).reshape(groups, filters, n * positions)
    y = np.empty((groups, filters, n * positions), dtype=x.dtype)
    dw = np.empty((groups, filters, rows), dtype=x.dtype)
    dcols = np.empty_like(cols)

    def floor():
        np.matmul(w_g, cols, out=y)
        np.matmul(delta, cols_t, out=dw)
        np.matmul(w_gt, delta, out=dcols)

    return floor


def _torch(config: Config, x, w, b, dy, threads: int) -> Optional[Callable[[], None]]:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    rank = len(config.weight_shape) - 2
    function = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
                3: torch.nn.functional.conv3d}.get(rank)
    if function is None:
        return None
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    dyt = torch.tensor(dy)

    def forward_backward():
        xt.grad = wt.grad = bt.grad = None
        function(xt, wt, bt, **config.kwargs).backward(dyt)

    return forward_backward


def _direct(config: Config, x, w, b, dy) -> Optional[Callable[[], None]]:
    """The clarity-first reference; only where it runs in reasonable time."""
    work = math.prod(dy.shape[2:]) * dy.shape[0]  # its Python loop runs per output position
    if work > 5000:
        return None

    def forward_backward():
        reference.conv(x, w, b, **config.kwargs)
        reference.conv_grad_input(dy, w, x.shape, **config.kwargs)
        reference.conv_grad_weight(dy, x, w.shape, **config.kwargs)

    return forward_backward


def _peak_extra_bytes(function: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        function()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


def _median_ms(samples: List[float]) -> float:
    return float(np.median(samples)) * 1e3


def bench_config(name: str, config: Config, *, repeats: int, dtype=np.float32,
                 threads: int = 2, use_torch: bool = True) -> BenchResult:
    x, w, b, dy = _arrays(config, dtype)
    forward, forward_backward = _ours(config, x, w, b, dy)
    timers: Dict[str, Callable[[], None]] = {
        "forward": forward,
        "forward_backward": forward_backward,
        "floor": _gemm_floor(config, x, w, dy),
    }
    torch_timer = _torch(config, x, w, b, dy, threads) if use_torch else None
    if torch_timer is not None:
        timers["torch"] = torch_timer
    direct_timer = _direct(config, x, w, b, dy)
    if direct_timer is not None:
        timers["direct"] = direct_timer
    for timer in timers.values():  # warm-up: first-touch page faults, lazy init
        timer()
    samples: Dict[str, List[float]] = {key: [] for key in timers}
    for _ in range(repeats):
        for key, timer in timers.items():
            start = time.perf_counter()
            timer()
            samples[key].append(time.perf_counter() - start)
    peak = _peak_extra_bytes(forward_backward)
    arrays = x.nbytes + dy.nbytes + w.nbytes
    return BenchResult(
        name=name,
        forward_ms=_median_ms(samples["forward"]),
        forward_backward_ms=_median_ms(samples["forward_backward"]),
        gemm_floor_ms=_median_ms(samples["floor"]),
        torch_ms=_median_ms(samples["torch"]) if "torch" in samples else None,
        direct_ms=_median_ms(samples["direct"]) if "direct" in samples else None,
        peak_extra_mib=peak / 2**20,
        memory_bound_mib=(get_workspace_limit() + 4 * arrays) / 2**20,
        gemm_bound=config.gemm_bound,
    )


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------
def blas_info() -> List[dict]:
    try:
        import threadpoolctl
    except ImportError:
        return [{"note": "threadpoolctl not installed: BLAS kernel unknown"}]
    keys = ("internal_api", "architecture", "num_threads", "version")
    return [{k: info.get(k) for k in keys} for info in threadpoolctl.threadpool_info()]


def _fmt(value: Optional[float], spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, spec)


def format_table(results: Sequence[BenchResult]) -> str:
    header = (f"{'config':<10} {'fwd ms':>8} {'f+b ms':>8} {'floor ms':>8} {'/floor':>7} "
              f"{'torch ms':>8} {'/torch':>7} {'/direct':>8} {'peak MiB':>9} {'bound':>7}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.name:<10} {r.forward_ms:8.2f} {r.forward_backward_ms:8.2f} "
            f"{r.gemm_floor_ms:8.2f} {r.vs_floor:7.2f}{'' if r.gemm_bound else '*'} "
            f"{_fmt(r.torch_ms, '8.2f')} {_fmt(r.vs_torch, '7.2f')} {_fmt(r.vs_direct, '8.3f')} "
            f"{r.peak_extra_mib:9.1f} {r.memory_bound_mib:7.0f}"
        )
    with_torch = [r.vs_torch for r in results if r.vs_torch is not None]
    if with_torch:
        geo = math.exp(sum(math.log(v) for v in with_torch) / len(with_torch))
        lines.append(f"geometric mean ours/torch: {geo:.2f} over {len(with_torch)} configs")
    lines.append("* not GEMM-bound (no /floor target). Times are medians of interleaved runs.")
    return "\n".join(lines)


def run_suite(names: Sequence[str], *, repeats: int, dtype=np.float32, threads: int = 2,
              use_torch: bool = True, progress=sys.stderr) -> List[BenchResult]:
    results = []
    for index, name in enumerate(names, 1):
        if progress is not None:
            print(f"[{index}/{len(names)}] {name} ...", file=progress, flush=True)
        results.append(bench_config(name, CONFIGS[name], repeats=repeats, dtype=dtype,
                                    threads=threads, use_torch=use_torch))
    return results


def _plot(results: Sequence[BenchResult], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in results]
    positions = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(positions - 0.2, [r.vs_floor for r in results], 0.4, label="ours / GEMM floor")
    ax.bar(positions + 0.2, [r.vs_torch or 0 for r in results], 0.4, label="ours / PyTorch CPU")
    ax.axhline(1.3, color="C0", linestyle=":", linewidth=1)
    ax.axhline(1.5, color="C1", linestyle=":", linewidth=1)
    ax.set_xticks(positions, names, rotation=30)
    ax.set_ylabel("time ratio (forward + backward)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


DESCRIPTION = (
    "Time forward+backward of the lowering against its bare GEMMs, PyTorch CPU (if installed)\n"
    "and the direct reference: medians of interleaved runs, printed as a table of ratios."
)
EPILOG = "examples:\n  im2colbp bench --quick\n  im2colbp bench --configs resnet3x3 depthwise " \
    "--repeats 9 --json bench.json --plot bench.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``scripts/bench.py`` and ``im2colbp bench``)."""
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        metavar="NAME", help=f"subset of: {', '.join(CONFIGS)}")
    parser.add_argument("--quick", action="store_true", help="3 repeats, the small configs only")
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds (default 11)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="draw the ratios (needs matplotlib)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the suite for parsed arguments; print the table; return 0 (2 on bad options)."""
    names = args.configs
    repeats = args.repeats
    if args.quick:
        repeats = 3
        if args.configs == list(CONFIGS):
            names = ["teach", "pointwise", "depthwise", "dilated"]
    if repeats < 1:
        print("bench: error: --repeats must be positive", file=sys.stderr)
        return 2
    results = run_suite(names, repeats=repeats, dtype=np.dtype(args.dtype), threads=args.threads,
                        use_torch=not args.no_torch)
    blas = blas_info()
    print(f"BLAS: {blas}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}  numpy {np.__version__}  "
          f"{platform.machine()}  {os.cpu_count()} cpus  dtype {args.dtype}  repeats {repeats}")
    print(format_table(results))
    if args.json:
        payload = {
            "blas": blas, "numpy": np.__version__, "dtype": args.dtype, "repeats": repeats,
            "results": [dict(asdict(r), vs_floor=r.vs_floor, vs_torch=r.vs_torch) for r in results],
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    if args.plot:
        _plot(results, args.plot)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
