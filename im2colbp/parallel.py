"""Threads for work that NumPy runs on one core: Winograd's blocks.

NumPy releases the GIL inside its copies and ufuncs, and BLAS runs a small
GEMM in the calling thread, so independent blocks of work — Winograd's copy
in, transforms, small GEMMs and copy out — run side by side in a few threads:
measured on 2 cores, resnet3x3's Winograd forward + backward went from 54 ms
to 45 ms and conv3d's from 60 ms to 37 ms. (Not so the lowering's copies
between its big GEMMs: after each GEMM OpenBLAS's own threads keep spinning on
the core a second copy thread needs, and the split made resnet3x3 7 % slower.)

:func:`parallel_for` is the one way the library does it. It never nests (a
part that calls it again runs its work inline), and runs small work inline: a
thread hand-off costs tens of microseconds. Worker threads see the caller's
context variables (the workspace limit, forced plans), and each has its own
scratch pool (:mod:`im2colbp.workspace` is per thread), freed when its part ends.

The number of threads is a context variable like the workspace limit:
:func:`get_thread_limit`, :func:`set_thread_limit`, :func:`thread_limit`.
Its default is the number of CPUs this process may run on (at most 8), or the
environment variable ``IM2COLBP_THREADS`` when set.
"""

from __future__ import annotations

import contextvars
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, List, Optional

import numpy as np

from .geometry import as_int
from .workspace import release_scratch

__all__ = [
    "MAX_DEFAULT_THREADS",
    "MINIMUM_SLAB_BYTES",
    "get_thread_limit",
    "set_thread_limit",
    "thread_limit",
    "parallel_for",
    "thread_buffer_bytes",
]

#: The default thread count is the number of usable CPUs, but at most this.
MAX_DEFAULT_THREADS = 8

#: A slab moves at least this many bytes, or the work runs in fewer threads
#: (a hand-off to a thread costs about as much as copying 64 KiB).
MINIMUM_SLAB_BYTES = 256 * 2**10


def thread_buffer_bytes() -> int:
    """Bytes NumPy's iteration buffers may take in each extra thread at once.

    A ufunc or copy that has to buffer (a cast, an unaligned or overlapping
    operand) allocates up to ``np.getbufsize()`` elements per operand while it
    runs. One thread holds one such set at a time; each further thread of
    :func:`parallel_for` may hold another, so the extra memory of a call may
    exceed the workspace limit by ``(threads - 1)`` times this (about 192 KiB).

    Examples
    --------
    >>> import numpy as np
    >>> thread_buffer_bytes() == np.getbufsize() * 3 * 8
    True
    """
    return np.getbufsize() * 3 * 8  # three operands of at most 8 bytes


def _default_threads() -> int:
    configured = os.environ.get("IM2COLBP_THREADS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ValueError(
                f"IM2COLBP_THREADS must be a positive integer, got {configured!r}") from None
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, usable))


_limit: ContextVar[Optional[int]] = ContextVar("im2colbp_thread_limit", default=None)


def get_thread_limit() -> int:
    """Threads :func:`parallel_for` may use (Winograd's blocks).

    BLAS's GEMMs use BLAS's own pool (see ``threadpoolctl``); this bounds
    im2colbp's own threads.

    Examples
    --------
    >>> import im2colbp as ib
    >>> ib.get_thread_limit() >= 1
    True
    """
    value = _limit.get()
    return _default_threads() if value is None else value


def set_thread_limit(threads: int) -> int:
    """Set the thread count of :func:`parallel_for`; return the previous one.

    Prefer :func:`thread_limit`, which restores the old value.

    Examples
    --------
    >>> import im2colbp as ib
    >>> old = ib.set_thread_limit(1)
    >>> ib.get_thread_limit()
    1
    >>> _ = ib.set_thread_limit(old)
    """
    previous = get_thread_limit()
    _limit.set(as_int(threads, "thread limit", 1))
    return previous


@contextmanager
def thread_limit(threads: int) -> Iterator[int]:
    """Bound the threads of :func:`parallel_for` inside the ``with`` block.

    Parameters
    ----------
    threads : int
        Positive number of threads; 1 runs everything in the calling thread.
        Results agree to rounding (Winograd's blocks may be cut differently).

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.ones((2, 3, 8, 8)); w = np.ones((4, 3, 3, 3))
    >>> with ib.thread_limit(1):
    ...     y = ib.conv(x, w, method="winograd")
    >>> bool(np.allclose(y, ib.conv(x, w, method="winograd")))
    True
    """
    token = _limit.set(as_int(threads, "thread limit", 1))
    try:
        yield threads
    finally:
        _limit.reset(token)


_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_size = 0
_pool_pid = 0
_inside = threading.local()


def _executor(workers: int) -> ThreadPoolExecutor:
    """The shared pool, with at least ``workers`` threads (a new one after a fork).

    A pool is never shut down while in use: when a caller needs more threads, a
    larger pool replaces it for later callers, and the old one, still serving the
    callers that hold it, lets its threads go once nothing refers to it.
    """
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid() or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=max(workers, _pool_size),
                                       thread_name_prefix="im2colbp")
            _pool_size, _pool_pid = max(workers, _pool_size), os.getpid()
        return _pool


def _forget_pool_after_fork() -> None:
    """In a forked child the parent's pool threads do not exist and its lock may be held."""
    global _pool_lock, _pool, _pool_size
    _pool_lock = threading.Lock()
    _pool, _pool_size = None, 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _run_marked(function: Callable[[slice], None], part: slice) -> None:
    _inside.active = True
    try:
        function(part)
    finally:
        _inside.active = False


def _run_in_worker(function: Callable[[slice], None], part: slice) -> None:
    """A part in a pool thread: its scratch is freed when it ends, so that no pool
    thread holds memory between calls that :func:`~im2colbp.release_scratch` cannot
    reach (allocating it again next time costs no page faults: the C allocator
    reuses what was freed)."""
    try:
        _run_marked(function, part)
    finally:
        release_scratch()


def _split(total: int, pieces: int) -> List[slice]:
    """``range(total)`` as ``pieces`` contiguous slices, sizes differing by at most 1."""
    base, extra = divmod(total, pieces)
    slices, start = [], 0
    for index in range(pieces):
        stop = start + base + (index < extra)
        slices.append(slice(start, stop))
        start = stop
    return slices


def parallel_for(function: Callable[[slice], None], total: int, work_bytes: int) -> None:
    """Run ``function(part)`` over contiguous parts of ``range(total)``, in threads.

    Parameters
    ----------
    function : callable
        Does the work of one part, given as a slice; parts must write disjoint
        memory. Its scratch comes from its own thread's pool.
    total : int
        The number of independent items (channels, samples, tile rows).
    work_bytes : int
        Bytes the whole work moves; it is split so that each part moves at
        least :data:`MINIMUM_SLAB_BYTES`, so small work runs inline.

    Notes
    -----
    The first part runs in the calling thread. An exception in any part is
    raised here after every part has finished. Inside a part, a nested call
    runs inline.

    Examples
    --------
    >>> import numpy as np
    >>> out = np.zeros(10**6)
    >>> def fill(part):
    ...     out[part] = np.arange(part.start, part.stop)
    >>> parallel_for(fill, out.size, out.nbytes)
    >>> bool(np.array_equal(out, np.arange(10**6)))
    True
    """
    if total <= 0:
        return
    pieces = min(total, get_thread_limit(), max(1, work_bytes // MINIMUM_SLAB_BYTES))
    if pieces <= 1 or getattr(_inside, "active", False):
        function(slice(0, total))
        return
    parts = _split(total, pieces)
    pool = _executor(pieces - 1)
    futures: List[Future] = []
    inline = [parts[0]]
    for part in parts[1:]:
        try:
            futures.append(pool.submit(contextvars.copy_context().run, _run_in_worker,
                                       function, part))
        except RuntimeError:  # the interpreter is shutting down: no new threads
            inline.append(part)
    error: Optional[BaseException] = None
    for part in inline:
        try:
            _run_marked(function, part)
        except BaseException as exc:  # noqa: BLE001 - re-raised after the other parts end
            error = error or exc
    for future in futures:
        try:
            future.result()
        except BaseException as exc:  # noqa: BLE001
            error = error or exc
    if error is not None:
        raise error
