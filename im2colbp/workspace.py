"""The workspace limit: how many bytes of column buffer one call may hold.

im2col multiplies the input by the kernel volume, so the column matrix of a
whole batch can be far larger than the batch itself. Every lowering call
therefore works through the batch in *chunks* of samples whose columns fit
the limit. A single sample whose columns exceed the limit still runs (a chunk
of one) rather than failing.

The limit is a :class:`contextvars.ContextVar`, so threads and asyncio tasks
each see their own value.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Dict, Iterator, Sequence, Tuple

import numpy as np

from .geometry import as_int

__all__ = [
    "DEFAULT_WORKSPACE_LIMIT",
    "scratch",
    "release_scratch",
    "retained_scratch_bytes",
    "scratch_scope",
    "get_workspace_limit",
    "set_workspace_limit",
    "workspace_limit",
    "samples_per_chunk",
    "chunk_slices",
]

#: 256 MiB: an upper bound that is harmless on a laptop. (For speed, chunks are
#: kept smaller still, about 4 MiB of columns, so that they stay in cache.)
DEFAULT_WORKSPACE_LIMIT = 256 * 2**20

_limit: ContextVar[int] = ContextVar("im2colbp_workspace_limit", default=DEFAULT_WORKSPACE_LIMIT)


def get_workspace_limit() -> int:
    """Return the current bound on the column buffer, in bytes.

    Examples
    --------
    >>> import im2colbp as ib
    >>> ib.get_workspace_limit() == ib.DEFAULT_WORKSPACE_LIMIT
    True
    """
    return _limit.get()


def set_workspace_limit(nbytes: int) -> int:
    """Set the bound on the column buffer (bytes) and return the previous one.

    Prefer :func:`workspace_limit`, which restores the old value.

    Examples
    --------
    >>> import im2colbp as ib
    >>> old = ib.set_workspace_limit(2**20)
    >>> ib.get_workspace_limit()
    1048576
    >>> _ = ib.set_workspace_limit(old)
    """
    previous = _limit.get()
    _limit.set(as_int(nbytes, "workspace limit (bytes)", 1))
    return previous


@contextmanager
def workspace_limit(nbytes: int) -> Iterator[int]:
    """Bound the column buffer of every lowering inside the ``with`` block.

    Parameters
    ----------
    nbytes : int
        Positive number of bytes the column buffer of one call may use.

    Notes
    -----
    The batch is split into chunks of at most ``max(1, nbytes // bytes_per_sample)``
    samples, where ``bytes_per_sample`` is the size of one sample's columns,
    ``C_in * prod(K) * prod(O) * itemsize`` (``prod(O)`` slightly larger for
    the widened layout of :mod:`im2colbp.wide_lowering`); for speed, chunks
    are capped at about 4 MiB of columns even under a larger limit. Results do
    not depend on the limit (tests check they agree to rounding).

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> x = np.ones((4, 1, 5, 5)); w = np.ones((1, 1, 3, 3))
    >>> with ib.workspace_limit(1000):        # one sample's columns: 9*9*8 = 648 bytes
    ...     y = ib.conv(x, w)
    >>> float(y[3, 0, 0, 0])
    9.0
    """
    token = _limit.set(as_int(nbytes, "workspace limit (bytes)", 1))
    try:
        yield nbytes
    finally:
        _limit.reset(token)


def samples_per_chunk(batch: int, bytes_per_sample: int, limit: int | None = None) -> int:
    """How many samples one chunk may hold: at least 1, at most ``batch``.

    Examples
    --------
    >>> samples_per_chunk(10, 300, limit=1000)
    3
    >>> samples_per_chunk(10, 5000, limit=1000)   # a chunk of one runs above the limit
    1
    """
    if limit is None:
        limit = get_workspace_limit()
    if bytes_per_sample <= 0:
        return max(batch, 1)
    return max(1, min(batch, limit // bytes_per_sample))


def chunk_slices(batch: int, chunk: int) -> Iterator[slice]:
    """Consecutive slices of ``range(batch)`` of length ``chunk`` (last may be shorter).

    Examples
    --------
    >>> list(chunk_slices(5, 2))
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    for start in range(0, batch, chunk):
        yield slice(start, min(start + chunk, batch))


# --------------------------------------------------------------------------
# reusable scratch buffers
# --------------------------------------------------------------------------
#: Each thread keeps at most this many bytes of scratch between calls (and never
#: more than the workspace limit in force), so that repeated convolutions do not
#: pay the kernel's page faults for fresh memory every time; the rest is freed
#: when its pass ends. :func:`retained_scratch_bytes` tells how much is held,
#: :func:`release_scratch` frees it.
RETAINED_SCRATCH_BYTES = 64 * 2**20

_scratch = threading.local()


def _buffers() -> Dict[str, np.ndarray]:
    try:
        return _scratch.buffers
    except AttributeError:
        _scratch.buffers = {}
        return _scratch.buffers


def _views() -> Dict[str, Tuple[Any, Any, np.ndarray]]:
    """The last view :func:`scratch` gave out per name, ``(shape, dtype, view)``: a
    repeated request returns it again. Every entry's buffer is in :func:`_buffers`
    (an entry leaves with its buffer), so the views hold no memory of their own."""
    try:
        return _scratch.views
    except AttributeError:
        _scratch.views = {}
        return _scratch.views


def _trim(cap: int) -> None:
    """Drop kept buffers, largest first, until they hold at most ``cap`` bytes."""
    buffers = _buffers()
    total = 0
    for buffer in buffers.values():
        total += buffer.nbytes
    if total <= cap:  # the common case: nothing to drop
        return
    views = _views()
    for name in sorted(buffers, key=lambda key: buffers[key].nbytes, reverse=True):
        if total <= cap:
            break
        total -= buffers.pop(name).nbytes
        views.pop(name, None)


class scratch_scope:
    """Bound the scratch of one pass, and what stays allocated after it.

    Entering the outermost block drops kept buffers until they and the
    ``planned_bytes`` the pass will take fit the workspace limit together;
    inside, buffers are reused freely (one per name, grown as needed); when
    the outermost block ends, what is kept is trimmed to
    ``min(RETAINED_SCRATCH_BYTES, workspace limit)`` bytes, largest first.

    (A class rather than a generator-based context manager: every pass enters
    one, and for a small convolution its cost is part of the per-call overhead.)
    """

    __slots__ = ("planned_bytes", "depth")

    def __init__(self, planned_bytes: int = 0) -> None:
        self.planned_bytes = planned_bytes
        self.depth = 0

    def __enter__(self) -> None:
        state = _scratch.__dict__
        depth = state.get("depth", 0)
        self.depth = depth
        if depth == 0:
            _trim(max(0, _limit.get() - self.planned_bytes))
        state["depth"] = depth + 1

    def __exit__(self, *exc_info: Any) -> None:
        depth = self.depth
        _scratch.depth = depth
        if depth == 0:
            _trim(min(RETAINED_SCRATCH_BYTES, _limit.get()))


def scratch(name: str, shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A reusable buffer of ``shape`` and ``dtype`` for this thread; contents undefined.

    The same ``name`` returns the same memory on the next call, so a caller
    must never hand a scratch array (or a view of it) to its own caller. Use
    it inside :func:`scratch_scope`, which bounds what stays allocated after.
    """
    views = _views()
    last = views.get(name)
    if last is not None and last[0] == shape and last[1] == dtype:
        return last[2]  # the same request as last time: the same view
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    buffers = _buffers()
    buffer = buffers.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffers.pop(name, None)
        views.pop(name, None)
        last = None
        del buffer  # free the smaller buffer before allocating its successor
        buffer = np.empty(max(nbytes, 1), dtype=np.uint8)
        buffers[name] = buffer
    view = buffer[:nbytes].view(dtype).reshape(shape)
    views[name] = (tuple(shape), dtype, view)
    return view


def retained_scratch_bytes() -> int:
    """Bytes of scratch this thread keeps between calls (at most 64 MiB).

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> _ = ib.conv(np.ones((1, 1, 8, 8)), np.ones((1, 1, 3, 3)))
    >>> 0 < ib.retained_scratch_bytes() <= 64 * 2**20
    True
    """
    return sum(b.nbytes for b in _buffers().values())


def release_scratch() -> int:
    """Free the scratch buffers this thread keeps between calls; return their bytes.

    Every lowering call takes its buffers (columns, padded input, GEMM
    operands) from a per-thread pool and leaves them there for the next call
    of the same or a smaller geometry, up to 64 MiB per thread in all. Call
    this after a burst of large convolutions to give that memory back; the
    next call simply allocates again. Other threads' pools are untouched.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> _ = ib.conv(np.ones((1, 1, 8, 8)), np.ones((1, 1, 3, 3)))
    >>> ib.release_scratch() > 0, ib.retained_scratch_bytes()
    (True, 0)
    """
    held = retained_scratch_bytes()
    _scratch.__dict__.pop("views", None)
    _scratch.__dict__.pop("buffers", None)
    return held
