"""Guarded, batched Niggli reduction with the integer transform and a per-item status.

Row convention: a lattice ``L (..., 3, 3)`` has the lattice vectors a, b, c as rows; the reduced
lattice is ``transform @ L`` with ``transform`` an integer matrix of determinant ±1. The Niggli cell
is unique as a metric (G6 vector), not as a basis: ``-transform`` (and, for symmetric lattices, other
automorphisms) give the same metric.

What makes it safe to call on whatever a model emits:

* It never raises on values and never loops unbounded. Non-finite input is ``NONFINITE``; a cell that
  is rank-deficient relative to its own scale is ``DEGENERATE``; both come back unchanged with the
  identity transform. Hitting ``max_iter`` gives ``NOT_CONVERGED`` with the best basis so far and its
  valid unimodular transform.
* It is scale-free: the cell is first scaled by a power of two (exact), and every tolerance is
  relative: lengths are compared with each other, angles through their cosines.
* It is fast on skewed cells: each round size-reduces by rounding (Gauss/LLL style, so the number of
  rounds is logarithmic in the skew) before the Křivý–Gruber steps.
* It does not drift: the transform is tracked exactly in integers and the metric is recomputed from
  the original cell every round, with an error-free product where the transform has large entries.
* It verifies: the result is checked against the full Niggli conditions, special boundary conditions
  included (the conditions of :func:`is_niggli_reduced`).

The reduction works on detached values in float64 whatever the input dtype; the returned lattice is
cast back to the input's dtype and device. It carries no gradient (use ``transform`` with the
original, differentiable ``L`` when you need one: ``transform.to(L.dtype) @ L``).

Where it runs: the reduction is a data-dependent loop over 3×3 matrices, whose speed is set by the
number of array operations, not by arithmetic. It therefore runs in NumPy on the host (a NumPy call
costs a fraction of a torch call on small arrays), on component-major arrays: a batch of matrices is
an array ``X (3, 3, n)`` whose entry ``X[i, j]`` is a contiguous vector over the batch, so every
formula below is a handful of vector operations. Tensors on another device are copied to the host
and the results copied back (72 bytes per cell each way).
"""

from __future__ import annotations

import enum
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_float_tensor, check_matrix_shape
from ._exact import exact_int_matmul

__all__ = ["Status", "NiggliResult", "niggli_reduce", "is_niggli_reduced"]


class Status(enum.IntEnum):
    """Per-item outcome of :func:`niggli_reduce`."""

    OK = 0  #: reduced and verified against the Niggli conditions
    NOT_CONVERGED = 1  #: iteration cap reached; best basis so far, valid unimodular transform
    DEGENERATE = 2  #: rank-deficient relative to the cell's own scale; input and identity returned
    NONFINITE = 3  #: NaN or inf in the input (or a reduced cell overflowing float64); input and identity returned


@dataclass
class NiggliResult:
    """Result of :func:`niggli_reduce`; shapes follow the input's leading dims ``(...)``.

    Attributes:
        lattice: ``(..., 3, 3)`` reduced lattice (input dtype and device; detached).
        transform: ``(..., 3, 3)`` int64, unimodular, ``lattice == transform @ L`` up to rounding.
        status: ``(...)`` int64 holding :class:`Status` values.
        iterations: ``(...)`` int64, reduction rounds that changed the basis, per item.
    """

    lattice: torch.Tensor | np.ndarray
    transform: torch.Tensor | np.ndarray
    status: torch.Tensor | np.ndarray
    iterations: torch.Tensor | np.ndarray

    @property
    def ok(self):
        """Boolean mask of items with ``Status.OK``."""
        return self.status == int(Status.OK)


# Below this ratio of shortest reduced vector to the cell's largest input row, or of reduced volume to
# the product of reduced lengths, the lattice is numerically rank-deficient: float64 cannot resolve it.
_DEGENERATE_LENGTH_RATIO = 1e-12
_DEGENERATE_VOLUME_RATIO = 1e-12
# Transform entries beyond this are a sign of a (numerically) dense lattice, not of a skewed cell.
_MAX_TRANSFORM_ENTRY = 2.0**44
# Transforms with entries up to this make the plain float product accurate enough (cancellation costs
# at most ~log10(2**10) digits); beyond it the error-free product is used.
_PLAIN_PRODUCT_LIMIT = 2.0**10
# Finished items are dropped from the working arrays when this share of them is done (or when all
# are, or a degenerate one must be frozen): dropping costs a few full-size copies, so it pays only
# when many have finished.
_COMPACT_SHARE = 0.25
# Items per chunk of work (see _iterate_in_chunks).
_CHUNK = 8192

# Rank vectors of the permutations the reducer uses: row r of the basis moves to position rank[r].
_KEEP = np.array([[0], [1], [2]])
_SWAP_AB = np.array([[1], [0], [2]])
_SWAP_BC = np.array([[0], [2], [1]])
_POSITIONS = np.arange(3)[:, None, None]


def _eye(n: int) -> np.ndarray:
    out = np.zeros((3, 3, n))
    out[0, 0] = out[1, 1] = out[2, 2] = 1.0
    return out


def _times_power_of_two(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``x * 2**exponent`` per item (last axis), exactly; in two halves since 2**±1074 over/underflows."""
    half = exponent // 2
    return np.ldexp(np.ldexp(x, half), exponent - half)


def _matmul(T: np.ndarray, L: np.ndarray) -> np.ndarray:
    return np.einsum("ijn,jkn->ikn", T, L)


def _basis(T: np.ndarray, L: np.ndarray, t_max: np.ndarray) -> np.ndarray:
    """``T @ L`` per item for integer-valued float64 ``T``, error-free where ``T`` has large entries."""
    out = _matmul(T, L)
    big = t_max > _PLAIN_PRODUCT_LIMIT
    if big.any():
        out[..., big] = exact_int_matmul(T[..., big], L[..., big])
    return out


def _metric_of(B: np.ndarray) -> np.ndarray:
    return np.einsum("ijn,kjn->ikn", B, B)


def _sort_ranks(A, B, C, rel_eps: float):
    """Ranks ``(3, n)`` sorting ``(A, B, C)`` ascending where some pair is out of order beyond ``rel_eps``
    (exactly sorted there, equal keys keeping their order), ``_KEEP`` elsewhere; and that mask."""
    f = 1 + rel_eps
    unsorted = (A > B * f) | (A > C * f) | (B > C * f)
    a_over_b, a_over_c, b_over_c = A > B, A > C, B > C
    rank_a = a_over_b.astype(np.int8) + a_over_c
    rank_b = b_over_c.astype(np.int8) + ~a_over_b
    return np.where(unsorted, np.stack([rank_a, rank_b, 3 - rank_a - rank_b]), _KEEP), unsorted


def _permute(T: np.ndarray, metric: np.ndarray, ranks: np.ndarray):
    """Move row r of every basis to position ``ranks[r]``: returns ``(P T, permuted metric)``.

    ``metric (3, 2, n)`` holds, per vector r, its squared length and the product of the other two
    vectors (``[[A, g12], [B, g02], [C, g01]]``): both move with the vector. In 3-D det(-P) = -det(P),
    so odd permutations also negate every row: no move flips the handedness (det T stays +1), and the
    metric does not see the sign. Built as a one-hot matrix so that it is one product, not a gather.
    """
    inversions = (ranks[0] > ranks[1]).astype(np.int8) + (ranks[0] > ranks[2]) + (ranks[1] > ranks[2])
    one_hot = (ranks[None] == _POSITIONS).astype(np.float64)  # [k, r] = row r goes to position k
    T = np.einsum("krn,rjn->kjn", one_hot * (1.0 - 2.0 * (inversions & 1)), T)
    return T, np.einsum("krn,rmn->kmn", one_hot, metric)


def _round(T: np.ndarray, G: np.ndarray, e: float) -> tuple[np.ndarray, np.ndarray]:
    """One reduction round on bases ``T @ L`` with metric ``G (3, 3, n)``; returns ``(T, changed)``.

    First a greedy size-reduction sweep: sort the vectors by length (only where out of order beyond
    the tolerance: lengths equal up to rounding would otherwise be re-sorted forever), Gauss-reduce b
    against a, round c onto span(a, b) (Babai), keeping only moves that shorten a vector, so that
    rounds terminate and their number is logarithmic in the skew. Then one Křivý–Gruber pass on the
    updated metric (A, B, C, ξ, η, ζ), in the algorithm's order: steps 1–2 (sort; ties by |ξ|, |η|),
    steps 3–4 (signs), then the first of steps 5–7 that applies, or else step 8. Steps 5–7 subtract the
    rounded multiple (``c -= round(ξ / 2B) b`` ...) instead of one unit, which keeps the fixed point.
    ``changed`` is False exactly where no move applies: the basis is Niggli-reduced.
    """
    T = T.copy()
    g00, g11, g22, g12, g02, g01 = G[0, 0], G[1, 1], G[2, 2], G[1, 2], G[0, 2], G[0, 1]

    # --- size-reduction sweep ---
    ranks, changed = _sort_ranks(g00, g11, g22, e)
    if changed.any():
        T, ((g00, g12), (g11, g02), (g22, g01)) = _permute(
            T, np.stack([[g00, g12], [g11, g02], [g22, g01]]), ranks)
    usable = g00 > 0
    mu = np.rint(g01 / np.where(usable, g00, 1.0))
    new_g11 = g11 - mu * (2 * g01 - mu * g00)
    # Keep only moves that shorten b by more than the tolerance (ties at |μ| = 1/2 do not).
    move_b = usable & (new_g11 < g11 * (1 - e))
    if move_b.any():
        mu = np.where(move_b, mu, 0.0)
        g11 = np.where(move_b, new_g11, g11)
        g12 = g12 - mu * g02
        g01 = g01 - mu * g00
        T[1] -= mu * T[0]
        changed |= move_b
    det2 = g00 * g11 - g01 * g01
    usable &= det2 > 0
    safe = np.where(usable, det2, 1.0)
    x = np.rint((g11 * g02 - g01 * g12) / safe)
    y = np.rint((g00 * g12 - g01 * g02) / safe)
    new_g22 = g22 + x * (x * g00 + 2 * y * g01 - 2 * g02) + y * (y * g11 - 2 * g12)
    # Babai rounding on a skewed plane basis can lengthen c; keep only moves that shorten it.
    move_c = usable & (new_g22 < g22 * (1 - e)) & ((x != 0) | (y != 0))
    if move_c.any():
        x = np.where(move_c, x, 0.0)
        y = np.where(move_c, y, 0.0)
        g22 = np.where(move_c, new_g22, g22)
        g02, g12 = g02 - x * g00 - y * g01, g12 - x * g01 - y * g11
        T[2] -= x * T[0] + y * T[1]
        changed |= move_c

    # --- Křivý–Gruber steps 1-2: sort, and break length ties by |ξ| (A = B) or |η| (B = C) ---
    A, B, C = g00, g11, g22
    xi, eta, zeta = 2 * g12, 2 * g02, 2 * g01
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    # Sign tests on ξ, η, ζ are tests on cosines: the tolerance scales with the two lengths.
    t_xi, t_eta, t_zeta = e * np.sqrt(np.abs(B * C)), e * np.sqrt(np.abs(A * C)), e * np.sqrt(np.abs(A * B))
    unsorted = (A > B + eAB) | (B > C + eBC)
    step1 = (np.abs(A - B) <= eAB) & (np.abs(xi) > np.abs(eta) + t_xi)
    step2 = (np.abs(B - C) <= eBC) & (np.abs(eta) > np.abs(zeta) + t_eta)
    sorted_now = unsorted | step1 | step2
    if sorted_now.any():
        ranks = np.where(unsorted, _sort_ranks(A, B, C, 0.0)[0], np.where(step1, _SWAP_AB, np.where(step2, _SWAP_BC, _KEEP)))
        T, ((A, xi), (B, eta), (C, zeta)) = _permute(T, np.stack([[A, xi], [B, eta], [C, zeta]]), ranks)
        eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
        t_xi, t_eta, t_zeta = e * np.sqrt(np.abs(B * C)), e * np.sqrt(np.abs(A * C)), e * np.sqrt(np.abs(A * B))
        changed |= sorted_now

    # --- steps 3-4: ξ, η, ζ all positive, or all non-positive ---
    pos_l, pos_m, pos_k = xi > t_xi, eta > t_eta, zeta > t_zeta
    neg_l, neg_m, neg_k = xi < -t_xi, eta < -t_eta, zeta < -t_zeta
    zero_l, zero_m, zero_k = ~(pos_l | neg_l), ~(pos_m | neg_m), ~(pos_k | neg_k)
    n_neg = neg_l.astype(np.int8) + neg_m + neg_k
    all_nonzero = ~(zero_l | zero_m | zero_k)
    step3 = all_nonzero & (n_neg == 2)  # product > 0 but not all positive: make all positive
    step4 = ~step3 & ~(all_nonzero & (n_neg == 0)) & (pos_l | pos_m | pos_k)  # else: all non-positive
    flip = step3 | step4
    if flip.any():
        # Negating vector a flips η and ζ, and so on; a pair of negations keeps det +1. Step 3 negates
        # (a, b, c) where (ξ, η, ζ) < 0. Step 4 negates where > 0, plus, when that count is odd, a
        # vector whose entry is zero (either sign is fine there).
        odd = pos_l ^ pos_m ^ pos_k
        fix_a = odd & zero_l
        fix_b = odd & ~fix_a & zero_m
        fix_c = odd & ~fix_a & ~fix_b & zero_k
        neg_a = np.where(step3, neg_l, step4 & (pos_l ^ fix_a))
        neg_b = np.where(step3, neg_m, step4 & (pos_m ^ fix_b))
        neg_c = np.where(step3, neg_k, step4 & (pos_k ^ fix_c))
        s = 1.0 - 2.0 * np.stack([neg_a, neg_b, neg_c])
        T *= s[:, None, :]
        xi, eta, zeta = xi * (s[1] * s[2]), eta * (s[0] * s[2]), zeta * (s[0] * s[1])
        changed |= flip

    # --- steps 5-7: |ξ| <= B, |η| <= A, |ζ| <= A, with the boundary cases reduced by one unit ---
    def needs(off, partner, other1, tol1, other2, tol2):
        e_p = e * partner
        over = np.abs(off) > partner + e_p
        apply = over | ((np.abs(off - partner) <= e_p) & (other1 > tol1)) | (
            (np.abs(off + partner) <= e_p) & (other2 < -tol2))
        return apply, np.where(over, np.rint(off / (2 * partner)), np.sign(off))

    step5, q5 = needs(xi, B, zeta - 2 * eta, t_eta, zeta, t_zeta)  # c -= q b
    step6, q6 = needs(eta, A, zeta - 2 * xi, t_xi, zeta, t_zeta)  # c -= q a
    step7, q7 = needs(zeta, A, eta - 2 * xi, t_xi, eta, t_eta)  # b -= q a
    step6 &= ~step5
    step7 &= ~(step5 | step6)
    steps567 = step5 | step6 | step7
    if steps567.any():
        T[2] -= (q5 * step5) * T[1] + (q6 * step6) * T[0]
        T[1] -= (q7 * step7) * T[0]
        changed |= steps567

    # --- step 8: A + B + ξ + η + ζ >= 0 (boundary: 2A + 2η + ζ <= 0), else c <- a + b + c ---
    S = xi + eta + zeta + A + B
    step8 = ~steps567 & ((S < -eAB) | ((np.abs(S) <= eAB) & (2 * (A + eta) + zeta > eAB)))
    if step8.any():
        T[2] += step8 * (T[0] + T[1])
        changed |= step8
    return T, changed


def _iterate(L: np.ndarray, scale: np.ndarray, rel_eps: float, max_iter: int):
    """Reduce the finite, non-zero cells ``L (3, 3, n)`` (largest entry in [0.5, 1)) round by round.

    Each round recomputes the metric of ``T @ L`` from the original cell (no drift) and checks it
    against the full Niggli conditions: the items that pass are done (this check is the reducer's
    final verification), the others get one more :func:`_round`. Returns ``(T, iterations, status)``.
    The rounds run on a compacted copy of the unfinished items when enough have finished, so that late
    rounds cost only what is left.
    """
    n = L.shape[2]
    T = _eye(n)
    iters = np.zeros(n, dtype=np.int64)
    status = np.full(n, int(Status.NOT_CONVERGED), dtype=np.int64)
    work, Tw, Lw, scale_w = np.arange(n), T.copy(), L, scale
    active = np.ones(n, dtype=bool)
    changed = np.ones(n, dtype=bool)
    for it in range(max_iter + 1 if n else 0):
        t_max = np.abs(Tw).max(axis=(0, 1))
        G = _metric_of(_basis(Tw, Lw, t_max))
        shortest = np.minimum(np.minimum(G[0, 0], G[1, 1]), G[2, 2])
        # A vanishing vector or a runaway transform: the lattice is numerically rank-deficient.
        # (Written so that NaN counts as bad.)
        bad = ~(shortest > (_DEGENERATE_LENGTH_RATIO * scale_w) ** 2) | ~(t_max <= _MAX_TRANSFORM_ENTRY)
        ok = _niggli_conditions(G, rel_eps) & ~bad
        # Items a round left unchanged but that fail the check cannot progress: NOT_CONVERGED.
        finished = active & (ok | bad | ~changed)
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
            if work.size > 512 and n_active <= (1 - _COMPACT_SHARE) * work.size:
                # compress, not fancy indexing: that would leave the batch axis strided (slow einsum).
                work, Tw, Lw, scale_w, G = (work[active], Tw.compress(active, axis=2), Lw.compress(active, axis=2),
                                            scale_w[active], G.compress(active, axis=2))
                active = np.ones(n_active, dtype=bool)
        if it == max_iter:
            break
        Tw, changed = _round(Tw, G, rel_eps)
    # Items still active hit the cap: their best basis so far, NOT_CONVERGED.
    T[..., work[active]] = Tw.compress(active, axis=2)
    iters[work[active]] = max_iter
    T[..., status == int(Status.DEGENERATE)] = 1.0 * np.eye(3)[..., None]  # their last step is not trusted
    return T, iters, status


def _iterate_in_chunks(L: np.ndarray, scale: np.ndarray, rel_eps: float, max_iter: int):
    """:func:`_iterate` on chunks of at most ``_CHUNK`` items, on ``torch.get_num_threads()`` threads.

    Chunks keep every temporary small (large ones are fresh memory from the OS on every allocation,
    and page faults then cost more than the arithmetic); NumPy releases the GIL inside its loops, so
    chunks on threads run in parallel.
    """
    n = L.shape[2]
    if n <= _CHUNK:
        return _iterate(L, scale, rel_eps, max_iter)
    starts = range(0, n, _CHUNK)
    parts = [(L[..., i:i + _CHUNK], scale[i:i + _CHUNK]) for i in starts]

    def run(part):
        with np.errstate(all="ignore"):  # NumPy's error state is per thread
            return _iterate(*part, rel_eps, max_iter)

    workers = min(torch.get_num_threads(), len(parts))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(run, parts))
    else:
        results = [run(part) for part in parts]
    return tuple(np.concatenate(pieces, axis=-1) for pieces in zip(*results))


def _niggli_conditions(G: np.ndarray, e: float) -> np.ndarray:
    """Whether each metric ``G (3, 3, n)`` satisfies the Niggli conditions with relative tolerance ``e``."""
    A, B, C = G[0, 0], G[1, 1], G[2, 2]
    xi, eta, zeta = 2 * G[1, 2], 2 * G[0, 2], 2 * G[0, 1]
    s_xi, s_eta, s_zeta = np.sqrt(np.abs(B * C)), np.sqrt(np.abs(A * C)), np.sqrt(np.abs(A * B))
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    ok = (A <= B + eAB) & (B <= C + eBC)
    ok &= (np.abs(xi) <= B + e * B) & (np.abs(eta) <= A + e * A) & (np.abs(zeta) <= A + e * A)
    pos = (xi > e * s_xi) & (eta > e * s_eta) & (zeta > e * s_zeta)
    nonpos = (xi <= e * s_xi) & (eta <= e * s_eta) & (zeta <= e * s_zeta)
    ok &= pos | nonpos
    S = A + B + xi + eta + zeta
    ok &= S >= -eAB
    # Special conditions on the boundaries of the Niggli cone.
    ok &= ~(np.abs(A - B) <= eAB) | (np.abs(xi) <= np.abs(eta) + e * s_xi)
    ok &= ~(np.abs(B - C) <= eBC) | (np.abs(eta) <= np.abs(zeta) + e * s_eta)
    ok &= ~(np.abs(xi - B) <= e * B) | (zeta <= 2 * eta + e * s_eta)
    ok &= ~(np.abs(eta - A) <= e * A) | (zeta <= 2 * xi + e * s_xi)
    ok &= ~(np.abs(zeta - A) <= e * A) | (eta <= 2 * xi + e * s_xi)
    ok &= ~(np.abs(xi + B) <= e * B) | (np.abs(zeta) <= e * s_zeta)
    ok &= ~(np.abs(eta + A) <= e * A) | (np.abs(zeta) <= e * s_zeta)
    ok &= ~(np.abs(zeta + A) <= e * A) | (np.abs(eta) <= e * s_eta)
    ok &= ~(np.abs(S) <= eAB) | (2 * A + 2 * eta + zeta <= eAB)
    return ok


def _host_components(L, name: str):
    """Validate ``L`` and return ``(X (3, 3, n) float64 on the host, lead, dtype, device, is_numpy)``."""
    is_numpy = isinstance(L, np.ndarray)
    L = as_float_tensor(L, name)
    check_matrix_shape(L, name)
    X = L.detach().to("cpu", torch.float64).reshape(-1, 3, 3).numpy()
    return np.ascontiguousarray(X.transpose(1, 2, 0)), L.shape[:-2], L.dtype, L.device, is_numpy


def _normalized(X: np.ndarray):
    """Non-finite items replaced by the identity, then each item scaled by a power of two so that its
    largest entry is in [0.5, 1) (exact, so ``c L`` reduces like ``L``). Returns ``(Xn, exponent,
    nonfinite, zero)``."""
    nonfinite = ~np.isfinite(X).all(axis=(0, 1))
    max_abs = np.abs(X).max(axis=(0, 1))
    zero = (max_abs == 0) & ~nonfinite
    replace = nonfinite | zero
    X = np.where(replace, np.eye(3)[..., None], X)
    _, exponent = np.frexp(np.where(replace, 1.0, max_abs))
    return _times_power_of_two(X, -exponent), exponent, nonfinite, zero


def is_niggli_reduced(L, rel_eps: float = 1e-5):
    """Whether each cell of ``L (..., 3, 3)`` satisfies the Niggli conditions, with relative tolerances.

    Checks (G6 = A, B, C, ξ, η, ζ): A ≤ B ≤ C; |ξ| ≤ B, |η| ≤ A, |ζ| ≤ A; ξ, η, ζ all positive or
    all non-positive; A + B + ξ + η + ζ ≥ 0; and the special conditions on the boundaries (A = B ⇒
    |ξ| ≤ |η|; B = C ⇒ |η| ≤ |ζ|; ξ = B ⇒ ζ ≤ 2η; η = A ⇒ ζ ≤ 2ξ; ζ = A ⇒ η ≤ 2ξ; ξ = −B ⇒ ζ = 0;
    η = −A ⇒ ζ = 0; ζ = −A ⇒ η = 0; A + B + ξ + η + ζ = 0 ⇒ 2A + 2η + ζ ≤ 0). Equalities hold within
    the same relative tolerances as :func:`niggli_reduce` uses. Non-finite cells are not reduced.
    Returns a bool tensor (or array, for NumPy input) of shape ``(...)``.
    """
    X, lead, _, device, is_numpy = _host_components(L, "L")
    with np.errstate(all="ignore"):
        Xn, _, nonfinite, _ = _normalized(X)
        ok = (_niggli_conditions(_metric_of(Xn), rel_eps) & ~nonfinite).reshape(lead)
    return ok if is_numpy else torch.from_numpy(ok).to(device)


def niggli_reduce(L, *, rel_eps: float = 1e-5, max_iter: int = 1000) -> NiggliResult:
    """Niggli-reduce every cell of ``L (..., 3, 3)`` (rows are lattice vectors); never raises on values.

    Args:
        L: torch tensor (any device) or NumPy array of floating dtype. Gradients are not tracked: the
            computation runs on ``L.detach()`` in float64.
        rel_eps: relative tolerance of every comparison (lengths against each other, cosines).
        max_iter: cap on the rounds (each a size-reduction sweep plus one Křivý–Gruber pass).

    Returns:
        :class:`NiggliResult` with ``lattice``, ``transform`` (int64), ``status`` and ``iterations``;
        NumPy arrays for NumPy input, tensors on ``L``'s device otherwise.

    Raises:
        ValueError: if ``L`` is not a floating ``(..., 3, 3)`` tensor/array or the options are invalid.

    Example:
        >>> res = niggli_reduce(torch.tensor([[4.0, 0, 0], [4.0, 4, 0], [0, 0, 5]]))
        >>> res.lattice.tolist(), Status(int(res.status))
        ([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]], <Status.OK: 0>)
    """
    X, lead, dtype, device, is_numpy = _host_components(L, "L")
    if not (isinstance(rel_eps, (float, int)) and 0 < rel_eps < 0.1):
        raise ValueError(f"rel_eps: expected a float in (0, 0.1), got {rel_eps!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    n = X.shape[2]
    with np.errstate(all="ignore"):  # inf/NaN arithmetic of bad items is expected; they get a status
        Xn, exponent, nonfinite, degenerate = _normalized(X)
        input_scale = np.sqrt((Xn * Xn).sum(axis=1)).max(axis=0)
        work = np.flatnonzero(~(nonfinite | degenerate))
        T = _eye(n)
        iters = np.zeros(n, dtype=np.int64)
        status = np.full(n, int(Status.DEGENERATE), dtype=np.int64)
        status[nonfinite] = int(Status.NONFINITE)
        T[..., work], iters[work], status[work] = _iterate_in_chunks(Xn.take(work, axis=2), input_scale[work],
                                                                     rel_eps, max_iter)

        # The loop verified the Niggli conditions on the metric recomputed from the original cell; left
        # to check: lattices whose reduced form is below float64's resolution (vanishing vectors or
        # volume relative to the cell's scale). Only a converged basis is short enough to judge.
        reduced_n = _basis(T, Xn, np.abs(T).max(axis=(0, 1)))
        lengths = np.sqrt((reduced_n * reduced_n).sum(axis=1))
        a, b, c = reduced_n
        volume = np.abs((a * (b[[1, 2, 0]] * c[[2, 0, 1]] - b[[2, 0, 1]] * c[[1, 2, 0]])).sum(axis=0))
        rel_volume = volume / np.maximum(lengths.prod(axis=0), np.finfo(np.float64).tiny)
        tiny = ~(lengths.min(axis=0) > _DEGENERATE_LENGTH_RATIO * input_scale) | ~(rel_volume > _DEGENERATE_VOLUME_RATIO)
        judged = (status == int(Status.OK)) | ((status == int(Status.NOT_CONVERGED)) & (iters < max_iter))
        status[tiny & judged] = int(Status.DEGENERATE)
        degenerate = status == int(Status.DEGENERATE)
        reduced = _times_power_of_two(reduced_n, exponent)
        # A cell near the float64 limit may overflow once reduced (sums of rows): report, don't return inf.
        overflow = ~np.isfinite(reduced).all(axis=(0, 1)) & ~(degenerate | nonfinite)
        status[overflow] = int(Status.NONFINITE)
        give_back_input = degenerate | nonfinite | overflow
        T[..., give_back_input] = np.eye(3)[..., None]
        reduced[..., give_back_input] = X[..., give_back_input]

    lattice = reduced.transpose(2, 0, 1).reshape(*lead, 3, 3)
    transform = T.transpose(2, 0, 1).astype(np.int64).reshape(*lead, 3, 3)
    status, iters = status.reshape(lead), iters.reshape(lead)
    if is_numpy:
        return NiggliResult(lattice.astype(torch.empty((), dtype=dtype).numpy().dtype), transform, status, iters)
    return NiggliResult(torch.from_numpy(np.ascontiguousarray(lattice)).to(device=device, dtype=dtype),
                        torch.from_numpy(np.ascontiguousarray(transform)).to(device),
                        torch.from_numpy(status).to(device), torch.from_numpy(iters).to(device))
