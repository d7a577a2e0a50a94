"""A batch of periodic crystals stored flat (PyG style): one lattice per crystal, atoms concatenated.

Row convention: ``lattice`` is ``(B, 3, 3)`` with the *rows* a, b, c of each crystal's lattice;
Cartesian positions are ``X = F @ L`` and a change of basis by unimodular ``M`` is ``L' = M @ L``,
``F' = wrap(F @ M^{-1})``, as in :mod:`soft_niggli.lattice`.

Atoms of crystal ``b`` are the rows ``ptr[b]:ptr[b + 1]`` of ``frac`` (and ``species``), with
``ptr = [0, cumsum(num_atoms)]``; ``batch[i]`` is the crystal of atom ``i`` and ``atom_slots[i]`` its
position within that crystal (:func:`atom_slots`, :attr:`CrystalBatch.atom_slots`).

Shapes: a batch is flat, so its constructors take lattices ``(B, 3, 3)``, or one cell ``(3, 3)`` for a
batch of one crystal (its atom count may then be a number). A stack ``(..., 3, 3)`` of several leading
dimensions raises ``ValueError``: the atoms follow the crystals in one order, and which order a stack
means is the caller's to say (``lattice.reshape(-1, 3, 3)`` with the atoms in that order).

Inputs and outputs: constructors accept torch tensors, NumPy arrays or (nested) lists of numbers and
every method returns torch tensors (or batches of them), never NumPy arrays; a NumPy float64 array stays
float64, as ``torch.as_tensor`` would keep it. A wrong Python type (a string or ``None`` for a tensor, a
float index) raises ``TypeError``, a wrong value (shape, dtype, count) ``ValueError``, an index out of
range ``IndexError``.

Devices: a batch lives on one device, values and index tensors alike. On the ``meta`` device (shapes
without values) construction, :meth:`~CrystalBatch.to`, :meth:`~CrystalBatch.cartesian`,
:meth:`~CrystalBatch.apply_basis_change` and :attr:`~CrystalBatch.atom_slots` work with the checks that
read values skipped; what needs the values (indexing a crystal, :meth:`~CrystalBatch.to_padded`,
:meth:`~CrystalBatch.to_structures`, :meth:`~CrystalBatch.from_padded`) raises ``ValueError``.

>>> import torch
>>> cb = CrystalBatch.from_flat(torch.eye(3, dtype=torch.float64).repeat(2, 1, 1),
...                             torch.rand(3, 3, dtype=torch.float64), torch.tensor([0, 0, 1]))
>>> cb.num_atoms.tolist(), cb.batch.tolist(), cb.atom_slots.tolist()
([2, 1], [0, 0, 1], [0, 1, 0])
>>> len(cb[1:]), cb[torch.tensor([True, False])].num_atoms.tolist()
(1, [2])
"""

from __future__ import annotations

import numpy as np
import torch

from ._checks import (as_crystal_lattices, as_float_tensor, as_index_tensor, as_tensor, check_dtype, has_values,
                      require_values)
from .lattice import integer_inverse, wrap
from .unimodular import is_unimodular

__all__ = ["CrystalBatch", "atom_slots", "repeat_atoms"]


def _shape(x) -> tuple:
    return tuple(x.shape)


def atom_slots(num_atoms, batch=None) -> torch.Tensor:
    """Position of each atom within its crystal, ``(N_total,)`` int64: ``0, 1, ..., num_atoms[b] - 1`` for
    the atoms of crystal ``b``.

    The one helper for per-crystal atom indices (padding, gathers): ``padded[batch, atom_slots] = x``
    turns the flat layout into ``(B, Nmax, ...)``. Atoms must be grouped by crystal, in crystal order (as
    in :class:`CrystalBatch`): ``batch`` sorted, ``num_atoms[b]`` atoms with ``batch == b``.

    Args:
        num_atoms: ``(B,)`` integer counts.
        batch: ``(N_total,)`` crystal index of each atom; derived from ``num_atoms`` when ``None`` (which
            needs the counts' values, so not on the meta device). The result is on ``batch``'s device
            if given, else on ``num_atoms``'s.

    >>> atom_slots(torch.tensor([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    num_atoms = as_index_tensor(num_atoms, "num_atoms")
    if num_atoms.dim() != 1:
        raise ValueError(f"num_atoms: expected shape (B,), got {_shape(num_atoms)}")
    if batch is None:
        require_values(num_atoms, "atom_slots without batch (the atom count)")
        n_total = int(num_atoms.sum()) if num_atoms.numel() else 0
        batch = torch.repeat_interleave(torch.arange(num_atoms.numel(), device=num_atoms.device), num_atoms,
                                        output_size=n_total)
    else:
        batch = as_index_tensor(batch, "batch")
        if batch.dim() != 1:
            raise ValueError(f"batch: expected shape (N_total,), got {_shape(batch)}")
        num_atoms = num_atoms.to(batch.device)
    start = torch.cumsum(num_atoms, 0) - num_atoms
    return torch.arange(batch.numel(), device=batch.device) - start[batch]


def repeat_atoms(num_atoms: torch.Tensor, crystals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The atoms of the crystals ``crystals (Q,)`` (repeats allowed), in that order, from a flat layout.

    Returns ``(atom, owner)``, each ``(Σ num_atoms[crystals],)``: the index of each repeated atom in the
    flat atom arrays, and the position in ``crystals`` it belongs to (the ``batch`` vector of the
    repeated atoms). What selecting crystals, or pairing each crystal with several candidates, needs.

    >>> atom, owner = repeat_atoms(torch.tensor([2, 1]), torch.tensor([1, 0, 1]))
    >>> atom.tolist(), owner.tolist()
    ([2, 0, 1, 2], [0, 1, 1, 2])
    """
    device = crystals.device
    counts = num_atoms[crystals]
    n_total = int(counts.sum()) if crystals.numel() else 0
    owner = torch.repeat_interleave(torch.arange(crystals.numel(), device=device), counts, output_size=n_total)
    first = torch.cumsum(num_atoms, 0) - num_atoms
    return first[crystals][owner] + atom_slots(counts, owner), owner


def _is_structure(s) -> bool:
    """Duck typing keeps pymatgen and ASE optional: neither has to be importable for the other."""
    pymatgen = hasattr(s, "lattice") and hasattr(s, "frac_coords")
    ase = hasattr(s, "cell") and hasattr(s, "get_scaled_positions") and hasattr(s, "numbers")
    return pymatgen or ase


_TO_ARGUMENT_TYPES = (torch.device, str, int, torch.dtype, torch.Tensor)


class CrystalBatch:
    """``B`` crystals with ``N_total`` atoms in all.

    Attributes (tensors are stored as given, not copied, so gradients flow through them):

    - ``lattice`` ``(B, 3, 3)`` floating, rows are lattice vectors (Å for data from files); the
      constructor also takes one cell ``(3, 3)`` (a batch of one) and refuses stacks ``(..., 3, 3)``;
    - ``frac`` ``(N_total, 3)`` fractional coordinates, same dtype and device as ``lattice``, not
      necessarily wrapped into ``[0, 1)``;
    - ``num_atoms`` ``(B,)`` int64, zero allowed;
    - ``species`` ``(N_total,)`` int64 atomic numbers, or ``None``;
    - ``batch`` ``(N_total,)`` int64 crystal index of each atom, sorted.

    An empty batch (``B = 0``: lattice ``(0, 3, 3)``, frac ``(0, 3)``, ``num_atoms=[]``) is allowed and
    goes through every method, as does a crystal with no atoms.

    Indexing selects crystals: ``batch[i]`` (an int, negative allowed), ``batch[i:j:k]``, ``batch[[2, 0]]``,
    ``batch[index_tensor]`` and ``batch[mask]`` (a bool tensor or list of length ``B``) all give a
    :class:`CrystalBatch` of the selected crystals, in the order selected (an int gives a one-crystal
    batch). Iterating gives the one-crystal batches in order.

    Bad arguments (shapes, counts, dtypes) raise ``ValueError``, wrong types ``TypeError``; non-finite
    values are accepted, since they are a per-crystal matter for whoever consumes the batch.
    """

    __slots__ = ("lattice", "frac", "num_atoms", "species", "batch", "_ptr")

    def __init__(self, lattice, frac, num_atoms, species=None):
        lattice = as_float_tensor(lattice, "lattice")
        one = lattice.dim() == 2  # one cell: a batch of one crystal
        lattice = as_crystal_lattices(lattice, "lattice")
        B = lattice.shape[0]
        device = lattice.device
        values = has_values(lattice)  # False on the meta device: counts cannot be checked there

        num_atoms = as_index_tensor(num_atoms, "num_atoms", device)
        if one and num_atoms.dim() == 0:  # one crystal: its atom count may come as a number
            num_atoms = num_atoms.reshape(1)
        if _shape(num_atoms) != (B,):
            raise ValueError(f"num_atoms: expected shape (B,) = ({B},) to match lattice, got {_shape(num_atoms)}")
        if values and B and bool((num_atoms < 0).any()):
            raise ValueError(f"num_atoms: expected non-negative counts, got {num_atoms.tolist()}")

        frac = as_float_tensor(frac, "frac")
        if values:
            n_total = int(num_atoms.sum()) if B else 0
        else:
            n_total = frac.shape[0] if frac.dim() else 0
        if frac.dim() != 2 or frac.shape[1] != 3 or frac.shape[0] != n_total:
            raise ValueError(
                f"frac: expected shape (N_total, 3) with N_total = sum(num_atoms) = {n_total}, got {_shape(frac)}"
            )
        if frac.dtype != lattice.dtype:
            raise ValueError(f"frac: expected dtype {lattice.dtype} (the lattice's), got {frac.dtype}")
        if frac.device != device:
            raise ValueError(f"frac: expected device {device} (the lattice's), got {frac.device}")

        if species is not None:
            species = as_index_tensor(species, "species", device)
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

    @classmethod
    def _from_parts(cls, lattice, frac, num_atoms, species, batch, ptr) -> "CrystalBatch":
        # Consistent parts (a selection of a valid batch): no validation.
        out = object.__new__(cls)
        out.lattice, out.frac, out.num_atoms, out.species, out.batch, out._ptr = (
            lattice, frac, num_atoms, species, batch, ptr)
        return out

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_padded(cls, lattice, frac, mask, species=None) -> "CrystalBatch":
        """From ``frac (B, Nmax, 3)`` and a boolean ``mask (B, Nmax)`` marking real atoms.

        ``species`` is ``(B, Nmax)`` or ``None``. Atoms keep their row-major order; the mask need not
        be left-aligned (but :meth:`to_padded` always returns left-aligned masks). One cell ``lattice (3,
        3)`` takes ``frac (Nmax, 3)``, ``mask`` and ``species (Nmax,)``: a batch of one crystal. Not on the
        meta device: which atoms the mask selects is a matter of values.
        """
        lattice = as_float_tensor(lattice, "lattice")
        one = lattice.dim() == 2  # one cell: a batch of one crystal
        lattice = as_crystal_lattices(lattice, "lattice")
        frac = as_float_tensor(frac, "frac")
        mask = as_tensor(mask, "mask")
        if one:  # one crystal: frac (Nmax, 3), mask and species (Nmax,)
            frac, mask = frac.unsqueeze(0), mask.unsqueeze(0)
            if species is not None:
                species = as_tensor(species, "species").unsqueeze(0)
        B = lattice.shape[0]
        if frac.dim() != 3 or frac.shape[0] != B or frac.shape[2] != 3:
            expected = "(Nmax, 3) for one cell" if one else f"(B, Nmax, 3) with B = {B}"
            shape = _shape(frac)[1:] if one else _shape(frac)
            raise ValueError(f"frac: expected shape {expected}, got {shape}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype}")
        if _shape(mask) != _shape(frac)[:2]:
            raise ValueError(f"mask: expected shape (B, Nmax) = {_shape(frac)[:2]} to match frac, got {_shape(mask)}")
        require_values(frac, "from_padded (selecting the atoms a mask marks)")
        mask = mask.to(frac.device)
        if species is not None:
            species = as_index_tensor(species, "species", frac.device)
            if _shape(species) != _shape(mask):
                raise ValueError(f"species: expected shape (B, Nmax) = {_shape(mask)} to match mask, got {_shape(species)}")
            species = species[mask]
        return cls(lattice, frac[mask], mask.sum(dim=1), species)

    @classmethod
    def from_flat(cls, lattice, frac, batch, species=None) -> "CrystalBatch":
        """From concatenated atoms ``frac (N, 3)`` and their crystal index ``batch (N,)``.

        ``batch`` must be sorted (non-decreasing) with values in ``[0, B)``, ``B = len(lattice)`` (1 for one
        cell ``(3, 3)``);
        crystals that no atom points to get ``num_atoms = 0``. (On the meta device these conditions
        cannot be checked and are assumed.)
        """
        lattice = as_crystal_lattices(lattice, "lattice")
        B = lattice.shape[0]
        frac = as_float_tensor(frac, "frac")
        batch = as_index_tensor(batch, "batch", lattice.device)
        frac_shape = _shape(frac)
        if batch.dim() != 1 or len(frac_shape) < 1 or batch.shape[0] != frac_shape[0]:
            raise ValueError(f"batch: expected shape (N,) with N = frac.shape[0], got batch {_shape(batch)} "
                             f"and frac {frac_shape}")
        if batch.numel() and has_values(batch):
            if bool((batch[1:] < batch[:-1]).any()):
                raise ValueError("batch: expected non-decreasing crystal indices (atoms grouped by crystal)")
            lo, hi = int(batch.min()), int(batch.max())
            if lo < 0 or hi >= B:
                raise ValueError(f"batch: expected values in [0, {B}) for B = lattice.shape[0] = {B}, "
                                 f"got values in [{lo}, {hi}]")
        # scatter_add rather than bincount: the same counts, and it runs on every device (meta included).
        num_atoms = torch.zeros(B, dtype=torch.int64, device=batch.device).scatter_add_(0, batch, torch.ones_like(batch))
        return cls(lattice, frac, num_atoms, species)

    @classmethod
    def from_structures(cls, structures, dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> "CrystalBatch":
        """From one pymatgen ``Structure`` or ASE ``Atoms``, or a sequence of them (mixed freely).

        A single structure gives a one-crystal batch. Species are atomic numbers; fractional coordinates
        are taken unwrapped. The batch is built and checked on the CPU, then moved to ``device``.

        Raises:
            TypeError: ``structures`` (or one of its items) is neither a pymatgen ``Structure`` nor an ASE
                ``Atoms``; ``dtype`` not a ``torch.dtype``.
            ValueError: a disordered pymatgen structure (partial occupancies); ASE ``Atoms`` without
                three lattice vectors; ``dtype`` not floating.
        """
        dtype = check_dtype(torch.float64 if dtype is None else dtype, "dtype")
        if _is_structure(structures):
            structures = [structures]
        elif isinstance(structures, (str, bytes, dict)) or not hasattr(structures, "__iter__"):
            raise TypeError(f"structures: expected a pymatgen Structure, an ASE Atoms or a sequence of them, "
                            f"got {type(structures).__name__}")
        lattices, fracs, numbers = [], [], []
        for i, s in enumerate(structures):
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
                raise TypeError(f"structures[{i}]: expected a pymatgen Structure or an ASE Atoms, "
                                f"got {type(s).__name__}")
            lattices.append(L)
            fracs.append(F)
            numbers.append(np.asarray(Z, dtype=np.int64).reshape(-1))
        B = len(lattices)
        lattice = torch.as_tensor(np.stack(lattices) if B else np.zeros((0, 3, 3)), dtype=dtype)
        frac = torch.as_tensor(np.concatenate(fracs) if B else np.zeros((0, 3)), dtype=dtype)
        species = torch.as_tensor(np.concatenate(numbers) if B else np.zeros(0, np.int64))
        num_atoms = torch.tensor([len(z) for z in numbers], dtype=torch.int64)
        out = cls(lattice, frac, num_atoms, species)
        return out if device is None else out.to(device)

    # ------------------------------------------------------------------ conversions

    def to_padded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(frac (B, Nmax, 3), mask (B, Nmax), species (B, Nmax) or None)``, atoms left-aligned.

        Padding is 0 in ``frac`` and ``species``; ``Nmax = max(num_atoms)`` (0 for an empty batch).
        Inverse of :meth:`from_padded` for left-aligned masks. Not on the meta device (``Nmax`` is a value).
        """
        B = len(self)
        require_values(self.num_atoms, "to_padded (the padded size max(num_atoms))")
        n_max = int(self.num_atoms.max()) if B else 0
        slot = self.atom_slots
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

    def to_structures(self, *, errors: str = "raise") -> list:
        """A list of pymatgen ``Structure`` (requires pymatgen and ``species``), values in float64.

        ``errors="raise"`` (default) lets pymatgen's error through for a cell it refuses (a degenerate
        one, say); ``errors="none"`` puts ``None`` in that crystal's place instead.
        """
        from pymatgen.core import Lattice, Structure

        if errors not in ("raise", "none"):
            raise ValueError(f"errors: expected 'raise' or 'none', got {errors!r}")
        if self.species is None:
            raise ValueError("species: expected atomic numbers to build pymatgen structures, got None")
        require_values(self.lattice, "to_structures")
        lattice = self.lattice.detach().cpu().double().numpy()
        frac = self.frac.detach().cpu().double().numpy()
        species = self.species.cpu().numpy()
        ptr = self._ptr.tolist()
        out = []
        for b in range(len(self)):
            try:
                out.append(Structure(Lattice(lattice[b]), species[ptr[b]:ptr[b + 1]].tolist(),
                                     frac[ptr[b]:ptr[b + 1]], coords_are_cartesian=False))
            except Exception:  # noqa: BLE001 - pymatgen raises many types on odd cells
                if errors == "raise":
                    raise
                out.append(None)
        return out

    def to(self, *args, **kwargs) -> "CrystalBatch":
        """A batch on another device and/or floating dtype, as ``torch.Tensor.to`` takes them.

        ``to(torch.float32)``, ``to("cuda")``, ``to(device, dtype)``, ``to(device=..., dtype=...)``,
        ``to(other_tensor)`` (its device and dtype) or ``to(other_batch)``; ``non_blocking`` and ``copy``
        as in torch. ``lattice`` and ``frac`` take the dtype (it must be floating: ``ValueError``
        otherwise); ``num_atoms``, ``species`` and ``batch`` stay int64 and only move. Like torch, the
        tensors that need no change are shared, not copied.
        """
        if args and isinstance(args[0], CrystalBatch):
            args = (args[0].lattice,) + args[1:]
        for a in list(args) + [kwargs.get("device"), kwargs.get("dtype")]:
            if a is not None and (isinstance(a, bool) or not isinstance(a, _TO_ARGUMENT_TYPES)):
                raise TypeError(f"to: expected a device, a dtype, a tensor or a CrystalBatch, got "
                                f"{type(a).__name__} {a!r}")
        if "dtype" in kwargs:
            check_dtype(kwargs["dtype"], "dtype", allow_none=True)
        for a in args:
            if isinstance(a, torch.dtype):
                check_dtype(a, "dtype")
        try:
            lattice = self.lattice.to(*args, **kwargs)
        except RuntimeError as err:  # an unknown device string, say
            raise ValueError(f"to: {err}") from err
        if not lattice.is_floating_point():
            raise ValueError(f"dtype: expected a floating dtype (float32/float64), got {lattice.dtype}")
        frac = self.frac.to(*args, **kwargs)
        moves = {"device": lattice.device, "non_blocking": kwargs.get("non_blocking", False),
                 "copy": kwargs.get("copy", False)}
        return self._from_parts(lattice, frac, self.num_atoms.to(**moves),
                                None if self.species is None else self.species.to(**moves),
                                self.batch.to(**moves), self._ptr.to(**moves))

    # ------------------------------------------------------------------ geometry

    def cartesian(self) -> torch.Tensor:
        """Cartesian positions ``(N_total, 3)``, ``X_i = F_i @ L_{batch[i]}``."""
        return (self.frac.unsqueeze(-2) @ self.lattice[self.batch]).squeeze(-2)

    def apply_basis_change(self, M) -> "CrystalBatch":
        """Re-express crystal ``b`` in the basis ``M_b @ L_b``: frac becomes ``wrap(F @ M_b^{-1})``.

        ``M`` is ``(B, 3, 3)`` (or ``(3, 3)`` for all crystals), unimodular, integer or integral float
        (a tensor, array or list). ``M^{-1}`` is exact (:func:`~soft_niggli.lattice.integer_inverse`).
        Cartesian positions modulo each lattice are unchanged; gradients flow to ``lattice`` and ``frac``.
        On the meta device ``M`` is assumed unimodular.
        """
        B = len(self)
        M = as_tensor(M, "M").to(self.lattice.device)
        if _shape(M) == (3, 3):
            M = M.expand(B, 3, 3)
        if _shape(M) != (B, 3, 3):
            raise ValueError(f"M: expected shape (B, 3, 3) = ({B}, 3, 3) or (3, 3), got {_shape(M)}")
        if M.dtype == torch.bool or M.is_complex():
            raise ValueError(f"M: expected an integer or integral floating dtype, got {M.dtype}")
        if B and has_values(M):
            unimodular = is_unimodular(M)
            if not bool(unimodular.all()):
                bad = (~unimodular).nonzero().flatten().tolist()
                raise ValueError(f"M: expected integer matrices with determinant ±1, got other matrices at crystals {bad}")
        Minv = integer_inverse(M).to(dtype=self.frac.dtype)
        Mf = (torch.round(M) if M.is_floating_point() else M).to(dtype=self.lattice.dtype)
        # Per-atom gather of M^{-1} keeps the flat layout: no padding, no per-crystal loop.
        frac = wrap((self.frac.unsqueeze(-2) @ Minv[self.batch]).squeeze(-2))
        return self._unchecked(Mf @ self.lattice, frac, self)

    # ------------------------------------------------------------------ container protocol

    @property
    def atom_slots(self) -> torch.Tensor:
        """``(N_total,)`` int64: the position of each atom within its crystal (see :func:`atom_slots`)."""
        return torch.arange(self.frac.shape[0], device=self.frac.device) - self._ptr[self.batch]

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

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index) -> "CrystalBatch":
        """The selected crystals as a new batch, in the order selected (module and class docstrings).

        An int or a step-1 slice gives views sharing storage with this batch; lists, index tensors,
        masks and other slices gather copies (gradients flow either way).

        Raises:
            TypeError: an index of another type (a float, a string, ``None``, a float tensor).
            IndexError: a crystal index out of range, a mask whose length is not ``B``, or an index
                tensor of more than one dimension.
            ValueError: on the meta device (which crystals' atoms to take is a matter of values).
        """
        B = len(self)
        accepted = (int, np.integer, slice, torch.Tensor, np.ndarray, list, tuple)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, accepted):
            raise TypeError("CrystalBatch indices must be integers, slices, integer lists/tensors or boolean "
                            f"masks, got {type(index).__name__} {index!r}")
        require_values(self.num_atoms, "indexing a CrystalBatch (the atom ranges of the crystals)")
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if not -B <= i < B:
                raise IndexError(f"crystal index {i} out of range for a batch of {B}")
            return self._contiguous(i % B, i % B + 1)
        if isinstance(index, slice):
            start, stop, step = index.indices(B)
            if step == 1:
                return self._contiguous(start, max(start, stop))
            return self._gather(torch.tensor(range(start, stop, step), dtype=torch.int64, device=self.device))
        try:
            idx = as_tensor(index, "index")
        except ValueError as err:  # a ragged list
            raise IndexError(f"CrystalBatch index: {err}") from err
        if idx.numel() == 0 and idx.dtype != torch.bool:
            idx = idx.to(torch.int64)
        if idx.dtype == torch.bool:
            if _shape(idx) != (B,):
                raise IndexError(f"boolean mask: expected shape (B,) = ({B},), got {_shape(idx)}")
            return self._gather(idx.to(self.device).nonzero().flatten())
        if idx.is_floating_point() or idx.is_complex():
            raise TypeError(f"CrystalBatch indices must be integers, slices, integer lists/tensors or boolean "
                            f"masks, got a tensor of dtype {idx.dtype}")
        if idx.dim() == 0:
            return self[int(idx)]
        if idx.dim() != 1:
            raise IndexError(f"index tensor: expected one dimension (B_selected,), got shape {_shape(idx)}")
        idx = idx.to(device=self.device, dtype=torch.int64)
        if idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < -B or hi >= B:
                raise IndexError(f"crystal index {lo if lo < -B else hi} out of range for a batch of {B}")
        return self._gather(torch.where(idx < 0, idx + B, idx))

    def _contiguous(self, lo: int, hi: int) -> "CrystalBatch":
        """Crystals ``lo:hi`` as views of this batch's tensors."""
        a, b = int(self._ptr[lo]), int(self._ptr[hi])
        num_atoms = self.num_atoms[lo:hi]
        return self._from_parts(self.lattice[lo:hi], self.frac[a:b], num_atoms,
                                None if self.species is None else self.species[a:b],
                                self.batch[a:b] - lo, self._ptr[lo:hi + 1] - a)

    def _gather(self, idx: torch.Tensor) -> "CrystalBatch":
        """Crystals ``idx`` (int64, in range, on this batch's device), in that order; repeats allowed."""
        counts = self.num_atoms[idx]
        atom, owner = repeat_atoms(self.num_atoms, idx)
        ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return self._from_parts(self.lattice[idx], self.frac[atom], counts,
                                None if self.species is None else self.species[atom], owner, ptr)

    def __repr__(self) -> str:
        return (f"CrystalBatch(num_crystals={len(self)}, num_atoms_total={self.frac.shape[0]}, "
                f"dtype={self.dtype}, device={self.device}, species={'yes' if self.species is not None else 'no'})")
