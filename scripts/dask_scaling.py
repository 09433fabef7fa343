#!/usr/bin/env python3
"""Scaling of im2colbp.dask: throughput and per-worker peak memory with 1, 2, ... workers.

Two workloads, each a forward pass and both gradients (``conv``, ``conv_grad_input``,
``conv_grad_weight``):

batch
    a batch of images chunked along N (data parallel), ``(N, C, H, W)``;
spatial
    one large 3-D volume chunked along space (halos between chunks), ``(1, C, D, H, W)``.

For each worker count a fresh ``LocalCluster`` (worker processes, one thread each) runs
one warm-up and ``--repeats`` timed rounds; the median is reported, with the throughput
in input samples (voxels for the volume) per second, and each worker's peak resident
memory during the timed rounds (Linux ``VmHWM``, reset after the warm-up). Given
``--scheduler ADDRESS`` the same rounds run once on that cluster (all its workers).

Usage::

    pip install "im2colbp[dask]"
    python scripts/dask_scaling.py [--workers 1 2] [--repeats 3] [--scale 1.0]
    python scripts/dask_scaling.py --scheduler tcp://host:8786 --scale 8

The machine, the thread count and the sizes are printed with the table. Timings on a
shared machine vary; rerun on an idle one before quoting them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np

try:
    import dask
    import dask.array as da
    import distributed
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit("this example needs the dask extra: pip install 'im2colbp[dask]'") from None

import im2colbp.dask as ibd
from im2colbp.benchmark import peak_rss


def workloads(scale: float) -> Dict[str, Dict[str, Any]]:
    """The two workloads; ``scale`` multiplies the batch (and the volume's long axis)."""
    n = max(int(round(32 * scale)), 2)
    depth = max(int(round(64 * scale)), 8)
    return {
        "batch": dict(shape=(n, 8, 48, 48), chunks=(max(n // 8, 1), 8, 48, 48),
                      weight=(16, 8, 3, 3), kwargs=dict(padding=1), unit="images",
                      count=n),
        "spatial": dict(shape=(1, 2, depth, 64, 64), chunks=(1, 2, 16, 32, 32),
                        weight=(4, 2, 3, 3, 3), kwargs=dict(padding=1, stride=(2, 1, 1)),
                        unit="voxels", count=depth * 64 * 64),
    }


def graph(spec: Dict[str, Any]) -> List[Any]:
    """Lazy ``[sum(y), sum(dx), dw]`` for random x and δ (generated on the workers)."""
    rng = da.random.default_rng(0)
    x = rng.standard_normal(spec["shape"], chunks=spec["chunks"])
    w = np.random.default_rng(1).standard_normal(spec["weight"])
    y = ibd.conv(x, w, **spec["kwargs"])
    dy = rng.standard_normal(y.shape, chunks=y.chunks)
    dx = ibd.conv_grad_input(dy, w, x.shape, **spec["kwargs"])
    dw = ibd.conv_grad_weight(dy, x, w.shape, **spec["kwargs"])
    return [y.sum(), dx.sum(), dw]


def measure(client: Any, spec: Dict[str, Any], repeats: int) -> Dict[str, Any]:
    dask.compute(*graph(spec), scheduler=client.get)  # warm-up: imports, caches
    client.run(peak_rss, True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.compute(graph(spec), sync=True)
        times.append(time.perf_counter() - start)
    peaks = client.run(peak_rss)
    seconds = statistics.median(times)
    return dict(seconds=seconds, throughput=spec["count"] / seconds,
                peak=max(peaks.values()), workers=len(peaks))


def run(worker_counts: List[int], repeats: int = 3, scale: float = 1.0,
        scheduler: Optional[str] = None, log: Any = print) -> List[Dict[str, Any]]:
    specs = workloads(scale)
    rows = []
    targets = [None] if scheduler else worker_counts
    for count in targets:
        if scheduler:
            cluster, client = None, distributed.Client(scheduler)
        else:
            cluster = distributed.LocalCluster(n_workers=count, threads_per_worker=1,
                                               processes=True, dashboard_address=":0")
            client = distributed.Client(cluster)
        try:
            for name, spec in specs.items():
                row = dict(workload=name, **measure(client, spec, repeats))
                row["unit"] = spec["unit"]
                rows.append(row)
                if log:
                    log(f"{name:8} {row['workers']} worker(s): {row['seconds']:.3f} s, "
                        f"{row['throughput']:,.0f} {spec['unit']}/s, peak "
                        f"{row['peak'] / 2**20:.0f} MiB per worker")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return rows


def table(rows: List[Dict[str, Any]], scale: float) -> str:
    specs = workloads(scale)
    first = {row["workload"]: row for row in rows if row["workers"] == rows[0]["workers"]}
    lines = [
        "| workload | input | workers | median time | throughput | speed-up | "
        "peak memory per worker |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        spec = specs[row["workload"]]
        base = first[row["workload"]]
        lines.append(
            f"| {row['workload']} | {spec['shape']} in chunks {spec['chunks']} | "
            f"{row['workers']} | {row['seconds']:.2f} s | "
            f"{row['throughput']:,.0f} {row['unit']}/s | "
            f"{base['seconds'] / row['seconds']:.2f}x | {row['peak'] / 2**20:.0f} MiB |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="worker counts of the local clusters (1 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (3)")
    parser.add_argument("--scale", type=float, default=1.0, help="size multiplier (1.0)")
    parser.add_argument("--scheduler", default=None, help="address of an existing scheduler")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.scale <= 0 or min(args.workers) < 1:
        parser.error("--repeats, --scale and --workers must be positive")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"Python {platform.python_version()}, NumPy {np.__version__}, "
          f"dask {dask.__version__}; one thread per worker")
    rows = run(args.workers, args.repeats, args.scale, args.scheduler)
    print()
    print(table(rows, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
