"""``--jobs``: chunks canonicalised by this process and worker processes, their results handed back in
input order.

With ``jobs`` processes on ``jobs`` cores, this process is one of them: it reads the input, hands chunks
to ``jobs - 1`` workers while they have fewer than two each, canonicalises the next chunk itself
otherwise, and writes the results in order. Two things keep that close to ``jobs`` times as fast as one
process:

* a worker's start is slow (the forkserver imports torch, soft_niggli and pymatgen: seconds), so the
  pool starts in a background thread while this process works through the first chunks alone;
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


def pool_context():
    import multiprocessing

    # forkserver: workers are forked from a clean server that has imported pymatgen and torch once, rather
    # than from this process (fork after torch has started threads can hang) or from scratch (spawn).
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["soft_niggli", "soft_niggli.cli", "pymatgen.core", "pymatgen.io.cif"])
        return ctx
    return multiprocessing.get_context("spawn")


def process_pool(workers: int):
    """The worker processes of :func:`ordered_results`: ``workers`` of them, one torch thread each."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(), initializer=init_worker)


def held_at_most(jobs: int) -> int:
    """How many chunks :func:`ordered_results` holds at once at most (read and not yet handed back)."""
    return 4 * jobs


def ordered_results(function, tasks, jobs: int, *, pool=None, share: bool = True):
    """``function(*task)`` for each of ``tasks`` (an iterable, read as it goes), in order, computed by
    ``jobs`` processes: this one and the ``jobs - 1`` workers of ``pool`` (by default
    :func:`process_pool`; shut down at the end).

    ``share=False``: the workers compute every chunk (this process waits for them to start, then only
    reads and hands back), so that a test can compare their results with this process's.
    """
    if jobs == 1:
        for task in tasks:
            yield function(*task)
        return
    pool = process_pool(jobs - 1) if pool is None else pool
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
        pool.shutdown(wait=True, cancel_futures=True)
        starter.join()


def _done(x) -> bool:
    return not isinstance(x, Future) or x.done()


def _result(x):
    return x.result() if isinstance(x, Future) else x
