"""Splits: which rows of which file :func:`load_dataset` returns for a dataset and a split
(:func:`split_source` says it in words), and :func:`train_val_split`, the deterministic split of a
dataset that ships as one file.

Row convention: the structures returned keep pymatgen's lattice matrices, lattice vectors as rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from .._checks import check_count, check_int, check_real
from ._aflow import read_aflow_prototypes
from ._bundled import bundled_path
from ._cdvae import read_cdvae_csv
from ._folders import BUNDLED, DATASETS, SPLITS, split_files

_T = TypeVar("_T")


def train_val_split(items: Sequence[_T], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[_T], list[_T]]:
    """Deterministic split by a seeded permutation: ``(train, val)``, ``val`` holding
    ``round(val_fraction · n)`` items (at least one when ``n >= 2``). Same input, same seed, same split.
    """
    if not 0 < check_real(val_fraction, "val_fraction", "a float in (0, 1)") < 1:
        raise ValueError(f"val_fraction: expected a float in (0, 1), got {val_fraction!r}")
    check_int(seed, "seed")
    n = len(items)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return [items[i] for i in train_idx], [items[i] for i in val_idx]


def _split_file(present: dict[str, Path], split: str) -> tuple[Path, str]:
    """The file that split ``split`` (not ``"all"``) of a folder dataset with the files ``present`` comes
    from, and which part of it: ``"own file"`` (where the training file and the split's own file exist),
    ``"val file"`` (``"test"`` without a test file) or ``"split"`` (one file, or no training file: its
    part of :func:`train_val_split`)."""
    if split in present and ("train" in present or split == "train") and len(present) >= 2:
        return present[split], "own file"
    if split == "test" and "val" in present and "train" in present:
        return present["val"], "val file"
    return present.get("train") or present.get("val") or present["test"], "split"


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 limit: int | None = None, max_atoms: int | None = None, val_fraction: float = 0.2,
                 seed: int = 0) -> list:
    """Structures of a named dataset and split.

    Args:
        name: one of :data:`DATASETS`. ``"perov_5_small"`` and ``"carbon_24_small"`` ship with this
            package (:func:`bundled_path`), ``"aflow"`` with pymatgen; the others are read from
            ``<data_dir>/<name>/{train,val,test}.csv[.gz]``.
        data_dir: the data folder; ``None`` for ``$SOFT_NIGGLI_DATA`` (:func:`resolve_data_dir`). Not
            needed (and ignored) for the bundled sets and ``"aflow"``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``. Files are ``<split>.csv.gz`` or
            ``<split>.csv`` (:func:`split_files`). Where the training file and the split's own file exist
            they are used as they are (``"test"`` without a test file: the val file); where only one
            file exists (and for the bundled sets and ``"aflow"``) it is split by
            :func:`train_val_split` with ``val_fraction`` and ``seed``, and ``"val"`` and ``"test"`` are
            both its held-out part. :func:`split_source` says in words which file was read.
        limit: keep at most this many structures of the split (the first ones, in file order).
        max_atoms: drop structures with more atoms (``"aflow"`` always keeps <= 20).

    Raises:
        TypeError: ``name`` or ``split`` not a str; ``limit`` or ``max_atoms`` not None or an int.
        ValueError: unknown name or split (listing the valid ones); ``limit`` or ``max_atoms`` negative;
            a damaged data file (see :func:`read_cdvae_csv`).
        FileNotFoundError: no data folder given (neither ``data_dir`` nor ``$SOFT_NIGGLI_DATA``) for a
            dataset that needs one, or the folder or the dataset's files are absent; the message says how
            to give the folder, which files it must hold, and which datasets need none.
    """
    # Checked here, not only by the readers: the "aflow" branch and the splits slice with `limit`.
    limit = check_count(limit, "limit")
    max_atoms = check_count(max_atoms, "max_atoms")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), one of {DATASETS}, got {type(name).__name__} {name!r}")
    if not isinstance(split, str):
        raise TypeError(f"split: expected one of {SPLITS} (a str), got {type(split).__name__} {split!r}")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if name == "aflow":
        structures = read_aflow_prototypes(max_atoms=20 if max_atoms is None else min(max_atoms, 20))
        if split == "all":
            return structures[:limit]
        train, val = train_val_split(structures, val_fraction, seed)
        return (train if split == "train" else val)[:limit]
    if name in BUNDLED:
        structures = read_cdvae_csv(bundled_path(name), max_atoms=max_atoms)
        if split == "all":
            return structures[:limit]
        train, val = train_val_split(structures, val_fraction, seed)
        return (train if split == "train" else val)[:limit]

    present = split_files(name, data_dir)
    if split == "all":
        out = []
        for p in present.values():
            out += read_cdvae_csv(p, max_atoms=max_atoms)
        return out[:limit]
    path, part = _split_file(present, split)
    if part == "own file":
        # Without a filter there is no need to parse more rows than asked for.
        rows = limit if max_atoms is None else None
        return read_cdvae_csv(path, limit=rows, max_atoms=max_atoms)[:limit]
    if part == "val file":
        return read_cdvae_csv(path, max_atoms=max_atoms)[:limit]
    train, val = train_val_split(read_cdvae_csv(path, max_atoms=max_atoms), val_fraction, seed)
    return (train if split == "train" else val)[:limit]


def split_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.2,
                 seed: int = 0) -> str:
    """Which file (and part of it) :func:`load_dataset` reads for ``name`` and ``split``, in words, for
    results files: e.g. ``"perov_5/val.csv.gz, the held-out 20% (seed 0)"``."""
    if name == "aflow":
        return "pymatgen's AFLOW prototypes" + ("" if split == "all" else f", {split} part of an 80/20 split")
    if name in BUNDLED:
        where = f"soft_niggli/data/{name}.csv.gz"
    else:
        present = split_files(name, data_dir)
        if split == "all":
            return ", ".join(f"{name}/{p.name}" for p in present.values())
        path, part = _split_file(present, split)
        if part == "own file":
            return f"{name}/{path.name}"
        if part == "val file":
            return f"{name}/{path.name} (no test file)"
        where = f"{name}/{path.name}"
    if split == "all":
        return where
    part = f"the held-out {round(100 * val_fraction)}%" if split != "train" else \
        f"the other {round(100 * (1 - val_fraction))}%"
    return f"{where}, {part} (seed {seed})"
