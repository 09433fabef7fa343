"""parallel_for: every item once, in slabs, errors raised, context and nesting respected."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import im2colbp as ib
from im2colbp import parallel
from im2colbp.parallel import MINIMUM_SLAB_BYTES, parallel_for


def test_every_item_once_in_contiguous_parts():
    seen = []
    lock = threading.Lock()
    all_three = threading.Barrier(3, timeout=10)  # fails unless three threads run at once

    def work(part):
        all_three.wait()
        with lock:
            seen.append((part.start, part.stop, threading.get_ident()))

    with ib.thread_limit(3):
        parallel_for(work, 10, 10 * MINIMUM_SLAB_BYTES)
    parts = sorted((start, stop) for start, stop, _ in seen)
    assert parts == [(0, 4), (4, 7), (7, 10)]
    assert len({ident for *_, ident in seen}) == 3  # three threads ran


def test_small_work_and_one_thread_run_inline():
    idents = []
    parallel_for(lambda part: idents.append((part, threading.get_ident())), 8, 10)
    assert idents == [(slice(0, 8), threading.get_ident())]
    idents.clear()
    with ib.thread_limit(1):
        parallel_for(lambda part: idents.append(part), 8, 10**9)
    assert idents == [slice(0, 8)]


def test_nested_calls_run_inline_and_context_reaches_workers():
    inner = []

    def work(part):
        inner.append(ib.get_workspace_limit())
        parallel_for(lambda p: inner.append(p), 4, 10**9)

    with ib.thread_limit(2), ib.workspace_limit(12345):
        parallel_for(work, 2, 10**9)
    limits = [item for item in inner if isinstance(item, int)]
    assert limits == [12345, 12345]
    assert sorted((p.start, p.stop) for p in inner if isinstance(p, slice)) == [(0, 4), (0, 4)]


def test_an_error_in_a_worker_is_raised_after_every_part_ends():
    done = []

    def work(part):
        if part.start > 0:
            raise KeyError("worker")
        done.append(part)

    with ib.thread_limit(2), pytest.raises(KeyError, match="worker"):
        parallel_for(work, 2, 10**9)
    assert done == [slice(0, 1)]


def test_thread_limit_validates_and_restores():
    before = ib.get_thread_limit()
    with pytest.raises(ValueError, match="thread limit"):
        ib.set_thread_limit(0)
    with ib.thread_limit(5):
        assert ib.get_thread_limit() == 5
    assert ib.get_thread_limit() == before


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("IM2COLBP_THREADS", "3")
    assert parallel._default_threads() == 3
    monkeypatch.setenv("IM2COLBP_THREADS", "many")
    with pytest.raises(ValueError, match="IM2COLBP_THREADS"):
        parallel._default_threads()


def test_pool_threads_keep_no_scratch_between_calls():
    from im2colbp.workspace import retained_scratch_bytes, scratch

    held = []

    def work(part):
        scratch("test.parallel", (1000,), np.float64)[...] = 1
        held.append((threading.get_ident(), retained_scratch_bytes()))

    with ib.thread_limit(2):
        parallel_for(work, 2, 10**9)
        idents = []
        parallel_for(lambda part: idents.append((threading.get_ident(),
                                                  retained_scratch_bytes())), 2, 10**9)
    caller = threading.get_ident()
    assert all(nbytes >= 8000 for _, nbytes in held)  # each part had its buffer
    assert [nbytes for ident, nbytes in idents if ident != caller] == [0]  # pool: freed
    ib.release_scratch()


def test_a_pool_handed_out_is_never_shut_down(monkeypatch):
    """A caller that needs a larger pool must not shut down the one another caller holds
    (concurrent calls with different thread limits failed with 'cannot schedule new
    futures after shutdown')."""
    monkeypatch.setattr(parallel, "_pool", None)
    monkeypatch.setattr(parallel, "_pool_size", 0)
    held = parallel._executor(1)        # one caller's pool, about to submit
    larger = parallel._executor(4)      # another caller needs more threads
    assert larger is not held and parallel._executor(2) is larger
    assert held.submit(lambda: 42).result(timeout=10) == 42


def test_a_forked_child_gets_a_pool_of_its_own():
    import multiprocessing

    parallel_for(lambda part: None, 2, 10**9)  # the parent has a pool
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_fill_in_threads) == 4000


def _fill_in_threads():
    out = np.zeros(4000)

    def fill(part):
        out[part] = 1.0
    with ib.thread_limit(2):
        parallel_for(fill, out.size, 10**9)
    return int(out.sum())
