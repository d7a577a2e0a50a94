"""Evaluation metrics: basis and rotation invariance, exact matches, failures counted instead of raised."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from soft_niggli import CrystalBatch, random_unimodular
from soft_niggli.lattice import random_rotations
from soft_niggli.metrics import (LatticeError, MatchResult, SpglibG6, _Timeout, _time_limit, evaluate, lattice_error,
                                 match_structures, spglib_niggli_g6, volume_error)

pytest.importorskip("pymatgen")


@pytest.fixture
def targets():
    from soft_niggli.datasets import load_dataset

    return CrystalBatch.from_structures(load_dataset("aflow", "val", limit=12))


def _with_lattice(batch, lattice):
    return CrystalBatch(lattice, batch.frac, batch.num_atoms, batch.species)


def test_identical_structures_score_zero_and_match(targets):
    out = evaluate(targets, targets)
    assert out["lattice_error"] == pytest.approx(0, abs=1e-12)
    assert out["volume_error"] == pytest.approx(0, abs=1e-12)
    assert out["lattice_failures"] == 0
    assert out["match_rate"] == 1.0 and out["rmse"] < 1e-6


def test_metrics_are_invariant_to_target_basis_and_rotation(targets):
    M = random_unimodular((len(targets),), max_entry=2, generator=torch.Generator().manual_seed(1))
    rebased = targets.apply_basis_change(M)
    Q = random_rotations(len(targets), generator=torch.Generator().manual_seed(2))
    moved = _with_lattice(rebased, rebased.lattice @ Q.mT)
    out = evaluate(moved, targets)
    assert out["lattice_error"] < 1e-8 and out["volume_error"] < 1e-10
    assert out["match_rate"] == 1.0 and out["rmse"] < 1e-6


def test_lattice_error_is_relative_g6_distance():
    L = torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))[None]
    result = lattice_error(L * 1.1, L)
    assert isinstance(result, LatticeError)
    # G6 scales with the square of lengths: 1.1² - 1 = 0.21.
    assert float(result.error[0]) == pytest.approx(0.21) and not bool(result.failed[0])
    assert float(volume_error(L * 1.1, L)[0]) == pytest.approx(1.1**3 - 1)


def test_degenerate_predictions_are_failures_not_crashes(targets):
    bad = targets.lattice.clone()
    bad[0] = 0.0  # collapsed
    bad[1] = float("nan")  # non-finite
    bad[2, 2] = bad[2, 0] + bad[2, 1]  # flat: rank 2
    # Small and skewed, like an untrained model's output: spglib's absolute eps gives up (returns None).
    bad[3] = torch.tensor([[-0.0225, 0.0039, -0.0058], [0.0011, -0.0008, 0.002], [0.0069, -0.0076, 0.0142]])
    bad[4] = targets.lattice[4] * 100.0  # absurd volume
    pred = _with_lattice(targets, bad)
    result = lattice_error(pred, targets)
    assert bool(result.failed[:4].all()) and bool((result.error[:4] == 1.0).all()) and not bool(result.failed[5:].any())
    out = evaluate(pred, targets)
    assert out["lattice_failures"] == 4
    assert math.isfinite(out["lattice_error"]) and math.isfinite(out["volume_error"])
    res = match_structures(pred, targets)
    assert not bool(res.matched[:5].any()) and bool(res.matched[5:].all())
    assert {res.reason[i] for i in range(5)} <= {"volume", "degenerate", "error", "invalid"}
    assert res.reason[4] == "volume"


def test_overlapping_atoms_are_invalid_and_unmatched(targets):
    i = next(i for i in range(len(targets)) if int(targets.num_atoms[i]) >= 2)
    one = targets[i]
    squashed = CrystalBatch(one.lattice, torch.zeros_like(one.frac), one.num_atoms, one.species)
    res = match_structures(squashed, one)
    assert res.reason == ("invalid",) and res.match_rate == 0.0 and math.isnan(res.rmse)


def test_time_limit_interrupts_a_slow_call():
    import time

    with pytest.raises(_Timeout):
        with _time_limit(0.05):
            time.sleep(1.0)


# ---------------------------------------------------------------------------- inputs and outputs


def test_numpy_and_lists_in_tensors_out(targets):
    L = targets.lattice[:4]
    for pred in (L.numpy(), L.tolist(), L, targets[:4]):
        result = lattice_error(pred, L.numpy())
        assert isinstance(result.error, torch.Tensor) and result.error.dtype == torch.float64
        assert isinstance(result.failed, torch.Tensor) and result.failed.dtype == torch.bool
        assert float(result.error.max()) < 1e-9  # lists are read in float64: no float32 rounding
        v = volume_error(pred, L.tolist())
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float64 and float(v.max()) < 1e-12
    reduced = spglib_niggli_g6(L.numpy())
    assert isinstance(reduced, SpglibG6) and reduced.g6.shape == (4, 6) and bool(reduced.ok.all())
    single = spglib_niggli_g6(torch.eye(3, dtype=torch.float64))
    assert single.g6.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0] and single.ok.shape == ()


def test_g6_of_the_metrics_is_the_lattice_modules():
    from soft_niggli import g6, lattice_from_parameters

    L = lattice_from_parameters(3.0, 4.0, 5.0, 80.0, 85.0, 95.0).double()
    reduced = spglib_niggli_g6(L)
    import spglib

    expected = g6(torch.from_numpy(np.asarray(spglib.niggli_reduce(L.numpy(), eps=1e-5))))
    assert torch.equal(reduced.g6, expected)  # one cell (3, 3): g6 (6,)


def test_results_are_frozen_dataclasses(targets):
    import dataclasses

    one = targets[:2]
    for result in (lattice_error(one, one), spglib_niggli_g6(one), match_structures(one, one)):
        assert dataclasses.is_dataclass(result)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(result, dataclasses.fields(result)[0].name, None)
    res = match_structures(one, one)
    assert isinstance(res, MatchResult) and isinstance(res.matched, torch.Tensor) and isinstance(res.rms, torch.Tensor)
    assert res.rms.dtype == torch.float64 and res.matched.dtype == torch.bool and res.counts()["match"] == 2


def test_spglib_eps_is_the_keyword_of_spglibs_absolute_tolerance(targets):
    one = targets[:3]
    # The tolerance is passed on to spglib under its new name (any value reduces a cell like itself).
    assert float(lattice_error(one, one, spglib_eps=1e-2).error.max()) < 1e-12
    assert evaluate(one, one, match=False, spglib_eps=1e-3)["lattice_error"] < 1e-12
    with pytest.raises(TypeError, match="eps"):
        lattice_error(one, one, eps=1e-5)  # the old name is gone
    with pytest.raises(ValueError, match="spglib_eps: expected a positive finite float"):
        lattice_error(one, one, spglib_eps=0.0)
    with pytest.raises(TypeError, match="spglib_eps: expected a positive float"):
        lattice_error(one, one, spglib_eps="1e-5")


@pytest.mark.parametrize("call, error, match", [
    (lambda t: lattice_error("pred", t), TypeError, "pred: expected lattices"),
    (lambda t: lattice_error(t, None), TypeError, "target: expected lattices"),
    (lambda t: volume_error(t, t, failure_value="1"), TypeError, "failure_value: expected a float"),
    (lambda t: lattice_error(t.lattice[:2], t.lattice[:3]), ValueError, r"pred: expected the target's shape"),
    (lambda t: lattice_error(t.lattice[:, :2], t.lattice[:, :2]), ValueError, r"expected lattices of shape"),
    (lambda t: lattice_error(t.to("meta"), t), ValueError, "meta device"),
    (lambda t: match_structures(t.lattice, t), TypeError, "pred, target: expected CrystalBatch"),
    (lambda t: match_structures(t.to("meta"), t), ValueError, "meta device"),
    (lambda t: match_structures(t, t, volume_ratio=0.5), ValueError, "volume_ratio: expected a float >= 1"),
    (lambda t: evaluate(t, t, match="yes"), TypeError, "match: expected a bool"),
])
def test_type_errors_and_value_errors(targets, call, error, match):
    with pytest.raises(error, match=match):
        call(targets)


def test_a_target_spglib_cannot_reduce_is_a_value_error_naming_it():
    good = 4.0 * torch.eye(3, dtype=torch.float64)
    target = torch.stack([good, torch.zeros(3, 3, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"target: spglib could not Niggli-reduce targets \[1\]"):
        lattice_error(target, target)


def test_matcher_defaults_constant_is_gone():
    import soft_niggli.metrics as metrics

    assert not hasattr(metrics, "MATCHER_DEFAULTS")
