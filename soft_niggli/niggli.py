"""Guarded, batched Niggli reduction with the integer transform and a per-item status.

Row convention: a lattice ``L (..., 3, 3)`` has the lattice vectors a, b, c as rows; the reduced
lattice is ``transform @ L`` with ``transform`` an integer matrix of determinant ±1. The Niggli cell
is unique as a metric (G6 vector), not as a basis: ``-transform`` (and, for symmetric lattices, other
automorphisms) give the same metric.

What makes it safe to call on whatever a model emits:

* It never raises on values and never loops unbounded. Non-finite input is ``NONFINITE``; a cell that
  float64 cannot resolve (a vanishing or unresolvable reduced vector, a flat reduced basis, a reduction
  needing transform entries above 2**44) is ``DEGENERATE``; both come back unchanged with the identity
  transform. Hitting ``max_iter`` gives ``NOT_CONVERGED`` with the best basis so far and its valid
  unimodular transform.
* It is scale-free: the cell is first scaled by a power of two (exact), and every tolerance is
  relative: lengths are compared with each other, angles through their cosines; ``rel_tol`` is accepted
  in :data:`REL_TOL_RANGE` = [1e-12, 0.1).
* It is fast on skewed cells: each round size-reduces by rounding (Gauss/LLL style, so the number of
  rounds is logarithmic in the skew) before the Křivý–Gruber steps.
* It does not drift: the transform is tracked exactly in integers and the metric is recomputed from
  the original cell every round, with an error-free product where the transform has large entries.
* It verifies: the result is checked against the full Niggli conditions, special boundary conditions
  included (the conditions of :func:`is_niggli_reduced`).

The reduction works on detached values in float64, on the host, whatever the input dtype and device;
the results are torch tensors cast back to the input's dtype and device (72 bytes per cell each way for
a GPU tensor). Its loop is compiled C (``soft_niggli/_niggli_kernel.c``, built at install time) or,
where that could not be built, the NumPy core of this module with bit-identical results
(:data:`COMPILED_KERNEL` says which runs). The NumPy core works on component-major arrays ``X (3, 3, n)``
whose entry ``X[i, j]`` is a contiguous vector over the batch. The documentation's design notes on the
reducer give the full account: what ``DEGENERATE`` means exactly (the error bounds of the products), how
the tolerance levels ``rel_tol / 8`` and ``rel_tol / 64`` keep cells distorted by about ``rel_tol``
from cycling, and why the range of ``rel_tol`` stops at 1e-12.
"""


from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import DEFAULT_REL_TOL, REL_TOL_RANGE, as_lattice, check_int, check_rel_tol, require_values
from ._exact import exact_int_matmul

try:  # the compiled per-cell loop (soft_niggli/_niggli_kernel.c); optional, see niggli_reduce
    from . import _niggli_kernel as _kernel
except ImportError:  # not built (no C compiler at install time): the NumPy core does the same work
    _kernel = None
    import os as _os
    import warnings as _warnings

    if _os.environ.get("SOFT_NIGGLI_NO_KERNEL_WARNING", "").strip() in ("", "0"):
        _warnings.warn(
            "soft_niggli: the compiled reduction kernel (soft_niggli._niggli_kernel) is not built, so "
            "niggli_reduce runs its NumPy core instead: same results, slower (up to about 20x for small "
            "batches). To build it, reinstall from source with a C compiler available (in a checkout: "
            "`pip install -e .`; otherwise `pip install --force-reinstall --no-deps --no-binary soft-niggli "
            "soft-niggli`). Set SOFT_NIGGLI_NO_KERNEL_WARNING=1 to silence this warning.",
            RuntimeWarning, stacklevel=1)

#: Whether the compiled reduction loop is in use (False: the NumPy core runs instead; same results).
COMPILED_KERNEL = _kernel is not None

__all__ = ["Status", "NiggliResult", "niggli_reduce", "is_niggli_reduced", "REL_TOL_RANGE"]


class Status(enum.IntEnum):
    """Per-item outcome of :func:`niggli_reduce`."""

    OK = 0  #: reduced and verified against the Niggli conditions (the checks of :func:`is_niggli_reduced`)
    NOT_CONVERGED = 1  #: iteration cap reached; best basis so far, valid unimodular transform
    DEGENERATE = 2  #: not resolvable in float64 (rank-deficient, see "Resolution"); input and identity returned
    NONFINITE = 3  #: NaN or inf in the input (or a reduced cell overflowing float64); input and identity returned

    def __str__(self) -> str:
        # An IntEnum prints its number since Python 3.11; a status reads better by name: "OK".
        return self.name

    def __format__(self, spec: str) -> str:
        # f"{status}" and f"{status:>12}" give the name; numeric formats (f"{status:d}") the number.
        try:
            return format(self.name, spec)
        except ValueError:
            return format(int(self), spec)


@dataclass(frozen=True)
class NiggliResult:
    """Result of :func:`niggli_reduce`; shapes follow the input's leading dims ``(...)``. Always torch
    tensors on the input's device, whatever the input (tensor, NumPy array or list).

    Attributes:
        lattice: ``(..., 3, 3)`` reduced lattice (input dtype and device; detached; float64 for NumPy
            float64 input).
        transform: ``(..., 3, 3)`` int64, unimodular, ``lattice == transform @ L`` up to rounding.
        status: ``(...)`` int64 holding :class:`Status` values.
        iterations: ``(...)`` int64, reduction rounds each item took before it passed the check.
    """

    lattice: torch.Tensor
    transform: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor

    @property
    def ok(self) -> torch.Tensor:
        """Boolean mask of items with ``Status.OK``."""
        return self.status == int(Status.OK)


# Error bounds of one basis vector b_i = Σ_j T_ij L_j (see "Resolution" in the module docstring). The
# plain float product is off by at most γ_3 r_i ≤ 2**-50 r_i, with r_i = Σ_j |T_ij| ‖L_j‖ (the vector's size
# before cancellation). The error-free product (soft_niggli/_exact.py: Sum2 of 12 exact partial products)
# is off by at most ε‖b_i‖ + γ_11² s_i ≤ ε‖b_i‖ + 2**-98 s_i, with s_i = Σ_j (|hi(T_ij)| + |lo(T_ij)|) ‖L_j‖
# the size of its partial products (its split T = hi + lo, hi = 2**26 floor(T / 2**26), makes |hi| + |lo|
# about |T| + 2**27 for a negative entry, |T| otherwise).
_PLAIN_PRODUCT_ERROR = 2.0**-50
_EXACT_PRODUCT_ERROR = 2.0**-98
_SPLIT = 2.0**26
# Every basis vector must be known to within rel_tol / _ACCURACY_MARGIN of its length: the plain product
# is replaced by the error-free one where it is not, and a vector the error-free product cannot resolve to
# that accuracy makes the item DEGENERATE.
_ACCURACY_MARGIN = 16.0
# The rounding of a product of two basis vectors (their errors, plus at most 2**-50 |b_i||b_j| for the
# product itself) must stay below this share of the smaller squared length; otherwise the bounds
# |ξ| <= B, |η| <= A, |ζ| <= A cannot be decided (for vectors computed without cancellation: a length
# ratio above ~2e13). Unresolved: DEGENERATE.
_CROSS_MARGIN = 1.0 / 16.0
_EPS = 2.0**-53
# Squared lengths below this (after scaling the cell's largest entry into [0.5, 1)) would leave the metric
# in float64's subnormal range, where it loses relative precision: DEGENERATE (vectors below ~1e-146 of
# the cell's largest entry).
_MIN_SQUARED_LENGTH = 2.0**-968
# Below this ratio of reduced volume to the product of reduced lengths the basis is flat: DEGENERATE. (A
# Niggli-reduced basis has a ratio above 0.5, so this only catches exactly singular bases.)
_DEGENERATE_VOLUME_RATIO = 1e-12
# Transform entries beyond this are a sign of a (numerically) dense lattice, not of a skewed cell (and the
# error-free product needs entries below 2**52).
_MAX_TRANSFORM_ENTRY = 2.0**44
# Transforms with entries beyond this always use the error-free product (they are about to need it anyway).
_PLAIN_PRODUCT_LIMIT = 2.0**10
# Finished items are dropped from working arrays of more than _COMPACT_MIN items once this share of
# them is done: dropping costs a few copies of everything, so it pays only when many have finished
# (and below a few hundred items every operation costs its call overhead whatever its size).
_COMPACT_SHARE = 0.25
_COMPACT_MIN = 512
# Tolerance levels (see "Tolerance" in the module docstring): an item stuck at rel_tol goes on with
# rel_tol / _LEVEL_FACTOR, and so on, _LEVELS levels in all; it is stuck when a round changes nothing or
# when A + B + C has not gone down for _STALL_ROUNDS rounds.
_LEVELS = 3
_LEVEL_FACTOR = 8.0
_STALL_ROUNDS = 8
# Items per chunk of work (see _iterate_in_chunks).
_CHUNK = 8192

# Size-reduction sweeps per round: two bring most cells to a Buerger-reduced basis in the first round,
# so that only the Křivý–Gruber sign and boundary steps remain.
_SWEEPS = 2


def _eye(n: int) -> np.ndarray:
    out = np.zeros((3, 3, n))
    out[0, 0] = out[1, 1] = out[2, 2] = 1.0
    return out


def _times_power_of_two(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``x * 2**exponent`` per item (last axis), exactly; in two halves since 2**±1074 over/underflows."""
    half = exponent // 2
    return np.ldexp(np.ldexp(x, half), exponent - half)


# The two products below sum their three terms left to right, as the compiled core does. (np.einsum does
# not promise an order: with a single item it sums in another one, which breaks bit-identity.)
def _matmul(T: np.ndarray, L: np.ndarray) -> np.ndarray:
    return (T[:, 0, None] * L[0] + T[:, 1, None] * L[1]) + T[:, 2, None] * L[2]


def _metric_of(B: np.ndarray) -> np.ndarray:
    return (B[:, None, 0] * B[None, :, 0] + B[:, None, 1] * B[None, :, 1]) + B[:, None, 2] * B[None, :, 2]


def _sizes(W: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """``Σ_j W_ij ℓ_j`` per vector ``(3, n)``, with ``ℓ (3, n)`` the lengths of the cell's rows."""
    return W[:, 0] * ell[0] + W[:, 1] * ell[1] + W[:, 2] * ell[2]


def _basis_and_metric(T: np.ndarray, L: np.ndarray, ell: np.ndarray, t_max: np.ndarray, k_plain: float,
                      k_exact: float):
    """``(B, G, resolved, products_resolved)``: the basis ``B = T @ L`` per item for integer-valued float64
    ``T``, its metric, whether every vector of it is resolved, and whether the products of two of them are
    (known to ``_CROSS_MARGIN`` of the smaller squared length; only a basis that passes the Niggli
    conditions, or that the reduction is stuck on, needs that: the rounds make progress without it).

    The plain float product is used where it is accurate enough: ``T`` entries up to
    ``_PLAIN_PRODUCT_LIMIT`` and every ``‖b_i‖ >= k_plain r_i``; elsewhere the error-free product, whose
    vectors are resolved where ``‖b_i‖ > k_exact s_i`` (``k_plain, k_exact`` from :func:`_accuracy_factors`;
    ``r_i`` and ``s_i`` as defined with _PLAIN_PRODUCT_ERROR, ``s_i`` for the sign of the row of ``T`` the
    error-free product runs on). Every vector must also have ``‖b_i‖² > _MIN_SQUARED_LENGTH``. NaN counts
    as unresolved.
    """
    B = _matmul(T, L)
    G = _metric_of(B)
    r = _sizes(np.abs(T), ell)
    error = _PLAIN_PRODUCT_ERROR * r  # bound on each vector's error
    floor = k_plain * r
    exact = (t_max > _PLAIN_PRODUCT_LIMIT) | (G[[0, 1, 2], [0, 1, 2]] < floor * floor).any(axis=0)
    if exact.any():
        Te, ell_e = T.compress(exact, axis=2), ell.compress(exact, axis=1)
        # b_i = Σ_j T_ij L_j = Σ_j (−T_ij)(−L_j): the error-free product runs on whichever sign of the row
        # of T makes its partial products smaller (the split gives a negative entry 2**27 more).
        s_pos, s_neg = _sizes(_split_sizes(Te), ell_e), _sizes(_split_sizes(-Te), ell_e)
        flip = s_neg < s_pos
        sign = np.where(flip, -1.0, 1.0)[:, None]
        Be = exact_int_matmul(Te * sign, L.compress(exact, axis=2)) * sign
        B[..., exact] = Be
        G[..., exact] = _metric_of(Be)
        s_used = np.where(flip, s_neg, s_pos)
        floor = k_exact * s_used
        length_e = np.sqrt(G[[0, 1, 2], [0, 1, 2]].compress(exact, axis=1))
        error[:, exact] = _EPS * length_e + _EXACT_PRODUCT_ERROR * s_used
    D = G[[0, 1, 2], [0, 1, 2]]
    resolved = (D > _MIN_SQUARED_LENGTH).all(axis=0)
    if exact.any():
        resolved[exact] &= (D.compress(exact, axis=1) > floor * floor).all(axis=0)
    # The products of two vectors must be known to a sixteenth of the smaller squared length, which the
    # bounds |ξ| <= B, |η| <= A, |ζ| <= A compare them with.
    length = np.sqrt(D)
    products_resolved = np.ones(D.shape[1], dtype=bool)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        cross = (error[i] * length[j] + error[j] * length[i]) + _PLAIN_PRODUCT_ERROR * (length[i] * length[j])
        products_resolved &= cross <= _CROSS_MARGIN * np.where(D[i] < D[j], D[i], D[j])
    return B, G, resolved, products_resolved


def _split_sizes(T: np.ndarray) -> np.ndarray:
    """``|hi| + |lo|`` of the error-free product's split of each entry, ``hi = 2**26 floor(T / 2**26)``."""
    hi = np.floor(T / _SPLIT) * _SPLIT
    return np.abs(hi) + np.abs(T - hi)


def _accuracy_factors(rel_tol: float) -> tuple[float, float]:
    """``(k_plain, k_exact)`` of :func:`_basis_and_metric` for the finest tolerance level (rel_tol /
    _LEVEL_FACTOR ** (_LEVELS - 1)): the basis vectors are known to a sixteenth of it."""
    e_min = rel_tol * _LEVEL_FACTOR ** (1 - _LEVELS)
    return _PLAIN_PRODUCT_ERROR * _ACCURACY_MARGIN / e_min, _EXACT_PRODUCT_ERROR * _ACCURACY_MARGIN / e_min


def _relative_volume(B: np.ndarray) -> np.ndarray:
    """``|det B| / (‖a‖ ‖b‖ ‖c‖)`` per item (0 for a zero vector)."""
    lengths = np.sqrt((B * B).sum(axis=1))
    a, b, c = B
    volume = np.abs((a * (b[[1, 2, 0]] * c[[2, 0, 1]] - b[[2, 0, 1]] * c[[1, 2, 0]])).sum(axis=0))
    return volume / np.maximum(lengths.prod(axis=0), np.finfo(np.float64).tiny)


def _swap(rows: list, i: int, j: int, where: np.ndarray) -> None:
    """Swap vectors ``i`` and ``j`` of the items ``where`` (rows of the round's state, see :func:`_round`)."""
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


def _round(T: np.ndarray, G: np.ndarray, e: float) -> tuple[np.ndarray, np.ndarray]:
    """One reduction round on bases ``T @ L`` with metric ``G (3, 3, n)``; returns ``(T, changed)``.

    First ``_SWEEPS`` greedy size-reduction sweeps: sort the vectors by length (only where out of order
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
    for _ in range(_SWEEPS):
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

    # --- steps 3-4: ξ, η, ζ all positive, or all non-positive (see _sign_rule) ---
    pos, neg = O > t, O < -t
    zero = ~(pos | neg)
    blocked = _type2_blocked_where_needed(O, t, np.stack([B, A, A]), e, pos, zero)
    flip = ~_sign_rule(pos, neg, blocked)
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


def _iterate(L: np.ndarray, ell: np.ndarray, rel_tol: float, max_iter: int):
    """Reduce the finite, non-zero cells ``L (3, 3, n)`` (largest entry in [0.5, 1); row lengths
    ``ell (3, n)``) round by round.

    Each round recomputes the metric of ``T @ L`` from the original cell (no drift) and checks it
    against the full Niggli conditions: the items that pass are done (this check is the reducer's
    final verification), the others get one more :func:`_round`, at their tolerance level (items that
    stop making progress go on at finer levels; see "Tolerance" in the module docstring). Items with an
    unresolved vector or a runaway transform, or that pass or are stuck with unresolved products of two
    vectors, are done too, as DEGENERATE (see "Resolution"). Returns ``(T, iterations, status)``.
    The rounds run on a compacted copy of the unfinished items when enough have finished, so that late
    rounds cost only what is left.
    """
    n = L.shape[2]
    T = _eye(n)
    iters = np.zeros(n, dtype=np.int64)
    status = np.full(n, int(Status.NOT_CONVERGED), dtype=np.int64)
    work, Tw, Lw, ell_w = np.arange(n), T.copy(), L, ell
    active = np.ones(n, dtype=bool)
    changed = np.ones(n, dtype=bool)
    # Per item: its tolerance (rel_tol, then finer levels), the shortest A + B + C so far and the rounds
    # since it last went down (see "Tolerance" in the module docstring).
    e_w = np.full(n, float(rel_tol))
    level = np.zeros(n, dtype=np.int64)
    best = np.full(n, np.inf)
    stall = np.zeros(n, dtype=np.int64)
    k_plain, k_exact = _accuracy_factors(rel_tol)
    for it in range(max_iter + 1 if n else 0):
        t_max = np.abs(Tw).max(axis=(0, 1))
        _, G, resolved, products_resolved = _basis_and_metric(Tw, Lw, ell_w, t_max, k_plain, k_exact)
        # A vector float64 cannot resolve (a vanishing one included) or a runaway transform: the lattice
        # is numerically rank-deficient. (Written so that NaN counts as bad.)
        bad = ~resolved | ~(t_max <= _MAX_TRANSFORM_ENTRY)
        # The check: the conditions at rel_tol, or, for an item gone on to finer levels, at any of them.
        ok = _niggli_conditions(G, rel_tol)
        for k in range(1, _LEVELS):
            deeper = level >= k
            if deeper.any():
                ok |= deeper & _niggli_conditions(G, rel_tol / _LEVEL_FACTOR**k)
        ok &= ~bad
        # Items that fail the check but that a round left unchanged, or whose A + B + C has not gone down
        # for _STALL_ROUNDS rounds, are stuck: they go on with a finer tolerance, or, at the finest one,
        # are NOT_CONVERGED.
        total = (G[0, 0] + G[1, 1]) + G[2, 2]
        lower = total < best
        best = np.where(lower, total, best)
        stall = np.where(lower, 0, stall + 1)
        stuck = ~(ok | bad) & (~changed | (stall >= _STALL_ROUNDS))
        # A basis that passes, or that the reduction is stuck on, must have resolved products.
        unresolved = (ok | stuck) & ~products_resolved
        bad |= unresolved
        ok &= ~unresolved
        stuck &= ~unresolved
        finer = stuck & (level < _LEVELS - 1)
        if finer.any():
            level += finer
            e_w = np.where(finer, e_w / _LEVEL_FACTOR, e_w)
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
        Tw, changed = _round(Tw, G, e_w)
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


def _type2_blocked(O: np.ndarray, s: np.ndarray, P: np.ndarray, e: float) -> np.ndarray:
    """Whether no sign change makes the basis type II: one of ξ, η, ζ is clearly non-zero and at its bound
    (|ξ| = B, |η| = A or |ζ| = A), and its partner (ζ, ζ, η) is clearly non-zero, so that type II, where it
    would be −B or −A, fails the special condition (ξ = −B ⇒ ζ = 0, ...)."""
    absO = np.abs(O)
    return ((np.abs(absO - P) <= e * P) & (absO > s) & (np.abs(O[[2, 2, 1]]) > s[[2, 2, 1]])).any(axis=0)


def _type2_blocked_where_needed(O, s, P, e, pos, zero) -> np.ndarray:
    """:func:`_type2_blocked`, computed only if some item needs it (mixed signs with a zero); False elsewhere
    (where it does not change :func:`_sign_rule` nor the choice of step 3)."""
    if (pos.any(axis=0) & ~pos.all(axis=0) & zero.any(axis=0)).any():
        return _type2_blocked(O, s, P, e)
    return np.zeros(O.shape[1:], dtype=bool)


def _sign_rule(pos: np.ndarray, neg: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """The sign condition with tolerances, from the clearly positive and clearly negative entries of
    (ξ, η, ζ): type I (all clearly positive), type II (none clearly positive), or, where type II is
    blocked (:func:`_type2_blocked`), type I within tolerance (none clearly negative).

    The last case is what the exact conditions give when the entries within the tolerance of zero are
    taken as small positive numbers, the only choice left there; without it no basis of such a cell
    (a hexagonal cell whose angles are off by about rel_tol, say) satisfies the conditions, and the
    reduction would cycle between two bases that fail them."""
    return pos.all(axis=0) | ~pos.any(axis=0) | (~neg.any(axis=0) & blocked)


def _niggli_conditions(G: np.ndarray, e: float) -> np.ndarray:
    """Whether each metric ``G (3, 3, n)`` satisfies the Niggli conditions with relative tolerance ``e``."""
    D = G[[0, 1, 2], [0, 1, 2]]  # A, B, C
    O = 2 * G[[1, 0, 0], [2, 2, 1]]  # ξ, η, ζ
    A, B, C = D
    P = D[[1, 0, 0]]  # the bounds of |ξ|, |η|, |ζ|: B, A, A
    e_p = e * P
    s = e * np.sqrt(np.abs(P * D[[2, 2, 1]]))  # cosine tolerances of ξ, η, ζ: e √(BC), e √(AC), e √(AB)
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    absO = np.abs(O)
    S = A + B + O.sum(axis=0)
    ok = (A <= B + eAB) & (B <= C + eBC) & (absO <= P + e_p).all(axis=0)
    pos, neg = O > s, O < -s
    ok &= _sign_rule(pos, neg, _type2_blocked_where_needed(O, s, P, e, pos, ~(pos | neg)))
    ok &= S >= -eAB
    # Special conditions on the boundaries of the Niggli cone.
    ok &= ~(np.abs(A - B) <= eAB) | (absO[0] <= absO[1] + s[0])  # A = B ⇒ |ξ| ≤ |η|
    ok &= ~(np.abs(B - C) <= eBC) | (absO[1] <= absO[2] + s[1])  # B = C ⇒ |η| ≤ |ζ|
    other = O[[2, 2, 1]]
    # ξ = B ⇒ ζ ≤ 2η; η = A ⇒ ζ ≤ 2ξ; ζ = A ⇒ η ≤ 2ξ
    ok &= ~((np.abs(O - P) <= e_p) & (other > 2 * O[[1, 0, 0]] + s[[1, 0, 0]])).any(axis=0)
    # ξ = −B ⇒ ζ = 0; η = −A ⇒ ζ = 0; ζ = −A ⇒ η = 0
    ok &= ~((np.abs(O + P) <= e_p) & (np.abs(other) > s[[2, 2, 1]])).any(axis=0)
    ok &= ~(np.abs(S) <= eAB) | (2 * A + 2 * O[1] + O[2] <= eAB)  # S = 0 ⇒ 2A + 2η + ζ ≤ 0
    return ok


def _host_items(L, name: str):
    """Validate ``L`` and return ``(X (n, 3, 3) float64 C-contiguous on the host, lead, dtype, device)``.
    ``X`` may share memory with ``L``: read only."""
    L = as_lattice(L, name)
    require_values(L, f"{name}: the Niggli reduction (a loop on the host over the cells' values)")
    X = np.ascontiguousarray(L.detach().to("cpu", torch.float64).reshape(-1, 3, 3).numpy())
    return X, L.shape[:-2], L.dtype, L.device


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


def is_niggli_reduced(lattice, *, rel_tol: float = DEFAULT_REL_TOL):
    """Whether each cell of ``lattice (..., 3, 3)`` satisfies the Niggli conditions, with relative tolerances.

    Checks (G6 = A, B, C, ξ, η, ζ): A ≤ B ≤ C; |ξ| ≤ B, |η| ≤ A, |ζ| ≤ A; ξ, η, ζ all positive or
    all non-positive; A + B + ξ + η + ζ ≥ 0; and the special conditions on the boundaries (A = B ⇒
    |ξ| ≤ |η|; B = C ⇒ |η| ≤ |ζ|; ξ = B ⇒ ζ ≤ 2η; η = A ⇒ ζ ≤ 2ξ; ζ = A ⇒ η ≤ 2ξ; ξ = −B ⇒ ζ = 0;
    η = −A ⇒ ζ = 0; ζ = −A ⇒ η = 0; A + B + ξ + η + ζ = 0 ⇒ 2A + 2η + ζ ≤ 0). Equalities hold within
    the same relative tolerances as :func:`niggli_reduce` uses, at ``rel_tol`` or at one of the reducer's
    finer levels ``rel_tol / 8`` and ``rel_tol / 64``; where type II is blocked, type I holds within the
    tolerance (see "Tolerance" in the module docstring).

    Non-finite cells are not reduced, and neither are rank-deficient ones (a zero cell, a zero vector,
    a flat basis): the checker applies the reducer's own degeneracy tests to the cell as given (see
    "Resolution" in the module docstring). So every ``OK`` result of :func:`niggli_reduce` passes this
    check, every ``DEGENERATE`` input fails it, and a cell that passes it at ``rel_tol`` itself comes back
    from :func:`niggli_reduce` (same ``rel_tol``) as ``OK`` with the identity transform.
    Returns a bool tensor of shape ``(...)`` on ``lattice``'s device (also for NumPy or list input).

    Raises:
        TypeError: if ``lattice`` is not a tensor, array or list of numbers, or ``rel_tol`` not a real number.
        ValueError: if ``lattice`` is not a floating ``(..., 3, 3)`` tensor/array or is on the meta device, or
            ``rel_tol`` is outside :data:`REL_TOL_RANGE`.
    """
    X, lead, _, device = _host_items(lattice, "lattice")
    rel_tol = check_rel_tol(rel_tol)
    with np.errstate(all="ignore"):
        Xn, _, nonfinite, zero = _normalized(np.ascontiguousarray(X.transpose(1, 2, 0)))
        ell = np.sqrt((Xn * Xn).sum(axis=1))
        # What the reducer's first round sees (T = I), at each tolerance level, then its final flatness test.
        B, G, resolved, products_resolved = _basis_and_metric(_eye(Xn.shape[2]), Xn, ell, np.ones(Xn.shape[2]),
                                                              *_accuracy_factors(rel_tol))
        ok = np.zeros(Xn.shape[2], dtype=bool)
        for k in range(_LEVELS):
            ok |= _niggli_conditions(G, rel_tol / _LEVEL_FACTOR**k)
        ok &= resolved & products_resolved & (_relative_volume(B) > _DEGENERATE_VOLUME_RATIO)
        ok = (ok & ~nonfinite & ~zero).reshape(lead)
    return torch.from_numpy(ok).to(device)


def niggli_reduce(lattice, *, rel_tol: float = DEFAULT_REL_TOL, max_iter: int = 1000) -> NiggliResult:
    """Niggli-reduce every cell of ``lattice (..., 3, 3)`` (rows are lattice vectors); never raises on values.

    Args:
        lattice: torch tensor (any device but ``meta``), NumPy array or (nested) list of numbers, floating
            (a list of integers is taken as numbers). Gradients are not tracked: the computation runs on
            ``lattice.detach()`` in float64, on the host.
        rel_tol: relative tolerance of every comparison (lengths against each other, cosines), in
            :data:`REL_TOL_RANGE` (the lower end included; see "Tolerance" in the module docstring).
        max_iter: cap on the rounds (each a size-reduction sweep plus one Křivý–Gruber pass).

    Returns:
        :class:`NiggliResult` with ``lattice``, ``transform`` (int64), ``status`` and ``iterations``:
        torch tensors on ``lattice``'s device, whatever ``lattice`` is (a NumPy float64 array gives a float64
        ``lattice``).

    Raises:
        TypeError: ``lattice`` not a tensor, array or list of numbers; ``rel_tol`` not a real number;
            ``max_iter`` not an int (a float, even integral, or a bool).
        ValueError: ``lattice`` not floating or not of shape ``(..., 3, 3)``, or on the meta device (no values
            to reduce); ``rel_tol`` outside :data:`REL_TOL_RANGE`; ``max_iter`` below 1.

    Example:
        >>> res = niggli_reduce(torch.tensor([[4.0, 0, 0], [4.0, 4, 0], [0, 0, 5]]))
        >>> res.lattice.tolist(), Status(int(res.status))
        ([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]], <Status.OK: 0>)
        >>> print(Status(int(res.status)))
        OK
    """
    X, lead, dtype, device = _host_items(lattice, "lattice")
    rel_tol = check_rel_tol(rel_tol)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if _kernel is not None:
        lattice, transform = np.empty_like(X), np.empty(X.shape, dtype=np.int64)
        status, iters = np.empty(len(X), dtype=np.int64), np.empty(len(X), dtype=np.int64)
        _kernel.reduce(X, lattice, transform, iters, status, rel_tol, min(max_iter, 2**62))
    else:
        lattice, transform, status, iters = _reduce_numpy(X, rel_tol, max_iter)

    lattice, transform = lattice.reshape(*lead, 3, 3), transform.reshape(*lead, 3, 3)
    status, iters = status.reshape(lead), iters.reshape(lead)
    return NiggliResult(torch.from_numpy(lattice).to(device=device, dtype=dtype), torch.from_numpy(transform).to(device),
                        torch.from_numpy(status).to(device), torch.from_numpy(iters).to(device))


def _reduce_numpy(X_items: np.ndarray, rel_tol: float, max_iter: int):
    """The reduction of :func:`niggli_reduce` on ``X_items (n, 3, 3)``, in NumPy on component-major
    arrays; returns item-major ``(lattice, transform (int64), status, iterations)``.

    ``_niggli_kernel.reduce`` (C) does the same, cell by cell, with the same arithmetic.
    """
    X = np.ascontiguousarray(X_items.transpose(1, 2, 0))
    n = X.shape[2]
    with np.errstate(all="ignore"):  # inf/NaN arithmetic of bad items is expected; they get a status
        Xn, exponent, nonfinite, degenerate = _normalized(X)
        ell = np.sqrt((Xn * Xn).sum(axis=1))  # row lengths (3, n)
        work = np.flatnonzero(~(nonfinite | degenerate))
        T = _eye(n)
        iters = np.zeros(n, dtype=np.int64)
        status = np.full(n, int(Status.DEGENERATE), dtype=np.int64)
        status[nonfinite] = int(Status.NONFINITE)
        T[..., work], iters[work], status[work] = _iterate_in_chunks(Xn.take(work, axis=2), ell.take(work, axis=1),
                                                                     rel_tol, max_iter)

        # The loop verified the Niggli conditions and the resolution of every vector on the basis
        # recomputed from the original cell (the same product as here); left to check: a flat basis
        # (volume relative to the product of lengths). Only a converged basis is short enough to judge.
        reduced_n, _, _, _ = _basis_and_metric(T, Xn, ell, np.abs(T).max(axis=(0, 1)), *_accuracy_factors(rel_tol))
        flat = ~(_relative_volume(reduced_n) > _DEGENERATE_VOLUME_RATIO)
        judged = (status == int(Status.OK)) | ((status == int(Status.NOT_CONVERGED)) & (iters < max_iter))
        status[flat & judged] = int(Status.DEGENERATE)
        degenerate = status == int(Status.DEGENERATE)
        reduced = _times_power_of_two(reduced_n, exponent)
        # A cell near the float64 limit may overflow once reduced (sums of rows): report, don't return inf.
        overflow = ~np.isfinite(reduced).all(axis=(0, 1)) & ~(degenerate | nonfinite)
        status[overflow] = int(Status.NONFINITE)
        give_back_input = degenerate | nonfinite | overflow
        T[..., give_back_input] = np.eye(3)[..., None]
        reduced[..., give_back_input] = X[..., give_back_input]
    lattice = np.ascontiguousarray(reduced.transpose(2, 0, 1))
    transform = np.ascontiguousarray(T.transpose(2, 0, 1)).astype(np.int64)
    return lattice, transform, status, iters
