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
* It is fast on skewed cells: a rounding-based size reduction (Gauss/LLL style, iterations
  logarithmic in the skew) comes before the one-unit-per-step Křivý–Gruber steps.
* It does not drift: the transform is tracked exactly in integers and the metric is recomputed from
  the original cell each iteration, with an error-free product where the transform has large entries.
* It verifies: the result is checked against the full Niggli conditions, special boundary conditions
  included, by :func:`is_niggli_reduced`.

The reduction works on detached values in float64 whatever the input dtype; the returned lattice is
cast back to the input's dtype and device. It carries no gradient (use ``transform`` with the
original, differentiable ``L`` when you need one: ``transform.to(L.dtype) @ L``).
"""

from __future__ import annotations

import enum
import itertools
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
        iterations: ``(...)`` int64, reduction steps taken per item.
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


def _times_power_of_two(x: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``x * 2**exponent`` per item, exactly; in two halves since 2**±1074 itself over/underflows."""
    half = torch.div(exponent, 2, rounding_mode="floor")
    e1 = half[:, None, None].to(x.dtype)
    e2 = (exponent - half)[:, None, None].to(x.dtype)
    return torch.ldexp(torch.ldexp(x, e1), e2)


def _basis(T: torch.Tensor, L: torch.Tensor, t_max: torch.Tensor | None = None) -> torch.Tensor:
    """``T @ L`` for integer-valued float64 ``T``, error-free where ``T`` has large entries."""
    out = T @ L
    if t_max is None:
        t_max = T.abs().amax(dim=(-1, -2))
    big = t_max > _PLAIN_PRODUCT_LIMIT
    if bool(big.any()):
        out[big] = exact_int_matmul(T[big], L[big])
    return out


def _metric(T: torch.Tensor, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Metric ``(T L)(T L)ᵀ`` recomputed from the original cell, and the largest entry of each ``T``."""
    t_max = T.abs().amax(dim=(-1, -2))
    B = _basis(T, L, t_max)
    return B @ B.transpose(-1, -2), t_max


def _g6_parts(G: torch.Tensor):
    return (G[:, 0, 0], G[:, 1, 1], G[:, 2, 2], 2 * G[:, 1, 2], 2 * G[:, 0, 2], 2 * G[:, 0, 1])


def _reduction_step(G: torch.Tensor, rel_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One iteration: a greedy size-reduction sweep, then one Křivý–Gruber step on the swept metric.

    The sweep sorts the vectors by length (only where they are out of order beyond the tolerance: lengths
    equal up to rounding would otherwise be re-sorted forever), Gauss-reduces b against a and rounds c
    onto span(a, b) (Babai), keeping only moves that shorten a vector, so repeated sweeps terminate and
    need a number of iterations logarithmic in the skew. The Křivý–Gruber step then applies the first
    of steps 1–8 that applies to the swept metric, with two accelerations that keep its fixed point:
    out-of-order lengths are sorted in one move, and steps 5–7 subtract the rounded multiple
    (``c -= round(ξ / 2B) b`` ...) instead of one unit.

    Args:
        G: ``(n, 3, 3)`` float64 metric of the current basis.
    Returns:
        ``(C, changed)``: the ``(n, 3, 3)`` unimodular row operation (det +1) to apply to the basis, and
        a bool ``(n,)`` that is False exactly where the basis is already Niggli-reduced.
    """
    e = rel_eps
    n = G.shape[0]
    # --- size-reduction sweep, on the entries of G as vectors ---
    code = _sort_code(G, e)
    P = _SORT_TABLE.to(G.device)[code]
    # P is a permutation times ±1, so P G Pᵀ is a plain gather of G's entries.
    g00, g01, g02, _, g11, g12, _, _, g22 = G.reshape(n, 9).gather(1, _SORT_GATHER.to(G.device)[code]).unbind(1)
    usable = g00 > 0
    mu = torch.round(g01 / torch.where(usable, g00, 1.0))
    new_g11 = g11 - 2 * mu * g01 + mu * mu * g00
    # Keep only moves that shorten b by more than the tolerance (ties at |μ| = 1/2 do not).
    mu = torch.where(usable & (new_g11 < g11 * (1 - e)), mu, 0.0)
    g11 = g11 - 2 * mu * g01 + mu * mu * g00
    g12 = g12 - mu * g02
    g01 = g01 - mu * g00
    det2 = g00 * g11 - g01 * g01
    usable = usable & (det2 > 0)
    safe = torch.where(usable, det2, 1.0)
    x = torch.round((g11 * g02 - g01 * g12) / safe)
    y = torch.round((g00 * g12 - g01 * g02) / safe)
    new_g22 = g22 + x * x * g00 + y * y * g11 + 2 * x * y * g01 - 2 * x * g02 - 2 * y * g12
    # Babai rounding on a skewed plane basis can lengthen c; keep only moves that shorten it.
    accept = usable & (new_g22 < g22 * (1 - e)) & ((x != 0) | (y != 0))
    x = torch.where(accept, x, 0.0)
    y = torch.where(accept, y, 0.0)
    g22 = torch.where(accept, new_g22, g22)
    g02, g12 = g02 - x * g00 - y * g01, g12 - x * g01 - y * g11
    swept = (code != 0) | (mu != 0) | accept
    p0, p1, p2 = P.unbind(1)
    sweep = torch.stack([p0, p1 - mu[:, None] * p0, p2 - (x - y * mu)[:, None] * p0 - y[:, None] * p1], dim=1)

    # --- one Křivý–Gruber step on the swept metric (A, B, C, ξ, η, ζ) ---
    A, B, C = g00, g11, g22
    xi, eta, zeta = 2 * g12, 2 * g02, 2 * g01
    off = torch.stack([xi, eta, zeta], dim=1)
    rA, rB, rC = torch.sqrt(A.clamp_min(0)), torch.sqrt(B.clamp_min(0)), torch.sqrt(C.clamp_min(0))
    tol = e * torch.stack([rB * rC, rA * rC, rA * rB], dim=1)  # sign tests on ξ, η, ζ are tests on cosines
    t_xi, t_eta, t_zeta = tol.unbind(1)
    pos, neg = off > tol, off < -tol
    l_pos, m_pos, k_pos = pos.unbind(1)
    l_zero, m_zero, k_zero = (~pos & ~neg).unbind(1)
    n_neg = neg.sum(1)
    all_nonzero = ~(l_zero | m_zero | k_zero)
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    unsorted = (A > B + eAB) | (B > C + eBC)
    step1 = ((A - B).abs() <= eAB) & (xi.abs() > eta.abs() + t_xi)
    step2 = ((B - C).abs() <= eBC) & (eta.abs() > zeta.abs() + t_eta)
    # Step 3: all three nonzero with an even number negative (product > 0) but not all positive.
    step3 = all_nonzero & ((n_neg == 2))
    # Step 4: otherwise some positive entry remains; make all non-positive.
    step4 = ~step3 & ~(all_nonzero & (n_neg == 0)) & (l_pos | m_pos | k_pos)
    partner = torch.stack([B, A, A], dim=1)  # steps 5, 6, 7: ξ against B, η against A, ζ against A
    e_p = e * partner
    over = off.abs() > partner + e_p
    # Boundary cases (ξ = B and 2η < ζ, ...; ξ = -B and ζ < 0, ...), each reduced by one unit.
    other1 = torch.stack([zeta - 2 * eta, zeta - 2 * xi, eta - 2 * xi], dim=1)
    tol1 = torch.stack([t_eta, t_xi, t_xi], dim=1)
    other2 = torch.stack([zeta, zeta, eta], dim=1)
    tol2 = torch.stack([t_zeta, t_zeta, t_eta], dim=1)
    steps567 = over | (((off - partner).abs() <= e_p) & (other1 > tol1)) | (
        ((off + partner).abs() <= e_p) & (other2 < -tol2))
    mult = torch.where(over, torch.round(off / (2 * partner)), torch.sign(off))
    S = xi + eta + zeta + A + B
    e8 = e * (A + B) / 2
    step8 = (S < -e8) | ((S.abs() <= e8) & (2 * (A + eta) + zeta > e8))
    conds = torch.stack([unsorted, step1, step2, step3, step4, steps567[:, 0], steps567[:, 1], steps567[:, 2],
                         step8, torch.ones_like(step8)], dim=1)
    first = conds.to(torch.int8).argmax(dim=1)

    # Sign patterns of steps 3 and 4 as 3-bit codes (bit set = negate that vector).
    l_neg, m_neg, k_neg = neg.unbind(1)
    bits3 = l_neg.long() * 4 + m_neg.long() * 2 + k_neg.long()
    odd = l_pos ^ m_pos ^ k_pos  # an odd number of negations would make det -1 ...
    fix_i = odd & l_zero  # ... so also negate a vector whose entry is zero (either sign is fine there)
    fix_j = odd & ~fix_i & m_zero
    fix_k = odd & ~fix_i & ~fix_j & k_zero
    bits4 = (l_pos ^ fix_i).long() * 4 + (m_pos ^ fix_j).long() * 2 + (k_pos ^ fix_k).long()
    sort_exact = _sort_code_of(A, B, C, 0.0)
    index = _KG_BASE.to(G.device)[first] + torch.where(first == 0, sort_exact, 0) + torch.where(
        first == 3, bits3, 0) + torch.where(first == 4, bits4, 0)
    q = torch.where((first >= 5) & (first <= 7), mult.gather(1, (first - 5).clamp(0, 2)[:, None]).squeeze(1), 0.0)
    kg = _KG_TABLE.to(G.device)[index] + q[:, None, None] * _KG_UNIT.to(G.device)[index]
    return kg @ sweep, swept | (first != 9)


def _sort_code(G: torch.Tensor, rel_eps: float) -> torch.Tensor:
    return _sort_code_of(G[:, 0, 0], G[:, 1, 1], G[:, 2, 2], rel_eps)


def _sort_code_of(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, rel_eps: float) -> torch.Tensor:
    """Index into the sort tables (0 = keep) of the permutation sorting ``(A, B, C)`` ascending.

    Sorts only where some pair is out of order beyond ``rel_eps``, and then sorts exactly (equal keys
    keep their order). Comparisons instead of argsort: for three keys they are a handful of vector ops.
    """
    f = 1 + rel_eps
    unsorted = (A > B * f) | (A > C * f) | (B > C * f)
    rank_a = (A > B).long() + (A > C).long()
    rank_b = (B >= A).long() + (B > C).long()
    code = _RANK_TO_CODE.to(A.device)[rank_a * 3 + rank_b]
    return torch.where(unsorted, code, 0)


def _build_tables():
    perms = list(itertools.permutations(range(3)))  # perms[0] is the identity
    sort_table = torch.zeros(6, 3, 3, dtype=torch.float64)
    sort_gather = torch.zeros(6, 9, dtype=torch.int64)
    rank_to_code = torch.zeros(9, dtype=torch.int64)
    for code, perm in enumerate(perms):
        P = torch.zeros(3, 3, dtype=torch.float64)
        P[torch.arange(3), torch.tensor(perm)] = 1.0
        # det(-P) = -det(P) in 3-D: negate odd permutations so every sort keeps det +1.
        sort_table[code] = P * torch.linalg.det(P)
        sort_gather[code] = torch.tensor([perm[i] * 3 + perm[j] for i in range(3) for j in range(3)])
        # Row perm[k] goes to position k, so original row r ends at rank perm.index(r).
        rank_to_code[perm.index(0) * 3 + perm.index(1)] = code
    # Křivý–Gruber moves: 0-5 sorts, 6 step 1, 7 step 2, 8-15 sign changes (steps 3, 4), 16-18 steps
    # 5-7 (identity plus q times the unit move), 19 step 8, 20 nothing.
    eye = torch.eye(3, dtype=torch.float64)
    kg = eye.repeat(21, 1, 1)
    unit = torch.zeros(21, 3, 3, dtype=torch.float64)
    kg[:6] = sort_table
    kg[6] = torch.tensor([[0.0, -1, 0], [-1, 0, 0], [0, 0, -1]])  # swap a, b (det +1)
    kg[7] = torch.tensor([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]])  # swap b, c (det +1)
    for bits in range(8):
        kg[8 + bits] = torch.diag(torch.tensor([1.0 - 2 * ((bits >> s) & 1) for s in (2, 1, 0)]))
    unit[16, 2, 1] = -1.0  # step 5: c -= q b
    unit[17, 2, 0] = -1.0  # step 6: c -= q a
    unit[18, 1, 0] = -1.0  # step 7: b -= q a
    kg[19] = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 1]])  # step 8: c <- a + b + c
    base = torch.tensor([0, 6, 7, 8, 8, 16, 17, 18, 19, 20])  # by first applicable condition
    return sort_table, sort_gather, rank_to_code, kg, unit, base


_SORT_TABLE, _SORT_GATHER, _RANK_TO_CODE, _KG_TABLE, _KG_UNIT, _KG_BASE = _build_tables()


def _iterate(T, Xn, input_scale, degenerate, work, rel_eps: float, max_iter: int):
    """Apply :func:`_reduction_step` to the items ``work`` until none changes.

    Updates ``T`` and ``degenerate`` in place; returns ``(iterations, capped)``. The loop runs on a
    compacted copy of the unfinished items (written back as they finish), so late iterations cost only
    what is left, and the metric is recomputed from the original cell every time (no drift).
    """
    n = T.shape[0]
    iters = torch.zeros(n, dtype=torch.int64, device=T.device)
    capped = torch.zeros(n, dtype=torch.bool, device=T.device)
    Tw, Lw, scale_w = T[work], Xn[work], input_scale[work]
    count = torch.zeros(work.numel(), dtype=torch.int64, device=T.device)
    changed = torch.ones(work.numel(), dtype=torch.bool, device=T.device)
    bad = torch.zeros_like(changed)
    for _ in range(max_iter):
        if work.numel() == 0:
            break
        G, t_max = _metric(Tw, Lw)
        step, changed = _reduction_step(G, rel_eps)
        # A vanishing vector or a runaway transform: the lattice is numerically rank-deficient.
        shortest = torch.diagonal(G, dim1=-2, dim2=-1).amin(dim=1)
        bad = (shortest <= (_DEGENERATE_LENGTH_RATIO * scale_w) ** 2) | (t_max > _MAX_TRANSFORM_ENTRY)
        changed = changed & ~bad
        Tw = step @ Tw
        count = count + changed.long()
        done = ~changed
        n_done = int(done.sum())
        # Compact when all are done, when a degenerate item must be frozen, or when a good share has
        # finished (each compaction costs a dozen small ops, worth it only on large batches).
        if n_done == done.numel() or bool(bad.any()) or n_done * 4 >= done.numel() > 512:
            fin = work[done]
            # Degenerate items keep their last good transform (this step is discarded for them).
            T[fin] = torch.where(bad[done, None, None], T[fin], Tw[done])
            iters[fin] = count[done]
            degenerate[fin] |= bad[done]
            keep = ~done
            work, Tw, Lw, scale_w, count, changed = work[keep], Tw[keep], Lw[keep], scale_w[keep], count[keep], changed[keep]
    T[work], iters[work] = Tw, count
    capped[work] = changed
    return iters, capped


def is_niggli_reduced(L, rel_eps: float = 1e-5):
    """Whether each cell of ``L (..., 3, 3)`` satisfies the Niggli conditions, with relative tolerances.

    Checks (G6 = A, B, C, ξ, η, ζ): A ≤ B ≤ C; |ξ| ≤ B, |η| ≤ A, |ζ| ≤ A; ξ, η, ζ all positive or
    all non-positive; A + B + ξ + η + ζ ≥ 0; and the special conditions on the boundaries (A = B ⇒
    |ξ| ≤ |η|; B = C ⇒ |η| ≤ |ζ|; ξ = B ⇒ ζ ≤ 2η; η = A ⇒ ζ ≤ 2ξ; ζ = A ⇒ η ≤ 2ξ; ξ = −B ⇒ ζ = 0;
    η = −A ⇒ ζ = 0; ζ = −A ⇒ η = 0; A + B + ξ + η + ζ = 0 ⇒ 2A + 2η + ζ ≤ 0). Equalities hold within
    the same relative tolerances as :func:`niggli_reduce` uses. Non-finite cells are not reduced.
    Returns a bool tensor (or array, for NumPy input) of shape ``(...)``.
    """
    is_numpy = isinstance(L, np.ndarray)
    L = as_float_tensor(L, "L")
    check_matrix_shape(L, "L")
    lead = L.shape[:-2]
    X = L.detach().reshape(-1, 3, 3).to(torch.float64)
    finite = torch.isfinite(X).all(dim=(1, 2))
    X = torch.where(finite[:, None, None], X, torch.eye(3, dtype=X.dtype, device=X.device))
    _, exponent = torch.frexp(X.abs().amax(dim=(1, 2)))
    X = _times_power_of_two(X, -exponent)
    G = X @ X.transpose(-1, -2)
    A, B, C, xi, eta, zeta = _g6_parts(G)
    e = rel_eps
    s_xi, s_eta, s_zeta = torch.sqrt(B * C), torch.sqrt(A * C), torch.sqrt(A * B)
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    ok = (A <= B + eAB) & (B <= C + eBC)
    ok &= (xi.abs() <= B + e * B) & (eta.abs() <= A + e * A) & (zeta.abs() <= A + e * A)
    pos = (xi > e * s_xi) & (eta > e * s_eta) & (zeta > e * s_zeta)
    nonpos = (xi <= e * s_xi) & (eta <= e * s_eta) & (zeta <= e * s_zeta)
    ok &= pos | nonpos
    S = A + B + xi + eta + zeta
    e8 = e * (A + B) / 2
    ok &= S >= -e8
    # Special conditions on the boundaries of the Niggli cone.
    ok &= ~((A - B).abs() <= eAB) | (xi.abs() <= eta.abs() + e * s_xi)
    ok &= ~((B - C).abs() <= eBC) | (eta.abs() <= zeta.abs() + e * s_eta)
    ok &= ~((xi - B).abs() <= e * B) | (zeta <= 2 * eta + e * s_eta)
    ok &= ~((eta - A).abs() <= e * A) | (zeta <= 2 * xi + e * s_xi)
    ok &= ~((zeta - A).abs() <= e * A) | (eta <= 2 * xi + e * s_xi)
    ok &= ~((xi + B).abs() <= e * B) | (zeta.abs() <= e * s_zeta)
    ok &= ~((eta + A).abs() <= e * A) | (zeta.abs() <= e * s_zeta)
    ok &= ~((zeta + A).abs() <= e * A) | (eta.abs() <= e * s_eta)
    ok &= ~(S.abs() <= e8) | (2 * A + 2 * eta + zeta <= e8)
    ok &= finite
    ok = ok.reshape(lead)
    return ok.cpu().numpy() if is_numpy else ok


def niggli_reduce(L, *, rel_eps: float = 1e-5, max_iter: int = 1000) -> NiggliResult:
    """Niggli-reduce every cell of ``L (..., 3, 3)`` (rows are lattice vectors); never raises on values.

    Args:
        L: torch tensor (any device) or NumPy array of floating dtype. Gradients are not tracked: the
            computation runs on ``L.detach()`` in float64.
        rel_eps: relative tolerance of every comparison (lengths against each other, cosines).
        max_iter: cap on the iterations (each a size-reduction sweep plus one Křivý–Gruber step).

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
    is_numpy = isinstance(L, np.ndarray)
    L = as_float_tensor(L, "L")
    check_matrix_shape(L, "L")
    if not (isinstance(rel_eps, (float, int)) and 0 < rel_eps < 0.1):
        raise ValueError(f"rel_eps: expected a float in (0, 0.1), got {rel_eps!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    lead, dtype, device = L.shape[:-2], L.dtype, L.device
    X = L.detach().reshape(-1, 3, 3).to(torch.float64)
    n = X.shape[0]
    eye = torch.eye(3, dtype=torch.float64, device=device)

    nonfinite = ~torch.isfinite(X).all(dim=(1, 2))
    X_safe = torch.where(nonfinite[:, None, None], eye, X)
    # Scale by a power of two so the largest entry is in [0.5, 1): exact, so c*L reduces like L.
    max_abs = X_safe.abs().amax(dim=(1, 2))
    degenerate = (max_abs == 0) & ~nonfinite
    _, exponent = torch.frexp(torch.where(degenerate, torch.ones_like(max_abs), max_abs))
    Xn = _times_power_of_two(torch.where(degenerate[:, None, None], eye, X_safe), -exponent)
    input_scale = torch.linalg.vector_norm(Xn, dim=-1).amax(dim=-1)

    T = eye.expand(n, 3, 3).clone()
    work = (~(nonfinite | degenerate)).nonzero().squeeze(1)
    iters, not_converged = _iterate(T, Xn, input_scale, degenerate, work, rel_eps, max_iter)

    # Final verification on the accurately recomputed basis; it also catches lattices whose reduced
    # form is below float64's resolution (vanishing vectors or volume relative to the cell's scale).
    reduced_n = _basis(T, Xn)
    G = reduced_n @ reduced_n.transpose(-1, -2)
    lengths = torch.sqrt(torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(0))
    rel_volume = torch.linalg.det(reduced_n).abs() / lengths.prod(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    tiny = (lengths.amin(dim=-1) <= _DEGENERATE_LENGTH_RATIO * input_scale) | (rel_volume <= _DEGENERATE_VOLUME_RATIO)
    # Only a converged basis is short enough to judge; a capped one may still be skewed.
    degenerate |= tiny & ~nonfinite & ~not_converged
    verified = is_niggli_reduced(reduced_n, rel_eps)

    status = torch.full((n,), int(Status.OK), dtype=torch.int64, device=device)
    status[~verified | not_converged] = int(Status.NOT_CONVERGED)
    status[degenerate] = int(Status.DEGENERATE)
    status[nonfinite] = int(Status.NONFINITE)

    give_back_input = degenerate | nonfinite
    T = torch.where(give_back_input[:, None, None], eye, T)
    reduced = _times_power_of_two(reduced_n, exponent)
    # A cell near the float64 limit may overflow once reduced (sums of rows): report, don't return inf.
    overflow = ~torch.isfinite(reduced).all(dim=(1, 2)) & ~give_back_input
    status[overflow] = int(Status.NONFINITE)
    T = torch.where(overflow[:, None, None], eye, T)
    give_back_input |= overflow
    reduced = torch.where(give_back_input[:, None, None], X, reduced)

    result = NiggliResult(
        lattice=reduced.to(dtype).reshape(*lead, 3, 3),
        transform=T.to(torch.int64).reshape(*lead, 3, 3),
        status=status.reshape(lead),
        iterations=iters.reshape(lead),
    )
    if is_numpy:
        result = NiggliResult(*(t.cpu().numpy() for t in (result.lattice, result.transform, result.status,
                                                          result.iterations)))
    return result
