"""The enumeration of every Niggli-reduced basis of a lattice and of its automorphic forms, on validated
inputs (private): the internals of :func:`~soft_niggli.canonical.reduced_forms`,
:func:`~soft_niggli.canonical.automorphic_forms` and :class:`~soft_niggli.canonical.ReducedForms`, shared
with :class:`~soft_niggli.forms_cache.ReducedFormsCache`. The checks and the public types live in
:mod:`soft_niggli.canonical`.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a form is ``X @ R`` for the
reducer's Niggli cell ``R`` and an integer ``X``, and ``transform @ input lattice`` for the input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .niggli import Status, niggli_reduce

if TYPE_CHECKING:
    from .canonical import ReducedForms

try:  # the compiled enumeration of the forms (soft_niggli/_kernels/reduced_forms.c); optional
    from ._lattice_kernel import reduced_forms as _compiled_reduced_forms
except ImportError:  # not built: the PyTorch enumeration gives the same forms
    _compiled_reduced_forms = None


def unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """Indices of ``shape`` of the flat indices ``flat`` (row-major, as ``reshape(-1)`` orders them)."""
    out = []
    for size in reversed(shape):
        out.append(flat % size if size else flat)
        flat = flat // size if size else flat
    return tuple(reversed(out))


def _metric_of(X: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``(P, 3, 3)`` metric of the bases ``X R`` (``X (P, 3, 3)`` integer, ``R (P, 3, 3)`` float64), by
    explicit sums in a fixed order: the compiled enumeration (``soft_niggli/_kernels/reduced_forms.c``) forms it
    the same way, so both decide the tolerance's edge alike."""
    X = X.to(R.dtype)
    Y = X[:, :, 0:1] * R[:, None, 0] + X[:, :, 1:2] * R[:, None, 1] + X[:, :, 2:3] * R[:, None, 2]
    return (Y[:, :, None, 0] * Y[:, None, :, 0] + Y[:, :, None, 1] * Y[:, None, :, 1]) + Y[:, :, None, 2] * Y[:, None, :, 2]


def violation(G: torch.Tensor) -> torch.Tensor:
    """``(P,)`` largest relative violation of the *main* Niggli conditions by the metrics ``G (P, 3, 3)``
    (float64): 0 or less where they hold, and a metric is within ``t`` of them iff this is ``<= t``.

    The main conditions (A ≤ B ≤ C; |ξ| ≤ B, |η| ≤ A, |ζ| ≤ A; ξ, η, ζ all positive or all non-positive;
    A + B + ξ + η + ζ ≥ 0) cut out a closed cone; the *special* conditions hold only on its faces and
    pick one of the bases that meet there (A = B ⇒ |ξ| ≤ |η|, ξ = B ⇒ ζ ≤ 2η, ...), so a metric within
    a tolerance of the main conditions is as close to the cone's interior, and these alone decide
    which bases are equally canonical. Each condition is measured relative to its own scale: lengths
    to their mean, products to their bound (``B``, ``A``), signs to the cosines' scale ``√(G_ii G_jj)``,
    the last to ``(A + B) / 2``. A continuous function of ``G`` (a maximum and a minimum of ratios), so
    weights built on it fade forms in and out without jumps. Same operations, in the same order, as
    the compiled enumeration.
    """
    A, B, C = G[:, 0, 0], G[:, 1, 1], G[:, 2, 2]
    xi, eta, zeta = 2 * G[:, 1, 2], 2 * G[:, 0, 2], 2 * G[:, 0, 1]
    v = (A - B) / ((A + B) / 2)
    v = torch.maximum(v, (B - C) / ((B + C) / 2))
    v = torch.maximum(v, (xi.abs() - B) / B)
    v = torch.maximum(v, (eta.abs() - A) / A)
    v = torch.maximum(v, (zeta.abs() - A) / A)
    sBC, sAC, sAB = (B * C).sqrt(), (A * C).sqrt(), (A * B).sqrt()
    neg = torch.maximum(torch.maximum(-xi / sBC, -eta / sAC), -zeta / sAB)
    pos = torch.maximum(torch.maximum(xi / sBC, eta / sAC), zeta / sAB)
    v = torch.maximum(v, torch.minimum(neg, pos))
    return torch.maximum(v, -(A + B + xi + eta + zeta) / ((A + B) / 2))


def _near_a_reduced_metric(X: torch.Tensor, R: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """``(P,)`` bool: the basis ``X R`` (``R`` float64, scaled to about 1) is within ``rel_tol`` of one
    that satisfies the Niggli conditions (:func:`violation`).
    :func:`~soft_niggli.niggli.is_niggli_reduced` instead decides every face one way: what the reducer
    needs to return one form."""
    return violation(_metric_of(X, R)) <= rel_tol


_SHORT_VECTORS = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                               if (i, j, k) != (0, 0, 0)], dtype=torch.int64)


def reduced_forms_unchecked(L: torch.Tensor, tol: float) -> tuple[torch.Tensor, ...]:
    """The fields ``(owner, transform, lattice, status)`` of :func:`~soft_niggli.canonical.reduced_forms`
    of validated lattices ``L (B, 3, 3)`` at the tolerance ``tol`` (already raised for the dtype), in
    chunks of :data:`_CHUNK` cells."""
    B = L.shape[0]
    if B <= _CHUNK:
        return _reduced_forms_chunk(L.detach(), tol)
    parts = [_reduced_forms_chunk(L[lo:lo + _CHUNK].detach(), tol) for lo in range(0, B, _CHUNK)]
    return (torch.cat([owner + lo for (owner, _, _, _), lo in zip(parts, range(0, B, _CHUNK))]),
            torch.cat([transform for _, transform, _, _ in parts]),
            torch.cat([lattice for _, _, lattice, _ in parts]),
            torch.cat([status for _, _, _, status in parts]))


#: Lattices per pass of :func:`reduced_forms_unchecked`: its peak memory is about 1 KB per candidate basis
#: (up to several hundred per cell on cone faces), so a large batch is processed in pieces of this many cells.
_CHUNK = 2048


def _reduced_forms_chunk(L: torch.Tensor, rel_tol: float) -> tuple[torch.Tensor, ...]:
    """:func:`reduced_forms_unchecked` of one chunk ``L (B, 3, 3)`` at the tolerance it was given."""
    device, dtype, B = L.device, L.dtype, L.shape[0]
    res = niggli_reduce(L, rel_tol=rel_tol)
    status = res.status.cpu()
    N = res.transform.cpu()
    R = res.lattice.detach().cpu().double()
    ok = status == int(Status.OK)
    # Scale-free: the reduced cells are bounded, and the tolerances below relative.
    R_unit = torch.where(ok[:, None, None], R, torch.eye(3, dtype=torch.float64))
    R_unit = unit_scale(R_unit)
    if _compiled_reduced_forms is not None:
        owner, X = _compiled_candidates(R_unit, ok, rel_tol)
    else:
        owner, X = _candidates(R_unit, ok, rel_tol)
    forms = torch.from_numpy(X.double().numpy() @ R.numpy()[owner.numpy()])
    # Cells that are not OK, or (never expected) found no form: the reducer's output alone.
    alone = torch.ones(B, dtype=torch.bool)
    alone[owner] = False
    rows = alone.nonzero().flatten()
    owner = torch.cat([owner, rows])
    X = torch.cat([X, torch.eye(3, dtype=torch.int64).expand(len(rows), 3, 3)])
    forms = torch.cat([forms, R[rows]])
    # An order independent of the input basis: by owner, then by a hash of the forms' Cartesian entries
    # on a grid far finer than any two distinct forms' difference and far coarser than rounding (one
    # 64-bit key instead of nine: sorting nine keys costs more than finding the forms).
    scale = _row_norm_scale(R)[owner]
    keys = torch.round(forms.flatten(1) / (scale[:, None] * 1e-9)).to(torch.int64).numpy()
    digest = (keys * _HASH_WEIGHTS).sum(1)  # int64 arithmetic wraps: a hash, exact and portable
    order = torch.from_numpy(np.lexsort([digest, owner.numpy()]))
    owner, X, forms = owner[order], X[order], forms[order]
    transform = torch.from_numpy(X.numpy() @ N.numpy()[owner.numpy()])
    return owner.to(device), transform.to(device), forms.to(device, dtype), status.to(device)


#: Odd 64-bit multipliers of the sort key of :func:`_reduced_forms_chunk` (as signed int64).
_HASH_WEIGHTS = np.array([w - 2**64 if w >= 2**63 else w for w in (
    0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
    0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9)], dtype=np.int64)


def _candidates(R_unit: torch.Tensor, ok: torch.Tensor, rel_tol: float):
    """``(owner (P,), X (P, 3, 3) int64)``: the bases ``X R_unit[owner]`` with rows in {-1, 0, 1}³ that meet
    the Niggli conditions within ``rel_tol`` (the enumeration of :func:`reduced_forms_unchecked`, in PyTorch)."""
    G = R_unit @ R_unit.transpose(-1, -2)
    lengths = torch.diagonal(G, dim1=-2, dim2=-1)  # (B, 3): A, B, C
    V = _SHORT_VECTORS.to(torch.float64)
    Q = V @ G @ V.T  # (B, 26, 26)
    qdiag = torch.diagonal(Q, dim1=-2, dim2=-1)  # (B, 26)
    slack = 8 * rel_tol
    length_ok = ((qdiag[:, :, None] - lengths[:, None, :]).abs() <= slack * lengths[:, None, :]) & ok[:, None, None]

    owner, r0 = length_ok[:, :, 0].nonzero(as_tuple=True)
    picked = [r0]
    for i in (1, 2):
        allowed = length_ok[owner, :, i]  # (P, 26)
        for j, rj in enumerate(picked):
            # |2 b_i·b_j| ≤ the shorter squared length (|ξ| ≤ B, |η| ≤ A, |ζ| ≤ A), within the slack.
            bound = torch.minimum(lengths[owner, j], lengths[owner, i])[:, None] * (1 + slack)
            allowed = allowed & ((2 * Q[owner, rj, :]).abs() <= bound)
        parent, ri = allowed.nonzero(as_tuple=True)
        owner = owner[parent]
        picked = [r[parent] for r in picked] + [ri]
    X = torch.stack([_SHORT_VECTORS[r] for r in picked], dim=1)  # (P, 3, 3) relative to R
    # Cheap necessary conditions first: determinant ±1, and the three products all >= 0 or all <= 0
    # (within the tolerance of the cosines: type I or type II, allowing either side of a zero).
    pairs = torch.stack([Q[owner, picked[1], picked[2]], Q[owner, picked[0], picked[2]],
                         Q[owner, picked[0], picked[1]]], dim=1)  # b·c, a·c, a·b
    cos_tol = slack * torch.stack([(lengths[owner, 1] * lengths[owner, 2]), (lengths[owner, 0] * lengths[owner, 2]),
                                   (lengths[owner, 0] * lengths[owner, 1])], dim=1).sqrt()
    signs_ok = (pairs >= -cos_tol).all(1) | (pairs <= cos_tol).all(1)
    unimodular = torch.linalg.det(X.double()).round().abs() == 1
    owner, X = owner[unimodular & signs_ok], X[unimodular & signs_ok]
    keep = _near_a_reduced_metric(X, R_unit[owner], rel_tol)
    owner, X = owner[keep], X[keep]
    return owner, X


def _compiled_candidates(R_unit: torch.Tensor, ok: torch.Tensor, rel_tol: float):
    """``(owner, X)`` of :func:`_candidates` through the compiled enumeration (the same forms)."""
    cells = R_unit[ok].reshape(-1, 9).contiguous()
    rows_of = ok.nonzero().flatten()
    capacity = 96 * max(len(cells), 1)
    while True:
        owner = torch.empty(capacity, dtype=torch.int64)
        rows = torch.empty(capacity, 3, dtype=torch.int64)
        count = _compiled_reduced_forms(cells.numpy(), _SHORT_VECTORS.numpy(), float(rel_tol), owner.numpy(), rows.numpy())
        if count <= capacity:
            return rows_of[owner[:count]], _SHORT_VECTORS[rows[:count]]
        capacity = count


def _row_norm_scale(L: torch.Tensor) -> torch.Tensor:
    """``(B,)`` largest row length of ``L (B, 3, 3)`` (float64), without overflow or underflow: entries are
    divided by the largest magnitude before squaring (cells with entries above 1e154 stay finite)."""
    big = L.abs().flatten(1).amax(1).clamp_min(1e-300)
    return torch.linalg.vector_norm(L / big[:, None, None], dim=-1).amax(-1) * big


def unit_scale(L: torch.Tensor) -> torch.Tensor:
    """``L`` divided by its largest row length (:func:`_row_norm_scale`), so every row is at most 1."""
    big = L.abs().flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
    unit = L / big
    return unit / torch.linalg.vector_norm(unit, dim=-1).amax(-1).clamp_min(1e-300)[:, None, None]


def automorphic_forms_unchecked(lattice: torch.Tensor, forms: ReducedForms, rel_tol: float) -> torch.Tensor:
    """:func:`~soft_niggli.canonical.automorphic_forms` of validated lattices ``(B, 3, 3)``.

    The reference metric never comes from the input's basis: near a face of the cone several forms with
    different metrics pass the conditions within ``rel_tol``, and which one a reducer at that tolerance
    returns (or the input is) depends on the basis the lattice came in. The reducer at a quarter of
    ``rel_tol`` (at least ``1000 ε`` of the forms' dtype) returns one Niggli cell, special conditions
    included, for a lattice strained by less than that from a face or more than ``rel_tol / 2``: a
    quarter keeps the lattices it treats as on the face (and resolves by the special conditions, as the
    canonical reducer does) apart from those whose forms fade (:meth:`ReducedForms.weights`). It starts
    here from the form that meets the main conditions best (:func:`violation`), a few steps away at most.
    On the bundled data's training labels the reference differs from the label's own metric for 22 of
    5712 MP-20 bi/ternary and 10 of 1626 Carbon-24 cells (none on Perov-5)."""
    B = lattice.shape[0]
    owner = forms.owner.cpu()
    P = len(owner)
    if not P:
        return torch.zeros(0, dtype=torch.bool, device=forms.owner.device)
    # "The same metric" within just above the dtype's rounding (1000 ε, 1.2e-4 for float32), not the
    # wider band the forms are listed and faded over (effective_rel_tol): forms 3e-4 apart near a face of
    # a float32 label are different metrics.
    rounding = min(1000 * torch.finfo(forms.lattice.dtype).eps, 1e-2)
    rel_tol = max(rel_tol, rounding)
    F = forms.lattice.cpu().double()
    ok = forms.status.reshape(-1).cpu() == int(Status.OK)
    G = F @ F.transpose(-1, -2)
    v = violation(G / torch.diagonal(G, dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)[:, None, None])
    best = torch.full((B,), float("inf"), dtype=torch.float64).scatter_reduce(0, owner, v, "amin")
    pick = v <= best[owner]
    first = torch.full((B,), P, dtype=torch.int64).scatter_reduce(0, owner[pick], torch.arange(P)[pick], "amin")
    start = F[first.clamp_max(P - 1)]
    strict = max(rounding, rel_tol / 4, 1e-12)  # within REL_TOL_RANGE: rounding is at most 1e-2
    reduced = niggli_reduce(start, rel_tol=strict)
    reference = torch.where((reduced.status == int(Status.OK))[:, None, None], reduced.lattice.double(), start)
    G_ref = reference @ reference.transpose(-1, -2)
    size = torch.diagonal(G_ref, dim1=-2, dim2=-1).amax(-1)[owner]
    same = (G - G_ref[owner]).abs().flatten(1).amax(1) <= rel_tol * size
    return (same | ~ok[owner]).to(forms.owner.device)
