#!/usr/bin/env python3
"""Out of core: convolve a 3-D volume stored on disk and back-propagate, on a Dask cluster.

The volume (a long 3-D scan, 4096 x 256 x 256 float32 = 1 GiB by default) is a
memory-mapped ``.npy`` file several times larger than the memory each worker is
allowed. Workers read their chunks from the file (the graph carries only the path),
compute every block with im2colbp, and write the results back to ``.npy`` files:

    x (1, 1, L, S, S) on disk -> y = conv(x, w, padding=1)             -> y.npy
                                 dx = conv_grad_input(δ = y, w)        -> dx.npy
                                 dw = conv_grad_weight(δ = y, x)       (a tree reduction)

With δ = y (the loss ½‖y‖²) two identities check the whole computation without ever
holding it in memory: ``<y, y> = <x, dx>`` (the input gradient is the adjoint) and
``<y, y> = <w, dw>`` (y is linear in w). A sub-volume is also compared with the
in-memory library. Each worker's peak resident memory (Linux ``VmHWM``) is printed
against the volume's size.

Memory: a task holds its block, its halo and its columns (27 x the block); a worker
also holds the input chunks that later blocks still need as halo — about one slab of
chunks across the short axes, which is why the default volume is long and thin. The
local workers are restarted between the passes (as separate jobs would be), so that
what one pass leaves in a worker's heap does not count against the next.

Usage::

    pip install "im2colbp[dask]"
    python scripts/dask_volume.py [--length 4096] [--side 256] [--chunk 32 64 64]
                                  [--workers 2] [--memory-limit 320MiB] [--dir DIR]
    python scripts/dask_volume.py --scheduler tcp://host:8786   # an existing cluster
                                  # (--dir must then be on a file system all workers share)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any, List, Optional, Tuple

import numpy as np

try:
    import dask
    import dask.array as da
    import distributed
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit("this example needs the dask extra: pip install 'im2colbp[dask]'") from None

import im2colbp as ib
import im2colbp.dask as ibd
from im2colbp.benchmark import peak_rss


class NpyFile:
    """A ``.npy`` file as an array-like that reads and writes slices with ``pread``/``pwrite``.

    Pickling it sends only the path, so a worker process reads (or writes) just the
    chunks it is given. No memory map: a mapped chunk of a large volume would touch a
    page per row of the chunk, and those pages count in the worker's resident memory.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        header = np.load(path, mmap_mode="r")  # only to read the header: shape, dtype, offset
        if not header.flags.c_contiguous:
            raise ValueError(f"{path}: a C-ordered array is expected")
        self.shape, self.dtype, self.ndim = header.shape, header.dtype, header.ndim
        self.offset = header.offset
        del header

    def _runs(self, index: Any):
        """(file offset, slice of the block) of each contiguous run along the last axis."""
        index = index if isinstance(index, tuple) else (index,)
        ranges = [range(*part.indices(size)) for part, size in zip(index, self.shape)]
        if any(r.step != 1 for r in ranges):
            raise ValueError("only slices with step 1 are supported")
        strides = np.cumprod((1,) + self.shape[:0:-1])[::-1] * self.dtype.itemsize
        block_shape = tuple(len(r) for r in ranges)
        for lead in np.ndindex(*block_shape[:-1]):
            start = sum((r.start + i) * st for r, i, st in zip(ranges, lead, strides))
            start += ranges[-1].start * self.dtype.itemsize
            yield self.offset + int(start), lead, block_shape

    def __getitem__(self, index: Any) -> np.ndarray:
        out = None
        with open(self.path, "rb", buffering=0) as stream:
            for start, lead, block_shape in self._runs(index):
                if out is None:
                    out = np.empty(block_shape, dtype=self.dtype)
                row = out[lead]
                stream.seek(start)
                stream.readinto(memoryview(row).cast("B"))
        return out

    def __setitem__(self, index: Any, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value, dtype=self.dtype)
        with open(self.path, "r+b", buffering=0) as stream:
            for start, lead, _ in self._runs(index):
                stream.seek(start)
                stream.write(memoryview(value[lead]).cast("B"))


def create(path: str, shape: Tuple[int, ...], dtype: Any, seed: int = 0) -> NpyFile:
    """A new ``.npy`` file of ``shape``: zeros, or random values written slab by slab."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    if seed is not None:
        rng = np.random.default_rng(seed)
        for i in range(shape[2]):  # one (S, S) slab at a time: never the whole volume
            array[:, :, i] = rng.standard_normal(array[:, :, i].shape, dtype=np.float32)
    array.flush()
    del array
    return NpyFile(path)


def peaks_by_worker(client: Any, reset: bool = False) -> dict:
    """``{worker name: peak bytes}`` (names survive a worker's restart, addresses do not)."""
    result = client.run(peak_rss, reset)
    info = client.scheduler_info()["workers"]
    return {str(info[address]["name"]) if address in info else address: value
            for address, value in result.items()}


def fresh(client: Any, expected: int) -> dict:
    """Restart the workers (a new process each: what the last pass left in the heap goes)
    and return their idle peaks, reset. Without a local cluster, only reset the peaks."""
    if expected:
        client.restart(wait_for_workers=True)
        client.wait_for_workers(expected)
    return peaks_by_worker(client, True)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def run(length: int = 4096, side: int = 256, chunk: Tuple[int, int, int] = (32, 64, 64),
        workers: int = 2, memory_limit: str = "320MiB",
        directory: Optional[str] = None, scheduler: Optional[str] = None,
        workspace: int = 16 * 2**20, log: Any = print) -> dict:
    """Run the example; return the sizes, the per-worker peaks and the checks."""
    log = log or (lambda line: None)
    config = None
    owned = directory is None
    directory = directory or tempfile.mkdtemp(prefix="im2colbp-volume-")
    os.makedirs(directory, exist_ok=True)
    shape = (1, 1, length, side, side)
    dtype = np.dtype(np.float32)
    volume_bytes = int(np.prod(shape)) * dtype.itemsize
    w = np.random.default_rng(1).standard_normal((1, 1, 3, 3, 3)).astype(dtype) / 27
    cluster = None
    try:
        if scheduler:
            client = distributed.Client(scheduler)
        else:
            # the memory limit is enforced by termination at 95 %; no pausing or spilling
            # (nothing worth spilling is kept: results go to disk as they are computed)
            # the memory limit is enforced by termination at 95 %; no pausing or spilling
            # (nothing worth spilling is kept: results go to disk as they are computed).
            # Set for the cluster's lifetime: a restarted worker reads the config again.
            # (and short bookkeeping logs: a worker keeps a record per task it ran)
            config = dask.config.set({"distributed.scheduler.worker-saturation": 1.0,
                                      "distributed.admin.low-level-log-length": 100,
                                      "distributed.worker.memory.pause": False,
                                      "distributed.worker.memory.spill": False,
                                      "distributed.worker.memory.target": False})
            cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                memory_limit=memory_limit, dashboard_address=":0")
            client = distributed.Client(cluster)
        limits = [info["memory_limit"] for info in client.scheduler_info()["workers"].values()]
        start = time.perf_counter()
        x_file = create(os.path.join(directory, "x.npy"), shape, dtype, seed=0)
        y_file = create(os.path.join(directory, "y.npy"), shape, dtype, seed=None)
        dx_file = create(os.path.join(directory, "dx.npy"), shape, dtype, seed=None)
        log(f"volume {shape} {dtype} = {mib(volume_bytes)} on disk in {directory} "
            f"({time.perf_counter() - start:.1f} s to write)")
        restarts = 0 if scheduler else workers  # restart local workers between the passes
        baseline = peaks_by_worker(client, True)  # idle workers; the peaks start here
        log(f"{len(limits)} workers, memory limit {mib(min(limits))} each "
            f"(the volume is {volume_bytes / min(limits):.1f}x that); chunks {chunk} "
            f"({np.prod(chunk) * dtype.itemsize / 2**10:,.0f} KiB); "
            f"workspace limit {mib(workspace)}")

        chunks = (1, 1) + tuple(chunk)
        x = da.from_array(x_file, chunks=chunks, asarray=False, inline_array=True)
        with ib.workspace_limit(workspace):
            y = ibd.conv(x, w, padding=1)
        start = time.perf_counter()
        da.store(y, y_file, lock=False, compute=True)
        forward = time.perf_counter() - start
        forward_peaks = peaks_by_worker(client)
        fresh(client, restarts)

        # δ = y, read back from disk
        dy = da.from_array(y_file, chunks=chunks, asarray=False, inline_array=True)
        with ib.workspace_limit(workspace):
            dx = ibd.conv_grad_input(dy, w, shape, padding=1)
            dw = ibd.conv_grad_weight(dy, x, w.shape, padding=1)
        # two passes, each streaming over δ once: computed together, the scheduler would
        # keep δ's chunks between the dx tasks and the dw tasks (memory ~ the volume)
        start = time.perf_counter()
        da.store(dx, dx_file, lock=False, compute=True)
        dx_peaks = peaks_by_worker(client)  # the peaks of each pass, separately
        fresh(client, restarts)
        dw_value = client.compute(dw, sync=True)
        backward = time.perf_counter() - start
        backward_peaks = peaks_by_worker(client)
        fresh(client, restarts)

        dx_read = da.from_array(dx_file, chunks=chunks, asarray=False, inline_array=True)
        yy, xdx = client.compute([(dy.astype(np.float64) ** 2).sum(),
                                  (x.astype(np.float64) * dx_read).sum()], sync=True)
        wdw = float(np.vdot(w.astype(np.float64), dw_value))
        middle = side // 2  # a corner of the volume (two borders) and the middle of an axis
        part = (slice(None), slice(None), slice(0, 20), slice(middle - 10, middle + 10),
                slice(side - 20, side))
        local = ib.conv(x_file[:, :, 0:21, middle - 11:middle + 11, side - 21:side], w,
                        padding=((1, 0), 0, (0, 1)))
        sub_error = float(np.abs(y_file[part] - local).max() / np.abs(local).max())
        check_peaks = peaks_by_worker(client)
        peaks = {a: max(phase.get(a, 0) for phase in (forward_peaks, dx_peaks, backward_peaks,
                                                      check_peaks)) for a in check_peaks}
        phases = dict(forward=forward_peaks, dx=dx_peaks, dw=backward_peaks, checks=check_peaks)
        client.close()
    finally:
        if cluster is not None:
            cluster.close()
        if config is not None:
            config.__exit__(None, None, None)  # restore the memory settings
        if owned:
            shutil.rmtree(directory, ignore_errors=True)

    log(f"forward {forward:.1f} s, backward (dx to disk + dw) {backward:.1f} s")
    log(f"<y, y> = {yy:.6e}   <x, dx> = {xdx:.6e}   <w, dw> = {wdw:.6e}   "
        f"(relative gaps {abs(xdx - yy) / yy:.1e}, {abs(wdw - yy) / yy:.1e}; float32)")
    log(f"a 20^3 sub-volume against the in-memory library: max relative error {sub_error:.1e}")
    log(f"{'worker':<8} {'idle':>8} {'forward':>8} {'dx':>8} {'dw':>8} {'peak':>8} "
        f"{'volume / peak':>14}")
    rows: List[dict] = []
    for address in sorted(peaks):
        rows.append(dict(worker=address, peak=peaks[address], start=baseline.get(address),
                         **{name: phase.get(address, 0) for name, phase in phases.items()}))
        log(f"{address:<8} {mib(baseline.get(address, 0)):>8} "
            + " ".join(f"{mib(phases[name].get(address, 0)):>8}"
                       for name in ("forward", "dx", "dw"))
            + f" {mib(peaks[address]):>8} {volume_bytes / peaks[address]:>13.1f}x")
    return dict(volume_bytes=volume_bytes, memory_limit=min(limits), workers=rows,
                yy=yy, xdx=xdx, wdw=wdw, sub_error=sub_error, forward=forward,
                backward=backward)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096, help="the long axis (4096)")
    parser.add_argument("--side", type=int, default=256, help="the two short axes (256)")
    parser.add_argument("--chunk", type=int, nargs=3, default=(32, 64, 64),
                        help="chunk shape (32 64 64)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (2)")
    parser.add_argument("--memory-limit", default="320MiB", help="per worker (320MiB)")
    parser.add_argument("--dir", default=None, help="where the .npy files go (a temp dir)")
    parser.add_argument("--scheduler", default=None, help="address of an existing scheduler")
    args = parser.parse_args(argv)
    if min(args.length, args.side) < 22 or min(args.chunk) < 1:
        parser.error("--length and --side must be at least 22 and --chunk positive")
    result = run(args.length, args.side, tuple(args.chunk), args.workers, args.memory_limit,
                 args.dir, args.scheduler)
    ok = (abs(result["xdx"] - result["yy"]) <= 1e-4 * result["yy"]
          and abs(result["wdw"] - result["yy"]) <= 1e-4 * result["yy"]
          and result["sub_error"] < 1e-5)
    print("checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
