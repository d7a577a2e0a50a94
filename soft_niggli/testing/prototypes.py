"""Symmetric crystals from a small prototype library, and the AFLOW prototypes bundled with pymatgen.

:func:`symmetric_crystals` draws atoms on special positions of symmetric lattices (rock-salt,
perovskite, wurtzite, ...: :data:`SYMMETRIC_PROTOTYPES`); :func:`aflow_crystals` loads the 250
ordered AFLOW prototypes as one batch and :func:`real_crystals` draws from them.

Row convention: lattices are float64 ``(3, 3)`` tensors whose rows are the lattice vectors; a re-basing
``M`` acts as ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from .._checks import check_int
from ..crystal import CrystalBatch
from ._draw import (SYMMETRIC_FAMILIES, check_bool, choices, disturb, exact_cell, hypothesis_strategies, noise_level,
                    rotation_strategy, to_batch, unimodular_strategy)

__all__ = ["SYMMETRIC_PROTOTYPES", "symmetric_crystals", "aflow_crystals", "real_crystals"]

#: Crystals drawn by :func:`symmetric_crystals`: atoms on special positions of a symmetric lattice
#: (primitive cells unless named ``_conventional``), and ``"generic"``: random atoms on a symmetric lattice.
SYMMETRIC_PROTOTYPES = ("fcc", "bcc", "hcp", "rocksalt", "rocksalt_conventional", "cscl", "zincblende", "fluorite",
                        "perovskite", "wurtzite", "generic")

_T1, _T2 = 1.0 / 3.0, 2.0 / 3.0
_ORIGIN = (0.0, 0.0, 0.0)
_CENTRE = (0.5, 0.5, 0.5)
_FACES = ((0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))
_EDGES = ((0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.5))
# name: (lattice family, sites as (kind, fractional coordinates in the family's primitive cell of
# _draw._cell_rows)); site kind k gets the k-th of distinct drawn elements.
_PROTOTYPE_SITES = {
    "fcc": ("cubic_F", ((0, _ORIGIN),)),
    "bcc": ("cubic_I", ((0, _ORIGIN),)),
    "hcp": ("hexagonal", ((0, (_T1, _T2, 0.25)), (0, (_T2, _T1, 0.75)))),
    "rocksalt": ("cubic_F", ((0, _ORIGIN), (1, _CENTRE))),
    "rocksalt_conventional": ("cubic_P", tuple((0, x) for x in (_ORIGIN,) + _FACES)
                              + tuple((1, x) for x in (_CENTRE,) + _EDGES)),
    "cscl": ("cubic_P", ((0, _ORIGIN), (1, _CENTRE))),
    "zincblende": ("cubic_F", ((0, _ORIGIN), (1, (0.25, 0.25, 0.25)))),
    "fluorite": ("cubic_F", ((0, _ORIGIN), (1, (0.25, 0.25, 0.25)), (1, (0.75, 0.75, 0.75)))),
    "perovskite": ("cubic_P", ((0, _ORIGIN), (1, _CENTRE)) + tuple((2, x) for x in _FACES)),
    # ZnS: Zn at (2/3, 1/3, 0), (1/3, 2/3, 1/2); S 0.6252 c above each (u = 0.3748 from below).
    "wurtzite": ("hexagonal", ((0, (_T2, _T1, 0.0)), (0, (_T1, _T2, 0.5)),
                               (1, (_T2, _T1, 0.6252)), (1, (_T1, _T2, 0.1252)))),
}


def _symmetric_crystal(st, prototypes: tuple[str, ...], noise: float, rebase: bool, max_atoms: int):
    """Strategy for one crystal ``(lattice (3, 3), frac (n, 3), species (n,))`` of ``prototypes``."""
    rotation = rotation_strategy()
    rebasing = unimodular_strategy(1) if rebase else None
    element = st.integers(1, 94)

    @st.composite
    def draw_crystal(draw):
        name = draw(st.sampled_from(prototypes))
        if name == "generic":
            cell = exact_cell(draw, st, draw(st.sampled_from(SYMMETRIC_FAMILIES)))
            coord = st.floats(0.0, 1.0, exclude_max=True)
            n = draw(st.integers(1, max_atoms))
            frac = torch.tensor(draw(st.lists(st.tuples(coord, coord, coord), min_size=n, max_size=n)),
                                dtype=torch.float64)
            species = torch.tensor(draw(st.lists(element, min_size=n, max_size=n)), dtype=torch.int64)
        else:
            family, sites = _PROTOTYPE_SITES[name]
            cell = exact_cell(draw, st, family)
            kinds = 1 + max(k for k, _ in sites)
            elements = draw(st.lists(element, min_size=kinds, max_size=kinds, unique=True))
            frac = torch.tensor([x for _, x in sites], dtype=torch.float64)
            species = torch.tensor([elements[k] for k, _ in sites], dtype=torch.int64)
        lattice, frac = disturb(draw, st, cell, frac, noise, rotation, rebasing)
        return lattice, frac, species

    return draw_crystal()


def symmetric_crystals(prototype: str | Sequence[str] | None = None, noise: float = 1e-3, rebase: bool = True,
                       max_crystals: int = 1, max_atoms: int = 8):
    """Strategy for a :class:`~soft_niggli.CrystalBatch` of 1 to ``max_crystals`` symmetric crystals,
    float64, with species.

    Each crystal is one of :data:`SYMMETRIC_PROTOTYPES` (``prototype``: one name, a tuple, or ``None``
    for all those with at most ``max_atoms`` atoms): atoms on special positions, so the whole crystal,
    not only its lattice, is symmetric:

    ============================  =================  =====  =============================================
    prototype                     lattice            atoms  crystal point group (order)
    ============================  =================  =====  =============================================
    ``fcc``, ``bcc``              cubic_F, cubic_I   1      m-3m (48)
    ``rocksalt``, ``zincblende``  cubic_F            2      m-3m (48), -43m (24)
    ``fluorite``                  cubic_F            3      m-3m (48)
    ``cscl``, ``perovskite``      cubic_P            2, 5   m-3m (48)
    ``rocksalt_conventional``     cubic_P            8      m-3m (48), a supercell of ``rocksalt``
    ``hcp``, ``wurtzite``         hexagonal          2, 4   6/mmm (24), 6mm (12)
    ``generic``                   any family         1..    random atoms: symmetric lattice only
    ============================  =================  =====  =============================================

    Edges (and c/a) are random as in :func:`~soft_niggli.testing.symmetric_lattices`; distinct site
    kinds get distinct random elements (atomic numbers 1–94). Then the cell is strained and every
    fractional coordinate shifted by a relative amount either exactly 0 or in ``[0, noise]``
    (``noise=0``: exact crystals), rotated, and with ``rebase`` re-expressed in a basis ``M @ L``
    (``M`` unimodular, entries in {-1, 0, 1}); fractional coordinates end in [0, 1).

    Example::

        @given(symmetric_crystals(("rocksalt", "perovskite"), noise=0.0))
        def test_my_loss_is_zero_on_itself(batch): ...
    """
    st = hypothesis_strategies()
    check_int(max_crystals, "max_crystals", minimum=1)
    check_int(max_atoms, "max_atoms", minimum=1)
    check_bool(rebase, "rebase")
    names = choices(prototype, SYMMETRIC_PROTOTYPES, "prototype")
    fitting = tuple(n for n in names if n == "generic" or len(_PROTOTYPE_SITES[n][1]) <= max_atoms)
    if prototype is not None and fitting != names:
        too_big = [n for n in names if n not in fitting]
        raise ValueError(f"prototype: expected prototypes with at most max_atoms = {max_atoms} atoms, got {too_big}")
    crystal = _symmetric_crystal(st, fitting, noise_level(noise), rebase, max_atoms)
    return st.lists(crystal, min_size=1, max_size=max_crystals).map(to_batch)


# ------------------------------------------------------------------------------ AFLOW prototypes


@functools.lru_cache(maxsize=1)
def _aflow_structures() -> tuple:
    # Parsing the bundled file and importing pymatgen take seconds: once per process.
    try:
        import pymatgen.core  # noqa: F401
    except ImportError as err:
        raise ImportError("aflow_crystals and real_crystals need pymatgen, which bundles the AFLOW "
                          "prototypes: pip install pymatgen") from err
    from ..datasets import load_dataset

    return tuple(load_dataset("aflow", split="all"))


def _aflow_pool(max_atoms: int) -> list:
    check_int(max_atoms, "max_atoms", minimum=1)
    pool = [s for s in _aflow_structures() if len(s) <= max_atoms]
    if not pool:
        raise ValueError(f"max_atoms: no AFLOW prototype has at most {max_atoms} atoms")
    return pool


def aflow_crystals(limit: int | None = None, max_atoms: int = 20) -> CrystalBatch:
    """The AFLOW prototypes bundled with pymatgen as one float64 :class:`~soft_niggli.CrystalBatch` (not
    a strategy).

    The first ``limit`` (all when ``None``) of the 250 ordered prototypes with at most 20 atoms, in file
    order, keeping those with at most ``max_atoms`` atoms; cells and coordinates as stored (see
    :func:`soft_niggli.datasets.read_aflow_prototypes`). Real crystals, most of them symmetric: cubic,
    hexagonal, tetragonal, ... The file is parsed once per process.

    Raises:
        ImportError: pymatgen is not installed.
        TypeError: ``limit`` or ``max_atoms`` not an int (``limit`` may be None).
        ValueError: ``limit`` negative, or ``max_atoms`` < 1 or below every prototype's size.

    >>> batch = aflow_crystals(limit=10)  # doctest: +SKIP
    >>> len(batch), batch.species is not None  # doctest: +SKIP
    (10, True)
    """
    check_int(limit, "limit", minimum=0, allow_none=True)
    return CrystalBatch.from_structures(_aflow_pool(max_atoms)[:limit])


def real_crystals(max_atoms: int = 20, max_crystals: int = 1, *, rebase: bool = True):
    """Strategy for a :class:`~soft_niggli.CrystalBatch` of 1 to ``max_crystals`` real crystals: the
    AFLOW prototypes.

    Crystals are drawn from :func:`aflow_crystals` ``(max_atoms=max_atoms)``, each rotated (or
    reflected) at random and, with ``rebase``, re-expressed in a basis ``M @ L`` with ``M``
    unimodular, entries in {-1, 0, 1}; fractional coordinates end in [0, 1). Needs pymatgen, imported
    at the first draw (ImportError then if it is missing).
    """
    st = hypothesis_strategies()
    check_int(max_crystals, "max_crystals", minimum=1)
    check_int(max_atoms, "max_atoms", minimum=1)
    check_bool(rebase, "rebase")
    rotation = rotation_strategy()
    rebasing = unimodular_strategy(1) if rebase else None

    @st.composite
    def draw_crystal(draw):
        pool = _aflow_pool(max_atoms)
        s = pool[draw(st.integers(0, len(pool) - 1))]
        L = torch.tensor(s.lattice.matrix, dtype=torch.float64)
        F = torch.tensor(s.frac_coords, dtype=torch.float64).reshape(-1, 3)
        Z = torch.tensor(s.atomic_numbers, dtype=torch.int64)
        L, F = disturb(draw, st, L, F, 0.0, rotation, rebasing)
        return L, F, Z

    return st.lists(draw_crystal(), min_size=1, max_size=max_crystals).map(to_batch)
