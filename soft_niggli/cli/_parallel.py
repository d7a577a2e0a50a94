"""``--jobs``: chunks canonicalised in worker processes, their results handed back in input order."""

from __future__ import annotations

from collections import deque

from ._rows import run_chunk


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
        ctx.set_forkserver_preload(["soft_niggli", "pymatgen.core", "pymatgen.io.cif"])
        return ctx
    return multiprocessing.get_context("spawn")


def ordered_results(tasks, jobs: int):
    """``run_chunk(*task)`` for each task, in order; at most ``2 jobs`` chunks in flight, so that memory
    stays bounded however long the input is."""
    if jobs == 1:
        for task in tasks:
            yield run_chunk(*task)
        return
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=pool_context(), initializer=init_worker)
    pending = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(run_chunk, *task))
            if len(pending) >= 2 * jobs:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
