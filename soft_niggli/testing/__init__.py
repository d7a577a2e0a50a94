"""Testing helpers shipped for users: hypothesis strategies and ``assert_gl3z_invariant``.

Strategies (:mod:`~soft_niggli.testing.strategies`): :func:`unimodular_matrices`, :func:`rotations`,
:func:`lattices` (generic, pathological, arbitrary, symmetric or near-face cells),
:func:`symmetric_lattices` (exact or slightly perturbed cells of the Bravais families in
:data:`SYMMETRIC_FAMILIES`), :func:`crystals` (random atoms; ``lattice_kind="symmetric"`` mixes in
symmetric crystals). Near the faces of the Niggli cone (:mod:`~soft_niggli.testing.near_face`):
:func:`near_face_lattices` and :func:`near_face_crystals`, cells 0.1, 1 and 10 times ``rel_tol`` off
equal lengths, right angles, 60°/120°, fcc, bcc and rhombohedral settings, re-based with entries up to
5. Prototypes (:mod:`~soft_niggli.testing.prototypes`): :func:`symmetric_crystals` (rock-salt,
perovskite, wurtzite, ...: :data:`SYMMETRIC_PROTOTYPES`), :func:`real_crystals` (the AFLOW prototypes
bundled with pymatgen) and :func:`aflow_crystals` (those as one :class:`~soft_niggli.CrystalBatch`).
The check (:mod:`~soft_niggli.testing.assertions`): :func:`assert_gl3z_invariant`. The referee of
reducers (:mod:`~soft_niggli.testing.reduction_check`, NumPy only, imported by its own path):
``classify(L_in, L_out)`` says whether ``L_out`` is a Niggli-reduced basis of the lattice of ``L_in``.

Real crystals sit on the boundaries of the Niggli cone and have many lattice automorphisms (48 for a
cubic cell), and relaxed ones sit just off them: a loss that picks one of several equally good bases,
or switches a term at a threshold, breaks there while passing on generic cells, so test on symmetric
and near-face cells as well.

Row convention: every lattice drawn here is a float64 ``(3, 3)`` tensor whose rows are the lattice
vectors; unimodular matrices act as ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Use them to test your own models and losses the way soft_niggli tests its own::

    from hypothesis import given
    from soft_niggli.testing import crystals, near_face_crystals, assert_gl3z_invariant

    @given(crystals(max_atoms=6))
    def test_my_energy_is_basis_invariant(batch):
        assert_gl3z_invariant(my_energy, batch)

    @given(near_face_crystals())
    def test_my_energy_is_basis_invariant_near_cone_faces(batch):
        assert_gl3z_invariant(my_energy, batch, max_entry=5)

Draws take a few milliseconds and ``assert_gl3z_invariant`` adds no start-up cost, so hypothesis's
default settings (200 ms deadline, health checks) hold for a fast function even on a busy machine.
For a model that takes longer per call, importing this package registers the hypothesis profile
``"soft_niggli"`` (:data:`HYPOTHESIS_PROFILE`: no deadline, no slow-generation health check); load it
with ``settings.load_profile("soft_niggli")`` in your ``conftest.py``, or run
``pytest -p soft_niggli.testing --hypothesis-profile=soft_niggli``.

``hypothesis`` is needed for the strategies (``pip install soft-niggli[test]``);
``assert_gl3z_invariant`` works without it. ``aflow_crystals`` and ``real_crystals`` need pymatgen.
"""

from __future__ import annotations

from .assertions import assert_gl3z_invariant
from .near_face import NEAR_FACE_STRAINS, NEAR_FACES, near_face_crystals, near_face_lattices
from .prototypes import SYMMETRIC_PROTOTYPES, aflow_crystals, real_crystals, symmetric_crystals
from .strategies import (AUTOMORPHISM_COUNTS, LATTICE_KINDS, SYMMETRIC_FAMILIES, crystals, lattices, rotations,
                         symmetric_lattices, unimodular_matrices)

__all__ = [
    "LATTICE_KINDS",
    "SYMMETRIC_FAMILIES",
    "AUTOMORPHISM_COUNTS",
    "SYMMETRIC_PROTOTYPES",
    "NEAR_FACES",
    "NEAR_FACE_STRAINS",
    "unimodular_matrices",
    "lattices",
    "symmetric_lattices",
    "near_face_lattices",
    "rotations",
    "crystals",
    "symmetric_crystals",
    "near_face_crystals",
    "real_crystals",
    "aflow_crystals",
    "assert_gl3z_invariant",
    "HYPOTHESIS_PROFILE",
]

#: Name of the hypothesis profile registered when this package is imported (with hypothesis installed).
HYPOTHESIS_PROFILE = "soft_niggli"


def _register_profile() -> None:
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # assert_gl3z_invariant works without hypothesis
        return
    # A user's model may take longer than hypothesis's 200 ms per example, and longer still on a busy
    # machine: time is not what these tests check.
    settings.register_profile(HYPOTHESIS_PROFILE, deadline=None, suppress_health_check=[HealthCheck.too_slow])


_register_profile()
