"""Every invariance the loss docstrings promise, tested on *symmetric* crystals.

Real cells (cubic perovskites, hexagonal, fcc) sit on Niggli-cone boundaries and have up to 48 lattice
automorphisms: every argmin, top-k and threshold over candidates meets exact ties there. Labels are
re-based by random GL(3,Z) matrices (entries up to 5) and, for rotation-invariant lattice terms,
rotated; loss and gradient must not move (1e-9 relative in float64, 1e-4 in float32). Rows of a
lattice are its vectors.
"""

from __future__ import annotations


import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from soft_niggli import CrystalBatch, canonicalize_labels, g6, get_loss, random_unimodular
from soft_niggli.lattice import lattice_from_parameters
from soft_niggli.testing import assert_gl3z_invariant, real_crystals, rotations, symmetric_crystals

S3 = 3 ** 0.5


def _crystal(lattice, frac, species):
    L = torch.as_tensor(lattice, dtype=torch.float64)
    return CrystalBatch(L[None], torch.tensor(frac, dtype=torch.float64), [len(frac)], species)


# Symmetric families, each with atoms on symmetric sites (the whole crystal is symmetric).
FAMILIES = {
    "cubic perovskite": _crystal(3.9 * torch.eye(3), [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                                 [38, 22, 8, 8, 8]),
    "fcc (primitive, 60°)": _crystal([[0, 2.0, 2.0], [2.0, 0, 2.0], [2.0, 2.0, 0]], [[0, 0, 0]], [29]),
    "bcc (primitive)": _crystal([[-1.6, 1.6, 1.6], [1.6, -1.6, 1.6], [1.6, 1.6, -1.6]], [[0, 0, 0]], [26]),
    "hexagonal wurtzite": _crystal([[3.8227, 0, 0], [-3.8227 / 2, 3.8227 * S3 / 2, 0], [0, 0, 6.2607]],
                                   [[2 / 3, 1 / 3, 0], [1 / 3, 2 / 3, .5], [2 / 3, 1 / 3, .6252], [1 / 3, 2 / 3, .1252]],
                                   [30, 30, 16, 16]),
    "tetragonal rutile": _crystal(torch.diag(torch.tensor([4.59, 4.59, 2.96])),
                                  [[0, 0, 0], [.5, .5, .5], [.305, .305, 0], [.695, .695, 0], [.805, .195, .5],
                                   [.195, .805, .5]], [22, 22, 8, 8, 8, 8]),
    "rhombohedral": _crystal(lattice_from_parameters(4.0, 4.0, 4.0, 70.0, 70.0, 70.0).double(),
                             [[0, 0, 0], [.25, .25, .25], [.75, .75, .75]], [3, 8, 8]),
}
# Generic atoms on a symmetric lattice: the lattice's automorphisms tie, the coordinates decide.
FAMILIES["cubic lattice, generic atoms"] = _crystal(4.0 * torch.eye(3), [[0, 0, 0], [.31, .12, .05], [.6, .7, .2]],
                                                    [8, 14, 26])

# Every strategy and option combination that promises basis invariance.
COMBINATIONS = (
    [("softmin", {"lattice_metric": m, "coords": c, "center": z})
     for m in ("cartesian", "gram") for c in ("periodic", "sinkhorn") for z in ("label", "both")]
    + [("gram", {"coords": c, "center": z}) for c in ("periodic", "sinkhorn") for z in ("label", "both")]
    + [("proxy", {"lattice_metric": m, "coords": c}) for m in ("cartesian", "gram") for c in ("periodic", "sinkhorn")]
)


def _rotation_invariant(name, options) -> bool:
    return name == "gram" or options.get("lattice_metric") == "gram"


def _noisy(batch: CrystalBatch, seed: int, lattice_noise: float, frac_noise: float) -> CrystalBatch:
    g = torch.Generator().manual_seed(seed)
    L = batch.lattice + lattice_noise * torch.randn(batch.lattice.shape, generator=g, dtype=batch.lattice.dtype)
    F = batch.frac + frac_noise * torch.randn(batch.frac.shape, generator=g, dtype=batch.frac.dtype)
    return CrystalBatch(L, F, batch.num_atoms, batch.species)


def _value_and_grad(loss, pred: CrystalBatch, label: CrystalBatch):
    L = pred.lattice.clone().requires_grad_(True)
    F = pred.frac.clone().requires_grad_(True)
    result = loss(CrystalBatch(L, F, pred.num_atoms, pred.species), label)
    result.loss.backward()
    return result.loss.detach(), L.grad, F.grad


def _assert_same(a, b, dtype):
    rtol = 1e-9 if dtype == torch.float64 else 1e-4
    for x, y in zip(a, b):
        # Relative to the largest entry: gradients have exact zeros that must stay (near) zero.
        atol = rtol * max(float(x.abs().max()), float(y.abs().max()), 1e-12 if dtype == torch.float64 else 1e-6)
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


@pytest.mark.invariance
@pytest.mark.parametrize("name, options", COMBINATIONS, ids=lambda x: x if isinstance(x, str) else
                         ",".join(f"{k}={v}" for k, v in x.items()))
@pytest.mark.parametrize("family", list(FAMILIES))
@settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), label_noise=st.sampled_from([0.0, 1e-3]), rotation=rotations())
def test_loss_and_gradient_ignore_the_label_basis_on_symmetric_crystals(name, options, family, seed, label_noise,
                                                                        rotation):
    label = _noisy(FAMILIES[family], seed, label_noise, label_noise)
    pred = _noisy(label, seed + 1, 0.03, 0.02)
    loss = get_loss(name, **options)
    M = random_unimodular((1,), max_entry=5, generator=torch.Generator().manual_seed(seed))
    rebased = label.apply_basis_change(M)
    if _rotation_invariant(name, options):
        rebased = CrystalBatch(rebased.lattice @ rotation.T, rebased.frac, rebased.num_atoms, rebased.species)
    _assert_same(_value_and_grad(loss, pred, label), _value_and_grad(loss, pred, rebased), torch.float64)


# A bcc label strained by 1e-3 (found by the derandomised draws above: seed 126) has two classes of
# reduced forms, both of weight 1, whose squared sizes differ by 1.6e-5; which comes first depends on the
# basis and orientation the label came in (about half of random rotations swap them). The softmin's taper
# width is scaled by the label's size, which must therefore not come from whichever class a candidate
# happens to be taken from (that moved the loss by 1e-8 relative, 1e-6 without zero_at_match).
@pytest.mark.invariance
@pytest.mark.parametrize("options", [{"coords": "sinkhorn", "center": "both"},
                                     {"coords": "periodic", "center": "label"},
                                     {"coords": "periodic", "center": "both", "zero_at_match": False}])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rotation=rotations())
def test_softmin_ignores_the_order_of_equally_weighted_forms_of_a_strained_label(options, rotation):
    label = _noisy(FAMILIES["bcc (primitive)"], 126, 1e-3, 1e-3)
    pred = _noisy(label, 127, 0.03, 0.02)
    loss = get_loss("softmin", lattice_metric="gram", **options)
    rotated = CrystalBatch(label.lattice @ rotation.T, label.frac, label.num_atoms, label.species)
    _assert_same(_value_and_grad(loss, pred, label), _value_and_grad(loss, pred, rotated), torch.float64)


@pytest.mark.parametrize("name, options", [("softmin", {}), ("softmin", {"lattice_metric": "gram"}), ("gram", {}),
                                           ("proxy", {"lattice_metric": "gram"})])
@pytest.mark.parametrize("family", ["cubic perovskite", "hexagonal wurtzite", "fcc (primitive, 60°)"])
def test_invariance_holds_in_float32(name, options, family):
    label = FAMILIES[family].to(dtype=torch.float32)
    pred = _noisy(label, 3, 0.03, 0.02)
    loss = get_loss(name, **options)
    for seed in range(3):
        M = random_unimodular((1,), max_entry=5, generator=torch.Generator().manual_seed(seed))
        _assert_same(_value_and_grad(loss, pred, label), _value_and_grad(loss, pred, label.apply_basis_change(M)),
                     torch.float32)


def test_issue_reproducer_gram_prints_one_value_for_a_cubic_label_in_six_bases():
    label = FAMILIES["cubic lattice, generic atoms"]
    torch.manual_seed(0)
    pred = CrystalBatch(label.lattice + 0.02 * torch.randn(1, 3, 3, dtype=torch.float64),
                        label.frac + 0.03 * torch.randn(3, 3, dtype=torch.float64), [3], label.species)
    for name, options in [("gram", {}), ("softmin", {"lattice_metric": "gram"}), ("gram", {"center": "both"})]:
        fn = get_loss(name, **options)
        values = {round(fn(pred, label.apply_basis_change(random_unimodular(
            (1,), max_entry=2, num_operations=30, generator=torch.Generator().manual_seed(s)))).loss.item(), 12)
            for s in range(6)}
        assert len(values) == 1, (name, options, values)


@pytest.mark.parametrize("name, options", [("softmin", {}), ("softmin", {"lattice_metric": "gram"}), ("gram", {}),
                                           ("softmin", {"center": "both"}), ("softmin", {"coords": "sinkhorn"}),
                                           ("gram", {"coords": "sinkhorn"})])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_perfect_prediction_scores_zero_whatever_the_label_symmetry(name, options, family):
    raw = FAMILIES[family]
    label = canonicalize_labels(raw).batch
    loss = get_loss(name, **options)
    # The label in its Niggli basis, translated: exactly 0, for the label given in any basis.
    copy = CrystalBatch(label.lattice, label.frac + 0.37, label.num_atoms, label.species)
    assert abs(float(loss(copy, label).loss)) <= 1e-9
    assert abs(float(loss(copy, raw).loss)) <= 1e-9
    # In another basis the prediction keeps other candidates, some of which are near the label too: 0 up
    # to τ·exp(-d/τ) terms, d the distance between distinct bases (0.33 Å² for rutile's a and c: 4e-3).
    assert abs(float(loss(raw, label).loss)) <= 1e-2
    # Two duplicates of one crystal in one batch, each symmetric: 0 too (was -τ log of the tie count).
    pair = CrystalBatch(label.lattice.repeat(2, 1, 1), label.frac.repeat(2, 1), label.num_atoms.repeat(2),
                        label.species.repeat(2))
    assert float(loss(pair, pair).per_crystal.abs().max()) <= 1e-9


# ------------------------------------------------------------------------------------------ continuity


def _terms(loss, pred, label):
    with torch.no_grad():
        return {k: float(v.sum()) for k, v in loss(pred, label).terms.items()}


@pytest.mark.parametrize("name, options", [("mse", {"coords": "sinkhorn"}), ("softmin", {"coords": "sinkhorn"}),
                                           ("gram", {"coords": "sinkhorn"}), ("proxy", {"coords": "sinkhorn"}),
                                           ("softmin", {}), ("gram", {}),
                                           ("softmin", {"lattice_metric": "gram", "center": "both"})])
@pytest.mark.parametrize("move", ["label atom", "label lattice", "pred atom"])
def test_every_term_moves_at_most_in_proportion_to_a_small_move_on_wurtzite(name, options, move):
    # Wurtzite sits exactly where a circular centre of the atoms is undefined (resultant 0 along c).
    label = FAMILIES["hexagonal wurtzite"]
    pred = _noisy(label, 7, 0.03, 0.02)
    loss = get_loss(name, **options)
    base = _terms(loss, pred, label)
    for step in (1e-6, 2e-6, 1e-5):
        L, F, Lp, Fp = label.lattice.clone(), label.frac.clone(), pred.lattice, pred.frac.clone()
        if move == "label atom":
            F[0, 2] += step
        elif move == "label lattice":
            L[0, 2, 2] += step
        else:
            Fp[1, 0] += step
        moved = _terms(loss, CrystalBatch(Lp, Fp, pred.num_atoms, pred.species),
                       CrystalBatch(L, F, label.num_atoms, label.species))
        for k in base:
            # A Lipschitz bound: terms are O(1) functions of O(1) inputs; a threshold-made jump is O(1).
            assert abs(moved[k] - base[k]) <= 100 * step, (k, step, base[k], moved[k])


@pytest.mark.invariance
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), which=st.integers(0, len(FAMILIES) - 1))
def test_sinkhorn_term_is_continuous_and_translation_invariant_on_symmetric_crystals(seed, which):
    label = list(FAMILIES.values())[which]
    pred = _noisy(label, seed, 0.02, 0.02)
    loss = get_loss("mse", coords="sinkhorn")
    base = float(loss(pred, label).terms["coords"])
    g = torch.Generator().manual_seed(seed)
    shift = torch.rand(3, generator=g, dtype=torch.float64)
    shifted = CrystalBatch(label.lattice, label.frac + shift, label.num_atoms, label.species)
    assert abs(float(loss(pred, shifted).terms["coords"]) - base) <= 1e-9 * max(1.0, base)
    nudged = _noisy(label, seed + 1, 0.0, 1e-6)
    assert abs(float(loss(pred, nudged).terms["coords"]) - base) <= 1e-3


# ------------------------------------------- the shipped strategies: symmetric and real (AFLOW) crystals

SHIPPED = [("softmin", {}), ("softmin", {"lattice_metric": "gram"}), ("gram", {}), ("gram", {"center": "both"}),
           ("proxy", {}), ("proxy", {"lattice_metric": "gram"}), ("reduced-forms", {}),
           ("reduced-forms", {"lattice_metric": "gram"})]


def _one_reduced_metric(batch: CrystalBatch, trials: int = 3, max_entry: int = 5, seed: int = 0) -> bool:
    """Whether every basis that :func:`assert_gl3z_invariant` tries (same seed) reduces to the same metric."""
    generator = torch.Generator().manual_seed(seed)
    reference = g6(canonicalize_labels(batch).batch.lattice)
    for _ in range(trials):
        M = random_unimodular((len(batch),), max_entry=max_entry, generator=generator)
        other = g6(canonicalize_labels(batch.apply_basis_change(M)).batch.lattice)
        if not torch.allclose(other, reference, rtol=1e-9, atol=1e-9 * float(reference[:, :3].max())):
            return False
    return True


# Exact cells: 1e-9. Strained by up to 1e-3: the continuous losses to 1e-3 relative. A strained cell
# can also sit inside the reducer's tolerance band (rel_tol 1e-5) of a symmetry it only nearly has;
# there the reducer may return either of two Niggli forms depending on the input basis (both satisfy
# the conditions within the tolerance) and the proxy loss, which compares in that form, jumps. That is
# the documented limit of a hard reduction (test below); elsewhere the proxy is invariant too.
@pytest.mark.invariance
@pytest.mark.parametrize("noise, rtol, atol", [(0.0, 1e-9, 1e-12), (1e-3, 1e-3, 1e-6)])
@pytest.mark.parametrize("name, options", SHIPPED)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_assert_gl3z_invariant_holds_for_every_loss_on_drawn_symmetric_crystals(name, options, noise, rtol, atol,
                                                                                 data):
    batch = data.draw(symmetric_crystals(max_crystals=3, noise=noise))
    if name == "proxy" and noise:
        assume(_one_reduced_metric(batch))  # "reduced-forms" needs no such assumption: it takes every form
    loss = get_loss(name, **options)
    pred = _noisy(batch, 11, 0.03, 0.02)
    # The helper re-bases its argument: here the label, with the prediction fixed.
    assert_gl3z_invariant(lambda label: loss(pred, label).per_crystal, batch, max_entry=5, rtol=rtol, atol=atol)


def test_proxy_jumps_where_the_reducer_has_two_forms_within_its_tolerance_and_softmin_does_not():
    # hcp-like cell, a = b = 2 (1 + 5e-6), c = 2, γ = 120°: lengths equal within rel_tol = 1e-5, so
    # (c, a, b) (the exact Niggli form) and (a, b, c) both pass the conditions within the tolerance,
    # and which one the reducer returns depends on the input basis. They are not automorphic.
    a, c = 2.0 * (1 + 5e-6), 2.0
    L = torch.tensor([[[a, 0, 0], [-a / 2, a * 3**0.5 / 2, 0], [0, 0, c]]], dtype=torch.float64)
    label = CrystalBatch(L, torch.tensor([[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]], dtype=torch.float64), [2], [1, 1])
    M = torch.tensor([[[3, 2, 0], [2, 0, -1], [-2, -3, -1]]])
    forms = [g6(canonicalize_labels(x).batch.lattice) for x in (label, label.apply_basis_change(M))]
    assert not torch.allclose(forms[0], forms[1], atol=1e-3)  # two forms: the premise of this test
    pred = _noisy(label, 11, 0.03, 0.02)
    proxy = [float(get_loss("proxy")(pred, x).loss) for x in (label, label.apply_basis_change(M))]
    softmin = [float(get_loss("softmin")(pred, x).loss) for x in (label, label.apply_basis_change(M))]
    assert abs(proxy[0] - proxy[1]) > 1e-3
    assert abs(softmin[0] - softmin[1]) <= 1e-9 * abs(softmin[0])


@pytest.mark.invariance
@pytest.mark.parametrize("name, options", SHIPPED)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=real_crystals(max_crystals=4, max_atoms=12))
def test_assert_gl3z_invariant_holds_for_every_loss_on_real_aflow_cells(name, options, batch):
    loss = get_loss(name, **options)
    pred = _noisy(batch, 12, 0.03, 0.02)
    assert_gl3z_invariant(lambda label: loss(pred, label).per_crystal, batch, max_entry=5, rtol=1e-9, atol=1e-12)


def test_sinkhorn_cost_is_continuous_where_a_fractional_difference_crosses_one_half_in_a_skewed_cell():
    # Hexagonal cell (γ = 120°): the images (½, ½) and (-½, ½) of a fractional difference are a and √3 a
    # apart. Moving one component across ½ used to switch the cost between them (found by hypothesis on
    # zincblende, where the inversion puts the second atom exactly (½, ½, ½) away).
    from soft_niggli.losses.sinkhorn import sinkhorn_coordinate_loss_flat

    L = lattice_from_parameters(3.0, 3.0, 5.0, 90.0, 90.0, 120.0).to(torch.float64).reshape(1, 3, 3)
    target = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3]], dtype=torch.float64)
    values = []
    for eps in (-1e-9, 1e-9):
        pred = target + torch.tensor([[0.0, 0.0, 0.0], [0.5 + eps, 0.45, 0.0]], dtype=torch.float64)
        values.append(float(sinkhorn_coordinate_loss_flat(pred, target, torch.tensor([0, 0]), L,
                                                          torch.tensor([1, 2]), torch.tensor([1, 2]))[0]))
    assert abs(values[0] - values[1]) <= 1e-6, values


@pytest.mark.parametrize("at", [-1e-9, 0.0, 1e-9])
def test_sinkhorn_cost_is_continuous_where_a_fractional_difference_crosses_zero_in_a_skewed_cell(at):
    # An fcc-like cell (metric [[6, 5, 8], [5, 6, 8], [8, 8, 12]], a re-basing of fcc's reduced one): the
    # difference (0, 0, ½) is √3 from the images (0, 0, ±½) and 1 from (-1, 0, ½) and (1, 0, -½). Searched
    # in this basis, the 8 images next to the fractional minimum image reach one of those on each side of
    # 0 and neither at exactly 0, where the atoms of a symmetric crystal sit.
    from soft_niggli.losses.sinkhorn import sinkhorn_coordinate_loss_flat

    G = torch.tensor([[6.0, 5.0, 8.0], [5.0, 6.0, 8.0], [8.0, 8.0, 12.0]], dtype=torch.float64)
    L = torch.linalg.cholesky(G)[None]
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.25]], dtype=torch.float64)
    pred = target + torch.tensor([[0.0, 0.0, 0.0], [at, 0.0, 0.5]], dtype=torch.float64)
    value = float(sinkhorn_coordinate_loss_flat(pred, target, torch.tensor([0, 0]), L, torch.tensor([1, 2]),
                                                torch.tensor([1, 2]))[0])
    # Half the weight of the one mismatched atom times half its squared distance to the nearest image, 1.
    assert abs(value - 0.25) <= 1e-6, value


@pytest.mark.invariance
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lattice=st.sampled_from(["fcc", "cubic"]), site=st.tuples(*[st.sampled_from([0.0, 0.25, 0.5, 0.75])] * 3),
       seed=st.integers(0, 2**16))
@example(lattice="fcc", site=(0.0, 0.25, 0.25), seed=0)
def test_softmin_with_metric_and_sinkhorn_moves_in_proportion_to_small_moves_of_symmetric_labels(lattice, site, seed):
    # Two atoms on special sites of an fcc or cubic lattice: hundreds of tied candidates, whose atoms differ
    # by exact zeros and halves in fractional components (what the offset of zero_at_match compares).
    cell = [[0.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 0.0]] if lattice == "fcc" else 3.0 * torch.eye(3)
    label = _crystal(cell, [[0.0, 0.0, 0.0], list(site)], [1, 2])
    label = label.apply_basis_change(random_unimodular((1,), max_entry=2, generator=torch.Generator().manual_seed(seed)))
    pred = _noisy(label, seed, 0.05, 0.02)
    loss = get_loss("softmin", lattice_metric="gram", coords="sinkhorn")
    base = float(loss(pred, label).loss)
    for step in (1e-7, 1e-6):
        moved = float(loss(pred, _noisy(label, seed + 1, step, step)).loss)
        assert abs(moved - base) <= 1e4 * step, (step, base, moved)


# Not "proxy" and center="both": they reduce the prediction, and are documented to jump where its
# Niggli basis switches (benchmarks/continuity.py measures that).
@pytest.mark.invariance
@pytest.mark.parametrize("name, options", [("mse", {}), ("softmin", {}), ("gram", {}),
                                           ("softmin", {"lattice_metric": "gram", "coords": "sinkhorn"})])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=symmetric_crystals(max_crystals=2, noise=0.0), seed=st.integers(0, 2**16))
def test_every_term_moves_in_proportion_to_small_moves_on_drawn_symmetric_crystals(name, options, batch, seed):
    loss = get_loss(name, **options)
    pred = _noisy(batch, seed, 0.03, 0.02)
    base = _terms(loss, pred, batch)
    for step in (1e-7, 1e-6):
        for moved_pred, moved_label in ((_noisy(pred, seed + 1, step, step), batch),
                                        (pred, _noisy(batch, seed + 2, step, step))):
            moved = _terms(loss, moved_pred, moved_label)
            for k in base:
                assert abs(moved[k] - base[k]) <= 1e4 * step, (k, step, base[k], moved[k])


def _stretched_fcc(stretch: float, dtype=torch.float64) -> CrystalBatch:
    """fcc (reduced metric [[2, 0, -1], [0, 2, -1], [-1, -1, 2]]) with its third row stretched by ``stretch``."""
    L = torch.linalg.cholesky(torch.tensor([[2.0, 0, -1], [0, 2, -1], [-1, -1, 2]], dtype=torch.float64))
    L[2] = L[2] * (1 + stretch)
    F = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    return CrystalBatch(L[None], F, [2], [1, 2]).to(dtype=dtype)


@pytest.mark.invariance
@pytest.mark.parametrize("name, options", [("softmin", {}), ("gram", {}), ("softmin", {"lattice_metric": "gram"}),
                                           ("softmin", {"center": "both"}), ("reduced-forms", {}),
                                           ("proxy", {"label_forms": "reduced"})])
@pytest.mark.parametrize("stretch", [1e-5, 1e-4, 1e-3])
def test_continuous_losses_ignore_the_label_basis_on_the_reducers_tolerance_edge(name, options, stretch):
    # Stretched by about the tolerance, the cell has forms that pass the Niggli conditions only just, or
    # only just not, and which of them a reducer returns depends on the basis: the losses take all of
    # them, each weighed by its distance from the conditions, so the basis changes nothing. 1e-5 is the
    # reducer's rel_tol, 1e-3 the edge of the losses' band (automorphism_rel_tol; reduced-forms' rel_tol).
    label = _stretched_fcc(stretch)
    noise = 0.05 * torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pred = CrystalBatch(label.lattice + noise, label.frac + 0.02, [2], [1, 2])
    loss = get_loss(name, **options)
    g = torch.Generator().manual_seed(0)
    values = [float(loss(pred, label.apply_basis_change(random_unimodular((1,), max_entry=5, generator=g))).loss)
              for _ in range(12)]
    assert max(values) - min(values) <= 1e-9 * max(abs(v) for v in values), values


# Found by the random profile (pinned, as the CHANGELOG lists): with the metric lattice term and Sinkhorn
# coordinates (top_k 2), an fcc-like two-atom label (336 reduced forms, all of weight 1) moved by 1e-7
# changed softmin by 0.0078 while its lattice and coordinate parts did not move. The window was the same
# (48 candidates); the offset of zero_at_match was not: it scores the label's candidates against each
# other, in their skewed cells M R, where the Sinkhorn cost's 8 images missed the nearest one for atoms
# exactly 0 apart along an axis, and a 1e-7 move brought it in (24 candidates at 0.75 became 0.25).
def test_softmin_with_metric_and_sinkhorn_moves_continuously_with_an_fcc_like_label():
    def batch(lattice, frac):
        return CrystalBatch(torch.tensor(lattice, dtype=torch.float64), torch.tensor(frac, dtype=torch.float64),
                            [2], [1, 2])

    pred = batch([[[0.3929255281328545, -1.787006392053239, 1.583209748482662],
                   [-0.6593145187881037, -0.9768928867872968, 2.1145941339377456],
                   [-0.6418329389127116, -2.293577677129676, 2.4675819403644708]]],
                 [[-0.008066870498643491, -0.011932707252302546, 0.0036407297012261107],
                  [-0.017133491865927487, 0.022012083418068543, 0.728576252737817]])
    label = batch([[[0.34669564488553317, -1.7782035248804107, 1.6485734299448986],
                    [-0.6763674571065237, -0.9443572165145762, 2.156551995798872],
                    [-0.6539333443415907, -2.3187184671196057, 2.4891596677185515]]],
                  [[0.0, 0.0, 0.0], [0.0, 0.0, 0.75]])
    moved = batch([[[0.3466956841152157, -1.7782035472368125, 1.6485733979948722],
                    [-0.6763675776102348, -0.9443571120682217, 2.1565519324760984],
                    [-0.6539332870309168, -2.318718413024864, 2.4891596285279656]]],
                  [[-1.0426788307393723e-07, 1.3186173054054699e-07, 7.476389752940184e-08],
                   [-1.3264806766986035e-07, -1.241297177880561e-07, 0.7499999897195071]])
    loss = get_loss("softmin", lattice_metric="gram", coords="sinkhorn")
    assert abs(float(loss(pred, moved).loss) - float(loss(pred, label).loss)) <= 1e4 * 1e-7
