"""The NumPy core of the reducer: the loop of rounds with its tolerance levels, and the final checks.

Row convention: a cell ``L`` has the lattice vectors as rows; the reduced cell is ``T @ L`` with ``T``
integer, determinant +1. The loop works on component-major arrays ``X (3, 3, n)`` whose entry
``X[i, j]`` is a contiguous vector over the batch. The compiled kernel (``_niggli_kernel.c``) does
the same work cell by cell with the same arithmetic; this core is its reference and its fallback.
"""

from __future__ import annotations

import numpy as np

from ._conditions import niggli_conditions
from ._constants import DEGENERATE_VOLUME_RATIO, LEVEL_FACTOR, LEVELS, MAX_TRANSFORM_ENTRY, STALL_ROUNDS
from ._resolution import accuracy_factors, basis_and_metric, eye, normalized, relative_volume, times_power_of_two
from ._round import reduction_round
from ._status import Status

# Finished items are dropped from working arrays of more than _COMPACT_MIN items once this share of
# them is done: dropping costs a few copies of everything, so it pays only when many have finished
# (and below a few hundred items every operation costs its call overhead whatever its size).
_COMPACT_SHARE = 0.25
_COMPACT_MIN = 512
# Items per chunk of work (see _iterate_in_chunks).
_CHUNK = 8192


def _iterate(L: np.ndarray, ell: np.ndarray, rel_tol: float, max_iter: int):
    """Reduce the finite, non-zero cells ``L (3, 3, n)`` (largest entry in [0.5, 1); row lengths
    ``ell (3, n)``) round by round.

    Each round recomputes the metric of ``T @ L`` from the original cell (no drift) and checks it
    against the full Niggli conditions: the items that pass are done (this check is the reducer's
    final verification), the others get one more :func:`reduction_round`, at their tolerance level
    (items that stop making progress go on at finer levels; see "Tolerance" in the reducer's design
    notes). Items with an unresolved vector or a runaway transform, or that pass or are stuck with
    unresolved products of two vectors, are done too, as DEGENERATE (see "Resolution"). Returns ``(T,
    iterations, status)``.
    The rounds run on a compacted copy of the unfinished items when enough have finished, so that late
    rounds cost only what is left.
    """
    n = L.shape[2]
    T = eye(n)
    iters = np.zeros(n, dtype=np.int64)
    status = np.full(n, int(Status.NOT_CONVERGED), dtype=np.int64)
    work, Tw, Lw, ell_w = np.arange(n), T.copy(), L, ell
    active = np.ones(n, dtype=bool)
    changed = np.ones(n, dtype=bool)
    # Per item: its tolerance (rel_tol, then finer levels), the shortest A + B + C so far and the rounds
    # since it last went down (see "Tolerance" in the reducer's design notes).
    e_w = np.full(n, float(rel_tol))
    level = np.zeros(n, dtype=np.int64)
    best = np.full(n, np.inf)
    stall = np.zeros(n, dtype=np.int64)
    k_plain, k_exact = accuracy_factors(rel_tol)
    for it in range(max_iter + 1 if n else 0):
        t_max = np.abs(Tw).max(axis=(0, 1))
        _, G, resolved, products_resolved = basis_and_metric(Tw, Lw, ell_w, t_max, k_plain, k_exact)
        # A vector float64 cannot resolve (a vanishing one included) or a runaway transform: the lattice
        # is numerically rank-deficient. (Written so that NaN counts as bad.)
        bad = ~resolved | ~(t_max <= MAX_TRANSFORM_ENTRY)
        # The check: the conditions at rel_tol, or, for an item gone on to finer levels, at any of them.
        ok = niggli_conditions(G, rel_tol)
        for k in range(1, LEVELS):
            deeper = level >= k
            if deeper.any():
                ok |= deeper & niggli_conditions(G, rel_tol / LEVEL_FACTOR**k)
        ok &= ~bad
        # Items that fail the check but that a round left unchanged, or whose A + B + C has not gone down
        # for STALL_ROUNDS rounds, are stuck: they go on with a finer tolerance, or, at the finest one,
        # are NOT_CONVERGED.
        total = (G[0, 0] + G[1, 1]) + G[2, 2]
        lower = total < best
        best = np.where(lower, total, best)
        stall = np.where(lower, 0, stall + 1)
        stuck = ~(ok | bad) & (~changed | (stall >= STALL_ROUNDS))
        # A basis that passes, or that the reduction is stuck on, must have resolved products.
        unresolved = (ok | stuck) & ~products_resolved
        bad |= unresolved
        ok &= ~unresolved
        stuck &= ~unresolved
        finer = stuck & (level < LEVELS - 1)
        if finer.any():
            level += finer
            e_w = np.where(finer, e_w / LEVEL_FACTOR, e_w)
            stall = np.where(finer, 0, stall)
            changed |= finer
        finished = active & (ok | bad | ~changed | (stuck & ~finer))
        if finished.any():
            fin = work[finished]
            T[..., fin] = Tw.compress(finished, axis=2)
            iters[fin] = it
            status[fin] = np.where(bad[finished], int(Status.DEGENERATE),
                                   np.where(ok[finished], int(Status.OK), int(Status.NOT_CONVERGED)))
            active &= ~finished
            n_active = np.count_nonzero(active)
            if n_active == 0:
                break
            if work.size > _COMPACT_MIN and n_active <= (1 - _COMPACT_SHARE) * work.size:
                # compress, not fancy indexing: that would leave the batch axis strided (slow products).
                work, Tw, Lw, ell_w, G = (work[active], Tw.compress(active, axis=2), Lw.compress(active, axis=2),
                                          ell_w.compress(active, axis=1), G.compress(active, axis=2))
                e_w, level, best, stall = e_w[active], level[active], best[active], stall[active]
                active = np.ones(n_active, dtype=bool)
        if it == max_iter:
            break
        Tw, changed = reduction_round(Tw, G, e_w)
    # Items still active hit the cap: their best basis so far, NOT_CONVERGED.
    T[..., work[active]] = Tw.compress(active, axis=2)
    iters[work[active]] = max_iter
    T[..., status == int(Status.DEGENERATE)] = 1.0 * np.eye(3)[..., None]  # their last step is not trusted
    return T, iters, status


def _iterate_in_chunks(L: np.ndarray, ell: np.ndarray, rel_tol: float, max_iter: int):
    """:func:`_iterate` on chunks of at most ``_CHUNK`` items.

    Chunks keep the temporaries small: large ones come as fresh pages from the OS on every
    allocation, and the page faults then cost more than the arithmetic. (Threads do not help: the
    per-call overhead, which holds the GIL, is a large share of each operation at these sizes.)
    """
    n = L.shape[2]
    if n <= _CHUNK:
        return _iterate(L, ell, rel_tol, max_iter)
    results = [_iterate(L[..., i:i + _CHUNK], ell[:, i:i + _CHUNK], rel_tol, max_iter) for i in range(0, n, _CHUNK)]
    return tuple(np.concatenate(pieces, axis=-1) for pieces in zip(*results))


def reduce_cells(X_items: np.ndarray, rel_tol: float, max_iter: int):
    """The reduction of :func:`~soft_niggli.niggli.niggli_reduce` on ``X_items (n, 3, 3)`` (float64,
    item-major), in NumPy on component-major arrays; returns item-major ``(lattice, transform (int64),
    status, iterations)``.

    ``_niggli_kernel.reduce`` (C) does the same, cell by cell, with the same arithmetic.
    """
    X = np.ascontiguousarray(X_items.transpose(1, 2, 0))
    n = X.shape[2]
    with np.errstate(all="ignore"):  # inf/NaN arithmetic of bad items is expected; they get a status
        Xn, exponent, nonfinite, degenerate = normalized(X)
        ell = np.sqrt((Xn * Xn).sum(axis=1))  # row lengths (3, n)
        work = np.flatnonzero(~(nonfinite | degenerate))
        T = eye(n)
        iters = np.zeros(n, dtype=np.int64)
        status = np.full(n, int(Status.DEGENERATE), dtype=np.int64)
        status[nonfinite] = int(Status.NONFINITE)
        T[..., work], iters[work], status[work] = _iterate_in_chunks(Xn.take(work, axis=2), ell.take(work, axis=1),
                                                                     rel_tol, max_iter)

        # The loop verified the Niggli conditions and the resolution of every vector on the basis
        # recomputed from the original cell (the same product as here); left to check: a flat basis
        # (volume relative to the product of lengths). Only a converged basis is short enough to judge.
        reduced_n, _, _, _ = basis_and_metric(T, Xn, ell, np.abs(T).max(axis=(0, 1)), *accuracy_factors(rel_tol))
        flat = ~(relative_volume(reduced_n) > DEGENERATE_VOLUME_RATIO)
        judged = (status == int(Status.OK)) | ((status == int(Status.NOT_CONVERGED)) & (iters < max_iter))
        status[flat & judged] = int(Status.DEGENERATE)
        degenerate = status == int(Status.DEGENERATE)
        reduced = times_power_of_two(reduced_n, exponent)
        # A cell near the float64 limit may overflow once reduced (sums of rows): report, don't return inf.
        overflow = ~np.isfinite(reduced).all(axis=(0, 1)) & ~(degenerate | nonfinite)
        status[overflow] = int(Status.NONFINITE)
        give_back_input = degenerate | nonfinite | overflow
        T[..., give_back_input] = np.eye(3)[..., None]
        reduced[..., give_back_input] = X[..., give_back_input]
    lattice = np.ascontiguousarray(reduced.transpose(2, 0, 1))
    transform = np.ascontiguousarray(T.transpose(2, 0, 1)).astype(np.int64)
    return lattice, transform, status, iters


def passes_niggli_check(X_items: np.ndarray, rel_tol: float) -> np.ndarray:
    """Whether each cell of ``X_items (n, 3, 3)`` (float64, item-major) passes the reducer's own final
    check as given: the Niggli conditions at ``rel_tol`` or one of its finer levels, every vector and
    product resolved, and not flat; ``(n,)`` bool. Non-finite and zero cells fail.

    It is what :func:`_iterate`'s first round sees (``T = I``), at each tolerance level, then the
    flatness test of :func:`reduce_cells`: a cell that passes at ``rel_tol`` itself comes back from the
    reduction (same ``rel_tol``) as ``OK`` with the identity transform.
    """
    with np.errstate(all="ignore"):
        Xn, _, nonfinite, zero = normalized(np.ascontiguousarray(X_items.transpose(1, 2, 0)))
        n = Xn.shape[2]
        ell = np.sqrt((Xn * Xn).sum(axis=1))
        B, G, resolved, products_resolved = basis_and_metric(eye(n), Xn, ell, np.ones(n), *accuracy_factors(rel_tol))
        ok = np.zeros(n, dtype=bool)
        for k in range(LEVELS):
            ok |= niggli_conditions(G, rel_tol / LEVEL_FACTOR**k)
        ok &= resolved & products_resolved & (relative_volume(B) > DEGENERATE_VOLUME_RATIO)
        return ok & ~nonfinite & ~zero
