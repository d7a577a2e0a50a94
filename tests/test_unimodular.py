"""Properties of the GL(3,Z) helpers: counts, membership, random elements."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from soft_niggli import enumerate_unimodular, is_unimodular, random_unimodular, signed_permutations


@pytest.mark.parametrize("bound, proper, count", [(1, False, 6960), (1, True, 3480), (2, False, 135408)])
def test_enumeration_counts(bound, proper, count):
    U = enumerate_unimodular(bound, proper=proper)
    assert U.shape == (count, 3, 3)
    assert bool(is_unimodular(U).all())
    assert int(U.abs().max()) == bound
    dets = torch.linalg.det(U.double()).round()
    assert bool((dets == 1).all()) if proper else set(dets.unique().tolist()) == {-1.0, 1.0}


def test_enumeration_is_unique_starts_with_identity_and_is_cached():
    U = enumerate_unimodular(1)
    assert len(torch.unique(U.reshape(-1, 9), dim=0)) == len(U)
    assert torch.equal(U[0], torch.eye(3, dtype=torch.int64))
    assert enumerate_unimodular(1) is U
    assert enumerate_unimodular(1, dtype=torch.float32).dtype == torch.float32


def test_enumeration_is_closed_under_inverse():
    U = enumerate_unimodular(1)
    inverses = torch.round(torch.linalg.inv(U.double())).long()
    bounded = inverses.abs().amax(dim=(1, 2)) <= 1
    members = {tuple(m.flatten().tolist()) for m in U}
    assert all(tuple(m.flatten().tolist()) in members for m in inverses[bounded])


def test_signed_permutations_are_the_48_cube_symmetries():
    P = signed_permutations()
    assert P.shape == (48, 3, 3)
    assert len(torch.unique(P.reshape(-1, 9), dim=0)) == 48
    assert torch.equal(P.transpose(1, 2) @ P, torch.eye(3, dtype=torch.int64).expand(48, 3, 3))


@given(st.integers(1, 50), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_random_unimodular_is_unimodular_and_capped(n, max_entry, seed, proper):
    M = random_unimodular((n,), max_entry=max_entry, generator=torch.Generator().manual_seed(seed), proper=proper)
    assert M.shape == (n, 3, 3) and M.dtype == torch.int64
    assert bool(is_unimodular(M).all())
    assert int(M.abs().max()) <= max_entry
    if proper:
        assert bool((torch.linalg.det(M.double()).round() == 1).all())


def test_random_unimodular_is_reproducible_and_varied():
    a = random_unimodular((100,), max_entry=2, generator=torch.Generator().manual_seed(1))
    b = random_unimodular((100,), max_entry=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len(torch.unique(a.reshape(-1, 9), dim=0)) > 50


def test_is_unimodular_rejects_non_integers_wrong_determinants_and_nonfinite():
    M = torch.stack([
        torch.eye(3), 2 * torch.eye(3), torch.eye(3) + 0.5,
        torch.full((3, 3), float("nan")), torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]]),
    ])
    assert is_unimodular(M).tolist() == [True, False, False, False, True]


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="bound"):
        enumerate_unimodular(0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
        is_unimodular(torch.zeros(2, 2))
