"""The one data holder of the training benchmarks: training and held-out crystals of one dataset.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular.

:class:`Data` keeps the training crystals twice, as stored (``train_raw``) and as DiffCSP stores them
(``train_niggli``, :func:`diffcsp_canonical`), the held-out crystals, and what the models and reports
need from the training set (largest crystal, mean volume per atom, a label-free reference score).
:func:`load_data` builds one from a named dataset (:mod:`benchmarks.ablation`);
:meth:`Data.from_structures` from any two lists of structures (:mod:`benchmarks.proxy_training`).
Training batches are drawn by indexing: ``data.train_raw[idx]``.

The CDVAE/DiffCSP data files are found by :func:`data_dir`: ``--data-dir``, else ``$SOFT_NIGGLI_DATA``,
else ``../shared/data`` next to this checkout (the benchmarks run from a checkout; the installed
library itself never guesses a folder).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from soft_niggli import CrystalBatch, Status, canonicalize_labels, lattice_from_parameters, lattice_parameters
from soft_niggli.datasets import DATA_ENV, load_dataset, split_source
from soft_niggli.metrics import lattice_error, volume_error

__all__ = ["CHECKOUT_DATA", "Data", "data_dir", "diffcsp_canonical", "load_data"]

#: The data folder next to this checkout: ``<repository>/../shared/data``.
CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def data_dir(path: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """The ``data_dir`` to give :mod:`soft_niggli.datasets`: ``path`` if given; None when
    ``$SOFT_NIGGLI_DATA`` is set (the library reads it) or no :data:`CHECKOUT_DATA` exists (the library
    then says how to give a folder); else :data:`CHECKOUT_DATA`."""
    if path is not None or os.environ.get(DATA_ENV) or not CHECKOUT_DATA.is_dir():
        return path
    return CHECKOUT_DATA


@dataclass
class Data:
    """Training and held-out crystals of one dataset (all in one dtype, on one device).

    Attributes:
        name: the dataset's name.
        train_raw: training crystals, cells as stored.
        train_niggli: the same crystals as DiffCSP stores them (:func:`diffcsp_canonical`).
        val: held-out crystals, cells as stored.
        max_atoms: the most atoms of any crystal, training or held-out.
        volume_per_atom: mean volume per atom of the training crystals (Å³).
        label_reduction_not_ok: training labels whose guarded Niggli reduction was not ``OK``.
        reference: held-out ``lattice_error`` and ``volume_error`` of a label-free guess, to read results
            against: for each crystal a cube of the training mean volume per atom.
        sources: ``{"train": ..., "held_out": ...}``, which file (and part of it) each came from, in words
            (:func:`soft_niggli.datasets.split_source`).
    """

    name: str
    train_raw: CrystalBatch
    train_niggli: CrystalBatch
    val: CrystalBatch
    max_atoms: int
    volume_per_atom: float
    label_reduction_not_ok: int
    reference: dict
    sources: dict = field(default_factory=dict)

    @classmethod
    def from_structures(cls, name: str, train: list, val: list, *, dtype: torch.dtype = torch.float64,
                        device: torch.device | str | None = None) -> Data:
        """From pymatgen structures (or ASE atoms): ``train`` and ``val`` must both be non-empty."""
        if not train or not val:
            raise ValueError(f"dataset {name!r}: expected non-empty train and val splits, "
                             f"got {len(train)} and {len(val)}")
        train_raw = CrystalBatch.from_structures(train, dtype=dtype, device=device)
        val_batch = CrystalBatch.from_structures(val, dtype=dtype, device=device)
        train_niggli, status = diffcsp_canonical(train_raw)
        volume_per_atom = float(np.mean([s.volume / len(s) for s in train]))
        max_atoms = max(max(len(s) for s in train), max(len(s) for s in val))
        return cls(name, train_raw, train_niggli, val_batch, max_atoms, volume_per_atom,
                   int((status != int(Status.OK)).sum()), _reference(val_batch, volume_per_atom))


def load_data(name: str, train_size: int | None = None, val_size: int | None = None, folder: str | None = None,
              max_atoms: int | None = None, device: torch.device | str | None = None) -> Data:
    """The training and held-out crystals of dataset ``name`` (:func:`soft_niggli.datasets.load_dataset`, data
    folder from :func:`data_dir`), at most ``train_size`` and ``val_size`` crystals of at most ``max_atoms``
    atoms, in float64.

    Held out is the ``test`` split, as CDVAE and DiffCSP report: the test file where the folder has one, else
    the val file, else the held-out 20% of a single file. ``Data.sources`` says which.
    """
    folder = data_dir(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_dataset(name, "train", folder, limit=train_size, max_atoms=max_atoms)
        val = load_dataset(name, "test", folder, limit=val_size, max_atoms=max_atoms)
    data = Data.from_structures(name, train, val, dtype=torch.float64, device=device)
    data.sources = {"train": split_source(name, "train", folder), "held_out": split_source(name, "test", folder)}
    return data


def _reference(val: CrystalBatch, volume_per_atom: float) -> dict:
    side = (volume_per_atom * val.num_atoms.double()).pow(1 / 3)
    cubes = side[:, None, None] * torch.eye(3, dtype=torch.float64, device=side.device)
    target = val.lattice.double()
    return {"lattice_error": float(lattice_error(cubes, target).error.mean()),
            "volume_error": float(volume_error(cubes, target).mean())}


def diffcsp_canonical(batch: CrystalBatch) -> tuple[CrystalBatch, torch.Tensor]:
    """Labels as DiffCSP's data pipeline canonicalises them: Niggli-reduced, then rotated to the standard
    orientation of their cell parameters (a along x, b in the xy plane).

    Reduction by :func:`soft_niggli.canonicalize_labels` (the guarded reducer); a left-handed reduced
    basis is first replaced by its negative (``M = -I``, the same Niggli metric), so that the
    re-orientation is a proper rotation and never mirrors the crystal (DiffCSP's ``from_parameters``
    would). Fractional coordinates are unchanged by the rotation. Returns ``(labels, reducer status)``.
    """
    canonical = canonicalize_labels(batch)
    reduced = canonical.batch
    eye = torch.eye(3, dtype=torch.int64, device=batch.device)
    left = torch.linalg.det(reduced.lattice) < 0
    reduced = reduced.apply_basis_change(torch.where(left[:, None, None], -eye, eye))
    standard = lattice_from_parameters(*lattice_parameters(reduced.lattice).unbind(-1))
    return CrystalBatch(standard, reduced.frac, reduced.num_atoms, reduced.species), canonical.status
