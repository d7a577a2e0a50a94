"""Canonical bases: every crystal of a batch in its Niggli basis, through the guarded reducer.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; a crystal is re-based by a
unimodular ``N`` as ``(N L, wrap(F N^{-1}))``.

Shapes: :func:`reduced_forms`, :func:`automorphic_forms` and :func:`reduce_or_identity` take one cell
``(3, 3)`` or any stack ``(..., 3, 3)`` (tensors, NumPy arrays, nested lists); per-cell results have the
input's leading shape. The forms themselves are ragged, a list over the flattened cells: ``owner``
indexes ``lattice.reshape(-1, 3, 3)`` and :attr:`ReducedForms.batch_shape` gives the leading shape back.
:func:`canonicalize_labels` takes a :class:`~soft_niggli.crystal.CrystalBatch`, a flat batch.

This is what a data pipeline does once to its labels (:func:`canonicalize_labels`), and what a loss
does to a detached prediction (:func:`reduce_or_identity`: the reducer's transform, the identity where
the reducer could not give one).

The Niggli cell is unique as a *metric* only away from the boundary of the Niggli cone. On it (and real
crystals sit on it: right angles, equal lengths) one lattice has several bases that satisfy the
conditions within the reducer's tolerance: the automorphisms of a symmetric cell (48 for a cube), and
genuinely different metrics on a cone face (all-acute and all-obtuse forms of a cell at 90°, lengths
equal within the tolerance in either order). Which of them the reducer returns depends on the basis the
cell came in. :func:`reduced_forms` returns all of them, so a canonical label is a set, the same for
every input basis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_lattice, as_tensor, check_rel_tol
from .crystal import CrystalBatch
from .niggli import NiggliResult, Status, niggli_reduce

try:  # the compiled enumeration of the forms (soft_niggli/_kernels/reduced_forms.c); optional
    from ._lattice_kernel import reduced_forms as _compiled_reduced_forms
except ImportError:  # not built: the PyTorch enumeration gives the same forms
    _compiled_reduced_forms = None

__all__ = [
    "CanonicalLabels",
    "ReducedForms",
    "automorphic_forms",
    "canonicalize_labels",
    "effective_rel_tol",
    "reduce_or_identity",
    "reduced_forms",
]


@dataclass(frozen=True)
class CanonicalLabels:
    """The result of :func:`canonicalize_labels`.

    Attributes:
        batch: the crystals in their Niggli basis, a :class:`~soft_niggli.crystal.CrystalBatch`.
        status: ``(B,)`` int64 :class:`~soft_niggli.niggli.Status` of each reduction.
        transform: ``(B, 3, 3)`` int64 unimodular ``N`` with ``batch.lattice == N @ input lattice``.
    """

    batch: CrystalBatch
    status: torch.Tensor
    transform: torch.Tensor

    @property
    def ok(self) -> torch.Tensor:
        """``(B,)`` bool, crystals whose reduction is ``OK``."""
        return self.status == int(Status.OK)


def canonicalize_labels(batch: CrystalBatch, *, rel_tol: float = 1e-5) -> CanonicalLabels:
    """Niggli-reduce every crystal of a label batch once (for the data pipeline).

    The crystals come back in their Niggli basis ``L_n = N L``, ``F_n = wrap(F N^{-1})`` (``N`` from
    the guarded :func:`~soft_niggli.niggli.niggli_reduce`), with the reducer's status and ``N``.
    Crystals whose status is not ``OK`` keep the basis the reducer returned (the input for
    ``DEGENERATE``/``NONFINITE``, the best basis found for ``NOT_CONVERGED``). Lattice values come
    from the reducer (accurate even for very skewed inputs); if the input carries gradients they flow
    through ``N @ L``.

    >>> import torch
    >>> labels = CrystalBatch(torch.tensor([[[4.0, 0, 0], [4, 4, 0], [0, 0, 5]]]), torch.zeros(1, 3), [1])
    >>> canonical = canonicalize_labels(labels)
    >>> canonical.batch.lattice[0].tolist(), canonical.transform[0].tolist()
    ([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]], [[1, 0, 0], [-1, 1, 0], [0, 0, 1]])
    """
    if not isinstance(batch, CrystalBatch):
        raise TypeError(f"batch: expected a CrystalBatch, got {type(batch).__name__}")
    res = niggli_reduce(batch.lattice.detach(), rel_tol=rel_tol)
    transform = res.transform.to(batch.device)
    moved = batch.apply_basis_change(transform)
    lattice = res.lattice.to(device=batch.device, dtype=batch.dtype) + (moved.lattice - moved.lattice.detach())
    return CanonicalLabels(batch=CrystalBatch(lattice, moved.frac, batch.num_atoms, batch.species),
                           status=res.status.to(batch.device), transform=transform)


def reduce_or_identity(lattice, usable, *, rel_tol: float = 1e-5) -> NiggliResult:
    """:func:`~soft_niggli.niggli.niggli_reduce` of detached ``(..., 3, 3)`` lattices, with the identity
    as ``transform`` where the reducer is not ``OK`` or the crystal is not ``usable`` (bool, of the
    lattices' leading shape ``(...)``).

    ``status`` and ``lattice`` are the reducer's (``lattice`` is meaningful where ``status`` is
    ``OK``), every field shaped like the input and on ``lattice``'s device. What every loss that looks
    at the prediction's Niggli basis needs, written once.
    """
    lattice = as_lattice(lattice, "lattice")
    usable = as_tensor(usable, "usable")
    if usable.dtype != torch.bool:
        raise ValueError(f"usable: expected dtype torch.bool, got {usable.dtype}")
    if usable.shape != lattice.shape[:-2]:
        raise ValueError(f"usable: expected the lattices' leading shape {tuple(lattice.shape[:-2])}, "
                         f"got {tuple(usable.shape)}")
    res = niggli_reduce(lattice.detach(), rel_tol=rel_tol)
    device = lattice.device
    status = res.status.to(device)
    ok = (status == int(Status.OK)) & usable.to(device)
    eye = torch.eye(3, dtype=torch.int64, device=device)
    transform = torch.where(ok[..., None, None], res.transform.to(device), eye)
    return NiggliResult(lattice=res.lattice.to(device), transform=transform, status=status,
                        iterations=res.iterations.to(device))


@dataclass(frozen=True)
class ReducedForms:
    """Every Niggli-reduced basis of each lattice, packed: crystal ``owner[p]`` has the form ``lattice[p]``.

    For lattices ``(..., 3, 3)`` the forms are listed over the flattened cells ``lattice.reshape(-1, 3, 3)``:
    ``owner`` indexes that flat list (all zeros for one cell ``(3, 3)``), :attr:`batch_shape` is the
    leading shape ``(...)`` and :meth:`owner_index` turns ``owner`` back into indices of it.

    Attributes:
        owner: ``(P,)`` int64 index of each form's cell in the flattened batch, sorted.
        transform: ``(P, 3, 3)`` int64 unimodular, the form is ``transform @ input lattice``.
        lattice: ``(P, 3, 3)`` the forms (input dtype and device), computed from the reducer's accurate
            reduced cell.
        status: ``(...)`` int64 :class:`~soft_niggli.niggli.Status` of each cell's reduction, of the
            input's leading shape; a cell that is not ``OK`` has one form, the reducer's output.
    """

    owner: torch.Tensor
    transform: torch.Tensor
    lattice: torch.Tensor
    status: torch.Tensor

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading shape ``(...)`` of the lattices the forms came from (``()`` for one cell)."""
        return tuple(self.status.shape)

    @property
    def num_lattices(self) -> int:
        """How many cells the forms came from, ``prod(batch_shape)``: the range of ``owner``."""
        return self.status.numel()

    def owner_index(self) -> tuple[torch.Tensor, ...]:
        """``owner`` as indices of :attr:`batch_shape`: one ``(P,)`` int64 tensor per leading dimension
        (none for one cell), so form ``p`` belongs to the cell ``lattice[tuple(i[p] for i in index)]``.

        >>> L = torch.eye(3, dtype=torch.float64).expand(2, 4, 3, 3) * torch.arange(1.0, 9.0).reshape(2, 4, 1, 1)
        >>> forms = reduced_forms(L)
        >>> first, second = forms.owner_index()
        >>> bool(torch.equal(forms.owner, first * 4 + second)), forms.counts().shape
        (True, torch.Size([2, 4]))
        """
        return _unravel(self.owner, self.batch_shape)

    def counts(self, num_lattices: int | None = None) -> torch.Tensor:
        """Number of reduced forms of each lattice (2 for a generic cell: ``±`` the Niggli cell), of
        :attr:`batch_shape`; ``(num_lattices,)`` over the flattened cells where ``num_lattices`` is given."""
        flat = torch.zeros(self.num_lattices if num_lattices is None else num_lattices, dtype=torch.int64,
                           device=self.owner.device).index_add(0, self.owner, torch.ones_like(self.owner))
        return flat.reshape(self.batch_shape) if num_lattices is None else flat

    def weights(self, rel_tol: float = 1e-5) -> torch.Tensor:
        """``(P,)`` float64 weight in [0, 1] of each form: how fully it is canonical.

        With ``v`` the form's relative violation of the Niggli conditions (``_violation``: 0 or below
        where they hold) and ``t`` the tolerance the forms were found with (:func:`effective_rel_tol` of
        ``rel_tol`` for the forms' dtype), the weight is 1 for ``v <= t / 2`` and falls as ``(1 + cos πx)
        / 2``, ``x = 2v / t - 1``, to 0 at ``v = t``, the edge beyond which :func:`reduced_forms` lists no
        form. A form entering or leaving the set (a label strained across the edge) therefore does so
        with weight 0: what is built on the weights moves continuously with the label. Exact
        symmetries and faces weigh 1. Cells that do not reduce ``OK`` have one form, of weight 1.

        >>> cell = torch.diag(torch.tensor([2.0, 2.0 * (1 + 4e-5), 3.0], dtype=torch.float64))[None]
        >>> sorted(set(reduced_forms(cell, rel_tol=1e-4).weights(1e-4).round(decimals=2).tolist()))
        [0.35, 1.0]
        """
        t = effective_rel_tol(rel_tol, self.lattice.dtype)
        if not self.owner.numel():
            return torch.zeros(0, dtype=torch.float64, device=self.owner.device)
        L = _unit_scale(self.lattice.detach().to(torch.float64))
        x = (2 * _violation(L @ L.transpose(-1, -2)) / t - 1).clamp(0, 1)
        w = 0.5 * (1 + torch.cos(torch.pi * x))
        ok = self.status.reshape(-1)[self.owner] == int(Status.OK)
        return torch.where(ok & torch.isfinite(w), w, torch.ones_like(w))

    def distinct_metrics(self, num_lattices: int | None = None, rel_tol: float = 1e-5) -> torch.Tensor:
        """Bool of :attr:`batch_shape` (``(num_lattices,)`` over the flattened cells where given): the
        lattice has forms whose metrics ``G = L Lᵀ`` differ (by more than ``rel_tol`` of the squared
        lengths), i.e. it sits on a face of the Niggli cone, not only on a symmetry."""
        if num_lattices is None:
            return self._distinct_metrics(self.num_lattices, rel_tol).reshape(self.batch_shape)
        return self._distinct_metrics(num_lattices, rel_tol)

    def _distinct_metrics(self, num_lattices: int, rel_tol: float) -> torch.Tensor:
        L = self.lattice.double()
        G = L @ L.transpose(-1, -2)
        first = torch.full((num_lattices,), G.shape[0], dtype=torch.int64, device=G.device).scatter_reduce(
            0, self.owner, torch.arange(G.shape[0], device=G.device), "amin").clamp_max(max(G.shape[0] - 1, 0))
        scale = torch.diagonal(G, dim1=-2, dim2=-1).amax(-1)
        differs = ((G - G[first][self.owner]).abs().flatten(1).amax(1) > rel_tol * scale).to(torch.int64)
        return torch.zeros(num_lattices, dtype=torch.int64, device=G.device).index_add(0, self.owner, differs) > 0


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
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


def _violation(G: torch.Tensor) -> torch.Tensor:
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
    that satisfies the Niggli conditions (:func:`_violation`).
    :func:`~soft_niggli.niggli.is_niggli_reduced` instead decides every face one way: what the reducer
    needs to return one form."""
    return _violation(_metric_of(X, R)) <= rel_tol


_SHORT_VECTORS = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                               if (i, j, k) != (0, 0, 0)], dtype=torch.int64)


def reduced_forms(lattice, *, rel_tol: float = 1e-5) -> ReducedForms:
    """All bases of each lattice whose metric is within ``rel_tol`` of a Niggli-reduced one, with their
    transforms: the equally canonical bases a reducer may return.

    The reducer gives one such basis ``R = N L``; every other one is ``X R`` with ``X`` in {-1, 0, 1}
    (the rows of a reduced basis are among the lattice's shortest vectors, which have coefficients in
    {-1, 0, 1} in any reduced basis). Candidates are built row by row from the 26 vectors of
    {-1, 0, 1}³ whose length matches the reduced cell's lengths (A ≤ B ≤ C, within ``8 rel_tol``) and
    whose pairwise products obey ``|2 b_i·b_j| ≤`` the shorter squared length; those with determinant
    ±1 that satisfy the *main* Niggli conditions within ``rel_tol`` are the forms (the special
    conditions only choose one basis on a face of the cone, and a metric within the tolerance of a
    face is as close to its interior: see ``_near_a_reduced_metric``). The set is a property of the
    lattice (the same for every input basis), up to cells within a hair of the tolerance's edge, where
    "within ``rel_tol``" itself depends on rounding.

    Per cell: 2 forms for a generic (triclinic) cell (``±R``), the size of the point group for a
    symmetric one whose metric is on no other face (48 for a cube), and more where the metric sits on a
    face of the Niggli cone (the all-acute and the all-obtuse form of a cell with an angle within the
    tolerance of 90°, equal lengths in either order, the 120° and 60° forms of a hexagonal cell, 336
    bases with seven metrics for fcc). Forms are listed per cell in an order that does not depend on the input
    basis (by a hash of their Cartesian entries). Not differentiable (transforms are integers); the reducer runs on
    the host (as :func:`~soft_niggli.niggli.niggli_reduce`).

    Args:
        lattice: ``(..., 3, 3)`` floating tensor, NumPy array or nested list (rows are lattice vectors):
            one cell ``(3, 3)``, a batch ``(B, 3, 3)`` or a stack ``(B1, B2, ..., 3, 3)``. The forms are
            listed over the flattened cells (``owner`` indexes ``lattice.reshape(-1, 3, 3)``); ``status``
            and :meth:`ReducedForms.counts` have the leading shape (:attr:`ReducedForms.batch_shape`).
        rel_tol: the Niggli conditions' relative tolerance, in :data:`~soft_niggli.niggli.REL_TOL_RANGE`;
            raised for float32 and half-precision lattices to what their rounding needs
            (:func:`effective_rel_tol`: 1.2e-4 for float32), so that a re-based and re-rounded label
            keeps its set of forms.

    Large batches are processed 2048 cells at a time (peak memory about 1 KB per candidate basis).

    >>> cube = torch.eye(3, dtype=torch.float64)[None] * 4.0
    >>> reduced_forms(cube).counts().tolist()
    [48]
    >>> reduced_forms(cube[0]).counts().tolist()  # one cell: per-cell results of shape ()
    48
    """
    L = as_lattice(lattice, "lattice")
    batch_shape = L.shape[:-2]
    L = L.reshape(-1, 3, 3)
    niggli_reduce(L[:0], rel_tol=rel_tol)  # validates rel_tol (and that the cells have values) once
    forms = _reduced_forms_checked(L, effective_rel_tol(rel_tol, L.dtype))
    if len(batch_shape) == 1:
        return forms
    return ReducedForms(owner=forms.owner, transform=forms.transform, lattice=forms.lattice,
                        status=forms.status.reshape(batch_shape))


def _reduced_forms_checked(L: torch.Tensor, tol: float) -> ReducedForms:
    """:func:`reduced_forms` of validated lattices ``L (B, 3, 3)`` at the tolerance ``tol`` (already
    raised for the dtype), in chunks of :data:`_CHUNK` cells."""
    B = L.shape[0]
    if B <= _CHUNK:
        return _reduced_forms(L.detach(), tol)
    parts = [_reduced_forms(L[lo:lo + _CHUNK].detach(), tol) for lo in range(0, B, _CHUNK)]
    return ReducedForms(owner=torch.cat([p.owner + lo for p, lo in zip(parts, range(0, B, _CHUNK))]),
                        transform=torch.cat([p.transform for p in parts]),
                        lattice=torch.cat([p.lattice for p in parts]),
                        status=torch.cat([p.status for p in parts]))


#: Lattices per pass of :func:`reduced_forms`: its peak memory is about 1 KB per candidate basis (up to
#: several hundred per cell on cone faces), so a large batch is processed in pieces of this many cells.
_CHUNK = 2048


def effective_rel_tol(rel_tol: float, dtype: torch.dtype) -> float:
    """The tolerance :func:`reduced_forms` uses for lattices of ``dtype``: ``rel_tol``, raised for
    low-precision dtypes to ``1000 ε`` of the dtype (capped at 1e-2).

    A float32 label re-based by a unimodular matrix with entries up to 5 and rounded again moves its
    metric by about 5e-6 relative; at ``rel_tol=1e-5`` forms near the tolerance's edge would enter or
    leave with the basis the label came in. ``1000 ε`` is 1.2e-4 for float32 and leaves float64 alone.
    """
    floor = min(1000 * torch.finfo(dtype).eps, 1e-2)
    return max(float(rel_tol), floor)


def _reduced_forms(L: torch.Tensor, rel_tol: float) -> ReducedForms:
    """:func:`reduced_forms` of one chunk ``L (B, 3, 3)`` at the tolerance it was given."""
    device, dtype, B = L.device, L.dtype, L.shape[0]
    res = niggli_reduce(L, rel_tol=rel_tol)
    status = res.status.cpu()
    N = res.transform.cpu()
    R = res.lattice.detach().cpu().double()
    ok = status == int(Status.OK)
    # Scale-free: the reduced cells are bounded, and the tolerances below relative.
    R_unit = torch.where(ok[:, None, None], R, torch.eye(3, dtype=torch.float64))
    R_unit = _unit_scale(R_unit)
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
    return ReducedForms(owner=owner.to(device), transform=transform.to(device), lattice=forms.to(device, dtype),
                        status=status.to(device))


#: Odd 64-bit multipliers of the sort key of :func:`_reduced_forms` (as signed int64).
_HASH_WEIGHTS = np.array([w - 2**64 if w >= 2**63 else w for w in (
    0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD,
    0xC4CEB9FE1A85EC53, 0x27D4EB2F165667C5, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9)], dtype=np.int64)


def _candidates(R_unit: torch.Tensor, ok: torch.Tensor, rel_tol: float):
    """``(owner (P,), X (P, 3, 3) int64)``: the bases ``X R_unit[owner]`` with rows in {-1, 0, 1}³ that meet
    the Niggli conditions within ``rel_tol`` (the enumeration of :func:`reduced_forms`, in PyTorch)."""
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


def _unit_scale(L: torch.Tensor) -> torch.Tensor:
    """``L`` divided by its largest row length (:func:`_row_norm_scale`), so every row is at most 1."""
    big = L.abs().flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
    unit = L / big
    return unit / torch.linalg.vector_norm(unit, dim=-1).amax(-1).clamp_min(1e-300)[:, None, None]


def automorphic_forms(lattice, forms: ReducedForms, *, rel_tol: float = 1e-5) -> torch.Tensor:
    """``(P,)`` bool: the reduced forms whose metric ``G = L Lᵀ`` is the lattice's reference metric within
    ``rel_tol`` of its largest squared length, i.e. the lattice's automorphisms in its reduced basis.

    The reference is the input lattice's own metric where the input is one of its reduced forms (a
    canonical label), else the metric of the guarded reducer's Niggli cell. Cells that do not reduce
    ``OK`` keep their one form.

    Args:
        lattice: ``(..., 3, 3)`` tensor, NumPy array or nested list, the lattices ``forms`` was computed from.
        forms: their :func:`reduced_forms` (``forms.batch_shape`` the leading shape of ``lattice``).
        rel_tol: in :data:`~soft_niggli.niggli.REL_TOL_RANGE`.

    Returns:
        ``(P,)`` bool on the forms' device, one per form (the forms are ragged: see :class:`ReducedForms`).
    """
    lattice = as_lattice(lattice, "lattice")
    if not isinstance(forms, ReducedForms):
        raise TypeError(f"forms: expected ReducedForms, got {type(forms).__name__}")
    if tuple(lattice.shape[:-2]) != forms.batch_shape:
        raise ValueError(f"lattice: expected shape {forms.batch_shape + (3, 3)} (forms.batch_shape + (3, 3)), "
                         f"got {tuple(lattice.shape)}")
    return _automorphic_forms(lattice.reshape(-1, 3, 3), forms, check_rel_tol(rel_tol))


def _automorphic_forms(lattice: torch.Tensor, forms: ReducedForms, rel_tol: float) -> torch.Tensor:
    """:func:`automorphic_forms` of validated lattices ``(B, 3, 3)``."""
    B = lattice.shape[0]
    owner, T = forms.owner.cpu(), forms.transform.cpu()
    F = forms.lattice.cpu().double()
    ok = forms.status.reshape(-1).cpu() == int(Status.OK)
    reference = lattice.detach().to("cpu", torch.float64).clone()
    is_identity = (T == torch.eye(3, dtype=T.dtype)).flatten(1).all(1)
    has_identity = torch.zeros(B, dtype=torch.bool)
    has_identity[owner[is_identity]] = True
    first = torch.full((B,), len(owner), dtype=torch.int64).scatter_reduce(
        0, owner[is_identity], torch.arange(len(owner))[is_identity], "amin")
    reference[has_identity] = F[first[has_identity]]
    others = (~has_identity & ok).nonzero().flatten()
    if len(others):
        reference[others] = niggli_reduce(reference[others], rel_tol=max(rel_tol, 1e-12)).lattice.double()
    G_ref = reference @ reference.transpose(-1, -2)
    G = F @ F.transpose(-1, -2)
    size = torch.diagonal(G_ref, dim1=-2, dim2=-1).amax(-1)[owner]
    same = (G - G_ref[owner]).abs().flatten(1).amax(1) <= rel_tol * size
    return (same | ~ok[owner]).to(forms.owner.device)
