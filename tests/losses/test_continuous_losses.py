"""Properties of the continuous strategies "softmin" and "gram" through the loss interface."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from soft_niggli import CrystalBatch, canonicalize_labels, get_loss, random_unimodular
from soft_niggli.testing import assert_gl3z_invariant, crystals, lattices, rotations, symmetric_crystals

from benchmarks.continuity import run as continuity_path

CONTINUOUS = [("softmin", {}), ("softmin", {"lattice_metric": "gram"}), ("softmin", {"center": "both"}),
              ("gram", {}), ("softmin", {"coords": "sinkhorn"})]


def noisy_copy(batch: CrystalBatch, seed: int, scale: float = 0.05) -> CrystalBatch:
    g = torch.Generator().manual_seed(seed)
    return CrystalBatch(batch.lattice + scale * torch.randn(batch.lattice.shape, generator=g, dtype=batch.dtype),
                        batch.frac + 0.2 * scale * torch.randn(batch.frac.shape, generator=g, dtype=batch.dtype),
                        batch.num_atoms, batch.species)


@pytest.mark.invariance
@pytest.mark.parametrize("name, options", CONTINUOUS)
@settings(max_examples=8)
@given(label=crystals(max_atoms=4), seed=st.integers(0, 1000))
def test_loss_is_invariant_to_label_basis(name, options, label, seed):
    loss = get_loss(name, **options)
    pred = noisy_copy(label, seed)
    assert_gl3z_invariant(lambda lab: loss(pred, lab).per_crystal, label, trials=2, atol=1e-8, rtol=1e-6)


@pytest.mark.invariance
@pytest.mark.parametrize("name, options", [("softmin", {"lattice_metric": "gram"}), ("gram", {})])
@settings(max_examples=8)
@given(label=crystals(max_atoms=4), seed=st.integers(0, 1000), q1=rotations(), q2=rotations())
def test_metric_losses_are_invariant_to_rotating_prediction_and_label(name, options, label, seed, q1, q2):
    loss = get_loss(name, **options)
    pred = noisy_copy(label, seed)
    base = loss(pred, label).per_crystal
    turned = loss(CrystalBatch(pred.lattice @ q1.T, pred.frac, pred.num_atoms, pred.species),
                  CrystalBatch(label.lattice @ q2.T, label.frac, label.num_atoms, label.species)).per_crystal
    torch.testing.assert_close(turned, base, rtol=1e-6, atol=1e-8)


@pytest.mark.invariance
@pytest.mark.parametrize("name, options", CONTINUOUS[:4])
@settings(max_examples=8)
@given(label=crystals(max_atoms=4), seed=st.integers(0, 1000),
       shift=st.tuples(*[st.floats(-2.0, 2.0)] * 3))
def test_loss_is_invariant_to_translations_and_wraps(name, options, label, seed, shift):
    loss = get_loss(name, **options)
    pred = noisy_copy(label, seed)
    t = torch.tensor(shift, dtype=pred.dtype)
    moved = CrystalBatch(pred.lattice, pred.frac + t, pred.num_atoms, pred.species)
    torch.testing.assert_close(loss(moved, label).per_crystal, loss(pred, label).per_crystal, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["softmin", "gram", "proxy", "mse"])
@settings(max_examples=3)
@given(label=crystals(max_atoms=4, max_crystals=2), seed=st.integers(0, 1000))
def test_sinkhorn_coordinates_make_any_strategy_invariant_to_atom_order(name, label, seed):
    loss = get_loss(name, coords="sinkhorn")
    pred = noisy_copy(label, seed)
    g = torch.Generator().manual_seed(seed)
    # Permute atoms within each crystal, species along with coordinates.
    order = torch.cat([torch.randperm(int(n), generator=g) + int(s) for n, s in
                       zip(label.num_atoms, torch.cumsum(label.num_atoms, 0) - label.num_atoms)])
    shuffled = CrystalBatch(pred.lattice, pred.frac[order], pred.num_atoms, pred.species[order])
    torch.testing.assert_close(loss(shuffled, label).per_crystal, loss(pred, label).per_crystal, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, options", CONTINUOUS[:4])
def test_loss_is_about_zero_on_a_rebased_copy_of_the_label(name, options):
    label = CrystalBatch(torch.diag(torch.tensor([4.0, 5.0, 6.5], dtype=torch.float64)).repeat(3, 1, 1)
                         + torch.tensor([[0.0, 0, 0], [1.1, 0, 0], [0.3, 0.7, 0]], dtype=torch.float64),
                         torch.rand(9, 3, dtype=torch.float64), torch.tensor([2, 3, 4]), torch.randint(1, 9, (9,)))
    label = canonicalize_labels(label).batch
    # Centred on the label only, the set covers bases within one bound-1 step of its Niggli basis;
    # centred on both, any re-basing of the prediction is covered.
    max_entry = 3 if options.get("center") == "both" else 1
    M = random_unimodular((3,), max_entry=max_entry, generator=torch.Generator().manual_seed(5))
    loss = get_loss(name, normalize=False, **options)
    # zero_at_match: the label itself, in its reduced basis and translated, scores exactly 0.
    shifted = CrystalBatch(label.lattice, label.frac + 0.37, label.num_atoms, label.species)
    assert float(loss(shifted, label).per_crystal.abs().max()) <= 1e-12
    # Re-based, it is 0 up to the candidates one basis's bounded set has and the other's lacks: of
    # weight exp(-d/τ), d a few Å², for the Cartesian metric; with the metric alone every automorphism
    # ties and at most τ log 48 (the automorphisms the bounded set misses) separates the two.
    value = loss(label.apply_basis_change(M), label).per_crystal
    bound = 1e-6 if options.get("lattice_metric", "gram" if name == "gram" else "cartesian") == "cartesian" else 0.1 * math.log(48)
    assert bool((value.abs() <= bound).all()), value


def test_softmin_tends_to_the_minimum_over_candidates_as_tau_vanishes():
    label = CrystalBatch(torch.diag(torch.tensor([4.0, 5.0, 6.5], dtype=torch.float64))[None],
                         torch.tensor([[0.0, 0, 0], [0.3, 0.4, 0.5]], dtype=torch.float64), torch.tensor([2]),
                         torch.tensor([3, 8]))
    pred = noisy_copy(label, 0, scale=0.3)
    values = [float(get_loss("softmin", tau=tau, top_k=6960)(pred, label).loss) for tau in (1.0, 0.1, 0.01, 1e-4)]
    hard = float(get_loss("softmin", tau=1e-8, top_k=6960)(pred, label).loss)
    gaps = [hard - v for v in values]
    assert all(g >= -1e-9 for g in gaps) and gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-3


@pytest.mark.parametrize("name, options", CONTINUOUS[:4])
@settings(max_examples=25)
@given(lattice=lattices("pathological"))
def test_losses_and_gradients_are_finite_for_pathological_predictions(name, options, lattice):
    label = CrystalBatch(torch.diag(torch.tensor([4.0, 5.0, 6.5], dtype=torch.float64))[None],
                         torch.tensor([[0.0, 0, 0], [0.3, 0.4, 0.5]], dtype=torch.float64), torch.tensor([2]))
    L = lattice[None].clone().requires_grad_()
    F = label.frac.clone().requires_grad_()
    result = get_loss(name, **options)(CrystalBatch(L, F, label.num_atoms), label)
    result.loss.backward()
    assert math.isfinite(float(result.loss.detach()))
    assert bool(torch.isfinite(L.grad).all()) and bool(torch.isfinite(F.grad).all())


def test_bad_options_raise_at_construction():
    with pytest.raises(ValueError, match="tau"):
        get_loss("softmin", tau=0.0)
    with pytest.raises(ValueError, match="bound"):
        get_loss("softmin", bound=3)
    with pytest.raises(ValueError, match="coords"):
        get_loss("gram", coords="chamfer")
    with pytest.raises(ValueError, match="unknown option"):
        get_loss("gram", lattice_metric="cartesian")


def test_proxy_jumps_across_a_niggli_boundary_where_continuous_losses_do_not():
    ts, curves, rows = continuity_path(num_points=201)
    steps = {r["loss"]: r["max_step"] for r in rows}
    assert steps["proxy"] > 1.0  # the target switches basis at t = 0.5
    for name in ("softmin", "gram", "softmin (center=both)"):
        assert steps[name] < 1e-2, (name, steps[name])


@pytest.mark.parametrize("scale", [1e-100, 1e77, 1e100])
def test_gram_softmin_is_finite_at_extreme_scales(scale):
    # The quartic metric difference overflowed float64 beyond ~1e77 before it was computed on scaled cells.
    label = CrystalBatch(torch.diag(torch.tensor([4.0, 5.0, 6.5], dtype=torch.float64))[None],
                         torch.tensor([[0.0, 0, 0], [0.3, 0.4, 0.5]], dtype=torch.float64), torch.tensor([2]))
    L = (scale * torch.tensor([[-2.0, 0, 0], [-1.7321, -1.0, 0], [-1.7321, -0.46410, 0.88578]],
                              dtype=torch.float64))[None].requires_grad_()
    result = get_loss("softmin", lattice_metric="gram")(CrystalBatch(L, label.frac, label.num_atoms), label)
    result.loss.backward()
    assert math.isfinite(float(result.loss.detach())) and bool(torch.isfinite(L.grad).all())


# --------------------------------------------------------------------------------------- gradients


def _finite_difference_gradient(fn, x: torch.Tensor, h: float) -> torch.Tensor:
    grad = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x).flatten()
        e[i] = h
        e = e.reshape(x.shape)
        grad.view(-1)[i] = (fn(x + e) - fn(x - e)) / (2 * h)
    return grad


@pytest.mark.parametrize("name, options", [("softmin", {"zero_at_match": False}), ("gram", {"zero_at_match": False}),
                                           ("softmin", {"lattice_metric": "gram", "zero_at_match": False}),
                                           ("softmin", {"center": "both", "zero_at_match": False})])
@settings(max_examples=6, deadline=None)
@given(label=st.one_of(crystals(max_atoms=3, max_crystals=1), symmetric_crystals(max_atoms=3, max_crystals=1)),
       seed=st.integers(0, 2**16))
def test_the_backward_pass_is_the_derivative_where_every_candidate_weighs_0_or_1(name, options, label, seed):
    # The window's taper weight is held fixed in backward (a surrogate): exact where no candidate is
    # strictly inside the taper band, which is what this test picks (and the steps stay in).
    loss = get_loss(name, **options)
    pred = noisy_copy(label, seed, scale=0.05)
    h = 1e-6

    def tapers_are_0_or_1(L):
        _, taper = loss._tapers(CrystalBatch(L, pred.frac, pred.num_atoms, pred.species), label)
        return bool(((taper <= 1e-12) | (taper >= 1 - 1e-12)).all())

    L0 = pred.lattice.clone()
    near = [L0 + h * d for d in (torch.zeros_like(L0), *torch.eye(9, dtype=L0.dtype).reshape(9, 1, 3, 3),
                                 *-torch.eye(9, dtype=L0.dtype).reshape(9, 1, 3, 3))]
    assume(all(tapers_are_0_or_1(L) for L in near))
    L = L0.clone().requires_grad_()
    F = pred.frac.clone().requires_grad_()
    loss(CrystalBatch(L, F, pred.num_atoms, pred.species), label).loss.backward()

    def value_of_lattice(x):
        return float(loss(CrystalBatch(x, pred.frac, pred.num_atoms, pred.species), label).loss)

    def value_of_frac(x):
        return float(loss(CrystalBatch(L0, x, pred.num_atoms, pred.species), label).loss)

    fd_L = _finite_difference_gradient(value_of_lattice, L0, h)
    torch.testing.assert_close(L.grad, fd_L, rtol=1e-4, atol=1e-6 * max(1.0, float(fd_L.abs().max())))
    fd_F = _finite_difference_gradient(value_of_frac, pred.frac.clone(), h)
    torch.testing.assert_close(F.grad, fd_F, rtol=1e-4, atol=1e-6 * max(1.0, float(fd_F.abs().max())))


def test_the_backward_pass_differs_from_the_derivative_inside_the_taper_band():
    # The documented exception: with a candidate inside the band, the weight's own derivative is left out.
    label = CrystalBatch(torch.diag(torch.tensor([4.0, 4.0, 6.5], dtype=torch.float64))[None],
                         torch.tensor([[0.0, 0, 0], [0.3, 0.4, 0.5]], dtype=torch.float64), [2], [3, 8])
    loss = get_loss("softmin", zero_at_match=False, top_k=1)
    # Between two bases of the label, the second one inside the band of the first.
    L0 = label.lattice.clone()
    L0[0, 1, 0] = 2.0 - 0.002
    _, taper = loss._tapers(CrystalBatch(L0, label.frac, [2], [3, 8]), label)
    assert bool(((taper > 1e-6) & (taper < 1 - 1e-6)).any())
    L = L0.clone().requires_grad_()
    loss(CrystalBatch(L, label.frac, [2], [3, 8]), label).loss.backward()
    fd = _finite_difference_gradient(
        lambda x: float(loss(CrystalBatch(x, label.frac, [2], [3, 8]), label).loss), L0, 1e-7)
    assert float((L.grad - fd).abs().max()) > 1e-6


@pytest.mark.parametrize("name, options", [("softmin", {}), ("gram", {}), ("softmin", {"lattice_metric": "gram"})])
@settings(max_examples=6, deadline=None)
@given(label=st.one_of(crystals(max_atoms=3, max_crystals=2), symmetric_crystals(max_atoms=3, max_crystals=2)),
       seed=st.integers(0, 2**16))
def test_the_offset_of_zero_at_match_shifts_the_value_and_leaves_the_gradient(name, options, label, seed):
    # The offset (what a perfect prediction would score) is detached: the backward pass is the plain
    # softmin's. Its value moves with the prediction only through which candidate is nearest.
    pred = noisy_copy(label, seed, scale=0.05)
    grads = []
    for zero_at_match in (True, False):
        L = pred.lattice.clone().requires_grad_()
        F = pred.frac.clone().requires_grad_()
        get_loss(name, zero_at_match=zero_at_match, **options)(CrystalBatch(L, F, pred.num_atoms, pred.species),
                                                               label).loss.backward()
        grads.append((L.grad, F.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
