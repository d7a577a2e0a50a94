"""The compiled loops of the losses (``soft_niggli._loss_kernel``, sources in soft_niggli/_kernels/) against
the PyTorch code they replace.

The kernel computes in float64 and the PyTorch code in the input's precision, so the two agree to
rounding rather than bit for bit: the periodic term of many pairs (values and gradients, also with
respect to the target's coordinates), the candidate window (the same candidates, on cells of every
kind: symmetric, noisy, re-based far from every candidate, pathological, a prediction of all zeros),
the window of grouped rows and the lattice vectors in a ball. The losses built on them (and on the
reduced forms of ``soft_niggli._lattice_kernel``, tests/test_lattice_kernel.py) must then give the
same values and gradients either way. The window's exactness against scoring all candidates is tested
in test_continuous_terms.py, for both paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import soft_niggli._reduced_forms as enumeration
import soft_niggli.losses.invariants as invariants
import soft_niggli.losses.periodic as periodic
import soft_niggli.losses.windows as windows
from soft_niggli import CrystalBatch, get_loss, random_unimodular
from soft_niggli.lattice import integer_inverse
from soft_niggli.testing import lattices, near_face_lattices, symmetric_crystals, symmetric_lattices

pytestmark = pytest.mark.skipif(periodic._kernel is None, reason="the compiled loss kernel was not built")


class pytorch_code:
    """Context manager: run the PyTorch (and NumPy) code instead of the compiled loops, in every module the
    losses use (the reduced forms of the labels included)."""

    def __enter__(self):
        self.saved = periodic._kernel, windows._kernel, invariants._kernel, enumeration._compiled_reduced_forms
        periodic._kernel = windows._kernel = invariants._kernel = enumeration._compiled_reduced_forms = None

    def __exit__(self, *exc):
        periodic._kernel, windows._kernel, invariants._kernel, enumeration._compiled_reduced_forms = self.saved


def _pairs_inputs(seed, dtype, counts):
    g = torch.Generator().manual_seed(seed)
    num = torch.tensor(counts)
    N = int(num.sum())
    pred = torch.rand(N, 3, generator=g, dtype=dtype) * 3 - 1  # unwrapped values too
    target = torch.rand(N, 3, generator=g, dtype=dtype)
    crystal = torch.randint(0, len(counts), (11,), generator=g)
    X = integer_inverse(random_unimodular((11,), max_entry=2, generator=g)).to(dtype)
    return pred, target, num, crystal, X


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(0, 60), min_size=1, max_size=4), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_periodic_pairs_kernel_matches_the_pytorch_code_in_values_and_both_gradients(counts, seed, dtype):
    pred, target, num, crystal, X = _pairs_inputs(seed, dtype, counts)  # up to 60 atoms: past the insertion sort

    def run():
        p, t = pred.clone().requires_grad_(), target.clone().requires_grad_()
        value = periodic.periodic_loss_of_pairs(p, t, num, crystal, X)
        weights = torch.linspace(0.5, 1.5, len(value), dtype=dtype)
        if p.shape[0] == 0:
            return value, None, None
        gp, gt = torch.autograd.grad((weights * value).sum(), (p, t))
        return value, gp, gt

    compiled = run()
    with pytorch_code():
        reference = run()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for a, b in zip(compiled, reference):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_periodic_pairs_kernel_on_atoms_half_a_period_apart():
    # Two atoms 1/2 apart along every axis: two arcs tie exactly; either gives the same value.
    pred = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    target = torch.zeros(2, 3, dtype=torch.float64)
    args = (torch.tensor([2]), torch.tensor([0]), torch.eye(3, dtype=torch.float64)[None])
    value = periodic.periodic_loss_of_pairs(pred, target, *args)
    with pytorch_code():
        reference = periodic.periodic_loss_of_pairs(pred, target, *args)
    torch.testing.assert_close(value, reference, rtol=1e-14, atol=1e-14)
    assert abs(float(value) - 0.0625) < 1e-14  # residuals ±1/4 on every axis


def _window_pair(L_pred, L_ref, k, metric, bound=1, proper=False):
    def margin(kth, rows=None):
        return torch.clamp(0.01 * kth + 1e-6, max=0.1)

    out = windows.window_candidates(L_pred, L_ref, k, margin, bound, proper, metric)
    with pytorch_code():
        ref = windows.window_candidates(L_pred, L_ref, k, margin, bound, proper, metric)
    return [{(int(b), tuple(x.flatten().tolist())) for b, x in zip(*r)} for r in (out, ref)]


@settings(max_examples=25, deadline=None)
@given(ref=symmetric_lattices(noise=0.0, rebase=False), pred=st.one_of(symmetric_lattices(), lattices("realistic")),
       metric=st.sampled_from(["cartesian", "gram"]), k=st.sampled_from([1, 8, 48]),
       proper=st.booleans(), seed=st.integers(0, 2**16))
def test_window_kernel_matches_the_pytorch_stages(ref, pred, metric, k, proper, seed):
    g = torch.Generator().manual_seed(seed)
    R = ref.to(torch.float64).reshape(1, 3, 3)
    P = torch.cat([R, R + 0.02 * torch.randn(1, 3, 3, generator=g, dtype=torch.float64),
                   pred.to(torch.float64).reshape(1, 3, 3)])
    compiled, reference = _window_pair(P, R.expand(3, 3, 3), k, metric, proper=proper)
    # Ties at the window's edge may differ by rounding (float64 here against the stages' sums).
    assert reference <= compiled or len(reference ^ compiled) <= 2, (len(reference), len(compiled))


@pytest.mark.parametrize("metric", ["cartesian", "gram"])
def test_window_kernel_on_pathological_and_non_finite_cells(metric):
    g = torch.Generator().manual_seed(0)
    R = torch.diag(torch.tensor([1e-6, 1.0, 1e6], dtype=torch.float64))[None].expand(4, 3, 3).clone()
    P = torch.stack([R[0], 1e3 * torch.randn(3, 3, generator=g, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64),
                     torch.full((3, 3), float("nan"), dtype=torch.float64)])
    compiled, reference = _window_pair(P, R, 8, metric)
    assert not any(b == 3 for b, _ in compiled)  # a non-finite cell gets no candidate
    assert {c for c in reference if c[0] < 3} <= compiled


LOSSES = [("softmin", {}), ("gram", {}), ("softmin", {"center": "both"}), ("softmin", {"lattice_metric": "gram"}),
          ("reduced-forms", {"cache_bytes": 0}), ("proxy", {})]


@settings(max_examples=12, deadline=None)
@given(labels=symmetric_crystals(("perovskite", "wurtzite", "zincblende", "rocksalt_conventional", "generic"),
                                 max_crystals=3),
       which=st.sampled_from(range(len(LOSSES))), dtype=st.sampled_from([torch.float64, torch.float32]),
       seed=st.integers(0, 2**16))
def test_losses_give_the_same_values_and_gradients_with_the_kernel_and_without(labels, which, dtype, seed):
    name, options = LOSSES[which]
    g = torch.Generator().manual_seed(seed)
    M = random_unimodular((len(labels),), max_entry=2, generator=g)
    noisy = CrystalBatch(labels.lattice + 0.05 * torch.randn(labels.lattice.shape, generator=g, dtype=torch.float64),
                         labels.frac + 0.02 * torch.randn(labels.frac.shape, generator=g, dtype=torch.float64),
                         labels.num_atoms, labels.species)
    pred = noisy.apply_basis_change(M).to(dtype=dtype)
    target = labels.to(dtype=dtype)
    loss = get_loss(name, **options)

    def run():
        L, F = pred.lattice.clone().requires_grad_(), pred.frac.clone().requires_grad_()
        value = loss(CrystalBatch(L, F, pred.num_atoms, pred.species), target).per_crystal
        return (value, *torch.autograd.grad(value.sum(), (L, F)))

    compiled = run()
    with pytorch_code():
        reference = run()
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for a, b in zip(compiled, reference):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_kernel_rejects_mismatched_buffers():
    kernel = periodic._kernel
    f = np.zeros((2, 3))
    i = np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="do not match"):  # crystal index beyond the batch
        kernel.periodic_pairs(f, f, i, np.array([2]), np.array([5]), np.zeros((1, 9)), i, np.zeros(1), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="do not match"):  # a cell of 8 numbers
        kernel.window(np.zeros(8), np.zeros(8), np.zeros((26, 3), dtype=np.int64), 0, 0, 8, np.zeros(1), np.zeros(1),
                      np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64))


@settings(max_examples=30, deadline=None)
@given(cells=st.lists(st.one_of(symmetric_lattices(), lattices("realistic")), min_size=1, max_size=3),
       radius=st.floats(0.5, 6.0))
def test_ball_vectors_kernel_finds_the_vectors_of_the_numpy_enumeration(cells, radius):
    L = torch.stack([c.reshape(3, 3) for c in cells]).to(torch.float64)
    G = L @ L.transpose(1, 2) / torch.linalg.det(L).abs()[:, None, None] ** (2 / 3)
    compiled = invariants.ball_vectors(G, radius)
    with pytorch_code():
        reference = invariants.ball_vectors(G, radius)
    as_set = lambda r: {(int(b), tuple(n.tolist())) for b, n in zip(*r)}  # noqa: E731
    assert as_set(compiled) == as_set(reference)
    # Each is one of a ± pair, inside the ball.
    owner, n = compiled
    q = torch.einsum("pi,pij,pj->p", n.double(), G[owner], n.double())
    # The kernel's exact test sums in another order: a vector on the sphere may land 1 ulp either side.
    assert bool((q <= radius**2 * (1 + 1e-12)).all()) and not bool((n == 0).all(1).any())


@settings(max_examples=20, deadline=None)
@given(labels=st.lists(st.one_of(symmetric_lattices(), near_face_lattices()), min_size=1, max_size=3),
       metric=st.sampled_from(["cartesian", "gram"]), k=st.sampled_from([1, 8, 30]), seed=st.integers(0, 2**16))
def test_grouped_window_kernel_returns_the_window_of_the_pytorch_code(labels, metric, k, seed):
    # Rows: the classes of each label's reduced forms, penalised by made-up weights; the prediction a
    # noisy copy of the label. Both paths choose the same bases, each once, from the same row.
    loss = get_loss("softmin", lattice_metric=metric, top_k=k, cache_bytes=0)
    L = torch.stack([c.reshape(3, 3) for c in labels]).to(torch.float64)
    crystal, T, T_inv, relative, R, log_weight = loss._label_frame(L)
    g = torch.Generator().manual_seed(seed)
    P = (L + 0.05 * torch.randn(L.shape, generator=g, dtype=torch.float64))[crystal]
    penalty = torch.where(torch.rand(len(crystal), generator=g) < 0.3, 0.05 * torch.rand(len(crystal), generator=g),
                          torch.zeros(len(crystal))).double()
    # Rows in order of increasing penalty within each crystal, as the function expects.
    order = torch.from_numpy(np.lexsort((penalty.numpy(), crystal.numpy())))
    P, R, penalty, relative, crystal = P[order], R[order], penalty[order], relative[order], crystal[order]
    counts = torch.bincount(crystal, minlength=len(L))
    start = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    scale = P.square().sum(dim=(1, 2)) + R.square().sum(dim=(1, 2))
    margin = windows.WindowMargin(relative=0.01, absolute=1e-6 * scale / 18, cap=0.1, extra=1e-12 * scale)

    def run():
        owner, X = windows.grouped_window_candidates(P, R, k, margin, penalty, start, relative, 1, False, metric)
        return {(int(crystal[o]), tuple((x @ relative[o]).flatten().tolist())): int(o) for o, x in zip(owner, X)}

    compiled = run()
    with pytorch_code():
        reference = run()
    # Bases tied at the window's edge may differ by rounding (float64 sums against the exact terms).
    assert len(set(compiled) ^ set(reference)) <= 2, (len(compiled), len(reference))
    assert all(compiled[b] == reference[b] for b in set(compiled) & set(reference))


@pytest.mark.parametrize("name, options", [("softmin", {"lattice_metric": "gram"}), ("gram", {}), ("softmin", {}),
                                           ("gram", {"center": "both"})])
def test_a_prediction_of_all_zeros_scores_alike_with_the_kernel_and_without_and_is_a_limit(name, options):
    # A zero-initialised lattice head emits exactly this: the metric window's budget A |P|^2 is then 0,
    # and without a slack of its own rounding pruned every candidate. Scaled copies below 1e-160 of the
    # label square to zero as well; the loss tends to its value at zero as the scale does.
    L = torch.tensor([[[4.0, 0, 0], [0.5, 4.2, 0], [0.3, 0.2, 5.0]], [[3.9, 0, 0], [0, 3.9, 0], [0, 0, 3.9]],
                      [[0.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 0.0]]], dtype=torch.float64)
    F = torch.tensor([[0.0, 0, 0], [0.3, 0.4, 0.5], [0.0, 0, 0], [0.5, 0.5, 0.5], [0.0, 0, 0]], dtype=torch.float64)
    label = CrystalBatch(L, F, [2, 2, 1], [8, 14, 26, 8, 29])
    loss = get_loss(name, **options)
    values = {}
    for scale in (0.0, 1e-300, 1e-200, 1e-170, 1e-160, 1e-100, 1e-30):
        pred = CrystalBatch(L * scale, F, label.num_atoms, label.species)
        compiled = loss(pred, label).per_crystal
        with pytorch_code():
            reference = loss(pred, label).per_crystal
        torch.testing.assert_close(compiled, reference, rtol=1e-9, atol=1e-12)
        values[scale] = compiled
    for scale in (1e-300, 1e-100, 1e-30):
        torch.testing.assert_close(values[scale], values[0.0], rtol=1e-9, atol=1e-12)


def test_ball_and_group_kernels_reject_mismatched_buffers():
    kernel = periodic._kernel
    V = np.zeros((26, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="do not match"):  # a negative radius
        kernel.ball_vectors(np.eye(3).reshape(1, 9), -1.0, 100, np.zeros(4, dtype=np.int64),
                            np.zeros((4, 3), dtype=np.int64))
    f, i = np.zeros((1, 9)), np.zeros(1, dtype=np.int64)
    with pytest.raises(ValueError, match="do not match"):  # a group past the last row
        kernel.window_groups(f, f, V, 0, 0, 8, 0.01, np.zeros(1), 0.1, np.zeros(1), np.zeros(1), np.array([0, 2]),
                             np.zeros((1, 9), dtype=np.int64), np.zeros(1), i, np.zeros((1, 3), dtype=np.int64))
