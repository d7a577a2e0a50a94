"""reduced_forms: every Niggli-reduced basis of a lattice within the tolerance, and the loss built on it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soft_niggli import (CrystalBatch, get_loss, integer_inverse, is_unimodular, lattice_automorphisms,
                         lattice_from_parameters, random_unimodular, reduced_forms)
from soft_niggli.testing import (AUTOMORPHISM_COUNTS, SYMMETRIC_FAMILIES, assert_gl3z_invariant, lattices, rotations,
                                 symmetric_crystals, symmetric_lattices)


def cell(*params) -> torch.Tensor:
    return lattice_from_parameters(*[torch.tensor([float(v)], dtype=torch.float64) for v in params])


def metrics(forms) -> torch.Tensor:
    L = forms.lattice
    return L @ L.transpose(-1, -2)


def same_set(a, b, atol=1e-9) -> bool:
    """The two form lists hold the same bases (the order is part of the contract, so compare in order)."""
    return a.lattice.shape == b.lattice.shape and torch.equal(a.owner, b.owner) and torch.allclose(
        a.lattice, b.lattice, atol=atol)


def same_weighted_set(a, b, atol=1e-9, weight=1e-4) -> bool:
    """Every form of weight above ``weight`` in one list is in the other with the same weight (to 1e-6).

    A form within rounding of the tolerance's edge has weight ~0 and may be listed for one input basis and
    not for another; what the losses build on the weights does not feel it. Forms are matched as a set."""
    wa, wb = a.weights(), b.weights()
    for x, wx, y, wy in ((a, wa, b, wb), (b, wb, a, wa)):
        for p in torch.nonzero(wx > weight).flatten().tolist():
            same_owner = y.owner == x.owner[p]
            close = (y.lattice - x.lattice[p]).abs().flatten(1).amax(-1) <= atol
            match = torch.nonzero(same_owner & close).flatten()
            if len(match) != 1 or abs(float(wy[match[0]]) - float(wx[p])) > 1e-6:
                return False
    return True


def test_a_cube_has_48_forms_a_generic_cell_2():
    assert reduced_forms(4.0 * torch.eye(3, dtype=torch.float64)[None]).counts(1).tolist() == [48]
    forms = reduced_forms(cell(3.1, 4.2, 5.3, 71, 83, 77))
    assert forms.counts(1).tolist() == [2]
    torch.testing.assert_close(forms.lattice[0], -forms.lattice[1])


def test_a_cell_at_90_degrees_has_both_the_acute_and_the_obtuse_form():
    forms = reduced_forms(cell(3.1, 4.2, 5.3, 90, 83, 77))
    G = metrics(forms)
    products = torch.stack([G[:, 1, 2], G[:, 0, 2], G[:, 0, 1]], 1)  # b·c, a·c, a·b
    all_acute = (products > -1e-9).all(1)
    all_obtuse = (products < 1e-9).all(1)
    assert bool(all_acute.any()) and bool(all_obtuse.any()) and bool((all_acute | all_obtuse).all())
    assert forms.counts(1).tolist() == [4] and forms.distinct_metrics(1).tolist() == [True]


def test_equal_lengths_give_both_orders_and_hexagonal_cells_both_the_120_and_60_degree_forms():
    forms = reduced_forms(cell(3.0, 3.00001, 5.3, 71, 83, 77))  # a = b within rel_tol
    G = metrics(forms)
    assert forms.counts(1).tolist() == [4] and bool(forms.distinct_metrics(1))
    # The two orders: (a, b) and (b, a), i.e. the angles α and β swapped.
    first_row = {round(float(G[i, 0, 0]), 6) for i in range(4)}
    assert first_row == {9.0, round(3.00001**2, 6)}
    hexagonal = reduced_forms(cell(3.0, 3.0, 5.0, 90, 90, 120))
    gamma = torch.rad2deg(torch.arccos(metrics(hexagonal)[:, 0, 1] / 9.0)).round()
    assert hexagonal.counts(1).tolist() == [48] and set(gamma.abs().tolist()) >= {60.0, 120.0}


@pytest.mark.parametrize("family", SYMMETRIC_FAMILIES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_exact_symmetric_cells_have_at_least_their_point_group_as_forms(family, data):
    L = data.draw(symmetric_lattices(family, noise=0.0))[None]
    forms = reduced_forms(L)
    assert int(forms.counts(1)) >= AUTOMORPHISM_COUNTS[family]
    # Away from a cone face the forms are exactly the automorphisms of the reduced cell.
    if not bool(forms.distinct_metrics(1)):
        assert int(forms.counts(1)) == int(lattice_automorphisms(forms.lattice[:1]).counts(1))


@pytest.mark.invariance
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(L=st.one_of(lattices("realistic"), symmetric_lattices(noise=0.0), symmetric_lattices(noise=1e-3)),
       M=st.integers(0, 2**31 - 1), Q=rotations())
def test_the_forms_are_the_same_whatever_the_input_basis_and_rotate_with_the_cell(L, M, Q):
    L = L[None]
    forms = reduced_forms(L)
    assert bool(forms.status.eq(0).all())
    # Each form is its transform applied to the input, by a unimodular matrix.
    assert bool(is_unimodular(forms.transform).all())
    torch.testing.assert_close(forms.transform.double() @ L[forms.owner], forms.lattice, rtol=1e-9, atol=1e-9)
    X = random_unimodular((1,), max_entry=4, generator=torch.Generator().manual_seed(M))
    rebased = reduced_forms(X.double() @ L)
    assert same_weighted_set(forms, rebased)
    rotated = reduced_forms(L @ Q.T)
    assert forms.lattice.shape == rotated.lattice.shape
    # Rotated forms are the forms rotated (as a set: the order follows the Cartesian entries).
    expected = forms.lattice @ Q.T
    distance = (rotated.lattice[:, None] - expected[None]).abs().flatten(2).amax(-1)
    assert bool((distance.amin(1) < 1e-8).all())


def test_batches_pack_forms_per_cell_and_bad_cells_keep_the_reducers_output():
    L = torch.stack([4.0 * torch.eye(3, dtype=torch.float64), torch.full((3, 3), float("nan"), dtype=torch.float64),
                     cell(3.1, 4.2, 5.3, 71, 83, 77)[0], torch.zeros(3, 3, dtype=torch.float64)])
    forms = reduced_forms(L)
    assert forms.counts(4).tolist() == [48, 1, 2, 1] and forms.status.tolist() == [0, 3, 0, 2]
    assert torch.equal(forms.owner, torch.sort(forms.owner).values)
    assert reduced_forms(torch.zeros(0, 3, 3)).lattice.shape == (0, 3, 3)
    with pytest.raises(ValueError, match="rel_tol"):
        reduced_forms(L, rel_tol=0.5)
    with pytest.raises(ValueError, match=r"lattice: expected shape \(\.\.\., 3, 3\), got \(4, 3\)"):
        reduced_forms(torch.zeros(4, 3))


# ------------------------------------------------------------------------ the "reduced-forms" loss


def _noisy(batch: CrystalBatch, seed: int, lattice_noise: float, frac_noise: float) -> CrystalBatch:
    g = torch.Generator().manual_seed(seed)
    lattice = batch.lattice + lattice_noise * torch.randn(batch.lattice.shape, generator=g, dtype=batch.dtype)
    return CrystalBatch(lattice,
                        batch.frac + frac_noise * torch.randn(batch.frac.shape, generator=g, dtype=batch.dtype),
                        batch.num_atoms, batch.species)


def test_reduced_forms_loss_equals_mse_away_from_the_boundary():
    L = cell(3.1, 4.2, 5.3, 71, 83, 77)
    from soft_niggli import niggli_reduce
    L = niggli_reduce(L).lattice
    label = CrystalBatch(L, torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]], dtype=torch.float64), [2], [6, 8])
    pred = _noisy(label, 0, 0.05, 0.02)
    for options in ({}, {"lattice_metric": "gram"}, {"coords": "sinkhorn"}):
        torch.testing.assert_close(get_loss("reduced-forms", **options)(pred, label).per_crystal,
                                   get_loss("mse", **options)(pred, label).per_crystal)


@pytest.mark.invariance
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=symmetric_crystals(max_crystals=3, noise=0.0), seed=st.integers(0, 2**16))
def test_reduced_forms_loss_does_not_care_which_form_the_label_came_in(batch, seed):
    forms = reduced_forms(batch.lattice)
    pred = _noisy(batch, seed, 0.05, 0.02)
    loss = get_loss("reduced-forms")
    reference = loss(pred, batch).per_crystal
    g = torch.Generator().manual_seed(seed)
    # The label in a form chosen at random per crystal (one of its equally canonical bases).
    counts = forms.counts(len(batch))
    start = torch.cumsum(counts, 0) - counts
    pick = start + (torch.rand(len(batch), generator=g, dtype=torch.float64) * counts).long()
    as_form = batch.apply_basis_change(forms.transform[pick])
    torch.testing.assert_close(loss(pred, as_form).per_crystal, reference, rtol=1e-9, atol=1e-12)
    assert torch.equal(integer_inverse(forms.transform[pick]) @ forms.transform[pick],
                       torch.eye(3, dtype=torch.int64).expand(len(batch), 3, 3))


@pytest.mark.invariance
@pytest.mark.parametrize("options", [{}, {"lattice_metric": "gram"}])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=symmetric_crystals(max_crystals=3, noise=0.0))
def test_reduced_forms_loss_is_gl3z_invariant_on_symmetric_crystals(options, batch):
    loss = get_loss("reduced-forms", **options)
    pred = _noisy(batch, 5, 0.03, 0.02)
    assert_gl3z_invariant(lambda label: loss(pred, label).per_crystal, batch, max_entry=5, rtol=1e-9, atol=1e-12)


def test_reduced_forms_loss_scores_the_label_zero_in_any_basis_and_has_gradients():
    label = CrystalBatch(cell(3.0, 3.0, 5.0, 90, 90, 120), torch.tensor([[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
                                                                        dtype=torch.float64), [2], [30, 30])
    X = torch.tensor([[[2, 1, 0], [1, 1, 0], [0, 1, 1]]])
    loss = get_loss("reduced-forms")
    assert float(loss(label, label.apply_basis_change(X)).loss) < 1e-20
    pred = _noisy(label, 1, 0.05, 0.02)
    L = pred.lattice.clone().requires_grad_()
    result = loss(CrystalBatch(L, pred.frac, pred.num_atoms, pred.species), label.apply_basis_change(X))
    result.loss.backward()
    assert bool(torch.isfinite(L.grad).all()) and float(L.grad.abs().sum()) > 0
    assert result.terms["forms"].tolist() == [48.0]


def test_proxy_with_the_labels_reduced_forms_does_not_jump_next_to_an_fcc_label():
    # A noisy fcc cell reduces to the 90/120/120° or 60/90/60° form, not the label's 60/60/60°: with
    # the automorphisms only the proxy scores it as far off; with every reduced form it does not.
    fcc = torch.tensor([[[0.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 0.0]]], dtype=torch.float64).repeat(64, 1, 1)
    label = CrystalBatch(fcc, torch.zeros(64, 3, dtype=torch.float64), [1] * 64, [29] * 64)
    pred = _noisy(label, 0, 0.01, 0.0)
    jumps = {forms: float((get_loss("proxy", label_forms=forms, automorphism_rel_tol=1e-2)(pred, label)
                           .terms["lattice"] > 0.1).double().mean()) for forms in ("automorphisms", "reduced")}
    assert jumps["automorphisms"] > 0.2 and jumps["reduced"] == 0.0


def test_proxy_label_forms_option_is_checked():
    with pytest.raises(ValueError, match="label_forms: expected one of"):
        get_loss("proxy", label_forms="all")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=symmetric_crystals(max_crystals=4, noise=0.01), seed=st.integers(0, 2**16))
def test_reduced_forms_loss_with_its_cache_equals_the_loss_without(batch, seed):
    cached, uncached = get_loss("reduced-forms", cache_bytes=30_000), get_loss("reduced-forms", cache_bytes=0)
    pred = _noisy(batch, seed, 0.05, 0.02)
    # The same labels again (cache hits), reversed, and in float32 (another key), past the cache's size.
    order = torch.arange(len(batch) - 1, -1, -1)
    for p, t in [(pred, batch), (pred, batch), (pred[order], batch[order]), (pred.to(torch.float32), batch)]:
        a, b = cached(p, t), uncached(p, t)
        torch.testing.assert_close(a.per_crystal, b.per_crystal, rtol=0, atol=0)
        torch.testing.assert_close(a.terms["forms"], b.terms["forms"], rtol=0, atol=0)
    assert cached._cache.nbytes <= 30_000


def test_reduced_forms_loss_cache_takes_half_precision_and_empty_batches():
    label = CrystalBatch(4.0 * torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), [2], [11, 17])
    loss = get_loss("reduced-forms")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert float(loss(label.to(dtype=dtype), label.to(dtype=dtype)).loss) == 0.0
    empty = CrystalBatch(torch.zeros(0, 3, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    assert float(loss(empty, empty).loss) == 0.0
