"""Tests for the independent reduction checker soft_niggli.testing.reduction_check (rows = lattice vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from soft_niggli.testing.reduction_check import (
    check_details,
    classify,
    unimodular_ternary_matrices,
)

# spglib 2.x warns about its legacy error handling on every call
pytestmark = pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")


def _well_conditioned(rng, n):
    """Random cells with lengths 3-8 and a determinant not far from the length product."""
    out = []
    while len(out) < n:
        L = rng.normal(size=(3, 3)) * rng.uniform(3, 8, size=(3, 1))
        lengths = np.linalg.norm(L, axis=1)
        if abs(np.linalg.det(L)) > 0.3 * lengths.prod():
            out.append(L)
    return out


def test_ternary_unimodular_count():
    M = unimodular_ternary_matrices()
    assert M.shape == (6960, 3, 3)
    assert np.all(np.abs(np.rint(np.linalg.det(M))) == 1)


def test_accepts_spglib_output_on_random_cells():
    spglib = pytest.importorskip("spglib")
    rng = np.random.default_rng(7)
    for L in _well_conditioned(rng, 5):
        # scramble the basis so there is something to reduce
        U = np.array([[1, 2, 0], [0, 1, -1], [1, 3, -2]])  # det = 1
        L_in = U @ L
        out = spglib.niggli_reduce(L_in, eps=1e-5)
        d = check_details(L_in, out)
        assert d["reduced"], d["failures"]
        assert classify(L_in, out) == "reduced"
        assert d["det_T"] in (1, -1) and d["rel_volume_diff"] < 1e-12


def test_rejects_unreduced_cell():
    L = np.array([[4.0, 0, 0], [4, 4, 0], [0, 0, 5]])
    d = check_details(L, L)
    assert d["same_lattice"] and d["volume_kept"]
    assert not d["niggli_ok"] and not d["buerger_ok"]
    assert classify(L, L) == "wrong"


def test_rejects_other_lattice():
    L = np.diag([3.0, 4.0, 5.0])
    d = check_details(L, 1.01 * L)
    assert d["niggli_ok"]                       # the scaled cell is itself reduced ...
    assert not d["same_lattice"] and not d["volume_kept"]  # ... but it is another lattice
    assert classify(L, 1.01 * L) == "wrong"


def test_accepts_simple_cubic_and_its_sheared_input():
    C = 4.0 * np.eye(3)
    assert classify(C, C) == "reduced"
    sheared = np.array([[1, 0, 0], [1, 1, 0], [-2, 1, 1]]) @ C
    assert classify(sheared, C) == "reduced"
    assert classify(C, None) == "wrong"
    assert classify(C, np.full((3, 3), np.nan)) == "wrong"


def test_scale_free():
    L = np.array([[1.0, 0, 0], [-0.3, 2.0, 0], [-0.2, -0.4, 3.0]])  # type II (all obtuse)
    for s in (1e-6, 1.0, 1e6):
        assert classify(s * L, s * L) == "reduced"
    bad = np.array([[1.0, 0, 0], [0, 2.0, 0], [0.9, 0, 3.0]])  # |eta| = 1.8 > A = 1
    for s in (1e-6, 1.0, 1e6):
        assert classify(s * bad, s * bad) == "wrong"
