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

import torch

from ._checks import as_lattice, as_tensor, check_rel_tol
from ._reduced_forms import automorphic_forms_unchecked, reduced_forms_unchecked, unit_scale, unravel, violation
from .crystal import CrystalBatch
from .niggli import NiggliResult, Status, niggli_reduce

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
        rel_tol: the tolerance the forms were asked for (before :func:`effective_rel_tol` raises it for
            low-precision dtypes); :meth:`weights` and :meth:`distinct_metrics` use it by default.
    """

    owner: torch.Tensor
    transform: torch.Tensor
    lattice: torch.Tensor
    status: torch.Tensor
    rel_tol: float = 1e-5

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
        return unravel(self.owner, self.batch_shape)

    def counts(self, num_lattices: int | None = None) -> torch.Tensor:
        """Number of reduced forms of each lattice (2 for a generic cell: ``±`` the Niggli cell), of
        :attr:`batch_shape`; ``(num_lattices,)`` over the flattened cells where ``num_lattices`` is given."""
        flat = torch.zeros(self.num_lattices if num_lattices is None else num_lattices, dtype=torch.int64,
                           device=self.owner.device).index_add(0, self.owner, torch.ones_like(self.owner))
        return flat.reshape(self.batch_shape) if num_lattices is None else flat

    def weights(self, rel_tol: float | None = None) -> torch.Tensor:
        """``(P,)`` float64 weight in [0, 1] of each form: how fully it is canonical.

        With ``v`` the form's relative violation of the Niggli conditions (0 or below where they
        hold) and ``t`` the tolerance the forms were found with (:func:`effective_rel_tol` of
        ``rel_tol``, by default :attr:`rel_tol`, for the forms' dtype), the weight is 1 for ``v <= t / 2`` and falls as ``(1 + cos πx)
        / 2``, ``x = 2v / t - 1``, to 0 at ``v = t``, the edge beyond which :func:`reduced_forms` lists no
        form. A form entering or leaving the set (a label strained across the edge) therefore does so
        with weight 0: what is built on the weights moves continuously with the label. Exact
        symmetries and faces weigh 1. Cells that do not reduce ``OK`` have one form, of weight 1.

        >>> cell = torch.diag(torch.tensor([2.0, 2.0 * (1 + 4e-5), 3.0], dtype=torch.float64))[None]
        >>> sorted(set(reduced_forms(cell, rel_tol=1e-4).weights().round(decimals=2).tolist()))
        [0.35, 1.0]
        """
        t = effective_rel_tol(self.rel_tol if rel_tol is None else rel_tol, self.lattice.dtype)
        if not self.owner.numel():
            return torch.zeros(0, dtype=torch.float64, device=self.owner.device)
        L = unit_scale(self.lattice.detach().to(torch.float64))
        x = (2 * violation(L @ L.transpose(-1, -2)) / t - 1).clamp(0, 1)
        w = 0.5 * (1 + torch.cos(torch.pi * x))
        ok = self.status.reshape(-1)[self.owner] == int(Status.OK)
        return torch.where(ok & torch.isfinite(w), w, torch.ones_like(w))

    def distinct_metrics(self, num_lattices: int | None = None, rel_tol: float | None = None) -> torch.Tensor:
        """Bool of :attr:`batch_shape` (``(num_lattices,)`` over the flattened cells where given): the
        lattice has forms whose metrics ``G = L Lᵀ`` differ (by more than ``rel_tol``, by default
        :attr:`rel_tol`, of the squared lengths), i.e. it sits on a face of the Niggli cone, not only on
        a symmetry."""
        rel_tol = self.rel_tol if rel_tol is None else rel_tol
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
            (:func:`effective_rel_tol`: 1.2e-3 for float32), so that a re-based and re-rounded label
            keeps its set of forms and their weights.

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
    owner, transform, forms, status = reduced_forms_unchecked(L, effective_rel_tol(rel_tol, L.dtype))
    return ReducedForms(owner=owner, transform=transform, lattice=forms, status=status.reshape(batch_shape),
                        rel_tol=float(rel_tol))


def effective_rel_tol(rel_tol: float, dtype: torch.dtype) -> float:
    """The tolerance :func:`reduced_forms` uses for lattices of ``dtype``: ``rel_tol``, raised for
    low-precision dtypes to ``10⁴ ε`` of the dtype (capped at 1e-2).

    A float32 label re-based by a unimodular matrix with entries up to 5 and rounded again moves its
    metric by up to about 1e-5 relative. Forms fade out over the outer half of the tolerance
    (:meth:`ReducedForms.weights`), so a label whose forms sit in that half moves their weights by
    about that rounding over half the band: with ``10⁴ ε`` (1.2e-3 for float32) the fade starts at
    6e-4, above the 10× ``rel_tol`` strain a relaxed cell typically shows, and a weight there moves
    by at most ~2% under re-basing (with ``1000 ε`` it was the whole weight). float64 is left alone.
    """
    floor = min(1e4 * torch.finfo(dtype).eps, 1e-2)
    return max(float(rel_tol), floor)


def automorphic_forms(lattice, forms: ReducedForms, *, rel_tol: float = 1e-5) -> torch.Tensor:
    """``(P,)`` bool: the reduced forms whose metric ``G = L Lᵀ`` is the lattice's reference metric within
    ``rel_tol`` of its largest squared length, i.e. the lattice's automorphisms in its reduced basis.

    ``rel_tol`` is raised to ``1000 ε`` of the forms' dtype (1.2e-4 for float32), just above what
    re-basing and rounding again moves a metric by. The reference is the lattice's Niggli metric whatever
    basis the lattice came in: the cell the guarded reducer returns at a quarter of that tolerance (at
    least the rounding), special conditions included.
    A canonical label's own metric wherever it is the Niggli cell (off faces, and on exact faces); within
    ``rel_tol`` of a face, where forms with other metrics pass the conditions too and a reducer at
    ``rel_tol`` returns one or another depending on the basis, it may be another form's, so that the
    result is the same in every basis. Cells that do not reduce ``OK`` keep their one form.

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
    return automorphic_forms_unchecked(lattice.reshape(-1, 3, 3), forms, check_rel_tol(rel_tol))


