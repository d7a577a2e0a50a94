"""Cells near the faces of the Niggli cone: what relaxed structures without imposed symmetry look like.

A cell on a face of the Niggli cone (two equal lengths, a right angle, 60° or 120° between equal
edges) has several bases that pass the Niggli conditions; on a symmetric cell lattice automorphisms
relate them. A cell a little *off* the face, within the reducer's ``rel_tol``, is harder: several
reduced forms pass the conditions within tolerance and no automorphism relates them, so which one a
reducer returns depends on the input basis, and just outside the band one of them leaves with a jump.
Relaxed structures (machine-learned potentials, noisy DFT) put their cells there. The strategies here
draw such cells on purpose: a cell exactly on a face (or a meeting of faces), moved off it by 0.1×, 1×
and 10× ``rel_tol`` (inside the band, at its edge, outside it), then rotated and re-based by a
unimodular matrix with entries up to ``max_entry``.

Row convention: lattices are float64 ``(3, 3)`` tensors whose rows are the lattice vectors; a re-basing
``M`` acts as ``M @ L``.

Faces (:data:`NEAR_FACES`), in the metric's G6 form ``(A, B, C, ξ, η, ζ)`` = ``(a·a, b·b, c·c, 2b·c,
2a·c, 2a·b)`` of a Niggli-reduced cell, and the distance ``d`` from the face, measured as the reducer
compares (``strain * rel_tol`` = ``|d|``, the sign is drawn):

==================  ===========================================  =====================================
face                exact cell (other parameters generic)         moved off by
==================  ===========================================  =====================================
``equal_lengths``   ``A = B`` or ``B = C``                        ``d = (B − A) / ((A + B) / 2)``
``angle_90``        one of ξ, η, ζ = 0                            ``d = ξ / √(BC)`` (2 cos α), ...
``angle_60``        ``A = B``, ``ζ = A`` (γ = 60°)                ``(B − A) / ((A + B) / 2)`` and
                                                                  ``|ζ| / A − 1`` by ``d u``, max |u| = 1
``angle_120``       ``A = B``, ``ζ = −A`` (γ = 120°), ``η = 0``   as angle_60
``fcc``             ``A = B = C = ξ = η = ζ`` (all 60°)           every entry by ``d u_i A``, max |u| = 1,
                                                                  ``u`` summing to 0 over A, B, C and
                                                                  over ξ, η, ζ
``bcc``             ``A = B = C``, ``ξ = η = ζ = −2A/3``          as fcc
``rhombohedral``    ``A = B = C``, ``ξ = η = ζ``, α generic       as fcc
==================  ===========================================  =====================================

"Generic" means at least 3 % away from every other face: shortest edge 2–8 Å, consecutive length ratios
1.03–1.5, ``|cos|`` of free angles 0.05–0.45 of their bound, rhombohedral α in 63°–87° or 93°–106°.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._checks import DEFAULT_REL_TOL, check_int, check_real, check_rel_tol
from ._draw import (check_bool, choices, float_tensor, hypothesis_strategies, random_atoms, rebasings,
                    rotation_strategy, rows_from_metric)

__all__ = ["NEAR_FACES", "NEAR_FACE_STRAINS", "near_face_lattices", "near_face_crystals"]

#: Faces of the Niggli cone (and meetings of faces) that :func:`near_face_lattices` draws cells near.
NEAR_FACES = ("equal_lengths", "angle_90", "angle_60", "angle_120", "fcc", "bcc", "rhombohedral")

#: Default distances from the face, in units of ``rel_tol``: inside the tolerance band, at its edge,
#: outside it.
NEAR_FACE_STRAINS = (0.1, 1.0, 10.0)

# strain * rel_tol at most this: the cell stays near its face and positive definite by a wide margin.
_MAX_DISTANCE = 1e-3


def _strains(strain) -> tuple[float, ...]:
    expected = "a float > 0 or a non-empty tuple of them (multiples of rel_tol)"
    if strain is None:
        return NEAR_FACE_STRAINS
    values = tuple(strain) if isinstance(strain, (tuple, list)) else (strain,)
    values = tuple(check_real(v, "strain", expected) for v in values)
    if not values or not all(v > 0 for v in values):
        raise ValueError(f"strain: expected {expected}, got {strain!r}")
    return values


def _generic_fraction(draw, st) -> float:
    """|ξ|, |η| or |ζ| as a fraction of its bound (B, A, A): away from 0 (90°) and from the bound."""
    return draw(st.floats(0.05, 0.45))


def _direction(draw, st, n: int) -> list[float]:
    """A direction in R^n with its largest entry exactly ±1 (a unit of the max-norm)."""
    u = draw(st.lists(st.floats(-1.0, 1.0), min_size=n, max_size=n))
    k = draw(st.integers(0, n - 1))
    u[k] = draw(st.sampled_from((1.0, -1.0)))
    return u


def _near_face_metric(draw, st, face: str, d: float) -> tuple[float, ...]:
    """G6 of a cell exactly on ``face`` moved off it by ``d`` (see the module's table), with A = 1."""
    ratio = st.floats(1.03, 1.5)
    if face in ("fcc", "bcc", "rhombohedral"):
        if face == "fcc":
            x = 1.0
        elif face == "bcc":
            x = -2.0 / 3.0
        else:
            alpha = draw(st.one_of(st.floats(63.0, 87.0), st.floats(93.0, 106.0)))
            x = 2.0 * math.cos(math.radians(alpha))
        # Off the setting, not along it: no common part within the lengths nor within the angle
        # entries (that would only rescale the cell or change the rhombohedral angle).
        v = draw(st.lists(st.floats(-1.0, 1.0), min_size=6, max_size=6))
        u = [vi - sum(v[:3]) / 3 for vi in v[:3]] + [vi - sum(v[3:]) / 3 for vi in v[3:]]
        size = max(abs(ui) for ui in u)
        if size < 1e-3:  # all entries alike: any direction off the setting will do
            u, size = [1.0, -1.0, 0.0, 0.0, 0.0, 0.0], 1.0
        return tuple(g + d * ui / size for g, ui in zip((1.0, 1.0, 1.0, x, x, x), u))
    sign = draw(st.sampled_from((1.0, -1.0)))
    if face == "equal_lengths":
        kind = draw(st.sampled_from((1.0, -1.0)))  # type I (all angles acute) or type II (all obtuse)
        pair_ab = draw(st.booleans())
        r = draw(ratio) ** 2
        A, B, C = (1.0, 1.0, r) if pair_ab else (1.0, r, r)
        t = [_generic_fraction(draw, st) for _ in range(3)]
        # A = B wants |ξ| <= |η|, B = C wants |η| <= |ζ|: drawn so, the exact cell is Niggli-reduced.
        t1, t2, t3 = (min(t[0], t[1]), max(t[0], t[1]), t[2]) if pair_ab else (t[0], min(t[1], t[2]), max(t[1], t[2]))
        xi, eta, zeta = kind * t1 * B, kind * t2 * A, kind * t3 * A
        # (B - A) / ((A + B) / 2) = d exactly for the longer one scaled by (2 + d) / (2 - d).
        stretch = (2.0 + sign * d) / (2.0 - sign * d)
        return (A, B * stretch, C, xi, eta, zeta) if pair_ab else (A, B, C * stretch, xi, eta, zeta)
    if face == "angle_90":
        kind = draw(st.sampled_from((1.0, -1.0)))
        r1, r2 = draw(ratio) ** 2, draw(ratio) ** 2
        A, B, C = 1.0, r1, r1 * r2
        g = [kind * _generic_fraction(draw, st) * bound for bound in (B, A, A)]
        k = draw(st.integers(0, 2))
        g[k] = sign * d * math.sqrt((B * C, A * C, A * B)[k])
        return (A, B, C, *g)
    # The hexagonal net of a and b, off it in a drawn direction of (B, |ζ|): moving ζ alone would keep
    # the net centred-rectangular, on the face |ζ| = A in another basis.
    C = draw(ratio) ** 2
    u = _direction(draw, st, 2)
    B = (2.0 + d * u[0]) / (2.0 - d * u[0])
    if face == "angle_60":
        t1 = draw(st.floats(0.1, 0.4))
        # A = B wants |ξ| <= |η|, ζ = A wants η <= 2ξ; 3 % from both ends, which are faces too.
        t2 = draw(st.floats(1.03 * t1, min(1.97 * t1, 0.45)))
        return 1.0, B, C, t1, t2, 1.0 + d * u[1]
    # angle_120: ζ = −A wants η = 0 in a Niggli-reduced cell.
    return 1.0, B, C, -_generic_fraction(draw, st), 0.0, -(1.0 + d * u[1])


def near_face_lattices(face: str | Sequence[str] | None = None, *, strain: float | Sequence[float] | None = None,
                       rel_tol: float = DEFAULT_REL_TOL, max_entry: int = 5, rebase: bool = True):
    """Strategy for float64 ``(3, 3)`` lattices (rows are lattice vectors) near a face of the Niggli cone.

    Each draw picks a face of :data:`NEAR_FACES` (``face``: one name, a tuple, or ``None`` for all)
    and a distance ``strain * rel_tol`` from it (``strain``: one multiple, a tuple, or ``None`` for
    :data:`NEAR_FACE_STRAINS` = 0.1, 1, 10: inside the reducer's tolerance band, at its edge, outside
    it), builds a cell exactly on the face with its other parameters generic (see the module's table),
    moves it off the face by that distance in a drawn direction, rotates (or reflects) it at random and,
    with ``rebase``, re-bases it by a unimodular ``M`` with entries in ``[-max_entry, max_entry]`` (a
    signed permutation times up to 24 elementary row operations): ``M @ L Q^T``. Edges of the
    reduced cell are 2–18 Å. Shrinks towards the first face and strain and the identity re-basing.

    Raises:
        TypeError: ``face`` not a name or tuple of names, ``strain``, ``rel_tol`` not real numbers,
            ``max_entry`` not an int, ``rebase`` not a bool.
        ValueError: an unknown face, a strain <= 0 or above ``1e-3 / rel_tol``, ``rel_tol`` outside
            [1e-12, 0.1), ``max_entry`` < 1.

    Example::

        @given(near_face_lattices("equal_lengths", strain=1.0))
        def test_my_loss_is_basis_invariant_at_the_band_edge(L): ...
    """
    st = hypothesis_strategies()
    faces = choices(face, NEAR_FACES, "face")
    strains = _strains(strain)
    rel_tol = check_rel_tol(rel_tol)
    max_entry = check_int(max_entry, "max_entry", minimum=1)
    check_bool(rebase, "rebase")
    if max(strains) * rel_tol > _MAX_DISTANCE:
        raise ValueError(f"strain: expected multiples of rel_tol with strain * rel_tol <= {_MAX_DISTANCE:g} "
                         f"(near the face), got {strain!r} at rel_tol = {rel_tol:g}")
    rotation = rotation_strategy()
    rebasing = rebasings(max_entry) if rebase else None
    scale = st.floats(2.0, 8.0)

    @st.composite
    def draw_lattice(draw):
        name = draw(st.sampled_from(faces))
        distance = draw(st.sampled_from(strains)) * rel_tol
        a2 = draw(scale) ** 2
        rows = rows_from_metric(*(a2 * g for g in _near_face_metric(draw, st, name, distance)))
        L = float_tensor(rows) @ draw(rotation).T
        return L if rebasing is None else draw(rebasing).to(torch.float64) @ L

    return draw_lattice()


def near_face_crystals(face: str | Sequence[str] | None = None, *, strain: float | Sequence[float] | None = None,
                       rel_tol: float = DEFAULT_REL_TOL, max_entry: int = 5, rebase: bool = True,
                       max_atoms: int = 8, max_crystals: int = 3):
    """Strategy for a :class:`~soft_niggli.CrystalBatch` of 1 to ``max_crystals`` crystals on lattices of
    :func:`near_face_lattices` (``face``, ``strain``, ``rel_tol``, ``max_entry``, ``rebase`` as there),
    each with 1 to ``max_atoms`` atoms: coordinates uniform in [0, 1) of the re-based cell, species
    1–94, float64.

    Example::

        @given(near_face_crystals(max_atoms=1))
        def test_my_loss_is_basis_invariant_near_faces(batch):
            assert_gl3z_invariant(my_loss, batch, max_entry=5)
    """
    check_int(max_atoms, "max_atoms", minimum=1)
    check_int(max_crystals, "max_crystals", minimum=1)
    lattice = near_face_lattices(face, strain=strain, rel_tol=rel_tol, max_entry=max_entry, rebase=rebase)
    return random_atoms(lattice, max_atoms, max_crystals)
