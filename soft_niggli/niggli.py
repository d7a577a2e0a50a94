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

Where it runs: the reduction is a data-dependent loop over 3×3 matrices. Its main core is compiled C
(``soft_niggli/_niggli_kernel.c``, built at install time), which reduces the cells one by one on the
host. Where that extension could not be built (no C compiler), the NumPy core below does the same
work, with the same arithmetic in the same order and therefore bit-identical results, only slower
(:data:`COMPILED_KERNEL` says which one runs). The NumPy core works on component-major arrays: a batch
of matrices is an array ``X (3, 3, n)`` whose entry ``X[i, j]`` is a contiguous vector over the batch,
so every formula below is a handful of vector operations. Tensors on another device are copied to
the host and the results copied back (72 bytes per cell each way).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_float_tensor, check_matrix_shape
from ._exact import exact_int_matmul

try:  # the compiled per-cell loop (soft_niggli/_niggli_kernel.c); optional, see niggli_reduce
    from . import _niggli_kernel as _kernel
except ImportError:  # not built (no C compiler at install time): the NumPy core does the same work
    _kernel = None

#: Whether the compiled reduction loop is in use (False: the NumPy core runs instead; same results).
COMPILED_KERNEL = _kernel is not None

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
        iterations: ``(...)`` int64, reduction rounds each item took before it passed the check.
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
# Finished items are dropped from working arrays of more than _COMPACT_MIN items once this share of
# them is done: dropping costs a few copies of everything, so it pays only when many have finished
# (and below a few hundred items every operation costs its call overhead whatever its size).
_COMPACT_SHARE = 0.25
_COMPACT_MIN = 512
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

    # --- steps 3-4: ξ, η, ζ all positive, or all non-positive ---
    pos, neg = O > t, O < -t
    zero = ~(pos | neg)
    step3 = ~zero.any(axis=0) & (neg.sum(axis=0) == 2)  # product > 0 but not all positive: all positive
    step4 = ~step3 & pos.any(axis=0) & ~pos.all(axis=0)  # otherwise: all non-positive
    flip = step3 | step4
    if flip.any():
        # Negating vector a flips η and ζ, and so on; a pair of negations keeps det +1. Step 3 negates
        # (a, b, c) where (ξ, η, ζ) < 0. Step 4 negates where > 0, plus, when that count is odd, the
        # first vector whose entry is zero (either sign is fine there).
        fix = zero & (pos[0] ^ pos[1] ^ pos[2])
        fix[1] &= ~fix[0]
        fix[2] &= ~(fix[0] | fix[1])
        s = 1.0 - 2.0 * np.where(step3, neg, step4 & (pos ^ fix))
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
    apply[1] &= ~apply[0]  # only the first that applies
    apply[2] &= ~(apply[0] | apply[1])
    steps567 = apply.any(axis=0)
    if steps567.any():
        q = np.where(over, np.rint(O / (2 * P)), np.sign(O)) * apply
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
            if work.size > _COMPACT_MIN and n_active <= (1 - _COMPACT_SHARE) * work.size:
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
    """:func:`_iterate` on chunks of at most ``_CHUNK`` items.

    Chunks keep the temporaries small: large ones come as fresh pages from the OS on every
    allocation, and the page faults then cost more than the arithmetic. (Threads do not help: the
    per-call overhead, which holds the GIL, is a large share of each operation at these sizes.)
    """
    n = L.shape[2]
    if n <= _CHUNK:
        return _iterate(L, scale, rel_eps, max_iter)
    results = [_iterate(L[..., i:i + _CHUNK], scale[i:i + _CHUNK], rel_eps, max_iter) for i in range(0, n, _CHUNK)]
    return tuple(np.concatenate(pieces, axis=-1) for pieces in zip(*results))


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
    ok &= (O > s).all(axis=0) | (O <= s).all(axis=0)
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
    """Validate ``L`` and return ``(X (n, 3, 3) float64 C-contiguous on the host, lead, dtype, device,
    is_numpy)``. ``X`` may share memory with ``L``: read only."""
    is_numpy = isinstance(L, np.ndarray)
    L = as_float_tensor(L, name)
    check_matrix_shape(L, name)
    X = np.ascontiguousarray(L.detach().to("cpu", torch.float64).reshape(-1, 3, 3).numpy())
    return X, L.shape[:-2], L.dtype, L.device, is_numpy


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
    X, lead, _, device, is_numpy = _host_items(L, "L")
    with np.errstate(all="ignore"):
        Xn, _, nonfinite, _ = _normalized(np.ascontiguousarray(X.transpose(1, 2, 0)))
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
    X, lead, dtype, device, is_numpy = _host_items(L, "L")
    if not (isinstance(rel_eps, (float, int)) and 0 < rel_eps < 0.1):
        raise ValueError(f"rel_eps: expected a float in (0, 0.1), got {rel_eps!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    if _kernel is not None:
        lattice, transform = np.empty_like(X), np.empty(X.shape, dtype=np.int64)
        status, iters = np.empty(len(X), dtype=np.int64), np.empty(len(X), dtype=np.int64)
        _kernel.reduce(X, lattice, transform, iters, status, float(rel_eps), min(max_iter, 2**62))
    else:
        lattice, transform, status, iters = _reduce_numpy(X, float(rel_eps), max_iter)

    lattice, transform = lattice.reshape(*lead, 3, 3), transform.reshape(*lead, 3, 3)
    status, iters = status.reshape(lead), iters.reshape(lead)
    if is_numpy:
        return NiggliResult(lattice.astype(torch.empty((), dtype=dtype).numpy().dtype), transform, status, iters)
    return NiggliResult(torch.from_numpy(lattice).to(device=device, dtype=dtype), torch.from_numpy(transform).to(device),
                        torch.from_numpy(status).to(device), torch.from_numpy(iters).to(device))


def _reduce_numpy(X_items: np.ndarray, rel_eps: float, max_iter: int):
    """The reduction of :func:`niggli_reduce` on ``X_items (n, 3, 3)``, in NumPy on component-major
    arrays; returns item-major ``(lattice, transform (int64), status, iterations)``.

    ``_niggli_kernel.reduce`` (C) does the same, cell by cell, with the same arithmetic.
    """
    X = np.ascontiguousarray(X_items.transpose(1, 2, 0))
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
    lattice = np.ascontiguousarray(reduced.transpose(2, 0, 1))
    transform = np.ascontiguousarray(T.transpose(2, 0, 1)).astype(np.int64)
    return lattice, transform, status, iters
