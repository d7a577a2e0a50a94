"""Hypothesis strategies for unimodular matrices, rotations, lattices and crystals with random atoms.

Row convention: every lattice drawn here is a float64 ``(3, 3)`` tensor whose rows are the lattice
vectors; unimodular matrices act as ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Everything drawn is a torch tensor (or a :class:`~soft_niggli.CrystalBatch` of them), never a NumPy
array. Wrong argument types raise ``TypeError``, wrong values (unknown names, out of range)
``ValueError``. A draw takes well under a millisecond of arithmetic (no LAPACK call: see
:mod:`soft_niggli.testing._draw`), so hypothesis's default settings hold on a busy machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from .._checks import check_int
from ._draw import (AUTOMORPHISM_COUNTS, SYMMETRIC_FAMILIES, check_bool, choices, disturb, exact_cell, float_tensor,
                    hypothesis_strategies, noise_level, random_atoms, rotation_strategy, row_operations,
                    rows_from_parameters, unimodular_strategy)
from .near_face import near_face_lattices
from .prototypes import symmetric_crystals

__all__ = ["LATTICE_KINDS", "SYMMETRIC_FAMILIES", "AUTOMORPHISM_COUNTS", "unimodular_matrices", "rotations",
           "lattices", "symmetric_lattices", "crystals"]

LATTICE_KINDS = ("realistic", "pathological", "any_float", "symmetric", "near_face")


def unimodular_matrices(bound: int = 1, proper: bool = False, depth: int = 1):
    """Strategy for int64 ``(3, 3)`` unimodular matrices.

    With ``depth=1`` it draws from all matrices with entries in ``[-bound, bound]`` (``bound`` 1 or 2);
    ``depth > 1`` multiplies that many such draws (larger entries). Shrinks towards the identity.
    """
    if check_int(bound, "bound") not in (1, 2):
        raise ValueError(f"bound: expected 1 or 2, got {bound!r}")
    check_int(depth, "depth", minimum=1)
    check_bool(proper, "proper")
    return unimodular_strategy(bound, proper, depth)


def rotations(proper: bool = False):
    """Strategy for float64 orthogonal ``(3, 3)`` matrices, Haar-distributed.

    Each draw is the rotation of a uniformly random unit quaternion (from a drawn seed); with
    ``proper=False`` it is negated half of the time, which gives reflections (det −1) and a uniform draw
    from O(3) (= SO(3) × {I, −I} in three dimensions).
    """
    check_bool(proper, "proper")
    return rotation_strategy(proper)


def _realistic():
    st = hypothesis_strategies()
    length = st.floats(2.0, 30.0)
    angle = st.floats(30.0, 150.0)

    def plausible(rows) -> bool:
        # A real cell is not flat: its volume (rows are lower triangular) is a fair share of a*b*c.
        if rows is None:
            return False
        a, b, c = (math.hypot(*row) for row in rows)
        return rows[0][0] * rows[1][1] * rows[2][2] > 0.2 * a * b * c

    cell = st.tuples(length, length, length, angle, angle, angle).map(lambda p: rows_from_parameters(*p))
    cell = cell.filter(plausible).map(float_tensor)
    return st.tuples(cell, rotation_strategy(), unimodular_strategy(1)).map(
        lambda t: t[2].to(torch.float64) @ t[0] @ t[1].T)


def _skew(seed: int, num_operations: int, max_entry: int = 10**5) -> torch.Tensor:
    """A unimodular int64 ``(3, 3)``: ``num_operations`` random elementary row operations (row i ±= row j,
    skipped past ``max_entry``), in Python integers."""
    M = row_operations([[int(i == j) for j in range(3)] for i in range(3)], num_operations, random.Random(seed),
                        max_entry)
    return torch.tensor(M, dtype=torch.int64)


def _pathological():
    st = hypothesis_strategies()
    base = _realistic()
    unit = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 3).filter(lambda v: sum(x * x for x in v) > 1e-2)

    def squeeze(args):
        L, v, exponent = args
        n = float_tensor(v)
        n = n / n.norm()
        P = torch.eye(3, dtype=torch.float64) - (1 - 10.0**exponent) * torch.outer(n, n)
        return L @ P

    near_singular = st.tuples(base, unit, st.floats(-12.0, -3.0)).map(squeeze)
    skewed = st.tuples(base, st.integers(0, 2**31 - 1), st.integers(10, 40)).map(
        lambda t: _skew(t[1], t[2]).to(torch.float64) @ t[0])
    mixed_scale = st.tuples(base, st.tuples(*[st.floats(-6.0, 6.0)] * 3)).map(
        lambda t: t[0] * (10.0 ** float_tensor(t[1]))[:, None])
    needle = st.tuples(base, st.floats(2.0, 8.0)).map(
        lambda t: t[0] * float_tensor([10.0 ** t[1], 1.0, 1.0])[:, None])
    plate = st.tuples(base, st.floats(-8.0, -2.0)).map(
        lambda t: t[0] * float_tensor([10.0 ** t[1], 1.0, 1.0])[:, None])
    overall = st.tuples(base, st.floats(-100.0, 100.0)).map(lambda t: t[0] * 10.0 ** t[1])
    rank2 = st.tuples(base, st.integers(-3, 3), st.integers(-3, 3)).map(
        lambda t: torch.stack([t[0][0], t[0][1], t[1] * t[0][0] + t[2] * t[0][1]]))
    return st.one_of(near_singular, skewed, mixed_scale, needle, plate, overall, rank2)


def _any_float():
    st = hypothesis_strategies()
    special = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e308, -1e308, 5e-324,
                               1e-300, 1.0, -1.0])
    value = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64), special)
    return st.lists(value, min_size=9, max_size=9).map(lambda v: float_tensor(v).reshape(3, 3))


def symmetric_lattices(family: str | Sequence[str] | None = None, noise: float = 1e-3, rebase: bool = True):
    """Strategy for float64 ``(3, 3)`` lattices (rows are lattice vectors) of symmetric Bravais families.

    Each draw picks a family of :data:`SYMMETRIC_FAMILIES` (``family``: one name, a tuple of names, or
    ``None`` for all), builds its primitive cell from conventional edges of 2–15 Å (and the free angle:
    rhombohedral α in 30–115°, monoclinic β in 90–120°), kept 3 % (2°) away from the parameters of any
    more symmetric family, so an exact cell has exactly :data:`AUTOMORPHISM_COUNTS` ``[family]``
    lattice automorphisms (48 for cubic, 24 hexagonal, 16 tetragonal, 12 rhombohedral, 8 orthorhombic,
    4 monoclinic), and from accidental ties of edge lengths (hexagonal c = a: two reduced forms that no
    automorphism relates, which within the reducer's tolerance of the tie may come out either way; draw
    those on purpose with :func:`~soft_niggli.testing.near_face_lattices`). Then:

    * a relative strain ``L (I + ε E)``, ``|E_ij| <= 1``, with ``ε`` either exactly 0 or in
      ``[0, noise]`` (``noise=0`` gives exact cells only; shrinking goes to the exact cell);
    * a random rotation or reflection (:func:`rotations`);
    * with ``rebase``, a unimodular ``M`` with entries in {-1, 0, 1}: ``M @ L``.

    Example::

        @given(symmetric_lattices(("cubic_F", "hexagonal"), noise=0.0))
        def test_reduction_keeps_volume(L): ...
    """
    st = hypothesis_strategies()
    families = choices(family, SYMMETRIC_FAMILIES, "family")
    noise = noise_level(noise)
    check_bool(rebase, "rebase")
    rotation = rotation_strategy()
    rebasing = unimodular_strategy(1) if rebase else None

    @st.composite
    def draw_lattice(draw):
        cell = exact_cell(draw, st, draw(st.sampled_from(families)))
        return disturb(draw, st, cell, None, noise, rotation, rebasing)[0]

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
        ``"near_face"``: :func:`~soft_niggli.testing.near_face_lattices` with its defaults (every face,
        0.1, 1 and 10 times the default ``rel_tol`` away from it, re-based with entries up to 5).
    """
    builders = {"realistic": _realistic, "pathological": _pathological, "any_float": _any_float,
                "symmetric": symmetric_lattices, "near_face": near_face_lattices}
    if not isinstance(kind, str):
        raise TypeError(f"kind: expected one of {LATTICE_KINDS} (a str), got {type(kind).__name__} {kind!r}")
    if kind not in builders:
        raise ValueError(f"kind: expected one of {LATTICE_KINDS}, got {kind!r}")
    return builders[kind]()


def crystals(max_atoms: int = 8, max_crystals: int = 3, lattice_kind: str = "realistic"):
    """Strategy for a :class:`~soft_niggli.CrystalBatch` of 1 to ``max_crystals`` crystals with 1 to
    ``max_atoms`` atoms.

    Coordinates are uniform in [0, 1), species are atomic numbers 1–94, all float64; lattices are
    drawn by ``lattices(lattice_kind)``. With ``lattice_kind="symmetric"`` each crystal is instead one
    of :func:`~soft_niggli.testing.symmetric_crystals` with at most ``max_atoms`` atoms (a prototype
    such as rock-salt or perovskite, or random atoms on a symmetric lattice), exact or perturbed by up
    to 1e-3, rotated and re-based.
    """
    check_int(max_atoms, "max_atoms", minimum=1)
    check_int(max_crystals, "max_crystals", minimum=1)
    if lattice_kind == "symmetric":
        return symmetric_crystals(max_atoms=max_atoms, max_crystals=max_crystals)
    return random_atoms(lattices(lattice_kind), max_atoms, max_crystals)
