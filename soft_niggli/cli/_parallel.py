"""``--jobs``: chunks canonicalised by this process and worker processes, their results handed back in
input order.

With ``jobs`` processes on ``jobs`` cores, this process is one of them: it reads the input, hands the
next chunk to the ``jobs - 1`` workers while they hold fewer than two chunks each, canonicalises it
itself otherwise, and writes the results in order. Two things keep that close to ``jobs`` times as fast
as one process:

* importing torch, soft_niggli and pymatgen takes seconds: the command's own process forks its workers,
  which share its imports; elsewhere they come from a forkserver that imports them first, and the pool
  starts in a background thread while this process works through the first chunks alone;
* this process's own share of the work (reading and writing the CSV, a few percent) leaves it most of
  a core, which it spends on chunks rather than waiting.

Memory stays bounded: at most ``4 jobs`` chunks are held at once (read and not yet written).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future


def init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: threads inside each would only compete


def pool_context(fork: bool = False):
    """The multiprocessing context of the workers: ``fork`` where ``fork`` is asked for and safe (Linux, no
    thread of Python's but this one), else forkserver (or spawn where there is none)."""
    import multiprocessing
    import sys

    methods = multiprocessing.get_all_start_methods()
    if fork and sys.platform.startswith("linux") and "fork" in methods and threading.active_count() == 1:
        # The workers share this process's imports (torch, pymatgen: seconds each to import again). The
        # command's own process asks for it: its only threads are the BLAS pools, which fork safely, and
        # torch's, which the workers leave unused (one thread each).
        return multiprocessing.get_context("fork")
    # forkserver: workers are forked from a clean server that has imported pymatgen and torch once, rather
    # than from a process whose threads are unknown (fork after torch has started threads can hang) or from
    # scratch (spawn).
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["soft_niggli", "soft_niggli.cli", "pymatgen.core", "pymatgen.io.cif"])
        return ctx
    return multiprocessing.get_context("spawn")


def process_pool(workers: int, fork: bool = False):
    """The worker processes of :func:`ordered_results`: ``workers`` of them, one torch thread each.

    ``fork=True`` (the command's own process, before it starts any thread): forked from this process
    where :func:`pool_context` allows it, and started here, before any other thread of this process
    exists. Otherwise they start on the first task given to them (seconds, in a forkserver).
    """
    from concurrent.futures import ProcessPoolExecutor

    context = pool_context(fork)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker)
    if context.get_start_method() == "fork":
        pool.submit(int).result()  # every worker is forked at the first task
    return pool


def held_at_most(jobs: int) -> int:
    """How many chunks :func:`ordered_results` holds at once at most (read and not yet handed back)."""
    return 4 * jobs


def ordered_results(function, tasks, jobs: int, *, pool=None, share: bool = True):
    """``function(*task)`` for each of ``tasks`` (an iterable, read as it goes), in order, computed by
    ``jobs`` processes: this one and the ``jobs - 1`` workers of ``pool`` (an executor, which the caller
    shuts down; by default a :func:`process_pool`, shut down at the end).

    ``share=False``: the workers compute every chunk (this process waits for them to start, then only
    reads and hands back), so that a test can compare their results with this process's.
    """
    if jobs == 1:
        for task in tasks:
            yield function(*task)
        return
    own_pool = pool is None
    pool = process_pool(jobs - 1) if own_pool else pool
    ready, started = threading.Event(), []

    def start():
        # The first worker's start blocks until the forkserver has imported everything (seconds): done in
        # this thread, so that the main thread computes the first chunks meanwhile.
        try:
            started.append(pool.submit(int))
            started[0].result()
        except BaseException as err:  # noqa: BLE001 - raised again in the main thread
            started[:] = [err]
        finally:
            ready.set()

    starter = threading.Thread(target=start, name="soft-niggli-pool-start", daemon=True)
    starter.start()
    window = deque()  # results and futures, in input order
    limit, backlog = held_at_most(jobs), 2 * (jobs - 1)
    if not share:
        ready.wait()
    try:
        for task in tasks:
            while window and _done(window[0]):
                yield _result(window.popleft())
            if ready.is_set():
                if isinstance(started[0], BaseException):
                    raise started[0]
                if not share or sum(not _done(x) for x in window) < backlog:
                    window.append(pool.submit(function, *task))
                else:
                    window.append(function(*task))
            else:
                window.append(function(*task))
            while len(window) >= limit:
                yield _result(window.popleft())
        while window:
            yield _result(window.popleft())
    finally:
        if own_pool:
            pool.shutdown(wait=True, cancel_futures=True)
        starter.join()


def _done(x) -> bool:
    return not isinstance(x, Future) or x.done()


def _result(x):
    return x.result() if isinstance(x, Future) else x
