"""One reduction round: size-reduction sweeps, then one Křivý–Gruber pass, on component-major arrays.

Row convention: the basis is ``T @ L`` (rows are lattice vectors) with ``T (3, 3, n)`` integer-valued.
"""

from __future__ import annotations

import numpy as np

from ._conditions import sign_rule, type2_blocked_where_needed
from ._constants import SWEEPS


def _swap(rows: list, i: int, j: int, where: np.ndarray) -> None:
    """Swap vectors ``i`` and ``j`` of the items ``where`` (rows of the round's state, see :func:`reduction_round`)."""
    rows[i], rows[j] = np.where(where, rows[j], rows[i]), np.where(where, rows[i], rows[j])


def _sort(rows: list, where: np.ndarray) -> np.ndarray:
    """Sort the vectors of the items ``where`` by length, exactly (ties keep their order); returns the
    parity of the permutation applied to each item."""
    parity = np.zeros(where.shape, dtype=bool)
    for i, j in ((0, 1), (1, 2), (0, 1)):
        swap = where & (rows[i][3] > rows[j][3])
        if swap.any():
            _swap(rows, i, j, swap)
            parity ^= swap
    return parity


def reduction_round(T: np.ndarray, G: np.ndarray, e: float) -> tuple[np.ndarray, np.ndarray]:
    """One reduction round on bases ``T @ L`` with metric ``G (3, 3, n)``; returns ``(T, changed)``.

    First ``SWEEPS`` greedy size-reduction sweeps: sort the vectors by length (only where out of order
    beyond the tolerance: lengths equal up to rounding would otherwise be re-sorted forever),
    Gauss-reduce b against a, round c onto span(a, b) (Babai), keeping only moves that shorten a vector,
    so that rounds terminate and their number is logarithmic in the skew. Then one Křivý–Gruber pass on
    the updated metric (A, B, C, ξ, η, ζ), in the algorithm's order: steps 1–2 (sort; ties by |ξ|, |η|),
    steps 3–4 (signs), then the first of steps 5–7 that applies, or else step 8. Steps 5–7 subtract the
    rounded multiple (``c -= round(ξ / 2B) b`` ...) instead of one unit, which keeps the fixed point.
    ``changed`` is False where no move applied.

    The state of vector r is one array ``rows[r] (5, n)``: its row of T, its squared length, and the
    product of the other two vectors (for a: b·c = ξ/2), so that a swap moves one array. In 3-D
    det(-P) = -det(P): items sorted by an odd permutation get all rows negated at the end, so that
    det T stays +1 (the metric does not see the sign).
    """
    n = T.shape[2]
    state = np.empty((3, 5, n))
    state[:, :3] = T
    state[:, 3] = G[[0, 1, 2], [0, 1, 2]]
    state[:, 4] = G[[1, 0, 0], [2, 2, 1]]
    rows = list(state)
    changed = np.zeros(n, dtype=bool)
    parity = np.zeros(n, dtype=bool)

    # --- size-reduction sweeps ---
    for _ in range(SWEEPS):
        f = 1 + e
        A, B, C = rows[0][3], rows[1][3], rows[2][3]
        unsorted = (A > B * f) | (A > C * f) | (B > C * f)
        if unsorted.any():
            parity ^= _sort(rows, unsorted)
            changed |= unsorted
        a, b, c = rows
        A, B, g01 = a[3], b[3], c[4]
        usable = A > 0
        mu = np.rint(g01 / np.where(usable, A, 1.0))
        new_B = B - mu * (2 * g01 - mu * A)
        # Keep only moves that shorten b by more than the tolerance (ties at |μ| = 1/2 do not).
        move = usable & (new_B < B * (1 - e))
        if move.any():
            mu = np.where(move, mu, 0.0)
            b[:3] -= mu * a[:3]
            a[4] -= mu * b[4]  # b·c -= μ a·c
            c[4] -= mu * A  # a·b -= μ a·a
            b[3] = np.where(move, new_B, B)
            changed |= move
        A, B, C, g12, g02, g01 = a[3], b[3], c[3], a[4], b[4], c[4]
        det2 = A * B - g01 * g01
        usable &= det2 > 0
        safe = np.where(usable, det2, 1.0)
        x = np.rint((B * g02 - g01 * g12) / safe)
        y = np.rint((A * g12 - g01 * g02) / safe)
        new_C = C + x * (x * A + 2 * y * g01 - 2 * g02) + y * (y * B - 2 * g12)
        # Babai rounding on a skewed plane basis can lengthen c; keep only moves that shorten it.
        move = usable & (new_C < C * (1 - e)) & ((x != 0) | (y != 0))
        if move.any():
            x = np.where(move, x, 0.0)
            y = np.where(move, y, 0.0)
            c[:3] -= x * a[:3] + y * b[:3]
            new_g02, new_g12 = g02 - x * A - y * g01, g12 - x * g01 - y * B
            b[4], a[4] = new_g02, new_g12
            c[3] = np.where(move, new_C, C)
            changed |= move

    # --- Křivý–Gruber steps 1-2: sort, and break length ties by |ξ| (A = B) or |η| (B = C) ---
    def lengths_and_tolerances():
        D = np.stack([rows[0][3], rows[1][3], rows[2][3]])
        # Sign tests on ξ, η, ζ are tests on cosines: the tolerance scales with the two lengths.
        return D, e * np.sqrt(np.abs(D[[1, 0, 0]] * D[[2, 2, 1]]))

    D, t = lengths_and_tolerances()
    O = 2 * np.stack([rows[0][4], rows[1][4], rows[2][4]])  # ξ, η, ζ
    A, B, C = D
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    unsorted = (A > B + eAB) | (B > C + eBC)
    absO = np.abs(O)
    step1 = ~unsorted & (np.abs(A - B) <= eAB) & (absO[0] > absO[1] + t[0])
    step2 = ~unsorted & ~step1 & (np.abs(B - C) <= eBC) & (absO[1] > absO[2] + t[1])
    moved = unsorted | step1 | step2
    if moved.any():
        if unsorted.any():
            parity ^= _sort(rows, unsorted)
        if step1.any():
            _swap(rows, 0, 1, step1)
            parity ^= step1
        if step2.any():
            _swap(rows, 1, 2, step2)
            parity ^= step2
        D, t = lengths_and_tolerances()
        O = 2 * np.stack([rows[0][4], rows[1][4], rows[2][4]])
        A, B, C = D
        eAB = e * (A + B) / 2
        changed |= moved
    a, b, c = rows

    # --- steps 3-4: ξ, η, ζ all positive, or all non-positive (see sign_rule) ---
    pos, neg = O > t, O < -t
    zero = ~(pos | neg)
    blocked = type2_blocked_where_needed(O, t, np.stack([B, A, A]), e, pos, zero)
    flip = ~sign_rule(pos, neg, blocked)
    if flip.any():
        # Step 3 (type I: all positive) where the signs' product is positive, or where a zero is left and
        # type II is blocked; step 4 (type II: all non-positive) otherwise. Negating vector a flips η and
        # ζ, and so on; a pair of negations keeps det +1. Step 3 negates (a, b, c) where (ξ, η, ζ) < 0,
        # step 4 where > 0; either adds, when that count is odd, the first vector whose entry is zero
        # (either sign is fine there).
        has_zero = zero.any(axis=0)
        step3 = flip & ((~has_zero & (neg.sum(axis=0) == 2)) | (has_zero & blocked))
        step4 = flip & ~step3
        flipped = np.where(step3, neg, pos)
        fix = zero & (flipped[0] ^ flipped[1] ^ flipped[2])
        fix[1] &= ~fix[0]
        fix[2] &= ~(fix[0] | fix[1])
        s = 1.0 - 2.0 * ((step3 | step4) & (flipped ^ fix))
        for r in range(3):
            rows[r][:3] *= s[r]
        O = O * (s[[1, 0, 0]] * s[[2, 2, 1]])
        changed |= flip

    # --- steps 5-7: |ξ| <= B, |η| <= A, |ζ| <= A, with the boundary cases reduced by one unit ---
    P = np.stack([B, A, A])  # partners of ξ, η, ζ
    e_p = e * P
    over = np.abs(O) > P + e_p
    other = O[[2, 2, 1]]  # ζ, ζ, η
    apply = over | ((np.abs(O - P) <= e_p) & (other - 2 * O[[1, 0, 0]] > t[[1, 0, 0]])) | (
        (np.abs(O + P) <= e_p) & (other < -t[[2, 2, 1]]))
    # An entry beyond its bound goes first: the boundary cases only pick one of two bases of equal length
    # (up to the tolerance), and two of them can undo each other while another entry stays too large.
    apply &= over | ~over.any(axis=0)
    apply[1] &= ~apply[0]  # only the first that applies
    apply[2] &= ~(apply[0] | apply[1])
    steps567 = apply.any(axis=0)
    if steps567.any():
        # (where, not a product with apply: a vanishing partner P makes O / 2P infinite or NaN)
        q = np.where(apply, np.where(over, np.rint(O / (2 * P)), np.sign(O)), 0.0)
        c[:3] -= q[0] * b[:3] + q[1] * a[:3]  # step 5: c -= q b; step 6: c -= q a
        b[:3] -= q[2] * a[:3]  # step 7: b -= q a
        changed |= steps567

    # --- step 8: A + B + ξ + η + ζ >= 0 (boundary: 2A + 2η + ζ <= 0), else c <- a + b + c ---
    S = O.sum(axis=0) + A + B
    step8 = ~steps567 & ((S < -eAB) | ((np.abs(S) <= eAB) & (2 * (A + O[1]) + O[2] > eAB)))
    if step8.any():
        c[:3] += step8 * (a[:3] + b[:3])
        changed |= step8
    T = np.stack([a[:3], b[:3], c[:3]])
    if parity.any():
        T *= 1.0 - 2.0 * parity
    return T, changed
