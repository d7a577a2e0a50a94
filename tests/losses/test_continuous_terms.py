"""Properties of the continuous building blocks: softmin distances, theta series, volume, Sinkhorn."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from soft_niggli.losses.invariants import theta_series, theta_term, volume_term
from soft_niggli.losses.candidates import (
    lattice_distances,
    lattice_distances_naive,
    metric_distances,
    metric_distances_naive,
    soft_minimum,
)
from soft_niggli import random_unimodular
from soft_niggli.niggli import niggli_reduce
from soft_niggli.testing import lattices, near_face_lattices, rotations, unimodular_matrices
from soft_niggli.losses.sinkhorn import sinkhorn_coordinate_loss

pairs = st.lists(st.tuples(lattices("realistic"), lattices("realistic")), min_size=1, max_size=4).map(
    lambda p: (torch.stack([a for a, _ in p]), torch.stack([b for _, b in p])))


@settings(max_examples=20)
@given(pairs, st.sampled_from([1, 2]))
def test_inner_product_distances_equal_the_naive_form(pair, bound):
    Lp, Lr = pair
    torch.testing.assert_close(lattice_distances(Lp, Lr, bound), lattice_distances_naive(Lp, Lr, bound),
                               rtol=1e-9, atol=1e-9)
    if bound == 1:  # the metric form at bound 2 builds a (81*81, 135408) table: too big for a unit test
        Gp, Gr = Lp @ Lp.transpose(1, 2), Lr @ Lr.transpose(1, 2)
        torch.testing.assert_close(metric_distances(Gp, Gr), metric_distances_naive(Gp, Gr), rtol=1e-9, atol=1e-6)


@given(st.lists(st.floats(0.0, 100.0), min_size=2, max_size=50), st.floats(1e-3, 10.0))
def test_soft_minimum_is_bounded_by_the_minimum(values, tau):
    d = torch.tensor(values, dtype=torch.float64)
    s = soft_minimum(d, tau)
    assert float(s) <= float(d.min()) + 1e-12
    assert float(s) >= float(d.min()) - tau * math.log(len(values)) - 1e-9
    normalized = soft_minimum(d, tau, normalize=True)
    assert float(normalized) >= float(d.min()) - 1e-9


def test_soft_minimum_tends_to_the_minimum_as_tau_vanishes():
    d = torch.tensor([3.0, 1.0, 1.5, 7.0], dtype=torch.float64)
    gaps = [float(d.min() - soft_minimum(d, tau)) for tau in (1.0, 0.1, 0.01, 0.001)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6


@pytest.mark.invariance
@given(st.one_of(lattices("realistic"), lattices("symmetric"), near_face_lattices()), rotations(),
       st.integers(0, 2**16))
def test_theta_series_is_basis_and_rotation_invariant(L, Q, seed):
    # A sum over a ball of lattice vectors: whichever basis (entries up to 5) the cell comes in, and
    # whichever of its reduced forms the reducer returns, the same vectors with the same weights. Only
    # rounding is left (a box of coefficients in the reduced basis left 4e-5).
    M = random_unimodular((1,), max_entry=5, generator=torch.Generator().manual_seed(seed)).double()
    a = theta_series(L[None])
    b = theta_series(M @ L @ Q.T)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@given(lattices("realistic"), st.floats(-1.0, 1.0), st.sampled_from([1e-9, 1e-6, 1e-3]))
def test_theta_series_moves_in_proportion_to_a_move_of_the_cell(L, direction, step):
    # Vectors enter and leave the ball with weight 0 (a smooth cutoff): no jump when one crosses it.
    E = torch.zeros(3, 3, dtype=torch.float64)
    E[0, 0], E[1, 2] = 1.0, direction
    a, b = theta_series(L[None]), theta_series((L + step * float(L.abs().max()) * E)[None])
    assert float((a - b).abs().max()) <= 1e3 * step


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_theta_term_is_continuous_at_a_zero_cell_with_a_bounded_gradient(dtype):
    # The series sees a cell's shape, which a shrinking cell keeps and a zero cell does not have: the term
    # fades out as the prediction's volume vanishes, so it tends to its value at zero (0), and its
    # gradient stays bounded instead of growing as 1 / scale (7e8 at 1e-16 in float32).
    L = torch.tensor([[[4.0, 0, 0], [0.5, 4.2, 0], [0.3, 0.2, 5.0]]], dtype=dtype)
    target = torch.tensor([[[3.0, 0, 0], [0, 3.5, 0.2], [0.1, 0, 4.0]]], dtype=dtype)
    previous = None
    for scale in (1.0, 0.3, 0.1, 1e-2, 1e-4, 1e-8, 1e-16, 1e-30, 0.0):
        P = (scale * L).requires_grad_()
        value = theta_term(P, target)
        value.sum().backward()
        assert math.isfinite(float(value.detach())) and float(P.grad.abs().max()) <= 0.1, (scale, P.grad)
        if scale <= 1e-8:
            assert float(value.detach()) <= 1e-12 * max(1.0, float(previous))
        previous = float(value.detach())
    assert float(theta_term(torch.zeros_like(L), target)) == 0.0


@pytest.mark.invariance
@given(lattices("realistic"), lattices("realistic"), unimodular_matrices(1, depth=3), rotations())
def test_volume_and_theta_terms_are_invariant_in_both_arguments(Lp, Lt, M, Q):
    moved = (M.double() @ Lt @ Q.T)[None]
    torch.testing.assert_close(volume_term(Lp[None], moved), volume_term(Lp[None], Lt[None]), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(theta_term(Lp[None], moved), theta_term(Lp[None], Lt[None]), rtol=1e-6, atol=1e-9)


@settings(max_examples=100)
@given(lattices("pathological"))
def test_invariant_terms_have_finite_values_and_gradients_on_pathological_cells(L):
    target = torch.diag(torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64))[None]
    Lp = L[None].clone().requires_grad_()
    total = (theta_term(Lp, target) + volume_term(Lp, target)).sum()
    total.backward()
    assert math.isfinite(float(total.detach())) and bool(torch.isfinite(Lp.grad).all())


@pytest.mark.parametrize("thin", [1e-6, 1e-8, 1e-10])
def test_a_nearly_flat_cell_is_bounded_and_leaves_the_rest_of_its_batch_alone(thin):
    # One row ~1e-8 Å: its ball (in units of V^(1/3)) holds a line of millions of multiples of that row.
    from soft_niggli.losses import invariants

    flat = torch.diag(torch.tensor([4.0, 5.0, thin], dtype=torch.float64))
    # As given (the thin row outermost) and reduced as theta_series enumerates it (the thin row first, so
    # its line runs in the innermost loop).
    for basis in (flat, niggli_reduce(flat).lattice):
        owner, _ = invariants.ball_vectors(basis[None] @ basis[None].mT / (4 * 5 * thin) ** (2 / 3), 5.0)
        assert owner.numel() <= invariants._BALL_CAP
    g = torch.Generator().manual_seed(0)
    cells = torch.diag(torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)) + 0.5 * torch.randn(
        32, 3, 3, generator=g, dtype=torch.float64)
    both = torch.cat([cells, flat[None]]).requires_grad_()
    series = theta_series(both)
    series.sum().backward()
    torch.testing.assert_close(series[:-1], theta_series(cells), rtol=1e-12, atol=0)
    assert bool(torch.isfinite(series).all()) and bool(torch.isfinite(both.grad).all())


def crystals_for_ot(seed, B=3, N=6):
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(B, N, 3, generator=g, dtype=torch.float64)
    species = torch.randint(1, 4, (B, N), generator=g)
    lattice = torch.diag(torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64)).expand(B, 3, 3).clone()
    return frac, species, lattice, torch.ones(B, N, dtype=torch.bool)


@pytest.mark.parametrize("seed", range(3))
def test_sinkhorn_term_is_invariant_to_atom_order_and_wrapping(seed):
    frac, species, lattice, mask = crystals_for_ot(seed)
    pred = frac + 0.03 * torch.randn(frac.shape, generator=torch.Generator().manual_seed(seed + 10), dtype=frac.dtype)
    base = sinkhorn_coordinate_loss(pred, frac, mask, lattice, species, species)
    perm = torch.randperm(frac.shape[1], generator=torch.Generator().manual_seed(seed))
    permuted = sinkhorn_coordinate_loss(pred[:, perm], frac, mask, lattice, species[:, perm], species)
    wrapped = sinkhorn_coordinate_loss(pred + torch.tensor([1.0, -2.0, 3.0], dtype=pred.dtype), frac, mask, lattice,
                                       species, species)
    torch.testing.assert_close(permuted, base, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(wrapped, base, rtol=1e-6, atol=1e-8)
    assert bool((base > 0).all())


@pytest.mark.parametrize("seed", range(3))
def test_sinkhorn_term_is_translation_invariant_and_zero_on_the_label(seed):
    frac, species, lattice, mask = crystals_for_ot(seed)
    zero = sinkhorn_coordinate_loss(frac, frac, mask, lattice, species, species)
    assert float(zero.abs().max()) < 1e-8
    shifted = torch.remainder(frac + torch.tensor([0.3, 0.55, -0.2], dtype=frac.dtype), 1.0)
    torch.testing.assert_close(sinkhorn_coordinate_loss(shifted, frac, mask, lattice, species, species), zero,
                               rtol=0, atol=1e-6)


@pytest.mark.invariance
@settings(max_examples=15, deadline=None)
@given(lattices("realistic"), unimodular_matrices(1, depth=3), st.integers(0, 2**16))
def test_sinkhorn_term_depends_on_the_lattice_not_its_basis(L, M, seed):
    # The same crystals given in a skewed basis M L (coordinates F M⁻¹): the cost's nearest image is
    # searched in the lattice's reduced basis, so nothing changes beyond rounding.
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(1, 4, 3, generator=g, dtype=torch.float64)
    pred = target + 0.1 * torch.randn(target.shape, generator=g, dtype=torch.float64)
    species, mask = torch.tensor([[1, 1, 2, 3]]), torch.ones(1, 4, dtype=torch.bool)
    M_inv = torch.linalg.inv(M.double())
    base = sinkhorn_coordinate_loss(pred, target, mask, L[None], species, species)
    moved = sinkhorn_coordinate_loss(pred @ M_inv, target @ M_inv, mask, (M.double() @ L)[None], species, species)
    torch.testing.assert_close(moved, base, rtol=1e-6, atol=1e-9)


def test_sinkhorn_term_has_finite_gradients_and_rejects_bad_shapes():
    frac, species, lattice, mask = crystals_for_ot(0)
    pred = frac.clone().requires_grad_()
    sinkhorn_coordinate_loss(pred, torch.rand_like(frac), mask, lattice, species, species).sum().backward()
    assert bool(torch.isfinite(pred.grad).all())
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        sinkhorn_coordinate_loss(frac[..., :2], frac, mask, lattice)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@pytest.mark.parametrize("closed_form", [False, True], ids=["margin-callable", "margin-closed-form"])
@pytest.mark.parametrize("metric", ["cartesian", "gram"])
@pytest.mark.parametrize("bound, proper, k", [(1, False, 8), (1, True, 3), (2, False, 8), (1, False, 1), (1, False, 600)])
def test_window_candidates_returns_exactly_the_window_of_the_whole_candidate_set(metric, bound, proper, k, compiled,
                                                                                  closed_form, monkeypatch):
    import soft_niggli.losses.windows as windows
    from soft_niggli.losses.candidates import candidate_set
    from soft_niggli.losses.windows import WindowMargin, window_candidates
    from soft_niggli.losses.terms import lattice_term
    from soft_niggli.lattice import lattice_from_parameters

    g = torch.Generator().manual_seed(3)
    cubic = 4.0 * torch.eye(3, dtype=torch.float64)
    hexagonal = lattice_from_parameters(3.0, 3.0, 5.0, 90.0, 90.0, 120.0).to(torch.float64)
    fcc = 2.0 * torch.tensor([[0.0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=torch.float64)
    generic = torch.diag(torch.tensor([3.0, 4.0, 5.5], dtype=torch.float64)) + 0.4 * torch.rand(3, 3, generator=g, dtype=torch.float64)
    R = torch.stack([cubic, hexagonal, fcc, generic] * 4)
    # Predictions: the label itself, noisy copies, a re-based noisy copy (far from every candidate), a tiny cell.
    M = torch.tensor([[1, 2, 0], [0, 1, 0], [1, 1, 1]], dtype=torch.float64)
    P = torch.cat([R[:4], R[4:8] + 0.05 * torch.randn(4, 3, 3, generator=g, dtype=torch.float64),
                   M @ R[8:12] + 0.1 * torch.randn(4, 3, 3, generator=g, dtype=torch.float64),
                   0.05 * torch.randn(4, 3, 3, generator=g, dtype=torch.float64)])
    U = candidate_set(bound, proper, torch.int64, "cpu")
    if not compiled:  # the PyTorch stages (GPU tensors, or no C compiler at install)
        monkeypatch.setattr(windows, "_kernel", None)
    elif windows._kernel is None:
        pytest.skip("the compiled loss kernel was not built")

    def margin(kth, rows=None):
        return torch.clamp(0.01 * kth + 1e-6, max=0.1)

    if closed_form:  # the same margin, known in closed form (the compiled search does one pass)
        margin = WindowMargin(relative=0.01, absolute=torch.full((len(P),), 1e-6, dtype=torch.float64), cap=0.1,
                              extra=torch.zeros(len(P), dtype=torch.float64))
    exact = lattice_term(P[:, None], U.double() @ R[:, None], metric)  # (B, K)
    kth = exact.topk(min(k, exact.shape[1]), dim=1, largest=False).values[:, -1]
    inside = (exact <= (kth + margin(kth))[:, None]).nonzero().tolist()
    want = {(b, tuple(U[c].flatten().tolist())) for b, c in inside}
    owner, X = window_candidates(P, R, k, margin, bound, proper, metric)
    got = {(int(b), tuple(x.flatten().tolist())) for b, x in zip(owner, X)}
    assert len(got) == len(owner)  # no candidate twice
    # Ties at the window's edge may add a candidate or two within rounding; none is missing.
    assert want <= got and len(got - want) <= 2, (len(want), len(got))


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "pytorch"])
@settings(max_examples=25, deadline=None)
@given(counts=st.lists(st.integers(0, 7), min_size=1, max_size=5), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_periodic_loss_of_pairs_equals_the_flat_loss_on_repeated_atoms(counts, seed, dtype, compiled):
    import soft_niggli.losses.periodic as periodic

    if compiled and periodic._kernel is None:
        pytest.skip("the compiled loss kernel was not built")
    saved = periodic._kernel
    periodic._kernel = saved if compiled else None  # (hypothesis: no function-scoped monkeypatch)
    try:
        _check_pairs_against_the_flat_loss(counts, seed, dtype)
    finally:
        periodic._kernel = saved


def _check_pairs_against_the_flat_loss(counts, seed, dtype):
    from soft_niggli.crystal import repeat_atoms
    from soft_niggli.lattice import integer_inverse
    from soft_niggli.losses.periodic import periodic_coordinate_loss, periodic_loss_of_pairs
    from soft_niggli.unimodular import random_unimodular

    g = torch.Generator().manual_seed(seed)
    num = torch.tensor(counts)
    N = int(num.sum())
    pred = torch.rand(N, 3, generator=g, dtype=dtype).requires_grad_()
    target = torch.rand(N, 3, generator=g, dtype=dtype)
    crystal = torch.randint(0, len(counts), (9,), generator=g)
    X = integer_inverse(random_unimodular((9,), max_entry=2, generator=g)).to(dtype)
    pairs = periodic_loss_of_pairs(pred, target, num, crystal, X)
    atom, pair = repeat_atoms(num, crystal)
    flat = periodic_coordinate_loss(pred[atom], (target[atom][:, None, :] @ X[pair]).squeeze(1), pair, 9)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(pairs, flat, rtol=tol, atol=tol)
    if int(num[crystal].sum()):  # (without atoms in any pair the flat loss is a constant, outside the graph)
        grads = [torch.autograd.grad(v.sum(), pred)[0] for v in (pairs, flat)]
        torch.testing.assert_close(grads[0], grads[1], rtol=tol, atol=tol)


def test_rows_in_matches_a_set_lookup_for_small_and_huge_entries():
    # center="both" drops frame-1 candidates that frame 2 also reaches: keys in base 2m+1, or whole rows.
    from soft_niggli.losses._candidate_softmin import rows_in

    def reference(o1, X1, o2, X2):
        seen = {(int(o), tuple(x.flatten().tolist())) for o, x in zip(o2, X2)}
        return torch.tensor([(int(o), tuple(x.flatten().tolist())) in seen for o, x in zip(o1, X1)], dtype=torch.bool)

    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        n1, n2, b = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((0, 30), (0, 30), (1, 4)))
        o1, X1 = torch.randint(0, 4, (n1,), generator=g), torch.randint(-b, b + 1, (n1, 3, 3), generator=g)
        o2, X2 = torch.randint(0, 4, (n2,), generator=g), torch.randint(-b - 2, b + 3, (n2, 3, 3), generator=g)
        k = min(n1, n2, 5)  # some exact matches
        o2[:k], X2[:k] = o1[:k], X1[:k]
        assert torch.equal(rows_in(o1, X1, o2, X2), reference(o1, X1, o2, X2))
    huge = torch.tensor([[[10**6, 0, 0], [0, 1, 0], [0, 0, 1]]])  # keys would overflow: whole rows compared
    assert rows_in(torch.tensor([0]), huge, torch.tensor([0, 1]), huge.repeat(2, 1, 1)).tolist() == [True]
