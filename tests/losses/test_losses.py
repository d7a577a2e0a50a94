"""Properties of the loss interface, the periodic coordinate term and the Niggli proxy loss."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from soft_niggli import CrystalBatch, Status, is_niggli_reduced, lattice_from_parameters, niggli_reduce
from soft_niggli.lattice import gram
from soft_niggli import canonicalize_labels, lattice_automorphisms
from soft_niggli.losses import CrystalLoss, LossResult, available_losses, get_loss, register_loss
from soft_niggli.losses.periodic import best_translation, periodic_coordinate_loss
from soft_niggli.losses.terms import lattice_term
from soft_niggli.testing import assert_gl3z_invariant, crystals, lattices, rotations, unimodular_matrices
from conftest import REPO_ROOT

FAST = settings(max_examples=25, deadline=None)
FASTER = settings(max_examples=15, deadline=None)  # for properties run once per loss configuration

# Every configuration of the library's losses that the properties below must hold for.
PROXY_CONFIGS = [
    {"lattice_metric": m, "frame": f} for m in ("cartesian", "gram") for f in ("reduced", "prediction")
]

# (a, b, c, alpha, beta, gamma) of one cell per crystal family, with the size of its point group.
SYMMETRIC_CELLS = {
    "cubic": ((4.0, 4.0, 4.0, 90.0, 90.0, 90.0), 48),
    "fcc-primitive": ((4.0, 4.0, 4.0, 60.0, 60.0, 60.0), 48),
    "bcc-primitive": ((4.0, 4.0, 4.0, 109.47122063449069, 109.47122063449069, 109.47122063449069), 48),
    "hexagonal": ((3.0, 3.0, 5.0, 90.0, 90.0, 120.0), 24),
    "rhombohedral": ((5.0, 5.0, 5.0, 80.0, 80.0, 80.0), 12),
    "tetragonal": ((3.0, 3.0, 5.0, 90.0, 90.0, 90.0), 16),
    "orthorhombic": ((3.0, 4.0, 5.0, 90.0, 90.0, 90.0), 8),
    "monoclinic": ((3.0, 4.0, 5.0, 90.0, 100.0, 90.0), 4),
    "triclinic": ((3.0, 4.0, 5.0, 70.0, 80.0, 95.0), 2),
}


def cell(params) -> torch.Tensor:
    return lattice_from_parameters(*[torch.tensor(float(p), dtype=torch.float64) for p in params])


def batch_of(lattices_, fracs) -> CrystalBatch:
    """A CrystalBatch from a list of (3, 3) lattices and a list of (n_i, 3) coordinate tensors."""
    return CrystalBatch(torch.stack(lattices_), torch.cat(fracs), torch.tensor([len(f) for f in fracs]))


def with_values(batch: CrystalBatch, lattice=None, frac=None) -> CrystalBatch:
    return CrystalBatch(batch.lattice if lattice is None else lattice, batch.frac if frac is None else frac,
                        batch.num_atoms, batch.species)


@st.composite
def label_and_prediction(draw, pred_kind: str = "realistic", near: bool = False):
    """A label batch and a prediction with the same atoms.

    ``near=True``: the prediction is the label re-based by a unimodular matrix and perturbed (0.05 Å
    on the lattice, 0.02 on the coordinates), the regime a trained model is in; otherwise its
    lattices are drawn independently (of kind ``pred_kind``) and its coordinates are uniform.
    """
    label = draw(crystals(max_atoms=5, max_crystals=3))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if near:
        M = torch.stack([draw(unimodular_matrices(1)) for _ in range(len(label))])
        moved = label.apply_basis_change(M)
        lattice = moved.lattice + 0.05 * torch.randn(moved.lattice.shape, generator=g, dtype=torch.float64)
        frac = moved.frac + 0.02 * torch.randn(moved.frac.shape, generator=g, dtype=torch.float64)
    else:
        lattice = torch.stack([draw(lattices(pred_kind)) for _ in range(len(label))])
        frac = torch.rand(label.frac.shape, generator=g, dtype=torch.float64)
    return label, CrystalBatch(lattice, frac, label.num_atoms, label.species)


@st.composite
def symmetric_labels(draw):
    """One-crystal label batches on a symmetric lattice (any family above), rotated and re-based."""
    params, _ = draw(st.sampled_from(sorted(SYMMETRIC_CELLS.values())))
    scale = draw(st.floats(0.7, 1.5))
    L = draw(unimodular_matrices(1)).to(torch.float64) @ (cell(params) * scale) @ draw(rotations()).T
    n = draw(st.integers(1, 5))
    frac = torch.tensor(draw(st.lists(st.tuples(*[st.floats(0, 1, exclude_max=True)] * 3), min_size=n, max_size=n)),
                        dtype=torch.float64)
    return batch_of([L], [frac])


# ------------------------------------------------------------------------------------ the interface


def test_available_losses_lists_the_builtin_losses_and_the_spglib_baseline():
    names = available_losses()
    assert {"mse", "proxy", "proxy-spglib"} <= set(names)
    assert list(names) == sorted(names)


def test_get_loss_builds_each_available_loss_as_a_crystal_loss():
    for name in available_losses():
        loss = get_loss(name)
        assert isinstance(loss, CrystalLoss) and loss.name == name


def test_proxy_spglib_is_registered_lazily_on_first_request():
    code = ("import sys, soft_niggli.losses as losses\n"
            "assert 'soft_niggli.baselines.spglib_proxy' not in sys.modules\n"
            "assert type(losses.get_loss('proxy-spglib')).__name__ == 'SpglibProxyLoss'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_unknown_loss_name_raises_listing_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'softmax'.*mse.*proxy"):
        get_loss("softmax")


@pytest.mark.parametrize("name", ["mse", "proxy", "proxy-spglib"])
def test_unknown_option_raises_at_construction_listing_valid_options(name):
    with pytest.raises(ValueError, match="unknown option.*tau.*valid options: .*lattice_weight"):
        get_loss(name, tau=0.1)


@pytest.mark.parametrize("name, options, error, expected", [
    ("proxy", {"lattice_metric": "frobenius"}, ValueError, r"lattice_metric: expected one of \('cartesian', 'gram'\)"),
    ("proxy", {"fallback": "raise"}, ValueError, r"fallback: expected one of \('identity', 'skip'\)"),
    ("proxy", {"frame": "label"}, ValueError, "frame: expected one of"),
    ("proxy", {"lattice_weight": -1.0}, ValueError, "lattice_weight: expected a finite number >= 0, got -1.0"),
    ("proxy", {"coord_weight": math.nan}, ValueError, "coord_weight: expected a finite number >= 0"),
    ("proxy", {"skew_weight": "1"}, TypeError, "skew_weight: expected a finite number >= 0, got str"),
    ("proxy", {"labels_canonical": 1}, TypeError, "labels_canonical: expected True or False, got int"),
    ("proxy", {"automorphism_rel_tol": 0.0}, ValueError, r"automorphism_rel_tol: expected a float in \[1e-12, 0.1\)"),
    ("proxy", {"rel_tol": 0.5}, ValueError, r"rel_tol: expected a float in \[1e-12, 0.1\)"),
    ("mse", {"lattice_metric": "G6"}, ValueError, "lattice_metric: expected one of"),
    ("mse", {"lattice_metric": None}, TypeError, "lattice_metric: expected one of"),
    ("mse", {"coord_weight": True}, TypeError, "coord_weight: expected a finite number >= 0, got bool"),
    ("proxy-spglib", {"spglib_eps": -1e-5}, ValueError, "spglib_eps: expected a finite number > 0"),
])
def test_invalid_option_values_raise_at_construction(name, options, error, expected):
    # Wrong Python type: TypeError; a value out of range or not among the choices: ValueError.
    with pytest.raises(error, match=expected):
        get_loss(name, **options)


@pytest.mark.parametrize("module, names", [
    ("result", ["LossResult"]),
    ("options", ["LATTICE_METRICS", "COORDINATE_TERMS", "weight_option", "choice_option", "flag_option",
                 "fraction_option", "positive_option", "int_option", "blur_option", "rel_tol_option"]),
    ("registry", ["ENTRY_POINT_GROUP", "register_loss", "get_loss", "available_losses"]),
    ("base", ["CrystalLoss", "max_magnitude"]),
])
def test_every_name_of_the_loss_interface_is_importable_from_base_as_the_same_object(module, names):
    import importlib

    import soft_niggli.losses.base as base

    home = importlib.import_module(f"soft_niggli.losses.{module}")
    for name in names:
        assert name in home.__all__, name
        assert getattr(base, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="no attribute 'get_losses'"):
        base.get_losses


def test_register_loss_rejects_a_taken_name_and_non_losses():
    with pytest.raises(ValueError, match="'proxy': already registered"):
        @register_loss("proxy")
        class Other(CrystalLoss):
            def compute(self, pred, target):  # pragma: no cover - never called
                raise AssertionError

    with pytest.raises(TypeError, match="expected a CrystalLoss subclass"):
        register_loss("not-a-loss")(dict)


def test_mismatched_atom_counts_raise():
    L = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 4
    pred = CrystalBatch(L, torch.rand(3, 3, dtype=torch.float64), torch.tensor([1, 2]))
    target = CrystalBatch(L, torch.rand(3, 3, dtype=torch.float64), torch.tensor([2, 1]))
    for name in ("mse", "proxy", "proxy-spglib"):
        with pytest.raises(ValueError, match=r"same number of atoms per crystal.*crystals \[0, 1\]"):
            get_loss(name)(pred, target)


def test_mismatched_crystal_counts_species_and_types_raise():
    L = torch.eye(3, dtype=torch.float64)[None] * 4
    one = CrystalBatch(L, torch.rand(1, 3, dtype=torch.float64), [1], [6])
    two = CrystalBatch(L.repeat(2, 1, 1), torch.rand(2, 3, dtype=torch.float64), [1, 1])
    loss = get_loss("proxy")
    with pytest.raises(ValueError, match="target: expected 1 crystals"):
        loss(one, two)
    with pytest.raises(ValueError, match="same species"):
        loss(one, CrystalBatch(L, one.frac, [1], [8]))
    with pytest.raises(TypeError, match="pred: expected a CrystalBatch, got Tensor"):
        loss(L, one)


def test_non_finite_target_raises():
    L = torch.eye(3, dtype=torch.float64)[None] * 4
    pred = CrystalBatch(L, torch.rand(1, 3, dtype=torch.float64), [1])
    bad = CrystalBatch(L, torch.tensor([[0.1, math.nan, 0.2]], dtype=torch.float64), [1])
    with pytest.raises(ValueError, match=r"target: expected finite .* crystals \[0\]"):
        get_loss("proxy")(pred, bad)


@given(label_and_prediction())
@settings(max_examples=10, deadline=None)
def test_result_has_the_documented_shapes(pair):
    label, pred = pair
    for name in ("mse", "proxy"):
        result = get_loss(name)(pred, label)
        B = len(label)
        assert isinstance(result, LossResult) and result.loss.shape == ()
        assert result.per_crystal.shape == (B,) and result.status.shape == (B,)
        assert result.status.dtype == torch.int64
        assert {"lattice", "coords"} <= set(result.terms) and all(t.shape == (B,) for t in result.terms.values())
        torch.testing.assert_close(result.loss, result.per_crystal.mean())


# ------------------------------------------------------------------------ periodic coordinate term


@given(crystals(max_atoms=6), st.integers(0, 2**31 - 1))
@FAST
def test_periodic_term_is_invariant_to_translation_and_wrapping(batch, seed):
    g = torch.Generator().manual_seed(seed)
    B = len(batch)
    target = torch.rand(batch.frac.shape, generator=g, dtype=torch.float64)
    reference = periodic_coordinate_loss(batch.frac, target, batch.batch, B)
    t = torch.rand(B, 3, generator=g, dtype=torch.float64) * 4 - 2  # any shift, not only in [0, 1)
    shifts = torch.randint(-3, 4, batch.frac.shape, generator=g).to(torch.float64)  # wrap atoms independently
    moved = batch.frac + t[batch.batch] + shifts
    torch.testing.assert_close(periodic_coordinate_loss(moved, target, batch.batch, B), reference,
                               atol=1e-12, rtol=1e-9)
    # Translating the target instead, or both, does not matter either.
    torch.testing.assert_close(periodic_coordinate_loss(batch.frac, target - t[batch.batch], batch.batch, B),
                               reference, atol=1e-12, rtol=1e-9)


def test_periodic_term_known_values():
    batch = torch.tensor([0, 0, 1, 2, 2])
    target = torch.zeros(5, 3, dtype=torch.float64)
    pred = torch.tensor([[0.9, 0, 0], [0.1, 0, 0],  # differences -0.1, +0.1: no common shift
                         [0.3, 0.4, 0.5],  # one atom: a pure translation
                         [0.25, 0.0, 0.0], [0.25, 0.0, 0.0]], dtype=torch.float64)  # a common shift
    out = periodic_coordinate_loss(pred, target, batch, 4)  # crystal 3 has no atoms
    torch.testing.assert_close(out, torch.tensor([0.01 / 3, 0.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(best_translation(pred - target, batch, 4)[2], torch.tensor([0.25, 0, 0],
                                                                                          dtype=torch.float64))


def test_periodic_term_gradcheck():
    g = torch.Generator().manual_seed(3)
    pred = torch.rand(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(7, 3, generator=g, dtype=torch.float64)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    assert torch.autograd.gradcheck(lambda p: periodic_coordinate_loss(p, target, batch, 2), (pred,))


# ------------------------------------------------------------------------------------ automorphisms


@pytest.mark.parametrize("family", sorted(SYMMETRIC_CELLS))
def test_lattice_automorphisms_are_the_point_group_of_the_reduced_cell(family):
    params, order = SYMMETRIC_CELLS[family]
    reduced = niggli_reduce(cell(params)[None]).lattice
    automorphisms = lattice_automorphisms(reduced)
    owner, A = automorphisms.owner, automorphisms.matrices
    assert owner.tolist() == [0] * order
    assert torch.equal(A[0], torch.eye(3, dtype=torch.int64))
    G = gram(reduced[0])
    Af = A.to(torch.float64)
    torch.testing.assert_close(Af @ G @ Af.transpose(1, 2), G.expand(order, 3, 3))
    assert len({tuple(a.flatten().tolist()) for a in A}) == order  # distinct
    assert set(torch.linalg.det(Af).round().tolist()) <= {-1.0, 1.0}


def test_lattice_automorphisms_of_flat_or_nonfinite_cells_are_the_identity_only():
    flat = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [1, 1, 0]], [[math.nan, 0, 0], [0, 1, 0], [0, 0, 1]]],
                        dtype=torch.float64)
    automorphisms = lattice_automorphisms(flat)
    owner, A = automorphisms.owner, automorphisms.matrices
    assert owner.tolist() == [0, 1] and torch.equal(A, torch.eye(3, dtype=torch.int64).expand(2, 3, 3))


# -------------------------------------------------------------------------------- proxy invariances


@pytest.mark.invariance
@pytest.mark.parametrize("options", PROXY_CONFIGS, ids=lambda o: "-".join(o.values()))
@given(pair=st.one_of(label_and_prediction(near=True), label_and_prediction(near=False)))
@FASTER
def test_proxy_is_invariant_to_label_basis(options, pair):
    label, pred = pair
    loss = get_loss("proxy", **options)
    assert_gl3z_invariant(lambda lab: loss(pred, lab).per_crystal, label, trials=2, rtol=1e-6)


@pytest.mark.invariance
@pytest.mark.parametrize("metric", ["cartesian", "gram"])
@given(label=symmetric_labels(), seed=st.integers(0, 2**31 - 1))
@FAST
def test_proxy_is_invariant_to_label_basis_on_symmetric_lattices(metric, label, seed):
    # Symmetric lattices are where re-based copies reduce to bases differing by an automorphism.
    g = torch.Generator().manual_seed(seed)
    pred = with_values(label, label.lattice + 0.1 * torch.randn(label.lattice.shape, generator=g, dtype=torch.float64),
                       label.frac + 0.05 * torch.randn(label.frac.shape, generator=g, dtype=torch.float64))
    loss = get_loss("proxy", lattice_metric=metric)
    assert_gl3z_invariant(lambda lab: loss(pred, lab).per_crystal, label, trials=2)


@pytest.mark.invariance
@given(pair=label_and_prediction(near=True), q_pred=rotations(), q_label=rotations(), M=unimodular_matrices(1))
@FAST
def test_gram_proxy_is_invariant_to_independent_rotations(pair, q_pred, q_label, M):
    label, pred = pair
    loss = get_loss("proxy", lattice_metric="gram")
    reference = loss(pred, label).per_crystal
    rotated_pred = with_values(pred, pred.lattice @ q_pred.T)
    rotated_label = with_values(label, label.lattice @ q_label.T).apply_basis_change(M)
    torch.testing.assert_close(loss(rotated_pred, rotated_label).per_crystal, reference, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("options", PROXY_CONFIGS, ids=lambda o: "-".join(o.values()))
@given(label=st.one_of(crystals(max_atoms=5), symmetric_labels()), M=unimodular_matrices(1, depth=2),
       t=st.tuples(*[st.floats(-1, 1)] * 3))
@FAST
def test_proxy_is_zero_for_a_rebased_translated_copy_of_the_label(options, label, M, t):
    copy = label.apply_basis_change(M)
    copy = with_values(copy, frac=copy.frac + torch.tensor(t, dtype=torch.float64))
    result = get_loss("proxy", **options)(copy, label)
    assert (result.status == Status.OK).all()
    assert result.loss.item() < 1e-18 + 1e-12 * float(label.lattice.square().mean())


def test_automorphism_choice_is_what_makes_the_proxy_invariant_on_a_cubic_label():
    # Re-based copies of a cubic label reduce to bases differing by a rotation of the cube; without the
    # choice among automorphisms the Cartesian comparison with the canonical label would change.
    label = batch_of([cell((4.0, 4.0, 4.0, 90, 90, 90))], [torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]],
                                                                        dtype=torch.float64)])
    pred = with_values(label, label.lattice + torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, -0.1]],
                                                           dtype=torch.float64))
    proxy = get_loss("proxy")
    reference = proxy(pred, label).loss
    canonical_naive, canonical_ours = set(), set()
    for M in [torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 1]]), torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0]]),
              torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, -1]])]:
        rebased = label.apply_basis_change(M)
        canonical = canonicalize_labels(rebased).batch
        naive = lattice_term(pred.lattice, canonical.lattice)  # identity instead of the best automorphism
        canonical_naive.add(round(naive.item(), 9))
        canonical_ours.add(round(proxy(pred, rebased).loss.item(), 9))
    assert len(canonical_naive) > 1  # the naive target moves with the label's basis
    assert canonical_ours == {round(reference.item(), 9)}


# -------------------------------------------------------------------------- "mse" is not invariant


def test_mse_is_not_invariant_to_label_basis_but_proxy_is():
    label = batch_of([cell((3.0, 4.0, 5.0, 70, 80, 95)), cell((4.0, 4.0, 6.0, 90, 90, 120))],
                     [torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64),
                      torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)])
    pred = with_values(label, label.lattice + 0.05)
    mse, proxy = get_loss("mse"), get_loss("proxy")
    with pytest.raises(AssertionError, match="not GL\\(3,Z\\)-invariant"):
        assert_gl3z_invariant(lambda lab: mse(pred, lab).per_crystal, label)
    assert_gl3z_invariant(lambda lab: proxy(pred, lab).per_crystal, label)
    # The size of the failure: a prediction 0.05 Å from its label scores like a wrong cell once the
    # label is written in another basis.
    rebased = label.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]]))
    assert mse(pred, rebased).terms["lattice"].min() > 100 * mse(pred, label).terms["lattice"].max()


# --------------------------------------------------------------------- finiteness and the fallbacks

ALL_CONFIGS = [("mse", {}), ("mse", {"lattice_metric": "gram"})] + [
    ("proxy", dict(o, fallback=fb, skew_weight=0.1)) for o, fb in zip(PROXY_CONFIGS, ("identity", "skip") * 2)]


@given(pair=label_and_prediction(pred_kind="pathological"))
@FASTER
def test_losses_and_gradients_are_finite_for_pathological_predictions(pair):
    label, pred = pair
    for name, options in ALL_CONFIGS:
        L = pred.lattice.clone().requires_grad_(True)
        F = pred.frac.clone().requires_grad_(True)
        result = get_loss(name, **options)(with_values(pred, L, F), label)
        result.loss.backward()
        assert torch.isfinite(result.loss) and torch.isfinite(result.per_crystal).all(), (name, options)
        assert torch.isfinite(L.grad).all() and torch.isfinite(F.grad).all(), (name, options)


def degenerate_batch():
    """Six 2-atom crystals: zero cell, rank-2 cell, NaN cell, a huge cell, a good cell with a NaN atom,
    and a good cell; the label is a 4 Å cube each time."""
    lattices_ = torch.stack([torch.zeros(3, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]]),
                             torch.full((3, 3), math.nan), torch.eye(3) * 1e200, torch.eye(3) * 3,
                             torch.eye(3) * 4.1]).to(torch.float64)
    frac = torch.rand(12, 3, dtype=torch.float64)
    frac[9, 0] = math.nan
    label = CrystalBatch(torch.eye(3, dtype=torch.float64).repeat(6, 1, 1) * 4, torch.rand(12, 3, dtype=torch.float64),
                         [2] * 6)
    return CrystalBatch(lattices_, frac, [2] * 6), label


@pytest.mark.parametrize("name, options", ALL_CONFIGS, ids=lambda x: x if isinstance(x, str) else "-".join(map(str, x.values())))
def test_degenerate_and_nonfinite_predictions_give_finite_loss_and_gradients(name, options):
    pred, label = degenerate_batch()
    L, F = pred.lattice.clone().requires_grad_(True), pred.frac.clone().requires_grad_(True)
    result = get_loss(name, **options)(with_values(pred, L, F), label)
    result.loss.backward()
    assert torch.isfinite(result.loss) and torch.isfinite(L.grad).all() and torch.isfinite(F.grad).all()
    # NaN cell, huge cell, NaN atom: never scored, zero gradient, counted.
    assert result.excluded[2:5].all() and (L.grad[2:5] == 0).all() and (result.per_crystal[2:5] == 0).all()
    assert result.excluded[5].item() is False and result.per_crystal[5] > 0
    if name == "proxy":
        assert result.status[:3].tolist() == [Status.DEGENERATE, Status.DEGENERATE, Status.NONFINITE]
        assert result.fallback[:2].all() and not result.fallback[2:].any()
        skip = options["fallback"] == "skip"
        assert result.excluded[:2].tolist() == [skip, skip]
        assert result.skipped == (5 if skip else 3)
        assert ((L.grad[:2] == 0).all() if skip else (L.grad[:2] != 0).any())
    else:
        assert (result.status == 0).all() and result.skipped == 3
    torch.testing.assert_close(result.loss, result.per_crystal.sum() / (~result.excluded).sum())


def test_identity_fallback_compares_the_prediction_with_the_canonical_label():
    pred, label = degenerate_batch()
    result = get_loss("proxy", fallback="identity")(pred[0], label[0])  # the zero cell
    # Against the canonical 4 Å cube (any automorphism: all give the same Cartesian distance to 0).
    torch.testing.assert_close(result.terms["lattice"], torch.tensor([16.0 * 3 / 9], dtype=torch.float64))


# --------------------------------------------------------------------------------------- gradients


def generic_pair(dtype=torch.float64):
    """A triclinic label (automorphisms ±I only) and a prediction near it in a skewed basis, well inside
    its Niggli cone, so the transform and the automorphism choice are locally constant."""
    L = cell((3.1, 4.3, 5.2, 74.0, 83.0, 97.0))
    label = batch_of([L, L * 1.1], [torch.tensor([[0.1, 0.2, 0.3], [0.7, 0.5, 0.45], [0.3, 0.9, 0.6]], dtype=L.dtype),
                                    torch.tensor([[0.2, 0.1, 0.8]], dtype=L.dtype)]).to(dtype=dtype)
    M = torch.tensor([[1, 2, 0], [0, 1, 0], [-1, 1, 1]])
    pred = label.apply_basis_change(M)
    g = torch.Generator().manual_seed(0)
    pred = with_values(pred, pred.lattice + 0.05 * torch.randn(pred.lattice.shape, generator=g, dtype=dtype),
                       pred.frac + 0.03 * torch.randn(pred.frac.shape, generator=g, dtype=dtype))
    return label, pred


@pytest.mark.parametrize("options", [dict(o, skew_weight=0.3) for o in PROXY_CONFIGS],
                         ids=lambda o: "-".join(map(str, o.values())))
def test_proxy_gradcheck_away_from_niggli_boundaries(options):
    label, pred = generic_pair()
    loss = get_loss("proxy", **options)
    assert (niggli_reduce(pred.lattice).transform != torch.eye(3, dtype=torch.int64)).any()  # N_pred is not I

    def f(L, F):
        return loss(with_values(pred, L, F), label).loss

    inputs = (pred.lattice.clone().requires_grad_(True), pred.frac.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("metric", ["cartesian", "gram"])
def test_mse_gradcheck(metric):
    label, pred = generic_pair()
    loss = get_loss("mse", lattice_metric=metric)
    inputs = (pred.lattice.clone().requires_grad_(True), pred.frac.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda L, F: loss(with_values(pred, L, F), label).loss, inputs)


def test_gradients_reach_prediction_only():
    label, pred = generic_pair()
    label = with_values(label, label.lattice.clone().requires_grad_(True), label.frac.clone().requires_grad_(True))
    L = pred.lattice.clone().requires_grad_(True)
    get_loss("proxy")(with_values(pred, L), label).loss.backward()
    assert L.grad is not None and label.lattice.grad is None and label.frac.grad is None


# ------------------------------------------------------------------------- labels, frames, skew, dtype


@pytest.mark.invariance
@given(pair=label_and_prediction(near=True))
@FASTER
def test_canonical_labels_give_the_same_loss_as_reducing_every_step(pair):
    label, pred = pair
    result = canonicalize_labels(label)
    canonical, status = result.batch, result.status
    torch.testing.assert_close(result.transform.to(label.dtype) @ label.lattice, canonical.lattice)
    assert (status == Status.OK).all() and bool(is_niggli_reduced(canonical.lattice).all())
    # Same crystals: the reduced lattice is an integer change of basis with the coordinates following.
    torch.testing.assert_close(get_loss("proxy", labels_canonical=True)(pred, canonical).per_crystal,
                               get_loss("proxy")(pred, label).per_crystal, atol=1e-10, rtol=1e-8)


def test_skew_term_is_zero_for_a_reduced_prediction_and_positive_for_a_skewed_one():
    label, pred = generic_pair()
    reduced_pred = canonicalize_labels(pred).batch
    loss = get_loss("proxy", skew_weight=1.0)
    assert (loss(reduced_pred, label).terms["skew"] == 0).all()
    skewed = loss(pred, label)
    assert (skewed.terms["skew"] > 1.0).all()
    # Only the skew term differs: the reduced frame scores the same lattice the same in any basis.
    torch.testing.assert_close(skewed.terms["lattice"], loss(reduced_pred, label).terms["lattice"])


def test_prediction_frame_penalises_errors_differently_in_a_skewed_basis():
    # The published frame measures errors through N_pred^{-1}: the same crystal-level error scores
    # differently depending on the basis the prediction is written in; the reduced frame does not.
    label, pred = generic_pair()
    reduced_pred = canonicalize_labels(pred).batch
    published, ours = get_loss("proxy", frame="prediction"), get_loss("proxy", frame="reduced")
    assert not torch.allclose(published(pred, label).terms["lattice"], published(reduced_pred, label).terms["lattice"])
    torch.testing.assert_close(ours(pred, label).per_crystal, ours(reduced_pred, label).per_crystal)


def test_float32_predictions_are_scored_in_float32():
    label, pred = generic_pair()
    for name in ("mse", "proxy"):
        r32 = get_loss(name)(pred.to(dtype=torch.float32), label)
        r64 = get_loss(name)(pred, label)
        assert r32.loss.dtype == torch.float32
        torch.testing.assert_close(r32.per_crystal.double(), r64.per_crystal, atol=1e-4, rtol=1e-4)


def test_gram_lattice_term_is_rotation_invariant_and_finite_at_extreme_scales():
    g = torch.Generator().manual_seed(1)
    L = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    T = torch.randn(4, 3, 3, generator=g, dtype=torch.float64)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))[0]
    torch.testing.assert_close(lattice_term(L @ Q.T, T, "gram"), lattice_term(L, T, "gram"))
    huge = lattice_term(L * 1e120, T, "gram")  # ‖ΔG‖² alone would overflow (1e480)
    assert torch.isfinite(huge).all() and (huge > 1e230).all()
    torch.testing.assert_close(lattice_term(L * 2.0**300, T * 2.0**300, "gram"), lattice_term(L, T, "gram") * 2.0**600)


# ------------------------------------------------------------------------------ the spglib baseline


def test_proxy_spglib_is_built_by_name_and_matches_the_published_formula():
    from soft_niggli.baselines.spglib_proxy import spglib_reduce_with_transform

    label, pred = generic_pair()
    result = get_loss("proxy-spglib")(pred, label)
    assert (result.status == 0).all() and result.skipped == 0
    # By hand: target = N_pred^{-1} N_lab L_lab, compared in the prediction's basis.
    for b in range(len(label)):
        N_pred = torch.from_numpy(spglib_reduce_with_transform(pred.lattice[b].numpy())[1]).double()
        N_lab = torch.from_numpy(spglib_reduce_with_transform(label.lattice[b].numpy())[1]).double()
        target = torch.linalg.solve(N_pred, N_lab @ label.lattice[b])
        torch.testing.assert_close(result.terms["lattice"][b], (pred.lattice[b] - target).square().mean())


@pytest.mark.parametrize("bad", [torch.zeros(3, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]]),
                                 torch.full((3, 3), math.nan)], ids=["zero", "rank2", "nan"])
def test_proxy_spglib_raises_where_the_guarded_proxy_falls_back(bad):
    from soft_niggli.baselines.spglib_proxy import SpglibProxyError

    label, pred = generic_pair()
    lattice = pred.lattice.clone()
    lattice[0] = bad.to(torch.float64)
    broken = with_values(pred, lattice)
    with pytest.raises(SpglibProxyError):
        get_loss("proxy-spglib")(broken, label)
    assert torch.isfinite(get_loss("proxy")(broken, label).loss)
