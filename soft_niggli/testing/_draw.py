"""Drawing helpers shared by the strategies, the near-face cells and the prototypes (private).

This module sits below every other module of :mod:`soft_niggli.testing` and imports none of them: the
Bravais family constants, the argument checks, the group-element draws (rotations, re-basings), the
exact symmetric cells and their perturbation, and the assembly of a :class:`CrystalBatch`.

Row convention: lattices are float64 ``(3, 3)`` tensors whose rows are the lattice vectors; unimodular
matrices act as ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Speed: a strategy is drawn hundreds of times per test, on machines that may be busy. Everything here
is plain Python arithmetic on 3×3 matrices turned into a tensor once, with no LAPACK call: a 3×3 QR
through MKL with two OpenMP threads takes about 8 ms on a loaded two-core machine (30 µs idle), which
made draws slow enough to fail hypothesis's health check.

The module is private (outside ``soft_niggli.testing.__all__``); its shared helpers carry plain names
because the sibling modules import them.
"""

from __future__ import annotations

import itertools
import math
import random

import torch

from .._checks import check_real
from ..crystal import CrystalBatch
from ..lattice import apply_basis_change, wrap
from ..unimodular import enumerate_unimodular

#: Bravais families drawn by :func:`~soft_niggli.testing.symmetric_lattices` (centring after the
#: underscore: P primitive, I body-centred, F face-centred, C base-centred).
SYMMETRIC_FAMILIES = ("cubic_P", "cubic_I", "cubic_F", "hexagonal", "tetragonal_P", "tetragonal_I", "rhombohedral",
                      "orthorhombic_P", "orthorhombic_C", "orthorhombic_I", "orthorhombic_F", "monoclinic")

#: Number of lattice automorphisms (the order of the lattice's point group, ±identity included) of an
#: exact cell of each family: what :func:`soft_niggli.unimodular.lattice_automorphisms` finds on its
#: Niggli-reduced basis.
AUTOMORPHISM_COUNTS = {"cubic_P": 48, "cubic_I": 48, "cubic_F": 48, "hexagonal": 24, "tetragonal_P": 16,
                       "tetragonal_I": 16, "rhombohedral": 12, "orthorhombic_P": 8, "orthorhombic_C": 8,
                       "orthorhombic_I": 8, "orthorhombic_F": 8, "monoclinic": 4}


def hypothesis_strategies():
    """``hypothesis.strategies``, or an ``ImportError`` naming the extra that installs it."""
    try:
        from hypothesis import strategies
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("soft_niggli.testing strategies need hypothesis: pip install 'soft-niggli[test]'") from err
    return strategies


def check_bool(value, name: str) -> bool:
    """``value`` when it is a bool, else ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} {value!r}")
    return value


def choices(value, valid: tuple[str, ...], name: str) -> tuple[str, ...]:
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


def noise_level(noise) -> float:
    """``noise`` checked to be a real in [0, 0.1], as a float."""
    expected = "a float in [0, 0.1] (relative size of the perturbation)"
    if not 0.0 <= check_real(noise, "noise", expected) <= 0.1:
        raise ValueError(f"noise: expected {expected}, got {noise!r}")
    return float(noise)


def float_tensor(rows) -> torch.Tensor:
    """Nested Python floats as a float64 tensor."""
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------ group elements


def _rotation_matrix(seed: int, proper: bool) -> torch.Tensor:
    """Haar-random element of SO(3) (``proper``) or O(3) from ``seed``, as a float64 ``(3, 3)`` tensor.

    A uniform unit quaternion gives a uniform rotation; O(3) = SO(3) × {I, −I} in three dimensions, so
    negating half of the draws gives a uniform element of O(3), reflections included.
    """
    rng = random.Random(seed)
    w, x, y, z = (rng.gauss(0.0, 1.0) for _ in range(4))
    n = math.sqrt(w * w + x * x + y * y + z * z) or 1.0
    w, x, y, z = w / n, x / n, y / n, z / n
    R = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    if not proper and rng.random() < 0.5:
        R = [[-v for v in row] for row in R]
    return float_tensor(R)


def rotation_strategy(proper: bool = False):
    """Strategy for Haar-random float64 orthogonal ``(3, 3)`` matrices (see :func:`_rotation_matrix`)."""
    st = hypothesis_strategies()
    return st.integers(0, 2**63 - 1).map(lambda seed: _rotation_matrix(seed, proper))


def unimodular_strategy(bound: int = 1, proper: bool = False, depth: int = 1):
    """Strategy for int64 unimodular ``(3, 3)``: ``depth`` draws from all those with entries in
    ``[-bound, bound]``, multiplied; shrinks towards the identity (the enumeration's first entry)."""
    st = hypothesis_strategies()
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


# The 48 signed permutations, the identity first (so that re-basings shrink to it).
_SIGNED_PERMUTATIONS = tuple(
    tuple(tuple(s[r] if c == p[r] else 0 for c in range(3)) for r in range(3))
    for p in itertools.permutations(range(3)) for s in itertools.product((1, -1), repeat=3))


def row_operations(M: list, count: int, rng: random.Random, max_entry: int) -> list:
    """``M`` (3 lists of 3 Python ints) after ``count`` random elementary row operations (row i ±= row j),
    each skipped where it would push an entry past ``max_entry``; ``M`` is changed in place and returned."""
    for _ in range(count):
        i = rng.randrange(3)
        j = (i + rng.randrange(1, 3)) % 3
        sign = rng.choice((1, -1))
        row = [M[i][c] + sign * M[j][c] for c in range(3)]
        if max(abs(v) for v in row) <= max_entry:
            M[i] = row
    return M


def rebasings(max_entry: int, max_operations: int = 24):
    """Strategy for int64 unimodular ``(3, 3)`` with entries in ``[-max_entry, max_entry]``: a signed
    permutation times up to ``max_operations`` random elementary row operations (row i += ±row j), each
    skipped where it would push an entry past ``max_entry``. Integer arithmetic in Python: exact, fast,
    and shrinking towards the identity (no operations, the first permutation)."""
    st = hypothesis_strategies()

    def build(args) -> torch.Tensor:
        n, seed, k = args
        M = row_operations([list(row) for row in _SIGNED_PERMUTATIONS[k]], n, random.Random(seed), max_entry)
        return torch.tensor(M, dtype=torch.int64)

    # sampled_from: as many long products as short ones (integers() favours small counts).
    return st.tuples(st.sampled_from(range(max_operations + 1)), st.integers(0, 2**32 - 1),
                     st.integers(0, len(_SIGNED_PERMUTATIONS) - 1)).map(build)


# ------------------------------------------------------------------------------ cells from parameters


def rows_from_metric(A: float, B: float, C: float, xi: float, eta: float, zeta: float) -> list[list[float]] | None:
    """Rows ``a, b, c`` (lower triangular, ``a`` along x, ``b`` in the xy plane) of the cell with metric
    G6 ``(A, B, C, ξ, η, ζ)``: ``A = a·a``, ..., ``ξ = 2 b·c``, ``η = 2 a·c``, ``ζ = 2 a·b``. A Cholesky
    factor written out; ``None`` when the metric is not positive definite."""
    if not A > 0:
        return None
    a = math.sqrt(A)
    bx = zeta / (2 * a)
    by2 = B - bx * bx
    if not by2 > 0:
        return None
    by = math.sqrt(by2)
    cx = eta / (2 * a)
    cy = (xi / 2 - bx * cx) / by
    cz2 = C - cx * cx - cy * cy
    if not cz2 > 0:
        return None
    return [[a, 0.0, 0.0], [bx, by, 0.0], [cx, cy, math.sqrt(cz2)]]


def _cos_degrees(x: float) -> float:
    return 0.0 if x == 90.0 else math.cos(math.radians(x))  # a right angle exactly, not 6e-17


def rows_from_parameters(a: float, b: float, c: float, alpha: float, beta: float, gamma: float):
    """Rows of the cell with edges ``a, b, c`` and angles in degrees, oriented as
    :func:`soft_niggli.lattice.lattice_from_parameters` orients it; ``None`` for impossible angles."""
    ca, cb, cg = (_cos_degrees(x) for x in (alpha, beta, gamma))
    return rows_from_metric(a * a, b * b, c * c, 2 * b * c * ca, 2 * a * c * cb, 2 * a * b * cg)


# ------------------------------------------------------------------------------ symmetric cells

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
    if family == "rhombohedral":
        return float_tensor(rows_from_parameters(a, a, a, angle, angle, angle))
    if family == "monoclinic":
        return float_tensor(rows_from_parameters(a, b, c, 90.0, angle, 90.0))
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
    return float_tensor(rows)


def exact_cell(draw, st, family: str) -> torch.Tensor:
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


def disturb(draw, st, L: torch.Tensor, F: torch.Tensor | None, noise: float, rotation, rebase):
    """Strain ``L`` (and shift ``F``) by a relative amount in {0} ∪ [0, noise], rotate, re-base."""
    eps = draw(st.one_of(st.just(0.0), st.floats(0.0, noise))) if noise > 0 else 0.0
    unit = st.floats(-1.0, 1.0)
    if eps > 0:
        strain = float_tensor(draw(st.lists(unit, min_size=9, max_size=9))).reshape(3, 3)
        L = L @ (torch.eye(3, dtype=torch.float64) + eps * strain)
        if F is not None and len(F):
            n = F.shape[0]
            F = F + eps * float_tensor(draw(st.lists(unit, min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    L = L @ draw(rotation).T
    M = draw(rebase) if rebase is not None else None
    if F is None:
        return (L if M is None else M.to(torch.float64) @ L), None
    if M is not None:
        L, F = apply_basis_change(L, F, M)
    return L, wrap(F)


# ------------------------------------------------------------------------------ batches


def to_batch(items) -> CrystalBatch:
    """:class:`CrystalBatch` from ``(lattice (3, 3), frac (n, 3), species (n,))`` triples."""
    return CrystalBatch(torch.stack([L for L, _, _ in items]), torch.cat([F for _, F, _ in items]),
                        torch.tensor([len(F) for _, F, _ in items], dtype=torch.int64),
                        torch.cat([Z for _, _, Z in items]))


def random_atoms(lattice_strategy, max_atoms: int, max_crystals: int):
    """Strategy for a :class:`CrystalBatch` of 1 to ``max_crystals`` crystals: a lattice of
    ``lattice_strategy`` and 1 to ``max_atoms`` atoms, coordinates uniform in [0, 1), species 1–94."""
    st = hypothesis_strategies()
    coord = st.floats(0.0, 1.0, exclude_max=True)
    atom = st.tuples(st.tuples(coord, coord, coord), st.integers(1, 94))
    crystal = st.tuples(lattice_strategy, st.lists(atom, min_size=1, max_size=max_atoms))

    def build(items):
        lattice = torch.stack([L for L, _ in items])
        frac = float_tensor([xyz for _, atoms in items for xyz, _ in atoms])
        species = torch.tensor([z for _, atoms in items for _, z in atoms], dtype=torch.int64)
        num_atoms = torch.tensor([len(atoms) for _, atoms in items], dtype=torch.int64)
        return CrystalBatch(lattice, frac, num_atoms, species)

    return st.lists(crystal, min_size=1, max_size=max_crystals).map(build)
