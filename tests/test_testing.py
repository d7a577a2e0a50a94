"""The shipped testing helpers: strategies draw what they promise, assert_gl3z_invariant can fail."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from soft_niggli import CrystalBatch, is_unimodular, lattice_parameters, niggli_reduce, volume
from soft_niggli.testing import assert_gl3z_invariant, crystals, lattices, rotations, unimodular_matrices


@given(lattices("realistic"))
def test_realistic_lattices_look_like_real_cells(L):
    assert L.shape == (3, 3) and L.dtype == torch.float64
    reduced = niggli_reduce(L).lattice
    a, b, c, alpha, beta, gamma = lattice_parameters(reduced).tolist()
    # Re-basing by a {-1,0,1} matrix can lengthen vectors, but the reduced cell is a real-looking one.
    assert 1.0 < a and c < 60.0
    assert a <= b * (1 + 1e-5) and b <= c * (1 + 1e-5)  # sorted, up to the reducer's tolerance
    assert all(30.0 <= ang <= 150.0 for ang in (alpha, beta, gamma))


def test_any_float_strategy_reaches_nan_and_inf():
    seen = {"nan": False, "inf": False}

    @settings(max_examples=300, database=None)
    @given(lattices("any_float"))
    def probe(L):
        seen["nan"] |= bool(torch.isnan(L).any())
        seen["inf"] |= bool(torch.isinf(L).any())

    probe()
    assert seen["nan"] and seen["inf"]


@given(lattices("pathological"))
def test_pathological_lattices_are_finite(L):
    assert L.shape == (3, 3) and bool(torch.isfinite(L).all())


def test_pathological_strategy_reaches_degenerate_and_badly_conditioned_cells():
    seen = {"flat": False, "skewed": False}

    @settings(max_examples=200, database=None)
    @given(lattices("pathological"))
    def probe(L):
        rows = torch.linalg.vector_norm(L, dim=1)
        rel_volume = float(torch.linalg.det(L).abs() / rows.prod().clamp_min(1e-300))
        seen["flat"] |= rel_volume < 1e-6
        seen["skewed"] |= bool(rows.max() / rows.min().clamp_min(1e-300) > 1e3)

    probe()
    assert seen["flat"] and seen["skewed"]


@given(unimodular_matrices(2), unimodular_matrices(1, depth=3), rotations())
def test_matrix_strategies_give_group_elements(M, M3, Q):
    assert bool(is_unimodular(M)) and bool(is_unimodular(M3))
    torch.testing.assert_close(Q @ Q.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)


@given(crystals(max_atoms=5, max_crystals=3))
def test_crystal_strategy_builds_consistent_batches(batch):
    assert isinstance(batch, CrystalBatch)
    assert 1 <= len(batch) <= 3 and int(batch.num_atoms.max()) <= 5
    assert batch.frac.shape == (int(batch.num_atoms.sum()), 3)
    assert bool(((batch.frac >= 0) & (batch.frac < 1)).all())


@settings(max_examples=10)
@given(crystals(max_atoms=4))
def test_assert_gl3z_invariant_accepts_invariant_functions(batch):
    assert_gl3z_invariant(lambda b: volume(b.lattice), batch)
    assert_gl3z_invariant(lambda b: {"n": b.num_atoms.double(), "reduced": niggli_reduce(b.lattice).lattice
                                     .pow(2).sum(dim=(1, 2))}, batch, atol=1e-8, rtol=1e-6)


def test_assert_gl3z_invariant_rejects_a_basis_dependent_function():
    batch = CrystalBatch(torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))[None],
                         torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1]))
    with pytest.raises(AssertionError, match="not GL\\(3,Z\\)-invariant"):
        assert_gl3z_invariant(lambda b: b.lattice.sum(dim=(1, 2)), batch)
    with pytest.raises(ValueError, match="kind"):
        lattices("nonsense")
