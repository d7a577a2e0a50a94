"""soft_niggli.flow: the prior alignment and the reduced-form coupling, as properties."""

from __future__ import annotations

import functools
import threading
import warnings

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from soft_niggli import (CrystalBatch, ReducedFormsCache, Status, align_rotation, canonicalize_labels,
                         couple_reduced_forms, get_loss, random_rotations, random_unimodular, reduced_forms)
from soft_niggli.canonical import automorphic_forms, effective_rel_tol
from soft_niggli.datasets import load_dataset
from soft_niggli.testing import near_face_crystals


@functools.lru_cache(maxsize=None)
def _real_labels(names: str, count: int) -> CrystalBatch:
    """Canonical (Niggli) labels of the first ``count`` crystals of each bundled dataset in ``names``
    (comma-separated), float64."""
    structures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names.split(","):
            structures += load_dataset(name, "all", limit=count)
    return canonicalize_labels(CrystalBatch.from_structures(structures)).batch


def _prior(labels: CrystalBatch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scale = labels.lattice.double().square().sum((-1, -2)).sqrt()[:, None, None] / 3
    L0 = torch.randn(len(labels), 3, 3, generator=g, dtype=torch.float64) * scale
    f0 = torch.rand(labels.frac.shape[0], 3, generator=g, dtype=torch.float64)
    return L0, f0


def _same_crystal(a: CrystalBatch, b: CrystalBatch, atol: float) -> None:
    """Same lattices and the same fractional coordinates modulo 1."""
    torch.testing.assert_close(a.lattice.double(), b.lattice.double(), atol=atol * 10, rtol=atol)
    d = a.frac.double() - b.frac.double()
    torch.testing.assert_close(d - torch.round(d), torch.zeros_like(d), atol=atol * 10, rtol=0)


@pytest.mark.parametrize("among", ["automorphisms", "reduced-forms"])
@pytest.mark.parametrize("align", [False, True])
def test_the_coupled_target_is_a_reduced_form_of_the_label_and_never_farther_than_it(among, align):
    labels = _real_labels("carbon_24_small", 40)
    L0, f0 = _prior(labels, 1)
    out = couple_reduced_forms(L0, labels, prior_frac=f0, among=among, align=align)
    forms = reduced_forms(labels.lattice)
    for b in range(len(labels)):
        own = forms.transform[forms.owner == b]
        assert (own == out.transform[b]).flatten(1).all(1).any(), "the transform is one of the label's forms"
    torch.testing.assert_close(out.batch.lattice, out.transform.double() @ labels.lattice, atol=1e-9, rtol=1e-9)
    # The same atoms: re-basing back gives the label's fractional coordinates modulo 1.
    back = out.batch.apply_basis_change(torch.linalg.inv(out.transform.double()).round().long())
    _same_crystal(back, labels, 1e-9)
    own = ((align_rotation(L0, labels.lattice) if align else L0) - labels.lattice).square().sum((-1, -2))
    assert bool((out.distance <= own + 1e-9 * own).all())
    if among == "automorphisms":
        G = out.batch.lattice @ out.batch.lattice.mT
        G_label = labels.lattice @ labels.lattice.mT
        torch.testing.assert_close(G, G_label, atol=1e-6, rtol=1e-6)
    assert bool((out.status == int(Status.OK)).all()) and bool((out.choices >= 2).all())


@pytest.mark.invariance
@settings(max_examples=12)
@given(seed=st.integers(0, 2**16), among=st.sampled_from(["automorphisms", "reduced-forms"]),
       align=st.booleans(), dtype=st.sampled_from([torch.float64, torch.float32]),
       ties=st.sampled_from(["random", "coordinates"]))
@example(seed=121, among="reduced-forms", align=True, dtype=torch.float32, ties="random")
def test_the_coupling_does_not_depend_on_the_basis_the_label_came_in(seed, among, align, dtype, ties):
    # Random ties too: with the generator in the same state, the same form is drawn for every basis.
    labels = _real_labels("perov_5_small,carbon_24_small", 12).to(dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    M = random_unimodular((len(labels),), max_entry=5, generator=g)
    rebased = labels.apply_basis_change(M)
    L0, f0 = _prior(labels, seed)
    a = couple_reduced_forms(L0, labels, prior_frac=f0, among=among, align=align, ties=ties,
                             generator=torch.Generator().manual_seed(seed))
    b = couple_reduced_forms(L0, rebased, prior_frac=f0, among=among, align=align, ties=ties,
                             generator=torch.Generator().manual_seed(seed))
    if ties == "random" and dtype == torch.float32:
        # The forms' order hashes their entries on a grid of 1e-9 of the cell, far coarser than float64's
        # rounding but not float32's, so a float32 label draws among the same tied forms in another order:
        # the same metric (the tied forms are rotations of each other), not the same basis. Among all
        # reduced forms, a cell near a cone face also has forms whose metrics differ by less than float32
        # tells apart (within its band, effective_rel_tol: 1.2e-3 of the largest entry); they tie on the
        # distance too (a Carbon-24 cell, seed 121: metrics 1.6e-4 apart).
        G = lambda x: x.batch.lattice.double() @ x.batch.lattice.double().mT
        band = 1e-4 if among == "automorphisms" else effective_rel_tol(1e-5, torch.float32)
        torch.testing.assert_close(G(a), G(b), rtol=band, atol=band * float(G(a).abs().max()))
    else:
        _same_crystal(a.batch, b.batch, 1e-9 if dtype == torch.float64 else 1e-4)
    torch.testing.assert_close(a.choices, b.choices)


@pytest.mark.invariance
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label=near_face_crystals(rebase=False, max_atoms=2, max_crystals=2), seed=st.integers(0, 2**16),
       among=st.sampled_from(["automorphisms", "reduced-forms"]), align=st.booleans(),
       dtype=st.sampled_from([torch.float64, torch.float32]), ties=st.sampled_from(["random", "coordinates"]))
def test_the_coupling_of_a_label_near_a_cone_face_does_not_depend_on_its_basis(label, seed, among, align, dtype,
                                                                               ties):
    # Within the tolerance of a face (0.1x, 1x, 10x rel_tol) forms with other metrics pass the conditions
    # too, and which one a reducer returns depends on the basis: the Niggli metric is found among the
    # forms instead, and "reduced-forms" keeps the fully canonical ones, so every basis couples alike.
    # Random ties may draw another of the forms within the tolerance of each other: the same metric
    # within it.
    label = label.to(dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    M = random_unimodular((len(label),), max_entry=5, generator=g)
    L0, f0 = _prior(label, seed)
    a, b = (couple_reduced_forms(L0, x, prior_frac=f0, among=among, align=align, ties=ties,
                                 generator=torch.Generator().manual_seed(seed), cache=ReducedFormsCache())
            for x in (label, label.apply_basis_change(M)))
    torch.testing.assert_close(a.choices, b.choices)
    G = [x.batch.lattice.double() @ x.batch.lattice.double().mT for x in (a, b)]
    tol = 2 * effective_rel_tol(1e-5, dtype)
    torch.testing.assert_close(G[1], G[0], rtol=0, atol=tol * float(G[0].abs().max()))


@pytest.mark.parametrize("dtype, rel_tol", [(torch.float16, 1e-5), (torch.bfloat16, 1e-5), (torch.float64, 1e-12)])
def test_half_precision_labels_and_the_smallest_tolerance_couple(dtype, rel_tol):
    # The reference's strict tolerance stays inside the reducer's range: a quarter of 1e-12 is below it,
    # and 1000 ε of float16 (0.98) above.
    labels = _real_labels("perov_5_small,carbon_24_small", 4).to(dtype=dtype)
    L0, f0 = _prior(labels, 0)
    out = couple_reduced_forms(L0, labels, prior_frac=f0, rel_tol=rel_tol, cache=ReducedFormsCache(rel_tol=rel_tol))
    assert bool((out.status == int(Status.OK)).all()) and out.batch.lattice.dtype == dtype
    forms = reduced_forms(labels.lattice, rel_tol=rel_tol)
    assert int(automorphic_forms(labels.lattice, forms, rel_tol=rel_tol).sum()) >= len(labels)


def test_a_cube_chooses_among_its_48_forms_and_the_prior_decides():
    labels = CrystalBatch(4.0 * torch.eye(3, dtype=torch.float64).expand(2, 3, 3), torch.rand(2, 3, dtype=torch.float64),
                          [1, 1])
    forms = reduced_forms(labels.lattice[:1])
    assert forms.counts(1).tolist() == [48]
    for p in (0, 17, 47):
        L0 = torch.stack([forms.lattice[p], forms.lattice[p]]) + 0.01
        out = couple_reduced_forms(L0, labels, align=False)
        assert out.choices.tolist() == [48, 48]
        torch.testing.assert_close(out.batch.lattice[0], forms.lattice[p])
    # Aligned, every automorphism of the cube ties (each is a rotation of it): with ties="coordinates" the
    # prior's coordinates decide.
    L0 = random_rotations(2, proper=True).double() @ labels.lattice
    f0 = torch.rand(2, 3, dtype=torch.float64)
    out = couple_reduced_forms(L0, labels, prior_frac=f0, ties="coordinates")
    d = out.batch.frac - f0
    best = torch.stack([((labels.frac[i] @ torch.linalg.inv(forms.transform.double()) - f0[i]) -
                         torch.round(labels.frac[i] @ torch.linalg.inv(forms.transform.double()) - f0[i]))
                        .square().sum(-1).min() for i in range(2)])
    torch.testing.assert_close((d - torch.round(d)).square().sum(-1), best, atol=1e-12, rtol=0)


@pytest.mark.parametrize("among", ["automorphisms", "reduced-forms"])
def test_random_ties_draw_uniformly_among_the_forms_at_the_smallest_distance(among):
    # Aligned, the cube's 48 automorphisms tie: each is drawn about 1/48 of the time, and every draw is
    # one of the forms (the label re-based, never farther from the prior than the label itself).
    labels = CrystalBatch(4.0 * torch.eye(3, dtype=torch.float64)[None], torch.tensor([[0.1, 0.2, 0.3]]).double(), [1])
    L0 = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    seen = {}
    for _ in range(960):
        out = couple_reduced_forms(L0, labels, among=among, ties="random", generator=g)
        key = tuple(out.transform[0].flatten().tolist())
        seen[key] = seen.get(key, 0) + 1
        assert abs(abs(int(torch.linalg.det(out.transform[0].double()).round())) - 1) == 0
    assert len(seen) == 48 and max(seen.values()) < 45  # 20 expected each; a bias would pile up
    # The same generator state gives the same draw; without alignment only one form is nearest.
    a = couple_reduced_forms(L0, labels, ties="random", generator=torch.Generator().manual_seed(5))
    b = couple_reduced_forms(L0, labels, ties="random", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.transform, b.transform)
    unaligned = {tuple(couple_reduced_forms(L0, labels, align=False).transform[0].flatten().tolist())
                 for _ in range(20)}
    assert len(unaligned) == 1


def test_labels_that_do_not_reduce_are_passed_through_with_their_status_and_empty_batches_work():
    lattice = torch.stack([torch.zeros(3, 3), torch.full((3, 3), float("nan")), 3.0 * torch.eye(3)]).double()
    labels = CrystalBatch(lattice, torch.full((3, 3), 0.25, dtype=torch.float64), [1, 1, 1])
    L0 = torch.randn(3, 3, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = couple_reduced_forms(L0, labels)
    assert out.status.tolist()[:2] == [int(Status.DEGENERATE), int(Status.NONFINITE)]
    assert out.status.tolist()[2] == int(Status.OK) and out.ok.tolist() == [False, False, True]
    eye = torch.eye(3, dtype=torch.int64)
    assert bool((out.transform[:2] == eye).all()) and out.choices.tolist()[:2] == [1, 1]
    torch.testing.assert_close(out.batch.lattice[:2], lattice[:2], equal_nan=True)
    empty = CrystalBatch(torch.zeros(0, 3, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    res = couple_reduced_forms(torch.zeros(0, 3, 3), empty)
    assert len(res.batch) == 0 and res.transform.shape == (0, 3, 3)


@pytest.mark.parametrize("among", ["automorphisms", "reduced-forms"])
@pytest.mark.parametrize("ties", ["coordinates", "random"])
@pytest.mark.parametrize("align", [False, True])
def test_the_coupling_picks_a_nearest_candidate_alike_with_a_warm_an_evicting_and_no_cache(among, ties, align):
    # The coupling reads each label's candidates from the cache's entries: a remembered entry, one computed
    # for an over-full cache, and the cache turned off must give one answer.
    # Cells on cone faces (2|G12| = G11; G12 = 0 with equal lengths) have forms of several metrics.
    face = torch.tensor([[[2.0, 0, 0], [-1.0, 2.3, 0], [0.2, 0.1, 2.9]], [[2.0, 0, 0], [0, 2.0, 0], [0.5, 0.7, 3.1]]],
                        dtype=torch.float64)
    faces = CrystalBatch(face, torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.1, 0.4], [0.0, 0.0, 0.0]], dtype=torch.float64),
                         [2, 1])
    assert bool(reduced_forms(face).distinct_metrics(2).all())
    for labels in (_real_labels("perov_5_small,carbon_24_small", 12), faces):
        L0, f0 = _prior(labels, 5)
        warm = ReducedFormsCache()
        outs = []
        for cache in (warm, warm, ReducedFormsCache(max_bytes=30_000), ReducedFormsCache(0)):
            outs.append(couple_reduced_forms(L0, labels, prior_frac=f0, among=among, ties=ties, align=align,
                                             generator=torch.Generator().manual_seed(1), cache=cache))
        for out in outs[1:]:
            for name in ("transform", "distance", "status", "choices"):
                torch.testing.assert_close(getattr(out, name), getattr(outs[0], name), rtol=0, atol=0)
            torch.testing.assert_close(out.batch.frac, outs[0].batch.frac, rtol=0, atol=0)
        # And a brute force over the public API: the candidates are the fully canonical forms (of the
        # label's metric with "automorphisms"), the chosen one is among them, at the smallest distance.
        forms = reduced_forms(labels.lattice)
        keep = forms.weights() >= 1
        if among == "automorphisms":
            keep &= automorphic_forms(labels.lattice, forms)
        for b in range(len(labels)):
            mine = keep & (forms.owner == b)
            F, T = forms.lattice[mine], forms.transform[mine]
            d = torch.stack([(align_rotation(L0[b], f) if align else L0[b]).sub(f).square().sum() for f in F])
            assert outs[0].choices[b] == len(F)
            assert bool((T == outs[0].transform[b]).all((-1, -2)).any())
            torch.testing.assert_close(outs[0].distance[b], d.min(), rtol=1e-9, atol=1e-12)


def test_coupling_arguments_are_checked():
    labels = _real_labels("perov_5_small", 2)
    with pytest.raises(ValueError, match="among: expected one of"):
        couple_reduced_forms(torch.zeros(2, 3, 3), labels, among="all")
    with pytest.raises(ValueError, match="ties: expected one of"):
        couple_reduced_forms(torch.zeros(2, 3, 3), labels, ties="first")
    with pytest.raises(ValueError, match=r"prior_lattice: expected shape \(B, 3, 3\) = \(2, 3, 3\)"):
        couple_reduced_forms(torch.zeros(3, 3, 3), labels)
    with pytest.raises(ValueError, match="prior_frac: expected shape"):
        couple_reduced_forms(torch.zeros(2, 3, 3), labels, prior_frac=torch.zeros(1, 3))
    with pytest.raises(TypeError, match="labels: expected a CrystalBatch"):
        couple_reduced_forms(torch.zeros(2, 3, 3), labels.lattice)
    with pytest.raises(ValueError, match="rel_tol"):
        couple_reduced_forms(torch.zeros(2, 3, 3), labels, rel_tol=0.5)
    meta = CrystalBatch(labels.lattice.to("meta"), labels.frac.to("meta"), labels.num_atoms.to("meta"))
    with pytest.raises(ValueError, match="labels.lattice: the coupling .* needs the tensor's values"):
        couple_reduced_forms(torch.zeros(2, 3, 3, device="meta"), meta)


def test_align_rotation_is_the_nearest_orthogonal_turn_and_keeps_the_targets_handedness():
    g = torch.Generator().manual_seed(3)
    L1 = torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    L0 = torch.randn(64, 3, 3, generator=g, dtype=torch.float64)
    out = align_rotation(L0, L1)
    R = torch.linalg.solve(L0, out)
    torch.testing.assert_close(R @ R.mT, torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-9, rtol=0)
    assert bool((torch.sign(torch.linalg.det(out)) == torch.sign(torch.linalg.det(L1))).all())
    best = (out - L1).square().sum((-1, -2))
    for Q in random_rotations(50, generator=g).double():
        assert bool(((L0 @ Q - L1).square().sum((-1, -2)) >= best - 1e-9).all())
    # An already aligned L0 is left alone.
    torch.testing.assert_close(align_rotation(L1, L1), L1, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="target_lattice: expected the prior's shape"):
        align_rotation(L0, L1[:2])


# ------------------------------------------------------------------------------ the cache and reduced_forms


def test_the_forms_cache_is_bounded_in_bytes_and_gives_what_reduced_forms_gives():
    labels = _real_labels("carbon_24_small", 30)
    cache = ReducedFormsCache(max_bytes=20_000)
    for _ in range(2):
        got = cache(labels.lattice)
        want = reduced_forms(labels.lattice)
        for name in ("owner", "transform", "lattice", "status"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0)
        assert 0 < cache.nbytes <= 20_000
    with pytest.raises(ValueError, match="max_bytes"):
        ReducedFormsCache(-1)


def test_the_forms_cache_holds_no_more_memory_than_it_is_charged():
    # Entries computed for a batch own their arrays: slices of the batch's tensors would keep the whole
    # batch alive after the other entries are evicted.
    labels = _real_labels("carbon_24_small", 30)
    cache = ReducedFormsCache(max_bytes=20_000)
    cache(labels.lattice)
    held = 0
    for entry in cache._entries.values():
        tensors = (entry.transform, entry.inverse, entry.automorphic, entry.metric, entry.weight, entry.lattice)
        held += sum(t.untyped_storage().nbytes() for t in tensors)
        held += sum(c.index.base.nbytes if c.index.base is not None else c.index.nbytes for c in entry.candidates)
    assert 0 < held <= cache.nbytes <= 20_000


def test_one_loss_shared_by_two_threads_with_a_full_cache_raises_nothing():
    labels = _real_labels("carbon_24_small", 24)
    loss = get_loss("reduced-forms", cache_bytes=30_000)
    errors = []

    def work(offset):
        try:
            for i in range(150):
                idx = torch.arange(offset + i, offset + i + 4) % len(labels)
                loss(labels[idx], labels[idx])
        except Exception as err:  # noqa: BLE001 - any error in a thread fails the test
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_reduced_forms_keeps_its_set_for_float32_labels_rebased_with_entries_up_to_5():
    # MP-20 cells: two in three sit on a face of the Niggli cone, where forms enter at the tolerance's edge.
    from conftest import load_shared_cells

    from soft_niggli import niggli_reduce

    cells = niggli_reduce(torch.as_tensor(load_shared_cells("mp_20", "val")[:300])).lattice.float()
    for seed in range(3):
        M = random_unimodular((len(cells),), max_entry=5, generator=torch.Generator().manual_seed(seed))
        rebased = (M.float() @ cells)
        torch.testing.assert_close(reduced_forms(cells).counts(len(cells)), reduced_forms(rebased).counts(len(cells)),
                                   rtol=0, atol=0)
    labels = _real_labels("carbon_24_small", 60).to(dtype=torch.float32)
    M = random_unimodular((len(labels),), max_entry=5, generator=torch.Generator().manual_seed(0))
    rebased = labels.apply_basis_change(M)
    loss = get_loss("reduced-forms", cache_bytes=0)
    pred = labels.apply_basis_change(random_unimodular((len(labels),), max_entry=1,
                                                       generator=torch.Generator().manual_seed(1)))
    pred = CrystalBatch(pred.lattice * 1.01, pred.frac, pred.num_atoms, pred.species)
    torch.testing.assert_close(loss(pred, labels).per_crystal, loss(pred, rebased).per_crystal, rtol=1e-3, atol=1e-4)


def test_reduced_forms_processes_large_batches_in_pieces(monkeypatch):
    import soft_niggli._reduced_forms as enumeration

    labels = _real_labels("carbon_24_small", 30)
    whole = reduced_forms(labels.lattice)
    monkeypatch.setattr(enumeration, "_CHUNK", 7)
    pieces = reduced_forms(labels.lattice)
    for name in ("owner", "transform", "lattice", "status"):
        torch.testing.assert_close(getattr(pieces, name), getattr(whole, name), rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1e-150, 1.0, 1.4e154, 1e300])
def test_huge_and_tiny_cells_keep_their_forms_and_automorphisms(scale):
    from soft_niggli import lattice_automorphisms

    cube = scale * torch.eye(3, dtype=torch.float64)[None]
    assert reduced_forms(cube).counts(1).tolist() == [48]
    assert lattice_automorphisms(cube).counts(1).tolist() == [48]
