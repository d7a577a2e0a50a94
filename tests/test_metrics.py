"""Evaluation metrics: basis and rotation invariance, exact matches, failures counted instead of raised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soft_niggli import CrystalBatch, random_unimodular
from soft_niggli.metrics import _Timeout, _time_limit, evaluate, lattice_error, match_structures, volume_error

pytest.importorskip("pymatgen")


@pytest.fixture
def labels():
    from soft_niggli.datasets import load_dataset

    return CrystalBatch.from_structures(load_dataset("aflow", "val", limit=12))


def _with_lattice(batch, lattice):
    return CrystalBatch(lattice, batch.frac, batch.num_atoms, batch.species)


def test_identical_structures_score_zero_and_match(labels):
    out = evaluate(labels, labels)
    assert out["lattice_error"] == pytest.approx(0, abs=1e-12)
    assert out["volume_error"] == pytest.approx(0, abs=1e-12)
    assert out["lattice_failures"] == 0
    assert out["match_rate"] == 1.0 and out["rmse"] < 1e-6


def test_metrics_are_invariant_to_label_basis_and_rotation(labels):
    M = random_unimodular((len(labels),), max_entry=2, generator=torch.Generator().manual_seed(1))
    rebased = labels.apply_basis_change(M)
    Q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    moved = _with_lattice(rebased, rebased.lattice @ Q.T)
    out = evaluate(moved, labels)
    assert out["lattice_error"] < 1e-8 and out["volume_error"] < 1e-10
    assert out["match_rate"] == 1.0 and out["rmse"] < 1e-6


def test_lattice_error_is_relative_g6_distance():
    L = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))[None]
    err, failed = lattice_error(L * 1.1, L)
    # G6 scales with the square of lengths: 1.1² - 1 = 0.21.
    assert err[0] == pytest.approx(0.21) and not failed[0]
    assert volume_error(L * 1.1, L)[0] == pytest.approx(1.1**3 - 1)


def test_degenerate_predictions_are_failures_not_crashes(labels):
    bad = labels.lattice.clone()
    bad[0] = 0.0  # collapsed
    bad[1] = float("nan")  # non-finite
    bad[2, 2] = bad[2, 0] + bad[2, 1]  # flat: rank 2
    # Small and skewed, like an untrained model's output: spglib's absolute eps gives up (returns None).
    bad[3] = torch.tensor([[-0.0225, 0.0039, -0.0058], [0.0011, -0.0008, 0.002], [0.0069, -0.0076, 0.0142]])
    bad[4] = labels.lattice[4] * 100.0  # absurd volume
    pred = _with_lattice(labels, bad)
    err, failed = lattice_error(pred, labels)
    assert failed[:4].all() and np.all(err[:4] == 1.0) and not failed[5:].any()
    out = evaluate(pred, labels)
    assert out["lattice_failures"] == 4
    assert math.isfinite(out["lattice_error"]) and math.isfinite(out["volume_error"])
    res = match_structures(pred, labels)
    assert not res.matched[:5].any() and res.matched[5:].all()
    assert {res.reason[i] for i in range(5)} <= {"volume", "degenerate", "error", "invalid"}
    assert res.reason[4] == "volume"


def test_overlapping_atoms_are_invalid_and_unmatched(labels):
    i = next(i for i in range(len(labels)) if int(labels.num_atoms[i]) >= 2)
    one = labels[i]
    squashed = CrystalBatch(one.lattice, torch.zeros_like(one.frac), one.num_atoms, one.species)
    res = match_structures(squashed, one)
    assert res.reason == ["invalid"] and res.match_rate == 0.0 and math.isnan(res.rmse)


def test_time_limit_interrupts_a_slow_call():
    import time

    with pytest.raises(_Timeout):
        with _time_limit(0.05):
            time.sleep(1.0)
