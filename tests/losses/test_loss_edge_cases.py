"""Losses at the edges of their inputs and options: half precision, huge and tiny cells, extreme
temperatures, empty batches, species with Sinkhorn, and options that must fail when the loss is built.
Rows are lattice vectors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from soft_niggli import CrystalBatch, Status, get_loss, random_unimodular
from soft_niggli.losses.base import LossResult
from soft_niggli.losses.invariants import theta_term
from soft_niggli.losses.terms import lattice_term

S3 = 3 ** 0.5
LOSSES = ("mse", "proxy", "softmin", "gram")


def _cubic(dtype=torch.float64):
    L = 4.0 * torch.eye(3, dtype=dtype)[None]
    F = torch.tensor([[0.0, 0.0, 0.0], [0.31, 0.12, 0.05], [0.6, 0.7, 0.2]], dtype=dtype)
    return CrystalBatch(L, F, [3], [8, 14, 26])


def _noisy(batch, seed=0, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return CrystalBatch(batch.lattice + scale * torch.randn(batch.lattice.shape, generator=g, dtype=batch.dtype),
                        batch.frac + scale * torch.randn(batch.frac.shape, generator=g, dtype=batch.dtype),
                        batch.num_atoms, batch.species)


def _wurtzite(dtype=torch.float64):
    a, c = 3.8227, 6.2607
    L = torch.tensor([[[a, 0, 0], [-a / 2, a * S3 / 2, 0], [0, 0, c]]], dtype=dtype)
    F = torch.tensor([[2 / 3, 1 / 3, 0.0], [1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.6252], [1 / 3, 2 / 3, 0.1252]],
                     dtype=dtype)
    return CrystalBatch(L, F, [4], [30, 30, 16, 16])


def test_sinkhorn_term_of_the_wurtzite_reproducer_does_not_jump():
    label = _wurtzite()
    noise = torch.tensor([[0.01, -0.02, 0.015], [-0.012, 0.004, -0.02], [0.02, 0.01, 0.005], [-0.01, 0.02, 0.018]],
                         dtype=torch.float64)
    pred = CrystalBatch(label.lattice * 1.01, label.frac + noise, [4], label.species)
    values = []
    for dz in (0.0, 1e-6, 2e-6):
        F = label.frac.clone()
        F[0, 2] += dz
        values.append(float(get_loss("mse", coords="sinkhorn")(pred, CrystalBatch(label.lattice, F, [4],
                                                                                    label.species)).terms["coords"]))
    assert max(values) - min(values) <= 1e-4, values


def test_softmin_sinkhorn_in_float32_ignores_rebasing_the_label():
    label = _wurtzite(torch.float32)
    pred = _noisy(label, 1)
    loss = get_loss("softmin", coords="sinkhorn")
    base = float(loss(pred, label).loss)
    for seed in range(3):
        M = random_unimodular((1,), max_entry=3, generator=torch.Generator().manual_seed(seed))
        assert abs(float(loss(pred, label.apply_basis_change(M)).loss) - base) <= 1e-4 * max(1.0, abs(base))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_predictions_are_scored_not_dropped(name, dtype):
    label = _cubic()
    pred = _noisy(label)
    reference = get_loss(name)(pred.to(dtype=torch.float32), label).loss
    half = pred.to(dtype=dtype)
    L = half.lattice.clone().requires_grad_(True)
    result = get_loss(name)(CrystalBatch(L, half.frac, half.num_atoms, half.species), label)
    result.loss.backward()
    assert result.loss.dtype == dtype and result.skipped == 0
    assert L.grad is not None and L.grad.dtype == dtype and float(L.grad.float().abs().sum()) > 0
    # Scored in float32 from the half-precision inputs: close to the float32 value of the same crystal.
    assert abs(float(result.loss) - float(reference)) <= 0.05 * abs(float(reference)) + 1e-3


@pytest.mark.parametrize("name", LOSSES)
def test_sinkhorn_needs_species_on_both_sides_or_neither(name):
    label = _cubic()
    bare = CrystalBatch(label.lattice, label.frac, label.num_atoms)
    loss = get_loss(name, coords="sinkhorn")
    for pred, target in ((bare, label), (label, bare)):
        with pytest.raises(ValueError, match="species"):
            loss(pred, target)
    assert float(loss(bare, bare).loss) >= 0  # neither: species ignored


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype, big", [(torch.float64, 1e155), (torch.float32, 1e19)])
def test_huge_finite_labels_are_rejected(name, dtype, big):
    label = _cubic(dtype)
    huge = CrystalBatch(label.lattice * big, label.frac, label.num_atoms, label.species)
    with pytest.raises(ValueError, match="magnitude"):
        get_loss(name)(label, huge)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_largest_accepted_labels_give_finite_values_and_gradients(name, dtype):
    from soft_niggli.losses.base import max_magnitude

    label = _cubic(dtype)
    scale = max_magnitude(dtype) / 8
    big = CrystalBatch(label.lattice * scale, label.frac, label.num_atoms, label.species)
    pred = _noisy(big, 2, 0.0)
    L = (big.lattice * 1.01).requires_grad_(True)
    result = get_loss(name)(CrystalBatch(L, pred.frac, pred.num_atoms, pred.species), big)
    result.loss.backward()
    assert math.isfinite(float(result.loss)) and bool(torch.isfinite(L.grad).all())


def test_gram_lattice_term_of_zero_cells_has_a_zero_gradient():
    zero = torch.zeros(1, 3, 3, dtype=torch.float64, requires_grad=True)
    lattice_term(zero, torch.zeros(1, 3, 3, dtype=torch.float64), "gram").sum().backward()
    assert bool((zero.grad == 0).all())


@pytest.mark.parametrize("scale", [1e-14, 1e-30, 1e20])
def test_theta_term_is_scale_free_for_tiny_and_huge_float32_cells(scale):
    L = torch.tensor([[[4.0, 0, 0], [0.5, 4.2, 0], [0.3, 0.2, 5.0]]])
    assert float(theta_term(L * scale, L)) <= 1e-6
    # The gram loss of a scaled copy: theta 0, the scale left to the volume term.
    label = CrystalBatch(L, torch.zeros(1, 3), [1])
    terms = get_loss("gram")(CrystalBatch(L * 1e-14, torch.zeros(1, 3), [1]), label).terms
    assert float(terms["theta"]) <= 1e-6


@pytest.mark.parametrize("name, options", [
    ("softmin", {"tau": math.inf}), ("gram", {"tau": math.nan}), ("softmin", {"tau": 0.0}),
    ("gram", {"theta_scales": (math.inf,)}), ("gram", {"theta_scales": (1.0, math.nan)}), ("gram", {"theta_scales": ()}),
    ("softmin", {"blur": math.inf}), ("gram", {"blur": 20.0}), ("mse", {"blur": 20.0}), ("proxy", {"blur": 0.0}),
    ("softmin", {"automorphism_rel_tol": 0.5}), ("softmin", {"top_k": 0}),
])
def test_bad_option_values_fail_at_construction(name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        get_loss(name, **options)


@pytest.mark.parametrize("name, options", [
    ("gram", {"zero_at_match": 1}), ("softmin", {"top_k": 2.0}), ("mse", {"blur": "0.1"}), ("proxy", {"tau": None}),
])
def test_options_of_the_wrong_type_fail_at_construction(name, options):
    # A wrong Python type is a TypeError, naming the option (an unknown option stays a ValueError).
    error = ValueError if next(iter(options)) not in get_loss(name).option_names() else TypeError
    with pytest.raises(error, match=next(iter(options))):
        get_loss(name, **options)


@pytest.mark.parametrize("name", ["softmin", "gram"])
def test_tiny_temperature_gives_a_finite_loss_and_gradient(name):
    label = _cubic()
    pred = _noisy(label)
    L = pred.lattice.clone().requires_grad_(True)
    result = get_loss(name, tau=1e-300)(CrystalBatch(L, pred.frac, pred.num_atoms, pred.species), label)
    result.loss.backward()
    assert math.isfinite(float(result.loss)) and bool(torch.isfinite(L.grad).all())


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("coords", ["periodic", "sinkhorn"])
def test_empty_batches_score_zero(name, coords):
    empty = CrystalBatch(torch.zeros(0, 3, 3), torch.zeros(0, 3), [], torch.zeros(0, dtype=torch.int64))
    result = get_loss(name, coords=coords)(empty, empty)
    assert float(result.loss) == 0.0 and result.per_crystal.shape == (0,)


@pytest.mark.parametrize("name, option", [
    ("softmin", "automorphism_rel_tol"), ("gram", "automorphism_rel_tol"), ("proxy", "automorphism_rel_tol"),
    ("proxy", "rel_tol"), ("reduced-forms", "rel_tol"),
])
@pytest.mark.parametrize("value", [1e-13, 0.0, -1e-5, 0.1, 0.5, math.nan, math.inf])
def test_tolerance_options_share_one_range_checked_when_the_loss_is_built(name, option, value):
    # One range for every tolerance, [1e-12, 0.1), and one message, checked when the loss is built: a
    # value accepted there must not fail at the first call, where reduced_forms and the reducer check it.
    with pytest.raises(ValueError, match=rf"^{option}: expected a float in \[1e-12, 0.1\), got "):
        get_loss(name, **{option: value})


@pytest.mark.parametrize("name, options", [("softmin", {}), ("gram", {}), ("proxy", {"label_forms": "reduced"}),
                                           ("reduced-forms", {})])
def test_the_lowest_accepted_tolerance_runs(name, options):
    option = "rel_tol" if name == "reduced-forms" else "automorphism_rel_tol"
    label = _cubic()
    result = get_loss(name, **options, **{option: 1e-12})(_noisy(label), label)
    assert math.isfinite(float(result.loss))


@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_result_is_frozen_and_its_status_compares_with_the_status_enum(name):
    label = _cubic()
    result = get_loss(name)(_noisy(label), label)
    assert isinstance(result, LossResult)
    with pytest.raises(AttributeError):
        result.loss = torch.zeros(())
    assert result.status.dtype == torch.int64 and result.status.shape == (1,)
    assert bool((result.status == Status.OK).all()) and not bool((result.status == Status.NONFINITE).any())
    assert Status(int(result.status[0])) is Status.OK


def test_a_non_finite_prediction_reports_its_status_through_the_enum():
    label = _cubic()
    bad = CrystalBatch(torch.full((1, 3, 3), math.nan, dtype=torch.float64), label.frac, label.num_atoms, label.species)
    result = get_loss("proxy")(bad, label)
    assert bool((result.status == Status.NONFINITE).all()) and result.skipped == 1


@pytest.mark.parametrize("name", ["softmin", "gram"])
@pytest.mark.parametrize("cache_bytes", [256 * 2**20, 2000])
def test_remembering_the_labels_side_changes_no_value_and_survives_a_copy(name, cache_bytes):
    # The label's forms, their classes and weights (and gram's theta series) are remembered per label
    # lattice; a small memory evicts as it goes. Neither changes a value, nor does copying the loss.
    labels = CrystalBatch(torch.cat([_cubic().lattice, _wurtzite().lattice, 1.1 * _cubic().lattice]),
                          torch.cat([_cubic().frac, _wurtzite().frac, _cubic().frac]), [3, 4, 3],
                          [8, 14, 26, 30, 30, 16, 16, 8, 14, 26])
    pred = _noisy(labels, 4)
    remembering, plain = get_loss(name, cache_bytes=cache_bytes), get_loss(name, cache_bytes=0)
    reference = plain(pred, labels).per_crystal
    for _ in range(2):
        assert torch.equal(remembering(pred, labels).per_crystal, reference)
    assert torch.equal(copy.deepcopy(remembering)(pred, labels).per_crystal, reference)


@pytest.mark.parametrize("name", ["softmin", "gram", "reduced-forms", "proxy"])
def test_cache_bytes_is_checked_when_the_loss_is_built(name):
    if "cache_bytes" not in get_loss(name).option_names():
        pytest.skip(f"{name} remembers nothing")
    with pytest.raises(ValueError, match="cache_bytes"):
        get_loss(name, cache_bytes=-1)
