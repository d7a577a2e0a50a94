"""Testing helpers shipped for users: hypothesis strategies and ``assert_gl3z_invariant``.

Strategies: :func:`unimodular_matrices`, :func:`rotations`, :func:`lattices` (generic, pathological or
arbitrary cells), :func:`symmetric_lattices` (exact or slightly perturbed cells of the Bravais families
in :data:`SYMMETRIC_FAMILIES`), :func:`crystals` (random atoms; ``lattice_kind="symmetric"`` mixes in
symmetric crystals), :func:`symmetric_crystals` (the prototypes of :data:`SYMMETRIC_PROTOTYPES`:
rock-salt, perovskite, wurtzite, ...) and :func:`real_crystals` (the AFLOW prototypes bundled with
pymatgen). Plain helpers: :func:`aflow_crystals` (those prototypes as one :class:`CrystalBatch`) and
:func:`assert_gl3z_invariant`.

Real crystals sit on the boundaries of the Niggli cone and have many lattice automorphisms (48 for a
cubic cell): a loss that picks one of several equally good bases, or switches a term at a threshold,
breaks there while passing on generic cells, so test on symmetric cells as well.

Row convention: every lattice drawn here is a float64 ``(3, 3)`` tensor whose rows are the lattice
vectors; unimodular matrices act as ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Everything drawn is a torch tensor (or a :class:`CrystalBatch` of them), never a NumPy array. Wrong
argument types (a float for ``max_atoms``, a string for ``noise``) raise ``TypeError``, wrong values
(unknown names, out of range) ``ValueError``.

Use them to test your own models and losses the way soft_niggli tests its own::

    from hypothesis import given
    from soft_niggli.testing import crystals, symmetric_crystals, assert_gl3z_invariant

    @given(crystals(max_atoms=6))
    def test_my_energy_is_basis_invariant(batch):
        assert_gl3z_invariant(my_energy, batch)

    @given(symmetric_crystals(noise=0.0))
    def test_my_energy_is_basis_invariant_on_symmetric_crystals(batch):
        assert_gl3z_invariant(my_energy, batch)

``hypothesis`` is needed for the strategies (``pip install soft-niggli[test]``);
``assert_gl3z_invariant`` works without it. ``aflow_crystals`` and ``real_crystals`` need pymatgen.
"""

from __future__ import annotations

import enum
import functools
import math
from typing import Callable, Sequence

import torch

from ._checks import check_int, check_real
from .crystal import CrystalBatch
from .lattice import apply_basis_change, lattice_from_parameters, random_rotations, wrap
from .unimodular import enumerate_unimodular, random_unimodular

__all__ = [
    "LATTICE_KINDS",
    "SYMMETRIC_FAMILIES",
    "AUTOMORPHISM_COUNTS",
    "SYMMETRIC_PROTOTYPES",
    "unimodular_matrices",
    "lattices",
    "symmetric_lattices",
    "rotations",
    "crystals",
    "symmetric_crystals",
    "real_crystals",
    "aflow_crystals",
    "assert_gl3z_invariant",
]

LATTICE_KINDS = ("realistic", "pathological", "any_float", "symmetric")

#: Bravais families drawn by :func:`symmetric_lattices` (centring after the underscore: P primitive,
#: I body-centred, F face-centred, C base-centred).
SYMMETRIC_FAMILIES = ("cubic_P", "cubic_I", "cubic_F", "hexagonal", "tetragonal_P", "tetragonal_I", "rhombohedral",
                      "orthorhombic_P", "orthorhombic_C", "orthorhombic_I", "orthorhombic_F", "monoclinic")

#: Number of lattice automorphisms (the order of the lattice's point group, ±identity included) of an
#: exact cell of each family: what :func:`soft_niggli.unimodular.lattice_automorphisms` finds on its
#: Niggli-reduced basis.
AUTOMORPHISM_COUNTS = {"cubic_P": 48, "cubic_I": 48, "cubic_F": 48, "hexagonal": 24, "tetragonal_P": 16,
                       "tetragonal_I": 16, "rhombohedral": 12, "orthorhombic_P": 8, "orthorhombic_C": 8,
                       "orthorhombic_I": 8, "orthorhombic_F": 8, "monoclinic": 4}

#: Crystals drawn by :func:`symmetric_crystals`: atoms on special positions of a symmetric lattice
#: (primitive cells unless named ``_conventional``), and ``"generic"``: random atoms on a symmetric lattice.
SYMMETRIC_PROTOTYPES = ("fcc", "bcc", "hcp", "rocksalt", "rocksalt_conventional", "cscl", "zincblende", "fluorite",
                        "perovskite", "wurtzite", "generic")


def _st():
    try:
        from hypothesis import strategies
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("soft_niggli.testing strategies need hypothesis: pip install 'soft-niggli[test]'") from err
    return strategies


def unimodular_matrices(bound: int = 1, proper: bool = False, depth: int = 1):
    """Strategy for int64 ``(3, 3)`` unimodular matrices.

    With ``depth=1`` it draws from all matrices with entries in ``[-bound, bound]`` (``bound`` 1 or 2);
    ``depth > 1`` multiplies that many such draws (larger entries). Shrinks towards the identity.
    """
    st = _st()
    if check_int(bound, "bound") not in (1, 2):
        raise ValueError(f"bound: expected 1 or 2, got {bound!r}")
    check_int(depth, "depth", minimum=1)
    _check_bool(proper, "proper")
    U = enumerate_unimodular(bound, proper=proper)
    one = st.integers(0, len(U) - 1).map(lambda i: U[i].clone())
    if depth == 1:
        return one

    def product(ms):
        out = torch.eye(3, dtype=torch.int64)
        for M in ms:
            out = M @ out
        return out

    return st.lists(one, min_size=depth, max_size=depth).map(product)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def rotations(proper: bool = False):
    """Strategy for float64 orthogonal ``(3, 3)`` matrices, Haar-distributed.

    Each draw is :func:`soft_niggli.lattice.random_rotations` on a drawn seed. With ``proper=False``
    reflections (det −1) are drawn too, half of the time.
    """
    st = _st()
    _check_bool(proper, "proper")

    def build(seed: int) -> torch.Tensor:
        return random_rotations(1, generator=torch.Generator().manual_seed(seed), proper=proper)[0]

    return st.integers(0, 2**63 - 1).map(build)


def _realistic():
    st = _st()
    length = st.floats(2.0, 30.0)
    angle = st.floats(30.0, 150.0)

    def build(p):
        a, b, c, al, be, ga = p
        return lattice_from_parameters(a, b, c, al, be, ga).to(torch.float64)

    def plausible(L):
        # A real cell is not flat: its volume is a fair share of a*b*c.
        if not bool(torch.isfinite(L).all()):
            return False
        return abs(float(torch.linalg.det(L))) > 0.2 * float(torch.linalg.vector_norm(L, dim=1).prod())

    cell = st.tuples(length, length, length, angle, angle, angle).map(build).filter(plausible)
    return st.tuples(cell, rotations(), unimodular_matrices(1)).map(
        lambda t: t[2].to(torch.float64) @ t[0] @ t[1].T)


def _pathological():
    st = _st()
    base = _realistic()
    unit = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 3).filter(lambda v: sum(x * x for x in v) > 1e-2)

    def squeeze(args):
        L, v, exponent = args
        n = torch.tensor(v, dtype=torch.float64)
        n = n / n.norm()
        P = torch.eye(3, dtype=torch.float64) - (1 - 10.0**exponent) * torch.outer(n, n)
        return L @ P

    near_singular = st.tuples(base, unit, st.floats(-12.0, -3.0)).map(squeeze)
    skewed = st.tuples(base, st.integers(0, 2**31 - 1), st.integers(10, 40)).map(
        lambda t: random_unimodular((), max_entry=10**5, num_operations=t[2],
                                    generator=torch.Generator().manual_seed(t[1])).to(torch.float64) @ t[0])
    mixed_scale = st.tuples(base, st.tuples(*[st.floats(-6.0, 6.0)] * 3)).map(
        lambda t: t[0] * (10.0 ** torch.tensor(t[1], dtype=torch.float64))[:, None])
    needle = st.tuples(base, st.floats(2.0, 8.0)).map(
        lambda t: t[0] * torch.tensor([10.0 ** t[1], 1.0, 1.0], dtype=torch.float64)[:, None])
    plate = st.tuples(base, st.floats(-8.0, -2.0)).map(
        lambda t: t[0] * torch.tensor([10.0 ** t[1], 1.0, 1.0], dtype=torch.float64)[:, None])
    overall = st.tuples(base, st.floats(-100.0, 100.0)).map(lambda t: t[0] * 10.0 ** t[1])
    rank2 = st.tuples(base, st.integers(-3, 3), st.integers(-3, 3)).map(
        lambda t: torch.stack([t[0][0], t[0][1], t[1] * t[0][0] + t[2] * t[0][1]]))
    return st.one_of(near_singular, skewed, mixed_scale, needle, plate, overall, rank2)


def _any_float():
    st = _st()
    special = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324,
                               1e-300, 1.0, -1.0])
    value = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), special)
    return st.lists(value, min_size=9, max_size=9).map(lambda v: torch.tensor(v, dtype=torch.float64).reshape(3, 3))


# ------------------------------------------------------------------------------ symmetric lattices

_LENGTH_RANGE = (2.0, 15.0)  # Å, edges of the conventional cell
# Every drawn cell keeps at least 3 % (in length ratio) or 2° away from the parameters where its family
# meets a more symmetric one (tetragonal I with c = a is cubic I, with c = a√2 cubic F; orthorhombic C
# with b = a√3 is hexagonal; ...), so an exact cell has exactly AUTOMORPHISM_COUNTS[family]
# automorphisms, and noise up to 1e-3 cannot bring it back near the higher symmetry.
_RATIO_MARGIN = 0.03
_ANGLE_MARGIN = 2.0
_RHOMBOHEDRAL_RANGE = (30.0, 115.0)  # degrees: at 120° the cell is flat
_SQRT2, _SQRT3 = math.sqrt(2.0), math.sqrt(3.0)
_TETRAHEDRAL = math.degrees(math.acos(-1.0 / 3.0))  # rhombohedral cell of the bcc lattice: 109.47°


def _choices(value, valid: tuple[str, ...], name: str) -> tuple[str, ...]:
    """``None`` (all), one name or a sequence of names, checked against ``valid``."""
    if value is None:
        return valid
    if not isinstance(value, (str, tuple, list)) or not all(isinstance(n, str) for n in
                                                              ((value,) if isinstance(value, str) else value)):
        raise TypeError(f"{name}: expected None, a name or a tuple of names (str), got {type(value).__name__} {value!r}")
    names = (value,) if isinstance(value, str) else tuple(value)
    unknown = [n for n in names if n not in valid]
    if not names or unknown:
        raise ValueError(f"{name}: expected None, one of {valid} or a non-empty tuple of them, got {value!r}")
    return names


def _noise_level(noise) -> float:
    expected = "a float in [0, 0.1] (relative size of the perturbation)"
    if not 0.0 <= check_real(noise, "noise", expected) <= 0.1:
        raise ValueError(f"noise: expected {expected}, got {noise!r}")
    return float(noise)


def _outside(draw, st, lo: float, hi: float, bands) -> float:
    """A float in ``[lo, hi]`` outside every open interval of ``bands``."""
    pieces, start = [], lo
    for band_lo, band_hi in sorted(bands):
        if band_lo > start:
            pieces.append((start, min(band_lo, hi)))
        start = max(start, band_hi)
        if start >= hi:
            break
    if start < hi:
        pieces.append((start, hi))
    piece = pieces[draw(st.integers(0, len(pieces) - 1))]
    return draw(st.floats(*piece))


def _length(draw, st, avoid=()) -> float:
    """An edge in ``_LENGTH_RANGE`` at least ``_RATIO_MARGIN`` (relative) away from each of ``avoid``."""
    m = math.exp(_RATIO_MARGIN)
    return _outside(draw, st, *_LENGTH_RANGE, [(x / m, x * m) for x in avoid])


def _cell_rows(family: str, a: float, b: float, c: float, angle: float) -> torch.Tensor:
    """Primitive cell (rows) of ``family`` from conventional edges and the family's free angle (degrees)."""
    if family in ("rhombohedral", "monoclinic"):
        p = [torch.tensor(x, dtype=torch.float64) for x in (a, b, c)]
        right = torch.tensor(90.0, dtype=torch.float64)
        alpha = torch.tensor(angle, dtype=torch.float64)
        if family == "rhombohedral":
            return lattice_from_parameters(p[0], p[0], p[0], alpha, alpha, alpha)
        return lattice_from_parameters(p[0], p[1], p[2], right, alpha, right)
    h = 0.5
    if family == "hexagonal":
        rows = [[a, 0.0, 0.0], [-h * a, h * _SQRT3 * a, 0.0], [0.0, 0.0, c]]
    elif family.endswith("_P"):
        rows = [[a, 0.0, 0.0], [0.0, b, 0.0], [0.0, 0.0, c]]
    elif family.endswith("_I"):
        rows = [[-h * a, h * b, h * c], [h * a, -h * b, h * c], [h * a, h * b, -h * c]]
    elif family.endswith("_F"):
        rows = [[0.0, h * b, h * c], [h * a, 0.0, h * c], [h * a, h * b, 0.0]]
    else:  # orthorhombic_C
        rows = [[h * a, -h * b, 0.0], [h * a, h * b, 0.0], [0.0, 0.0, c]]
    return torch.tensor(rows, dtype=torch.float64)


def _exact_cell(draw, st, family: str) -> torch.Tensor:
    """An exact primitive cell of ``family``, in its standard orientation."""
    a = _length(draw, st)
    b = c = a
    angle = 90.0
    if family == "hexagonal":
        c = _length(draw, st, (a,))  # c = a: an accidental tie of the reduced cell's lengths
    elif family == "tetragonal_P":
        b, c = a, _length(draw, st, (a,))
    elif family == "tetragonal_I":
        b, c = a, _length(draw, st, (a, a * _SQRT2))
    elif family == "rhombohedral":
        special = (60.0, 90.0, _TETRAHEDRAL)
        angle = _outside(draw, st, *_RHOMBOHEDRAL_RANGE, [(x - _ANGLE_MARGIN, x + _ANGLE_MARGIN) for x in special])
    elif family == "orthorhombic_C":
        # Only the centred face matters: a = b makes it tetragonal, b = a√3 (or a/√3) hexagonal.
        b = _length(draw, st, (a, a * _SQRT3, a / _SQRT3))
        c = _length(draw, st)
    elif family.startswith("orthorhombic"):
        b = _length(draw, st, (a,))
        c = _length(draw, st, (a, b))
    elif family == "monoclinic":
        # The a-c net decides: drawn Gauss-reduced (a < c, a·c = -t a² with 0 < t < 1/2) and away from
        # the rectangular (t = 0), centred-rectangular (t = 1/2) and rhombic (a = c) nets.
        c = _length(draw, st, (a,))
        a, c = min(a, c), max(a, c)
        t = draw(st.floats(_RATIO_MARGIN, 0.5 - _RATIO_MARGIN))
        angle = math.degrees(math.acos(-t * a / c))
        b = _length(draw, st)
    return _cell_rows(family, a, b, c, angle)


def _disturb(draw, st, L: torch.Tensor, F: torch.Tensor | None, noise: float, rotation, rebase):
    """Strain ``L`` (and shift ``F``) by a relative amount in {0} ∪ [0, noise], rotate, re-base."""
    eps = draw(st.one_of(st.just(0.0), st.floats(0.0, noise))) if noise > 0 else 0.0
    unit = st.floats(-1.0, 1.0)
    if eps > 0:
        strain = torch.tensor(draw(st.lists(unit, min_size=9, max_size=9)), dtype=torch.float64).reshape(3, 3)
        L = L @ (torch.eye(3, dtype=torch.float64) + eps * strain)
        if F is not None and len(F):
            n = F.shape[0]
            F = F + eps * torch.tensor(draw(st.lists(unit, min_size=3 * n, max_size=3 * n)),
                                       dtype=torch.float64).reshape(n, 3)
    L = L @ draw(rotation).T
    M = draw(rebase) if rebase is not None else None
    if F is None:
        return (L if M is None else M.to(torch.float64) @ L), None
    if M is not None:
        L, F = apply_basis_change(L, F, M)
    return L, wrap(F)


def symmetric_lattices(family: str | Sequence[str] | None = None, noise: float = 1e-3, rebase: bool = True):
    """Strategy for float64 ``(3, 3)`` lattices (rows are lattice vectors) of symmetric Bravais families.

    Each draw picks a family of :data:`SYMMETRIC_FAMILIES` (``family``: one name, a tuple of names, or
    ``None`` for all), builds its primitive cell from conventional edges of 2–15 Å (and the free angle:
    rhombohedral α in 30–115°, monoclinic β in 90–120°), kept 3 % (2°) away from the parameters of any
    more symmetric family, so an exact cell has exactly :data:`AUTOMORPHISM_COUNTS` ``[family]``
    lattice automorphisms (48 for cubic, 24 hexagonal, 16 tetragonal, 12 rhombohedral, 8 orthorhombic,
    4 monoclinic), and from accidental ties of edge lengths (hexagonal c = a: two reduced forms that no
    automorphism relates, which within the reducer's tolerance of the tie may come out either way, a
    documented limit of the losses). Then:

    * a relative strain ``L (I + ε E)``, ``|E_ij| <= 1``, with ``ε`` either exactly 0 or in
      ``[0, noise]`` (``noise=0`` gives exact cells only; shrinking goes to the exact cell);
    * a random rotation or reflection (:func:`rotations`);
    * with ``rebase``, a unimodular ``M`` with entries in {-1, 0, 1}: ``M @ L``.

    Example::

        @given(symmetric_lattices(("cubic_F", "hexagonal"), noise=0.0))
        def test_reduction_keeps_volume(L): ...
    """
    st = _st()
    families = _choices(family, SYMMETRIC_FAMILIES, "family")
    noise = _noise_level(noise)
    _check_bool(rebase, "rebase")
    rotation = rotations()
    rebasing = unimodular_matrices(1) if rebase else None

    @st.composite
    def draw_lattice(draw):
        cell = _exact_cell(draw, st, draw(st.sampled_from(families)))
        return _disturb(draw, st, cell, None, noise, rotation, rebasing)[0]

    return draw_lattice()


def lattices(kind: str = "realistic"):
    """Strategy for float64 ``(3, 3)`` lattices (rows are lattice vectors).

    Kinds:
        ``"realistic"``: cells like real crystals (lengths 2–30 Å, angles 30–150°, not flat), randomly
        rotated and re-based by a unimodular matrix with entries in {-1, 0, 1}.
        ``"pathological"``: what an untrained model emits: near-singular (one direction squeezed by
        1e-3 to 1e-12), highly skewed (unimodular transforms with entries up to 1e5), mixed scales
        (rows scaled by 1e-6 to 1e6), needles, plates, overall scales from 1e-100 to 1e100, and
        exactly rank-2 cells.
        ``"any_float"``: nine arbitrary float64 values, NaN, inf, zeros, huge and subnormal included.
        ``"symmetric"``: :func:`symmetric_lattices` with its defaults (all families, exact or perturbed
        by up to 1e-3, rotated and re-based).
    """
    builders = {"realistic": _realistic, "pathological": _pathological, "any_float": _any_float,
                "symmetric": symmetric_lattices}
    if not isinstance(kind, str):
        raise TypeError(f"kind: expected one of {LATTICE_KINDS} (a str), got {type(kind).__name__} {kind!r}")
    if kind not in builders:
        raise ValueError(f"kind: expected one of {LATTICE_KINDS}, got {kind!r}")
    return builders[kind]()


def crystals(max_atoms: int = 8, max_crystals: int = 3, lattice_kind: str = "realistic"):
    """Strategy for a :class:`CrystalBatch` of 1 to ``max_crystals`` crystals with 1 to ``max_atoms`` atoms.

    Coordinates are uniform in [0, 1), species are atomic numbers 1–94, all float64; lattices are
    drawn by ``lattices(lattice_kind)``. With ``lattice_kind="symmetric"`` each crystal is instead one
    of :func:`symmetric_crystals` with at most ``max_atoms`` atoms (a prototype such as rock-salt or
    perovskite, or random atoms on a symmetric lattice), exact or perturbed by up to 1e-3, rotated and
    re-based.
    """
    st = _st()
    check_int(max_atoms, "max_atoms", minimum=1)
    check_int(max_crystals, "max_crystals", minimum=1)
    if lattice_kind == "symmetric":
        return symmetric_crystals(max_atoms=max_atoms, max_crystals=max_crystals)
    coord = st.floats(0.0, 1.0, exclude_max=True)
    atom = st.tuples(st.tuples(coord, coord, coord), st.integers(1, 94))
    crystal = st.tuples(lattices(lattice_kind), st.lists(atom, min_size=1, max_size=max_atoms))

    def build(items):
        lattice = torch.stack([L for L, _ in items])
        frac = torch.tensor([xyz for _, atoms in items for xyz, _ in atoms], dtype=torch.float64)
        species = torch.tensor([z for _, atoms in items for _, z in atoms], dtype=torch.int64)
        num_atoms = torch.tensor([len(atoms) for _, atoms in items], dtype=torch.int64)
        return CrystalBatch(lattice, frac, num_atoms, species)

    return st.lists(crystal, min_size=1, max_size=max_crystals).map(build)


# ------------------------------------------------------------------------------ symmetric crystals

_T1, _T2 = 1.0 / 3.0, 2.0 / 3.0
_ORIGIN = (0.0, 0.0, 0.0)
_CENTRE = (0.5, 0.5, 0.5)
_FACES = ((0.5, 0.5, 0.0), (0.5, 0.0, 0.5), (0.0, 0.5, 0.5))
_EDGES = ((0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.5))
# name: (lattice family, sites as (kind, fractional coordinates in the family's primitive cell of
# _cell_rows)); site kind k gets the k-th of distinct drawn elements.
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
    rotation = rotations()
    rebasing = unimodular_matrices(1) if rebase else None
    element = st.integers(1, 94)

    @st.composite
    def draw_crystal(draw):
        name = draw(st.sampled_from(prototypes))
        if name == "generic":
            cell = _exact_cell(draw, st, draw(st.sampled_from(SYMMETRIC_FAMILIES)))
            coord = st.floats(0.0, 1.0, exclude_max=True)
            n = draw(st.integers(1, max_atoms))
            frac = torch.tensor(draw(st.lists(st.tuples(coord, coord, coord), min_size=n, max_size=n)),
                                dtype=torch.float64)
            species = torch.tensor(draw(st.lists(element, min_size=n, max_size=n)), dtype=torch.int64)
        else:
            family, sites = _PROTOTYPE_SITES[name]
            cell = _exact_cell(draw, st, family)
            kinds = 1 + max(k for k, _ in sites)
            elements = draw(st.lists(element, min_size=kinds, max_size=kinds, unique=True))
            frac = torch.tensor([x for _, x in sites], dtype=torch.float64)
            species = torch.tensor([elements[k] for k, _ in sites], dtype=torch.int64)
        lattice, frac = _disturb(draw, st, cell, frac, noise, rotation, rebasing)
        return lattice, frac, species

    return draw_crystal()


def _to_batch(items) -> CrystalBatch:
    """:class:`CrystalBatch` from ``(lattice (3, 3), frac (n, 3), species (n,))`` triples."""
    return CrystalBatch(torch.stack([L for L, _, _ in items]), torch.cat([F for _, F, _ in items]),
                        torch.tensor([len(F) for _, F, _ in items], dtype=torch.int64),
                        torch.cat([Z for _, _, Z in items]))


def symmetric_crystals(prototype: str | Sequence[str] | None = None, noise: float = 1e-3, rebase: bool = True,
                       max_crystals: int = 1, max_atoms: int = 8):
    """Strategy for a :class:`CrystalBatch` of 1 to ``max_crystals`` symmetric crystals, float64, with species.

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

    Edges (and c/a) are random as in :func:`symmetric_lattices`; distinct site kinds get distinct
    random elements (atomic numbers 1–94). Then the cell is strained and every fractional coordinate
    shifted by a relative amount either exactly 0 or in ``[0, noise]`` (``noise=0``: exact crystals),
    rotated, and with ``rebase`` re-expressed in a basis ``M @ L`` (``M`` unimodular, entries in
    {-1, 0, 1}); fractional coordinates end in [0, 1).

    Example::

        @given(symmetric_crystals(("rocksalt", "perovskite"), noise=0.0))
        def test_my_loss_is_zero_on_itself(batch): ...
    """
    st = _st()
    check_int(max_crystals, "max_crystals", minimum=1)
    check_int(max_atoms, "max_atoms", minimum=1)
    _check_bool(rebase, "rebase")
    names = _choices(prototype, SYMMETRIC_PROTOTYPES, "prototype")
    fitting = tuple(n for n in names if n == "generic" or len(_PROTOTYPE_SITES[n][1]) <= max_atoms)
    if prototype is not None and fitting != names:
        too_big = [n for n in names if n not in fitting]
        raise ValueError(f"prototype: expected prototypes with at most max_atoms = {max_atoms} atoms, got {too_big}")
    crystal = _symmetric_crystal(st, fitting, _noise_level(noise), rebase, max_atoms)
    return st.lists(crystal, min_size=1, max_size=max_crystals).map(_to_batch)


# ------------------------------------------------------------------------------ AFLOW prototypes


@functools.lru_cache(maxsize=1)
def _aflow_structures() -> tuple:
    # Parsing the bundled file and importing pymatgen take seconds: once per process.
    try:
        import pymatgen.core  # noqa: F401
    except ImportError as err:
        raise ImportError("aflow_crystals and real_crystals need pymatgen, which bundles the AFLOW "
                          "prototypes: pip install pymatgen") from err
    from .datasets import load_dataset

    return tuple(load_dataset("aflow", split="all"))


def _aflow_pool(max_atoms: int) -> list:
    check_int(max_atoms, "max_atoms", minimum=1)
    pool = [s for s in _aflow_structures() if len(s) <= max_atoms]
    if not pool:
        raise ValueError(f"max_atoms: no AFLOW prototype has at most {max_atoms} atoms")
    return pool


def aflow_crystals(limit: int | None = None, max_atoms: int = 20) -> CrystalBatch:
    """The AFLOW prototypes bundled with pymatgen as one float64 :class:`CrystalBatch` (not a strategy).

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


def real_crystals(max_crystals: int = 1, max_atoms: int = 20, rebase: bool = True):
    """Strategy for a :class:`CrystalBatch` of 1 to ``max_crystals`` real crystals: the AFLOW prototypes.

    Crystals are drawn from :func:`aflow_crystals` ``(max_atoms=max_atoms)``, each rotated (or
    reflected) at random and, with ``rebase``, re-expressed in a basis ``M @ L`` with ``M``
    unimodular, entries in {-1, 0, 1}; fractional coordinates end in [0, 1). Needs pymatgen, imported
    at the first draw (ImportError then if it is missing).
    """
    st = _st()
    check_int(max_crystals, "max_crystals", minimum=1)
    check_int(max_atoms, "max_atoms", minimum=1)
    _check_bool(rebase, "rebase")
    rotation = rotations()
    rebasing = unimodular_matrices(1) if rebase else None

    @st.composite
    def draw_crystal(draw):
        pool = _aflow_pool(max_atoms)
        s = pool[draw(st.integers(0, len(pool) - 1))]
        L = torch.tensor(s.lattice.matrix, dtype=torch.float64)
        F = torch.tensor(s.frac_coords, dtype=torch.float64).reshape(-1, 3)
        Z = torch.tensor(s.atomic_numbers, dtype=torch.int64)
        L, F = _disturb(draw, st, L, F, 0.0, rotation, rebasing)
        return L, F, Z

    return st.lists(draw_crystal(), min_size=1, max_size=max_crystals).map(_to_batch)



def _leaves(value, path: str = "output") -> list[tuple[str, object]]:
    """``(path, leaf)`` pairs of an output: tensors (numbers become float64 or int64 tensors) and, compared
    by equality, strings, ``None`` and enum members; tuples, lists, dicts and objects are walked."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if value is None or isinstance(value, (str, enum.Enum)):
        return [(path, value)]
    if isinstance(value, bool):
        return [(path, torch.tensor(value))]
    if isinstance(value, int):
        return [(path, torch.tensor(value, dtype=torch.int64))]
    if isinstance(value, float):
        return [(path, torch.tensor(value, dtype=torch.float64))]
    if isinstance(value, dict):
        return [leaf for k in sorted(value, key=str) for leaf in _leaves(value[k], f"{path}[{k!r}]")]
    if isinstance(value, (tuple, list)):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{path}[{i}]")]
    if hasattr(value, "__dict__"):
        return [leaf for k in sorted(vars(value)) for leaf in _leaves(vars(value)[k], f"{path}.{k}")]
    raise TypeError(f"assert_gl3z_invariant: cannot compare outputs of type {type(value).__name__} (at {path})")


_DEFAULT_TOLERANCES = {torch.float64: (1e-9, 1e-7), torch.float32: (1e-4, 1e-3)}


def _broken_crystals(ref: torch.Tensor, out: torch.Tensor, B: int, atol: float, rtol: float) -> list[int]:
    """Crystals whose entries differ, for outputs with one row per crystal (leading dimension ``B``)."""
    if ref.shape != out.shape or ref.dim() == 0 or ref.shape[0] != B or ref.device.type == "meta":
        return []
    if ref.is_floating_point() or ref.is_complex():
        same = torch.isclose(out, ref, atol=atol, rtol=rtol, equal_nan=True)
    else:
        same = out == ref
    return (~same.reshape(B, -1).all(dim=1)).nonzero().flatten().tolist()


def assert_gl3z_invariant(fn: Callable[[CrystalBatch], object], batch: CrystalBatch, *, trials: int = 3,
                          max_entry: int = 2, atol: float | None = None, rtol: float | None = None,
                          seed: int = 0) -> None:
    """Assert that ``fn(batch)`` does not change when every crystal is re-expressed in another basis.

    Draws ``trials`` sets of random unimodular matrices (one per crystal, entries bounded by
    ``max_entry``), applies them with :meth:`CrystalBatch.apply_basis_change` and compares ``fn``'s
    outputs (tensors, numbers, or tuples/lists/dicts/objects of them; strings and ``None`` by equality)
    with :func:`torch.testing.assert_close` (``equal_nan=True``; dtype and device must agree too).
    Tolerances default by the batch's dtype (float64: atol 1e-9, rtol 1e-7; float32 and others: 1e-4,
    1e-3). On the meta device only shapes, dtypes and devices are compared (there are no values).

    Raises:
        AssertionError: naming the trial, the output, the crystals that broke it and their basis changes,
            with :func:`torch.testing.assert_close`'s report (largest differences and where).
        TypeError: ``fn`` not callable, ``batch`` not a :class:`CrystalBatch`, or a wrongly typed option.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable taking a CrystalBatch, got {type(fn).__name__}")
    if not isinstance(batch, CrystalBatch):
        raise TypeError(f"batch: expected a CrystalBatch, got {type(batch).__name__}")
    trials = check_int(trials, "trials", minimum=1)
    max_entry = check_int(max_entry, "max_entry", minimum=1)
    seed = check_int(seed, "seed")
    default_atol, default_rtol = _DEFAULT_TOLERANCES.get(batch.dtype, (1e-4, 1e-3))
    atol = default_atol if atol is None else check_real(atol, "atol", "a float >= 0 or None")
    rtol = default_rtol if rtol is None else check_real(rtol, "rtol", "a float >= 0 or None")
    reference = _leaves(fn(batch))
    generator = torch.Generator().manual_seed(seed)
    B = batch.num_crystals
    for trial in range(trials):
        M = random_unimodular((B,), max_entry=max_entry, generator=generator)
        moved = _leaves(fn(batch.apply_basis_change(M.to(batch.device))))
        if [p for p, _ in moved] != [p for p, _ in reference]:
            raise AssertionError(f"trial {trial}: fn returned outputs {[p for p, _ in moved]}, "
                                 f"expected {[p for p, _ in reference]}")
        for (path, ref), (_, out) in zip(reference, moved):
            if not isinstance(ref, torch.Tensor) or not isinstance(out, torch.Tensor):
                if not (type(ref) is type(out) and ref == out):
                    raise AssertionError(f"not GL(3,Z)-invariant: trial {trial}, {path}: {out!r} instead of "
                                         f"{ref!r} under basis changes {M.tolist()}")
                continue
            ref, out = ref.detach(), out.detach()
            broken = _broken_crystals(ref, out, B, atol, rtol)
            where = (f"crystals {broken} (basis changes {M[broken].tolist()})" if broken
                     else f"basis changes {M.tolist()}")

            def message(report: str, trial=trial, path=path, where=where) -> str:
                return f"not GL(3,Z)-invariant: trial {trial}, {path}, {where}:\n{report}"

            torch.testing.assert_close(out, ref, atol=atol, rtol=rtol, equal_nan=True, msg=message)
