"""Canonical bases: every crystal of a batch in its Niggli basis, through the guarded reducer.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a crystal is re-based by a
unimodular ``N`` as ``(N L, wrap(F N^{-1}))``.

This is what a data pipeline does once to its labels (:func:`canonicalize_labels`), and what a loss
does to a detached prediction (:func:`reduce_or_identity`: the reducer's transform, the identity where
the reducer could not give one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .crystal import CrystalBatch
from .niggli import NiggliResult, Status, niggli_reduce

__all__ = ["CanonicalLabels", "canonicalize_labels", "reduce_or_identity"]


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


def reduce_or_identity(lattice: torch.Tensor, usable: torch.Tensor, *, rel_tol: float = 1e-5) -> NiggliResult:
    """:func:`~soft_niggli.niggli.niggli_reduce` of detached ``(B, 3, 3)`` lattices, with the identity
    as ``transform`` where the reducer is not ``OK`` or the crystal is not ``usable`` (``(B,)`` bool).

    ``status`` and ``lattice`` are the reducer's (``lattice`` is meaningful where ``status`` is
    ``OK``); every field is on ``lattice``'s device. What every loss that looks at the prediction's
    Niggli basis needs, written once.
    """
    res = niggli_reduce(lattice.detach(), rel_tol=rel_tol)
    device = lattice.device
    status = res.status.to(device)
    ok = (status == int(Status.OK)) & usable
    eye = torch.eye(3, dtype=torch.int64, device=device)
    transform = torch.where(ok[:, None, None], res.transform.to(device), eye)
    return NiggliResult(lattice=res.lattice.to(device), transform=transform, status=status,
                        iterations=res.iterations.to(device))
