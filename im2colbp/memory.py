"""The memory bound: refuse, before allocating, a call whose arrays cannot fit.

A convolution's arrays can be far larger than its inputs (a stride of 10⁵ in a
transposed convolution, a dilation of 2³¹ with ``padding='same'``, a
broadcast input that occupies no memory at all). Rather than letting NumPy's
allocator fail halfway through — or the operating system start swapping —
every entry point adds up the bytes its results and scratch arrays need and
calls :func:`check_allocation` first, which raises :class:`AllocationError`
naming the argument that makes the call large.

The bound is, by default, what this process can still get: the physical
memory of the machine (or of its cgroup, when a container caps it), and,
when a soft ``RLIMIT_AS`` is set, that limit minus the process's current
virtual size. It is computed on every call, cheaply (a ``getrlimit`` and,
only under a limit, one read of ``/proc/self/statm``); nothing is allocated.
:func:`memory_limit` replaces it within a ``with`` block (a
:class:`contextvars.ContextVar`: each thread and asyncio task has its own).

This module imports only the standard library, so that every other module
(:mod:`im2colbp.geometry` included) may use it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Optional, Tuple

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]  # no module there: None, tested before use

__all__ = [
    "AllocationError",
    "memory_limit",
    "get_memory_limit",
    "available_memory",
    "memory_bound",
    "check_allocation",
    "format_bytes",
]


class AllocationError(MemoryError, ValueError):
    """A call was refused, before allocating, because its arrays cannot fit in memory.

    Both a :class:`MemoryError` (it is one, raised early) and a
    :class:`ValueError` (the arguments ask for the impossible), so
    ``except MemoryError`` and ``except ValueError`` both catch it.

    Examples
    --------
    >>> import im2colbp as ib
    >>> from im2colbp.memory import AllocationError
    >>> issubclass(AllocationError, MemoryError), issubclass(AllocationError, ValueError)
    (True, True)
    """


_user_limit: ContextVar[Optional[int]] = ContextVar("im2colbp_memory_limit", default=None)


def format_bytes(nbytes: int) -> str:
    """``nbytes`` in binary units with three significant digits.

    Examples
    --------
    >>> from im2colbp.memory import format_bytes
    >>> format_bytes(512), format_bytes(3 * 2**20), format_bytes(80 * 10**9)
    ('512 B', '3.00 MiB', '74.5 GiB')
    """
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024 or unit == "EiB":
            break
        value /= 1024
    if unit == "B":
        return f"{int(nbytes)} B"
    digits = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{digits}f} {unit}"


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as handle:
            text = handle.read().split()
    except OSError:
        return None
    if not text or not text[0].isdigit():
        return None  # e.g. cgroup v2 'max'
    return int(text[0])


def _machine_memory() -> Tuple[int, str]:
    """(bytes, where from): physical memory, or the cgroup's cap when smaller."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        physical = 0
    best, source = (physical, "the machine's physical memory") if physical > 0 else (0, "")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        cap = _read_int(path)
        if cap is not None and 0 < cap and (best == 0 or cap < best):
            best, source = cap, f"the container's memory cap ({path})"
    return best, source


_MACHINE = _machine_memory()  # fixed for the life of the process


def _address_space_left() -> Optional[int]:
    """Soft RLIMIT_AS minus the current virtual size, or None when no limit is set."""
    if resource is None:  # pragma: no cover
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    pages = _read_int("/proc/self/statm")  # first field: total program size, in pages
    used = 0 if pages is None else pages * os.sysconf("SC_PAGE_SIZE")
    return max(soft - used, 0)


def available_memory() -> Tuple[int, str]:
    """(bytes, description) of the bound that applies now, before any user limit.

    The smaller of the machine's (or container's) memory and, under a soft
    ``RLIMIT_AS``, that limit minus the virtual size already in use. A bound
    of 0 bytes means "unknown" and disables the check.

    Examples
    --------
    >>> from im2colbp.memory import available_memory
    >>> nbytes, where = available_memory()
    >>> nbytes > 0 and isinstance(where, str)
    True
    """
    best, source = _MACHINE
    left = _address_space_left()
    if left is not None and (best == 0 or left < best):
        best, source = left, "the address space left under this process's RLIMIT_AS"
    return best, source


def get_memory_limit() -> int:
    """Return the bound on the memory of one call, in bytes.

    The value set by :func:`memory_limit` if one is active, else
    :func:`available_memory`.

    Examples
    --------
    >>> import im2colbp.memory as mem
    >>> with mem.memory_limit(2**30):
    ...     mem.get_memory_limit()
    1073741824
    """
    user = _user_limit.get()
    return available_memory()[0] if user is None else user


def memory_bound() -> Tuple[int, str]:
    """(bytes, what sets them): the bound :func:`check_allocation` applies now.

    Examples
    --------
    >>> from im2colbp.memory import memory_bound, memory_limit
    >>> with memory_limit(2**20):
    ...     memory_bound()
    (1048576, 'the memory_limit in effect')
    """
    user = _user_limit.get()
    if user is not None:
        return user, "the memory_limit in effect"
    return available_memory()


@contextmanager
def memory_limit(nbytes: Optional[int]) -> Iterator[Optional[int]]:
    """Bound the total memory (results and scratch) of every call inside the block.

    Parameters
    ----------
    nbytes : int or None
        Positive number of bytes, which *replaces* the default bound (it may
        be larger, e.g. when swap or overcommit is wanted). ``None`` restores
        the default (the memory this process can still get) inside the block.

    Yields
    ------
    nbytes : int or None
        The limit now in effect.

    Notes
    -----
    This is a refusal threshold, not the chunking bound: the extra memory a
    call may use for its columns is :func:`im2colbp.workspace_limit`. A call
    whose results and scratch together exceed ``nbytes`` raises
    :class:`AllocationError` before allocating anything.

    Examples
    --------
    >>> import numpy as np, im2colbp as ib
    >>> from im2colbp.memory import memory_limit, AllocationError
    >>> with memory_limit(1000):
    ...     try:
    ...         ib.im2col(np.ones((1, 1, 100)), 3)
    ...     except AllocationError as error:
    ...         print(str(error)[:46])
    im2col: the columns (1, 3, 98) would need 2.30
    """
    if nbytes is not None:
        if isinstance(nbytes, bool) or not hasattr(nbytes, "__index__"):
            raise TypeError(
                f"memory limit (bytes) must be an int or None, got {nbytes!r} of type "
                f"{type(nbytes).__name__}"
            )
        nbytes = int(nbytes.__index__())
        if nbytes < 1:
            raise ValueError(f"memory limit (bytes) must be positive, got {nbytes}")
    token = _user_limit.set(nbytes)
    try:
        yield nbytes
    finally:
        _user_limit.reset(token)


def check_allocation(nbytes: int, argument: str, detail: str) -> None:
    """Raise :class:`AllocationError` if ``nbytes`` more bytes cannot fit.

    Parameters
    ----------
    nbytes : int
        Everything the call is about to allocate (results and scratch), in bytes.
    argument : str
        The argument that makes it large, e.g. ``"stride"`` or ``"padding"``.
    detail : str
        What is being allocated, e.g. ``"conv_transpose: the output (1, 1, 100003, 100003)"``.

    Examples
    --------
    >>> from im2colbp.memory import AllocationError, check_allocation, memory_limit
    >>> check_allocation(1000, "x", "a small array")
    >>> with memory_limit(2**20):
    ...     try:
    ...         check_allocation(2**30, "padding", "im2col: the padded input")
    ...     except AllocationError as error:
    ...         print(error)  # doctest: +NORMALIZE_WHITESPACE
    im2col: the padded input would need 1.00 GiB (1,073,741,824 bytes), more than the
    1.00 MiB available (the memory_limit in effect); it is large because of padding
    """
    limit, source = memory_bound()
    if limit <= 0 or nbytes <= limit:
        return
    raise AllocationError(
        f"{detail} would need {format_bytes(nbytes)} ({int(nbytes):,} bytes), more than the "
        f"{format_bytes(limit)} available ({source}); it is large because of {argument}"
    )
