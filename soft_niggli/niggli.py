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


def _basis(T: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``T @ L`` for integer-valued float64 ``T``, error-free where ``T`` has large entries."""
    out = T @ L
    big = T.abs().amax(dim=(-1, -2)) > _PLAIN_PRODUCT_LIMIT
    if bool(big.any()):
        out[big] = exact_int_matmul(T[big], L[big])
    return out


def _metric(T: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    B = _basis(T, L)
    return B @ B.transpose(-1, -2)


def _g6_parts(G: torch.Tensor):
    return (G[:, 0, 0], G[:, 1, 1], G[:, 2, 2], 2 * G[:, 1, 2], 2 * G[:, 0, 2], 2 * G[:, 0, 1])


def _size_reduction_step(G: torch.Tensor, rel_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One greedy rounding sweep: sort by length, Gauss-reduce b against a, round c onto span(a, b).

    Every accepted move shortens a vector, so repeating the sweep terminates; like Gauss/LLL reduction
    its number of sweeps grows with the logarithm of the skew. Returns the sweep's unimodular row
    operation (det +1) and whether it changed anything.
    """
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    # Sort only where lengths differ beyond the tolerance: re-sorting lengths equal up to rounding
    # would flip the order back and forth forever.
    A, B, C = diag.unbind(1)
    unsorted = (A > B * (1 + rel_eps)) | (B > C * (1 + rel_eps)) | (A > C * (1 + rel_eps))
    perm = torch.where(unsorted[:, None], diag.argsort(dim=1, stable=True), _IDENTITY_PERM.to(G.device))
    P = _sorting_matrix(perm)
    G = P @ G @ P.transpose(-1, -2)
    g00, g01, g02, g11, g12, g22 = G[:, 0, 0], G[:, 0, 1], G[:, 0, 2], G[:, 1, 1], G[:, 1, 2], G[:, 2, 2]
    usable = g00 > 0
    mu = torch.where(usable, torch.round(g01 / torch.where(usable, g00, 1.0)), 0.0)
    new_g11 = g11 - 2 * mu * g01 + mu * mu * g00
    # Likewise keep only moves that shorten b by more than the tolerance (ties at |μ| = 1/2 do not).
    mu = torch.where(new_g11 < g11 * (1 - rel_eps), mu, 0.0)
    g11 = g11 - 2 * mu * g01 + mu * mu * g00
    g12 = g12 - mu * g02
    g01 = g01 - mu * g00
    det2 = g00 * g11 - g01 * g01
    usable &= det2 > 0
    safe = torch.where(usable, det2, 1.0)
    x = torch.round((g11 * g02 - g01 * g12) / safe)
    y = torch.round((g00 * g12 - g01 * g02) / safe)
    new_g22 = g22 + x * x * g00 + y * y * g11 + 2 * x * y * g01 - 2 * x * g02 - 2 * y * g12
    # Babai rounding on a skewed plane basis can lengthen c; keep only moves that shorten it.
    accept = usable & (new_g22 < g22 * (1 - rel_eps)) & ((x != 0) | (y != 0))
    x = torch.where(accept, x, 0.0)
    y = torch.where(accept, y, 0.0)
    # Rows of the sweep: a = P0; b = P1 - mu P0; c = P2 - x a - y b.
    C = P.clone()
    C[:, 1] = P[:, 1] - mu[:, None] * P[:, 0]
    C[:, 2] = P[:, 2] - (x - y * mu)[:, None] * P[:, 0] - y[:, None] * P[:, 1]
    return C, unsorted | (mu != 0) | accept


def _krivy_gruber_step(G: torch.Tensor, rel_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The unimodular row operation of the first applicable reduction step, and whether one applies.

    The steps are Křivý–Gruber's, in their order, with two accelerations that keep its fixed point:
    a cell out of length order is sorted in one step (a signed permutation with det +1), and steps
    5–7 subtract the *rounded* multiple (``c -= round(ξ / 2B) b`` and so on, Gauss-style) rather than
    one unit, so a skewed cell needs a number of steps logarithmic in its skew.

    Tolerances are relative: length comparisons scale with the lengths involved, sign tests on ξ, η, ζ
    with the product of the two lengths (tests on cosines).
    """
    n = G.shape[0]
    e = rel_eps
    diag = torch.diagonal(G, dim1=-2, dim2=-1)  # (n, 3): A, B, C
    # Off-diagonal pairs in the order (ξ, η, ζ) = 2 (b·c, a·c, a·b).
    off = 2 * torch.stack([G[:, 1, 2], G[:, 0, 2], G[:, 0, 1]], dim=1)
    A, B, C = diag.unbind(1)
    xi, eta, zeta = off.unbind(1)
    root = torch.sqrt(diag)
    scale = torch.stack([root[:, 1] * root[:, 2], root[:, 0] * root[:, 2], root[:, 0] * root[:, 1]], dim=1)
    tol_off = e * scale  # cosine tolerance on ξ, η, ζ
    cls = torch.where(off > tol_off, 1, torch.where(off < -tol_off, -1, 0))
    l, m, k = cls.unbind(1)
    prod = l * m * k

    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    unsorted = (A > B + eAB) | (B > C + eBC)
    step1 = ((A - B).abs() <= eAB) & (xi.abs() > eta.abs() + tol_off[:, 0])
    step2 = ((B - C).abs() <= eBC) & (eta.abs() > zeta.abs() + tol_off[:, 1])
    step3 = (prod == 1) & ~((l == 1) & (m == 1) & (k == 1))
    step4 = (prod != 1) & ((l == 1) | (m == 1) | (k == 1))
    # Steps 5, 6, 7 side by side: ξ against B, η against A, ζ against A.
    partner = torch.stack([B, A, A], dim=1)
    e_p = e * partner
    over = off.abs() > partner + e_p
    # Boundary cases (ξ = B and 2η < ζ, ...; ξ = -B and ζ < 0, ...), each reduced by one unit.
    other1 = torch.stack([zeta - 2 * eta, zeta - 2 * xi, eta - 2 * xi], dim=1)
    tol1 = torch.stack([tol_off[:, 1], tol_off[:, 0], tol_off[:, 0]], dim=1)
    other2 = torch.stack([zeta, zeta, eta], dim=1)
    tol2 = torch.stack([tol_off[:, 2], tol_off[:, 2], tol_off[:, 1]], dim=1)
    at_plus = ((off - partner).abs() <= e_p) & (other1 > tol1)
    at_minus = ((off + partner).abs() <= e_p) & (other2 < -tol2)
    steps567 = over | at_plus | at_minus
    mult = torch.where(over, torch.round(off / (2 * partner)), torch.sign(off))
    S = xi + eta + zeta + A + B
    e8 = e * (A + B) / 2
    step8 = (S < -e8) | ((S.abs() <= e8) & (2 * (A + eta) + zeta > e8))

    # Step codes in priority order: 0 sort, 1, 2, 3, 4, 5, 6, 7, 8; 9 means reduced.
    conds = torch.stack([unsorted, step1, step2, step3, step4, steps567[:, 0], steps567[:, 1],
                         steps567[:, 2], step8, torch.ones_like(step8)], dim=1)
    code = conds.to(torch.int8).argmax(dim=1)
    chosen = code < 9

    out = _STEP_TABLE.to(G.device)[code]  # fixed matrices for codes 1, 2, 8 and the identity
    # Sort: permutation by length, negated if needed so that det = +1 (det(-P) = -det(P) in 3-D).
    perm = diag.argsort(dim=1, stable=True)
    P = _sorting_matrix(perm)
    out = torch.where((code == 0)[:, None, None], P, out)
    # Steps 3 and 4: diagonal sign changes.
    d3 = cls.to(G.dtype)
    flip = torch.where(cls == 1, -1.0, 1.0).to(G.dtype)
    odd = flip.prod(dim=1) < 0
    first_zero = torch.nn.functional.one_hot((cls == 0).to(torch.int8).argmax(dim=1), 3).bool()
    d4 = torch.where(odd[:, None] & first_zero, -flip, flip)
    d = torch.where((code == 3)[:, None], d3, d4)
    out = torch.where(((code == 3) | (code == 4))[:, None, None], torch.diag_embed(d), out)
    # Steps 5-7: c -= q b, c -= q a, b -= q a at rows/cols (2, 1), (2, 0), (1, 0).
    is567 = (code >= 5) & (code <= 7)
    if bool(is567.any()):
        which = (code - 5).clamp(0, 2)
        q = mult.gather(1, which[:, None]).squeeze(1)
        rows = _STEP_ROWS.to(G.device)[which]
        cols = _STEP_COLS.to(G.device)[which]
        ar = torch.arange(n, device=G.device)
        vals = torch.where(is567, -q, out[ar, rows, cols])
        out[ar, rows, cols] = vals
    return out, chosen


def _sorting_matrix(perm: torch.Tensor) -> torch.Tensor:
    """Signed permutation matrices (det +1) taking rows into the order ``perm`` (a permutation of 3)."""
    # perm[0] * 3 + perm[1] identifies a permutation of three; the table is indexed by it.
    return _SORT_TABLE.to(perm.device)[perm[:, 0] * 3 + perm[:, 1]]


def _build_sort_table() -> torch.Tensor:
    table = torch.zeros(9, 3, 3, dtype=torch.float64)
    for perm in itertools.permutations(range(3)):
        P = torch.zeros(3, 3, dtype=torch.float64)
        P[torch.arange(3), torch.tensor(perm)] = 1.0
        # det(-P) = -det(P) in 3-D: negate odd permutations so every sort keeps det +1.
        table[perm[0] * 3 + perm[1]] = P * torch.linalg.det(P)
    return table


_SORT_TABLE = _build_sort_table()
_IDENTITY_PERM = torch.arange(3)
_STEP_TABLE = torch.eye(3, dtype=torch.float64).repeat(10, 1, 1)
_STEP_TABLE[1] = torch.tensor([[0.0, -1, 0], [-1, 0, 0], [0, 0, -1]])  # swap a, b (det +1)
_STEP_TABLE[2] = torch.tensor([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]])  # swap b, c (det +1)
_STEP_TABLE[8] = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 1]])  # c <- a + b + c
_STEP_ROWS = torch.tensor([2, 2, 1])
_STEP_COLS = torch.tensor([1, 0, 0])


def _iterate(step_fn, T, Xn, input_scale, iters, degenerate, work, rel_eps: float, max_iter: int) -> torch.Tensor:
    """Apply ``step_fn`` to the items ``work`` until none changes; returns a mask of those capped.

    Updates ``T``, ``iters`` and ``degenerate`` in place. The loop runs on a compacted copy of the
    unfinished items (written back as they finish), so late iterations cost only what is left, and
    the metric is recomputed from the original cell each time rather than updated (no drift).
    """
    capped = torch.zeros_like(degenerate)
    Tw, Lw, scale_w, count = T[work], Xn[work], input_scale[work], iters[work]
    bad = torch.zeros_like(count, dtype=torch.bool)
    chosen = torch.ones_like(bad)
    for _ in range(max_iter):
        if work.numel() == 0:
            break
        G = _metric(Tw, Lw)
        step, chosen = step_fn(G, rel_eps)
        # A vanishing vector or a runaway transform: the lattice is numerically rank-deficient.
        shortest = torch.diagonal(G, dim1=-2, dim2=-1).amin(dim=1)
        bad |= (shortest <= (_DEGENERATE_LENGTH_RATIO * scale_w) ** 2) | (Tw.abs().amax(dim=(1, 2)) > _MAX_TRANSFORM_ENTRY)
        chosen &= ~bad
        Tw = torch.where(chosen[:, None, None], step @ Tw, Tw)
        count = count + chosen.long()
        done = ~chosen
        n_done = int(done.sum())
        if n_done == done.numel() or n_done * 4 >= done.numel() > 512:
            # Compact only when a good share has finished: each compaction costs a dozen small ops.
            fin = work[done]
            T[fin], iters[fin] = Tw[done], count[done]
            degenerate[fin] |= bad[done]
            keep = ~done
            work, Tw, Lw, scale_w, count, bad = work[keep], Tw[keep], Lw[keep], scale_w[keep], count[keep], bad[keep]
    T[work], iters[work] = Tw, count
    degenerate[work] |= bad
    capped[work] = chosen if work.numel() else capped[work]
    return capped


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
        max_iter: cap on the iterations of each of the two phases (size reduction, Křivý–Gruber).

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
    iters = torch.zeros(n, dtype=torch.int64, device=device)
    not_converged = torch.zeros(n, dtype=torch.bool, device=device)
    for step_fn in (_size_reduction_step, _krivy_gruber_step):
        work = (~(nonfinite | degenerate)).nonzero().squeeze(1)
        not_converged |= _iterate(step_fn, T, Xn, input_scale, iters, degenerate, work, rel_eps, max_iter)

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
