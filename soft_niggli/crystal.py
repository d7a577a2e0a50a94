"""A batch of periodic crystals stored flat (PyG style): one lattice per crystal, atoms concatenated.

Row convention: ``lattice`` is ``(B, 3, 3)`` with the *rows* a, b, c of each crystal's lattice;
Cartesian positions are ``X = F @ L`` and a change of basis by unimodular ``M`` is ``L' = M @ L``,
``F' = wrap(F @ M^{-1})``, as in :mod:`soft_niggli.lattice`.

Atoms of crystal ``b`` are the rows ``ptr[b]:ptr[b + 1]`` of ``frac`` (and ``species``), with
``ptr = [0, cumsum(num_atoms)]``; ``batch[i]`` is the crystal of atom ``i``.

>>> import torch
>>> cb = CrystalBatch.from_flat(torch.eye(3, dtype=torch.float64).repeat(2, 1, 1),
...                             torch.rand(3, 3, dtype=torch.float64), torch.tensor([0, 0, 1]))
>>> cb.num_atoms.tolist(), cb.batch.tolist()
([2, 1], [0, 0, 1])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ._checks import as_float_tensor
from .lattice import integer_inverse, wrap
from .unimodular import is_unimodular

__all__ = ["CrystalBatch"]


def _shape(x) -> tuple:
    return tuple(x.shape)


def _as_index_tensor(x, name: str, device: torch.device) -> torch.Tensor:
    """Integer tensor as int64 on ``device``; index metadata follows the lattice's device silently.

    An empty input is accepted whatever its dtype: ``[]``, ``np.array([])`` and ``torch.tensor([])``
    come out floating by default, yet hold no value that could fail to be an integer (zero crystals,
    or zero atoms).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.int64, device=device)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer dtype, got {x.dtype}")
    return x.to(device=device, dtype=torch.int64)


class CrystalBatch:
    """``B`` crystals with ``N_total`` atoms in all.

    Attributes (tensors are stored as given, not copied, so gradients flow through them):

    - ``lattice`` ``(B, 3, 3)`` floating, rows are lattice vectors (Å for data from files);
    - ``frac`` ``(N_total, 3)`` fractional coordinates, same dtype and device as ``lattice``, not
      necessarily wrapped into ``[0, 1)``;
    - ``num_atoms`` ``(B,)`` int64, zero allowed;
    - ``species`` ``(N_total,)`` int64 atomic numbers, or ``None``;
    - ``batch`` ``(N_total,)`` int64 crystal index of each atom, sorted.

    An empty batch (``B = 0``: lattice ``(0, 3, 3)``, frac ``(0, 3)``, ``num_atoms=[]``) is allowed and
    goes through every method, as does a crystal with no atoms.

    Bad arguments (shapes, counts, dtypes) raise ``ValueError``; non-finite values are accepted, since
    they are a per-crystal matter for whoever consumes the batch.
    """

    __slots__ = ("lattice", "frac", "num_atoms", "species", "batch", "_ptr")

    def __init__(self, lattice, frac, num_atoms, species=None):
        lattice = as_float_tensor(lattice, "lattice")
        if lattice.dim() != 3 or _shape(lattice)[1:] != (3, 3):
            raise ValueError(f"lattice: expected shape (B, 3, 3), got {_shape(lattice)}")
        B = lattice.shape[0]
        device = lattice.device

        num_atoms = _as_index_tensor(num_atoms, "num_atoms", device)
        if _shape(num_atoms) != (B,):
            raise ValueError(f"num_atoms: expected shape (B,) = ({B},) to match lattice, got {_shape(num_atoms)}")
        if B and bool((num_atoms < 0).any()):
            raise ValueError(f"num_atoms: expected non-negative counts, got {num_atoms.tolist()}")
        n_total = int(num_atoms.sum()) if B else 0

        frac = as_float_tensor(frac, "frac")
        if frac.dim() != 2 or frac.shape[1] != 3 or frac.shape[0] != n_total:
            raise ValueError(
                f"frac: expected shape (N_total, 3) with N_total = sum(num_atoms) = {n_total}, got {_shape(frac)}"
            )
        if frac.dtype != lattice.dtype:
            raise ValueError(f"frac: expected dtype {lattice.dtype} (the lattice's), got {frac.dtype}")
        if frac.device != device:
            raise ValueError(f"frac: expected device {device} (the lattice's), got {frac.device}")

        if species is not None:
            species = _as_index_tensor(species, "species", device)
            if _shape(species) != (n_total,):
                raise ValueError(
                    f"species: expected shape (N_total,) with N_total = sum(num_atoms) = {n_total}, "
                    f"got {_shape(species)}"
                )

        self.lattice = lattice
        self.frac = frac
        self.num_atoms = num_atoms
        self.species = species
        self.batch = torch.repeat_interleave(torch.arange(B, device=device), num_atoms, output_size=n_total)
        self._ptr = torch.cat([num_atoms.new_zeros(1), torch.cumsum(num_atoms, 0)])

    @classmethod
    def _unchecked(cls, lattice, frac, like: "CrystalBatch") -> "CrystalBatch":
        # Same atoms, new values: skip validation and reuse the index tensors of ``like``.
        out = object.__new__(cls)
        out.lattice, out.frac = lattice, frac
        out.num_atoms, out.species, out.batch, out._ptr = like.num_atoms, like.species, like.batch, like._ptr
        return out

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_padded(cls, lattice, frac, mask, species=None) -> "CrystalBatch":
        """From ``frac (B, Nmax, 3)`` and a boolean ``mask (B, Nmax)`` marking real atoms.

        ``species`` is ``(B, Nmax)`` or ``None``. Atoms keep their row-major order; the mask need not
        be left-aligned (but :meth:`to_padded` always returns left-aligned masks).
        """
        lattice = as_float_tensor(lattice, "lattice")
        frac = as_float_tensor(frac, "frac")
        if lattice.dim() != 3 or _shape(lattice)[1:] != (3, 3):
            raise ValueError(f"lattice: expected shape (B, 3, 3), got {_shape(lattice)}")
        B = lattice.shape[0]
        if frac.dim() != 3 or frac.shape[0] != B or frac.shape[2] != 3:
            raise ValueError(f"frac: expected shape (B, Nmax, 3) with B = {B}, got {_shape(frac)}")
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(np.asarray(mask))
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype}")
        if _shape(mask) != _shape(frac)[:2]:
            raise ValueError(f"mask: expected shape (B, Nmax) = {_shape(frac)[:2]} to match frac, got {_shape(mask)}")
        mask = mask.to(frac.device)
        if species is not None:
            species = _as_index_tensor(species, "species", frac.device)
            if _shape(species) != _shape(mask):
                raise ValueError(f"species: expected shape (B, Nmax) = {_shape(mask)} to match mask, got {_shape(species)}")
            species = species[mask]
        return cls(lattice, frac[mask], mask.sum(dim=1), species)

    @classmethod
    def from_flat(cls, lattice, frac, batch, species=None) -> "CrystalBatch":
        """From concatenated atoms ``frac (N, 3)`` and their crystal index ``batch (N,)``.

        ``batch`` must be sorted (non-decreasing) with values in ``[0, B)``, ``B = lattice.shape[0]``;
        crystals that no atom points to get ``num_atoms = 0``.
        """
        lattice = as_float_tensor(lattice, "lattice")
        if lattice.dim() != 3 or _shape(lattice)[1:] != (3, 3):
            raise ValueError(f"lattice: expected shape (B, 3, 3), got {_shape(lattice)}")
        B = lattice.shape[0]
        frac = as_float_tensor(frac, "frac")
        batch = _as_index_tensor(batch, "batch", lattice.device)
        frac_shape = _shape(frac)
        if batch.dim() != 1 or len(frac_shape) < 1 or batch.shape[0] != frac_shape[0]:
            raise ValueError(f"batch: expected shape (N,) with N = frac.shape[0], got batch {_shape(batch)} "
                             f"and frac {frac_shape}")
        if batch.numel():
            if bool((batch[1:] < batch[:-1]).any()):
                raise ValueError("batch: expected non-decreasing crystal indices (atoms grouped by crystal)")
            lo, hi = int(batch.min()), int(batch.max())
            if lo < 0 or hi >= B:
                raise ValueError(f"batch: expected values in [0, {B}) for B = lattice.shape[0] = {B}, "
                                 f"got values in [{lo}, {hi}]")
        return cls(lattice, frac, torch.bincount(batch, minlength=B), species)

    @classmethod
    def from_structures(cls, structures: Sequence, dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> "CrystalBatch":
        """From a list of pymatgen ``Structure`` and/or ASE ``Atoms`` (mixed freely).

        Species are atomic numbers; fractional coordinates are taken unwrapped. Disordered pymatgen
        structures (partial occupancies) raise ``ValueError``.
        """
        dtype = torch.float64 if dtype is None else dtype
        if not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating dtype (float32/float64), got {dtype}")
        lattices, fracs, numbers = [], [], []
        for i, s in enumerate(structures):
            # Duck typing keeps pymatgen and ASE optional: neither has to be importable for the other.
            if hasattr(s, "lattice") and hasattr(s, "frac_coords"):
                if not getattr(s, "is_ordered", True):
                    raise ValueError(f"structures[{i}]: expected an ordered structure, got a disordered "
                                     f"pymatgen {type(s).__name__} (partial occupancies)")
                L = np.asarray(s.lattice.matrix, dtype=np.float64)
                F = np.asarray(s.frac_coords, dtype=np.float64).reshape(-1, 3)
                Z = s.atomic_numbers if hasattr(s, "atomic_numbers") else [site.specie.Z for site in s]
            elif hasattr(s, "cell") and hasattr(s, "get_scaled_positions") and hasattr(s, "numbers"):
                rank = getattr(s.cell, "rank", 3)
                if rank != 3:
                    raise ValueError(f"structures[{i}]: expected ASE Atoms with 3 lattice vectors, got a cell of rank {rank}")
                L = np.asarray(s.cell.array, dtype=np.float64)
                F = np.asarray(s.get_scaled_positions(wrap=False), dtype=np.float64).reshape(-1, 3)
                Z = s.numbers
            else:
                raise ValueError(f"structures[{i}]: expected a pymatgen Structure or an ASE Atoms, "
                                 f"got {type(s).__name__}")
            lattices.append(L)
            fracs.append(F)
            numbers.append(np.asarray(Z, dtype=np.int64).reshape(-1))
        B = len(lattices)
        lattice = torch.as_tensor(np.stack(lattices) if B else np.zeros((0, 3, 3)), dtype=dtype, device=device)
        frac = torch.as_tensor(np.concatenate(fracs) if B else np.zeros((0, 3)), dtype=dtype, device=device)
        species = torch.as_tensor(np.concatenate(numbers) if B else np.zeros(0, np.int64), device=device)
        num_atoms = torch.tensor([len(z) for z in numbers], dtype=torch.int64, device=device)
        return cls(lattice, frac, num_atoms, species)

    # ------------------------------------------------------------------ conversions

    def to_padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(frac (B, Nmax, 3), mask (B, Nmax), species (B, Nmax) or None)``, atoms left-aligned.

        Padding is 0 in ``frac`` and ``species``; ``Nmax = max(num_atoms)`` (0 for an empty batch).
        Inverse of :meth:`from_padded` for left-aligned masks.
        """
        B = len(self)
        n_max = int(self.num_atoms.max()) if B else 0
        slot = torch.arange(self.frac.shape[0], device=self.frac.device) - self._ptr[self.batch]
        frac = self.frac.new_zeros(B, n_max, 3)
        # index_put keeps the autograd graph from frac to the padded tensor.
        frac = frac.index_put((self.batch, slot), self.frac)
        mask = torch.zeros(B, n_max, dtype=torch.bool, device=self.frac.device)
        mask[self.batch, slot] = True
        species = None
        if self.species is not None:
            species = self.species.new_zeros(B, n_max)
            species[self.batch, slot] = self.species
        return frac, mask, species

    def to_structures(self) -> list:
        """A list of pymatgen ``Structure`` (requires pymatgen and ``species``), values in float64."""
        from pymatgen.core import Lattice, Structure

        if self.species is None:
            raise ValueError("species: expected atomic numbers to build pymatgen structures, got None")
        lattice = self.lattice.detach().cpu().double().numpy()
        frac = self.frac.detach().cpu().double().numpy()
        species = self.species.cpu().numpy()
        ptr = self._ptr.tolist()
        return [
            Structure(Lattice(lattice[b]), species[ptr[b]:ptr[b + 1]].tolist(), frac[ptr[b]:ptr[b + 1]],
                      coords_are_cartesian=False)
            for b in range(len(self))
        ]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "CrystalBatch":
        """A new batch on ``device`` with floating values in ``dtype``; counts and species stay int64."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a floating dtype (float32/float64), got {dtype}")
        out = object.__new__(type(self))
        out.lattice = self.lattice.to(device=device, dtype=dtype)
        out.frac = self.frac.to(device=device, dtype=dtype)
        out.num_atoms = self.num_atoms.to(device=device)
        out.species = None if self.species is None else self.species.to(device=device)
        out.batch = self.batch.to(device=device)
        out._ptr = self._ptr.to(device=device)
        return out

    # ------------------------------------------------------------------ geometry

    def cartesian(self) -> torch.Tensor:
        """Cartesian positions ``(N_total, 3)``, ``X_i = F_i @ L_{batch[i]}``."""
        return (self.frac.unsqueeze(-2) @ self.lattice[self.batch]).squeeze(-2)

    def apply_basis_change(self, M) -> "CrystalBatch":
        """Re-express crystal ``b`` in the basis ``M_b @ L_b``: frac becomes ``wrap(F @ M_b^{-1})``.

        ``M`` is ``(B, 3, 3)`` (or ``(3, 3)`` for all crystals), unimodular, integer or integral float.
        ``M^{-1}`` is exact (:func:`~soft_niggli.lattice.integer_inverse`). Cartesian positions modulo
        each lattice are unchanged; gradients flow to ``lattice`` and ``frac``.
        """
        B = len(self)
        M = torch.as_tensor(M, device=self.lattice.device)
        if _shape(M) == (3, 3):
            M = M.expand(B, 3, 3)
        if _shape(M) != (B, 3, 3):
            raise ValueError(f"M: expected shape (B, 3, 3) = ({B}, 3, 3) or (3, 3), got {_shape(M)}")
        if B and not bool(is_unimodular(M).all()):
            bad = (~is_unimodular(M)).nonzero().flatten().tolist()
            raise ValueError(f"M: expected integer matrices with determinant ±1, got other matrices at crystals {bad}")
        Minv = integer_inverse(M).to(dtype=self.frac.dtype)
        Mf = (torch.round(M) if M.is_floating_point() else M).to(dtype=self.lattice.dtype)
        # Per-atom gather of M^{-1} keeps the flat layout: no padding, no per-crystal loop.
        frac = wrap((self.frac.unsqueeze(-2) @ Minv[self.batch]).squeeze(-2))
        return self._unchecked(Mf @ self.lattice, frac, self)

    # ------------------------------------------------------------------ container protocol

    @property
    def num_crystals(self) -> int:
        return self.lattice.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.lattice.dtype

    @property
    def device(self) -> torch.device:
        return self.lattice.device

    def __len__(self) -> int:
        return self.lattice.shape[0]

    def __getitem__(self, i: int) -> "CrystalBatch":
        """Crystal ``i`` (negative allowed) as a one-crystal batch sharing storage with this one."""
        B = len(self)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"CrystalBatch indices must be integers, got {type(i).__name__}")
        if not -B <= i < B:
            raise IndexError(f"crystal index {i} out of range for a batch of {B}")
        i = int(i) % B
        lo, hi = int(self._ptr[i]), int(self._ptr[i + 1])
        species = None if self.species is None else self.species[lo:hi]
        return type(self)(self.lattice[i:i + 1], self.frac[lo:hi], self.num_atoms[i:i + 1], species)

    def __repr__(self) -> str:
        return (f"CrystalBatch(num_crystals={len(self)}, num_atoms_total={self.frac.shape[0]}, "
                f"dtype={self.dtype}, device={self.device}, species={'yes' if self.species is not None else 'no'})")
