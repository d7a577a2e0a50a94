"""The shipped testing helpers: strategies draw what they promise, assert_gl3z_invariant can fail."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import soft_niggli.testing
from soft_niggli import CrystalBatch, is_unimodular, lattice_parameters, niggli_reduce, volume
from soft_niggli.lattice import gram
from soft_niggli.testing import (AUTOMORPHISM_COUNTS, LATTICE_KINDS, NEAR_FACE_STRAINS, NEAR_FACES, SYMMETRIC_FAMILIES,
                                 SYMMETRIC_PROTOTYPES, aflow_crystals, assert_gl3z_invariant, crystals, lattices,
                                 near_face_crystals, near_face_lattices, prototypes, real_crystals, rotations,
                                 symmetric_crystals, symmetric_lattices, unimodular_matrices)
from soft_niggli.testing._draw import rebasings
from soft_niggli.unimodular import lattice_automorphisms


@given(lattices("realistic"))
def test_realistic_lattices_look_like_real_cells(L):
    assert L.shape == (3, 3) and L.dtype == torch.float64
    reduced = niggli_reduce(L).lattice
    a, b, c, alpha, beta, gamma = lattice_parameters(reduced).tolist()
    # Re-basing by a {-1,0,1} matrix can lengthen vectors, but the reduced cell is a real-looking one (its
    # shortest vector can be shorter than any drawn edge: a - b of a drawn cell with a small angle).
    assert 0.5 < a and c < 60.0
    assert a <= b * (1 + 1e-5) and b <= c * (1 + 1e-5)  # sorted, up to the reducer's tolerance
    assert all(30.0 <= ang <= 150.0 for ang in (alpha, beta, gamma))


def test_any_float_strategy_reaches_nan_and_inf():
    seen = {"nan": False, "inf": False}

    @settings(max_examples=300, database=None)
    @given(lattices("any_float"))
    def probe(L):
        seen["nan"] |= bool(torch.isnan(L).any())
        seen["inf"] |= bool(torch.isinf(L).any())

    probe()
    assert seen["nan"] and seen["inf"]


@given(lattices("pathological"))
def test_pathological_lattices_are_finite(L):
    assert L.shape == (3, 3) and bool(torch.isfinite(L).all())


def test_pathological_strategy_reaches_degenerate_and_badly_conditioned_cells():
    seen = {"flat": False, "skewed": False}

    @settings(max_examples=200, database=None)
    @given(lattices("pathological"))
    def probe(L):
        rows = torch.linalg.vector_norm(L, dim=1)
        rel_volume = float(torch.linalg.det(L).abs() / rows.prod().clamp_min(1e-300))
        seen["flat"] |= rel_volume < 1e-6
        seen["skewed"] |= bool(rows.max() / rows.min().clamp_min(1e-300) > 1e3)

    probe()
    assert seen["flat"] and seen["skewed"]


@given(unimodular_matrices(2), unimodular_matrices(1, depth=3), rotations())
def test_matrix_strategies_give_group_elements(M, M3, Q):
    assert bool(is_unimodular(M)) and bool(is_unimodular(M3))
    torch.testing.assert_close(Q @ Q.T, torch.eye(3, dtype=torch.float64), atol=1e-12, rtol=0)


@given(crystals(max_atoms=5, max_crystals=3))
def test_crystal_strategy_builds_consistent_batches(batch):
    assert isinstance(batch, CrystalBatch)
    assert 1 <= len(batch) <= 3 and int(batch.num_atoms.max()) <= 5
    assert batch.frac.shape == (int(batch.num_atoms.sum()), 3)
    assert bool(((batch.frac >= 0) & (batch.frac < 1)).all())


@pytest.mark.invariance
@settings(max_examples=10)
@given(crystals(max_atoms=4))
def test_assert_gl3z_invariant_accepts_invariant_functions(batch):
    assert_gl3z_invariant(lambda b: volume(b.lattice), batch)
    assert_gl3z_invariant(lambda b: {"n": b.num_atoms.double(), "reduced": niggli_reduce(b.lattice).lattice
                                     .pow(2).sum(dim=(1, 2))}, batch, atol=1e-8, rtol=1e-6)


def test_assert_gl3z_invariant_rejects_a_basis_dependent_function():
    batch = CrystalBatch(torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64))[None],
                         torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1]))
    with pytest.raises(AssertionError, match="not GL\\(3,Z\\)-invariant"):
        assert_gl3z_invariant(lambda b: b.lattice.sum(dim=(1, 2)), batch)
    with pytest.raises(ValueError, match="kind"):
        lattices("nonsense")


# ------------------------------------------------------------------------------ symmetric lattices


def _automorphism_count(L: torch.Tensor) -> int:
    """Lattice automorphisms of ``L (3, 3)``, found on its Niggli-reduced basis."""
    res = niggli_reduce(L)
    assert bool(res.ok), f"niggli_reduce status {int(res.status)} for {L.tolist()}"
    owner = lattice_automorphisms(res.lattice[None]).owner
    return owner.numel()


def _is_valid_cell(L: torch.Tensor) -> bool:
    rows = torch.linalg.vector_norm(L, dim=1)
    return bool(torch.isfinite(L).all()) and float(torch.linalg.det(L).abs() / rows.prod()) > 1e-3


@pytest.mark.parametrize("family", SYMMETRIC_FAMILIES)
def test_exact_symmetric_lattices_have_the_family_automorphism_count(family):
    @settings(max_examples=20, derandomize=True, database=None)
    @given(symmetric_lattices(family, noise=0.0))
    def check(L):
        assert L.shape == (3, 3) and L.dtype == torch.float64 and _is_valid_cell(L)
        assert _automorphism_count(L) == AUTOMORPHISM_COUNTS[family]

    check()


@settings(max_examples=40)
@given(st.sampled_from(SYMMETRIC_FAMILIES).flatmap(lambda f: st.tuples(st.just(f), symmetric_lattices(f, noise=1e-3))))
def test_noisy_symmetric_lattices_are_valid_cells_with_no_extra_symmetry(family_and_lattice):
    family, L = family_and_lattice
    assert L.shape == (3, 3) and L.dtype == torch.float64 and _is_valid_cell(L)
    assert 2 <= _automorphism_count(L) <= AUTOMORPHISM_COUNTS[family]


@settings(max_examples=20)
@given(lattices("symmetric"))
def test_symmetric_kind_of_lattices_draws_valid_cells(L):
    assert L.shape == (3, 3) and L.dtype == torch.float64 and _is_valid_cell(L)


def test_default_symmetric_lattices_reach_exact_and_perturbed_cells():
    seen = {"exact": False, "perturbed": False}

    @settings(max_examples=60, derandomize=True, database=None)
    @given(symmetric_lattices("cubic_F"))
    def probe(L):
        exact = _automorphism_count(L) == 48
        seen["exact"] |= exact
        seen["perturbed"] |= not exact

    probe()
    assert seen["exact"] and seen["perturbed"]


def test_symmetric_strategies_reject_unknown_names_and_bad_noise():
    with pytest.raises(ValueError, match="cubic_F"):
        symmetric_lattices("cubic")
    with pytest.raises(ValueError, match="noise"):
        symmetric_lattices(noise=-1e-3)
    with pytest.raises(ValueError, match="rocksalt"):
        symmetric_crystals("nacl")
    with pytest.raises(ValueError, match="max_atoms"):
        symmetric_crystals("perovskite", max_atoms=4)
    assert set(AUTOMORPHISM_COUNTS) == set(SYMMETRIC_FAMILIES)


# ------------------------------------------------------------------------------ symmetric crystals

# Order of each prototype's crystal point group: the lattice automorphisms that map the atoms (with
# their species) onto themselves up to a translation.
_POINT_GROUP_ORDERS = {"fcc": 48, "bcc": 48, "hcp": 24, "rocksalt": 48, "rocksalt_conventional": 48, "cscl": 48,
                       "zincblende": 24, "fluorite": 48, "perovskite": 48, "wurtzite": 12}


def _crystal_point_group_order(crystal: CrystalBatch) -> int:
    reduced = crystal.apply_basis_change(niggli_reduce(crystal.lattice).transform)
    automorphisms = lattice_automorphisms(reduced.lattice).matrices
    F, Z = reduced.frac, reduced.species
    same_species = Z[:, None] == Z[None, :]
    order = 0
    for A in automorphisms.to(torch.float64):
        image = F @ A  # A L = L R for an orthogonal R: the point f L goes to (f A) L
        for j in (Z == Z[0]).nonzero().flatten().tolist():
            diff = (image + (F[j] - image[0]))[:, None, :] - F[None, :, :]
            hits = ((diff - diff.round()).abs().amax(-1) < 1e-6) & same_species
            if bool(hits.any(1).all()):
                order += 1
                break
    return order


def test_every_prototype_has_a_point_group_order():
    assert set(_POINT_GROUP_ORDERS) | {"generic"} == set(SYMMETRIC_PROTOTYPES)


@pytest.mark.parametrize("prototype", sorted(_POINT_GROUP_ORDERS))
def test_exact_prototype_crystals_keep_their_point_group(prototype):
    @settings(max_examples=8, derandomize=True, database=None)
    @given(symmetric_crystals(prototype, noise=0.0))
    def check(batch):
        assert len(batch) == 1
        assert _crystal_point_group_order(batch) == _POINT_GROUP_ORDERS[prototype]

    check()


def _assert_valid_batch(batch: CrystalBatch, max_crystals: int, max_atoms: int, max_z: int = 94):
    assert isinstance(batch, CrystalBatch) and batch.dtype == torch.float64
    assert 1 <= len(batch) <= max_crystals and 1 <= int(batch.num_atoms.min())
    assert int(batch.num_atoms.max()) <= max_atoms
    assert batch.species is not None and batch.species.shape == (batch.frac.shape[0],)
    assert bool(((batch.species >= 1) & (batch.species <= max_z)).all())
    assert bool(((batch.frac >= 0) & (batch.frac < 1)).all())
    assert all(_is_valid_cell(L) for L in batch.lattice)


@settings(max_examples=40)
@given(symmetric_crystals(max_crystals=3))
def test_symmetric_crystals_are_valid_batches_with_species(batch):
    _assert_valid_batch(batch, 3, 8)


@settings(max_examples=30)
@given(crystals(max_atoms=6, lattice_kind="symmetric"))
def test_crystals_with_symmetric_kind_are_valid_batches_of_small_crystals(batch):
    _assert_valid_batch(batch, 3, 6)


@pytest.mark.invariance
@settings(max_examples=10)
@given(symmetric_crystals(noise=0.0, max_crystals=2))
def test_assert_gl3z_invariant_accepts_invariant_functions_on_symmetric_crystals(batch):
    assert_gl3z_invariant(lambda b: niggli_reduce(b.lattice).lattice.pow(2).sum(dim=(1, 2)), batch,
                          atol=1e-8, rtol=1e-6)


# ------------------------------------------------------------------------------ AFLOW prototypes


_needs_pymatgen = pytest.mark.skipif(importlib.util.find_spec("pymatgen") is None, reason="pymatgen not installed")


@_needs_pymatgen
def test_aflow_crystals_are_the_bundled_prototypes():
    everything = aflow_crystals()
    assert len(everything) == 250 and everything.species is not None
    first = aflow_crystals(limit=5)
    torch.testing.assert_close(first.lattice, everything.lattice[:5])
    small = aflow_crystals(max_atoms=4)
    assert 0 < len(small) < 250 and int(small.num_atoms.max()) <= 4
    with pytest.raises(ValueError, match="limit"):
        aflow_crystals(limit=-1)


@pytest.mark.invariance
@_needs_pymatgen
@settings(max_examples=15)
@given(real_crystals(max_crystals=2, max_atoms=8))
def test_real_crystals_are_valid_rebased_aflow_cells(batch):
    _assert_valid_batch(batch, 2, 8, max_z=118)  # the AFLOW prototypes hold californium (98) too
    assert_gl3z_invariant(lambda b: volume(b.lattice), batch)


def test_aflow_crystals_names_pymatgen_when_it_is_missing(monkeypatch):
    prototypes._aflow_structures.cache_clear()
    monkeypatch.setitem(sys.modules, "pymatgen.core", None)
    with pytest.raises(ImportError, match="pip install pymatgen"):
        aflow_crystals(limit=1)
    prototypes._aflow_structures.cache_clear()


# ------------------------------------------------------------------------------ assert_gl3z_invariant details


def _two_crystals(dtype=torch.float64):
    return CrystalBatch(torch.diag(torch.tensor([3.0, 4.0, 5.0], dtype=dtype)).repeat(2, 1, 1),
                        torch.zeros(2, 3, dtype=dtype), torch.tensor([1, 1]))


def test_assert_gl3z_invariant_names_the_crystal_output_and_basis_change():
    batch = _two_crystals()

    def second_depends_on_basis(b):  # crystal 1's output depends on the basis; crystal 0's does not
        return {"volume": volume(b.lattice), "trace": torch.stack([b.lattice[0].abs().sum() * 0 + 1.0,
                                                                     b.lattice[1].trace()])}

    with pytest.raises(AssertionError) as info:
        assert_gl3z_invariant(second_depends_on_basis, batch, seed=3)
    message = str(info.value)
    assert "not GL(3,Z)-invariant: trial 0, output['trace'], crystals [1] (basis changes [[[" in message
    assert "Greatest absolute difference" in message  # torch.testing.assert_close's report


def test_assert_gl3z_invariant_uses_per_dtype_tolerances():
    noise = {"n": 0}

    def wobbly(b, size):
        noise["n"] += 1
        return volume(b.lattice) * (1 + size * (noise["n"] % 2))

    assert_gl3z_invariant(lambda b: wobbly(b, 1e-4), _two_crystals(torch.float32))  # float32: rtol 1e-3
    with pytest.raises(AssertionError, match="not GL"):
        assert_gl3z_invariant(lambda b: wobbly(b, 1e-4), _two_crystals(torch.float64))  # float64: rtol 1e-7
    assert_gl3z_invariant(lambda b: wobbly(b, 1e-4), _two_crystals(torch.float64), rtol=1e-3)


def test_assert_gl3z_invariant_compares_strings_numbers_and_shapes():
    batch = _two_crystals()
    assert_gl3z_invariant(lambda b: ("ok", None, 3, 2.5, [volume(b.lattice)]), batch)
    with pytest.raises(AssertionError, match=r"output\[0\]: 'b' instead of 'a'"):
        assert_gl3z_invariant(lambda b: ("a" if bool((b.lattice == torch.diag(b.lattice[0].diagonal())).all())
                                         else "b",), batch)
    with pytest.raises(AssertionError, match="shape"):
        assert_gl3z_invariant(lambda b: torch.zeros(int(b.lattice[0].abs().sum())), batch)


def test_assert_gl3z_invariant_runs_on_meta_comparing_metadata():
    assert_gl3z_invariant(lambda b: volume(b.lattice), _two_crystals().to("meta"))


@pytest.mark.parametrize("call, match", [
    (lambda: assert_gl3z_invariant("volume", _two_crystals()), "fn: expected a callable"),
    (lambda: assert_gl3z_invariant(volume, _two_crystals().lattice), "batch: expected a CrystalBatch"),
    (lambda: assert_gl3z_invariant(lambda b: 1.0, _two_crystals(), trials=2.0), "trials: expected an int"),
    (lambda: assert_gl3z_invariant(lambda b: 1.0, _two_crystals(), atol="0"), "atol: expected"),
    (lambda: assert_gl3z_invariant(lambda b: object(), _two_crystals()), "cannot compare outputs of type object"),
])
def test_assert_gl3z_invariant_rejects_wrong_types(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("call, error, match", [
    (lambda: crystals(max_atoms=1.5), TypeError, "max_atoms: expected an int"),
    (lambda: crystals(max_atoms=0), ValueError, "max_atoms: expected an int >= 1, got 0"),
    (lambda: symmetric_crystals(max_crystals=True), TypeError, "max_crystals"),
    (lambda: symmetric_lattices(noise="small"), TypeError, "noise: expected a float"),
    (lambda: symmetric_lattices(noise=0.5), ValueError, "noise: expected a float in"),
    (lambda: symmetric_lattices(family=3), TypeError, "family: expected None, a name"),
    (lambda: symmetric_lattices(rebase="yes"), TypeError, "rebase: expected a bool"),
    (lambda: unimodular_matrices(bound=1.0), TypeError, "bound: expected an int"),
    (lambda: unimodular_matrices(bound=3), ValueError, "bound: expected 1 or 2"),
    (lambda: unimodular_matrices(depth=0), ValueError, "depth: expected an int >= 1"),
    (lambda: rotations(proper=None), TypeError, "proper: expected a bool"),
    (lambda: lattices(3), TypeError, "kind: expected one of"),
    (lambda: aflow_crystals(limit=2.0), TypeError, "limit: expected an int >= 0 or None"),
    (lambda: real_crystals(max_atoms="8"), TypeError, "max_atoms"),
    (lambda: near_face_lattices("cubic"), ValueError, "face: expected None, one of"),
    (lambda: near_face_lattices(strain=0.0), ValueError, "strain: expected a float > 0"),
    (lambda: near_face_lattices(strain="1"), TypeError, "strain: expected a float > 0"),
    (lambda: near_face_lattices(strain=1e3, rel_tol=1e-5), ValueError, "strain \\* rel_tol <= 0.001"),
    (lambda: near_face_lattices(rel_tol=0.5), ValueError, "rel_tol: expected a float in"),
    (lambda: near_face_lattices(max_entry=0), ValueError, "max_entry: expected an int >= 1"),
    (lambda: near_face_lattices(rebase=1), TypeError, "rebase: expected a bool"),
    (lambda: near_face_crystals(max_atoms=0), ValueError, "max_atoms: expected an int >= 1"),
])
def test_strategy_arguments_type_error_vs_value_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


@settings(max_examples=30)
@given(rotations(proper=True), rotations())
def test_rotations_strategy_draws_from_random_rotations(Q, R):
    assert Q.shape == R.shape == (3, 3) and Q.dtype == R.dtype == torch.float64
    assert float(torch.linalg.det(Q)) == pytest.approx(1.0, abs=1e-12)
    assert abs(float(torch.linalg.det(R))) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------ near-face lattices


def _g6(L: torch.Tensor) -> tuple[float, ...]:
    G = gram(L)
    return (float(G[0, 0]), float(G[1, 1]), float(G[2, 2]), 2 * float(G[1, 2]), 2 * float(G[0, 2]), 2 * float(G[0, 1]))


def _distance_from_face(face: str, g6) -> float:
    """How far a basis with metric ``g6`` is from ``face``, in the units of soft_niggli.testing.near_face."""
    A, B, C, xi, eta, zeta = g6

    def unequal(x, y):
        return abs(y - x) / ((x + y) / 2)

    if face == "equal_lengths":
        return min(unequal(A, B), unequal(B, C))
    if face == "angle_90":
        return min(abs(xi) / (B * C) ** 0.5, abs(eta) / (A * C) ** 0.5, abs(zeta) / (A * B) ** 0.5)
    if face in ("angle_60", "angle_120"):
        return max(unequal(A, B), abs(abs(zeta) / A - 1))
    lengths, angles = (A, B, C), (xi, eta, zeta)
    mean = sum(lengths) / 3
    return max(abs(x - sum(group) / 3) for group in (lengths, angles) for x in group) / mean


def _face_and_strain(rebase: bool, faces=NEAR_FACES):
    return st.tuples(st.sampled_from(faces), st.sampled_from(NEAR_FACE_STRAINS)).flatmap(
        lambda fk: st.tuples(st.just(fk[0]), st.just(fk[1]), near_face_lattices(fk[0], strain=fk[1], rebase=rebase)))


@settings(max_examples=60)
@given(_face_and_strain(rebase=False))
def test_near_face_lattices_sit_at_the_drawn_distance_from_their_face(face_strain_lattice):
    face, strain, L = face_strain_lattice
    assert L.shape == (3, 3) and L.dtype == torch.float64 and _is_valid_cell(L)
    assert _distance_from_face(face, _g6(L)) == pytest.approx(strain * 1e-5, rel=1e-6)


@settings(max_examples=40)
@given(_face_and_strain(rebase=True, faces=("equal_lengths", "angle_90")))
def test_rebasing_near_face_lattices_keeps_the_lattice_and_its_distance_from_the_face(face_strain_lattice):
    # The Niggli form is unique at a tolerance far below the distance, and on these two faces it is the
    # basis the strategy built: re-basing changed the basis, not the lattice.
    face, strain, L = face_strain_lattice
    reduced = niggli_reduce(L, rel_tol=1e-12)
    assert bool(reduced.ok)
    assert _distance_from_face(face, _g6(reduced.lattice)) == pytest.approx(strain * 1e-5, rel=1e-6)


@settings(max_examples=60)
@given(lattices("near_face"))
def test_near_face_lattices_are_valid_cells_the_reducer_reduces(L):
    assert L.shape == (3, 3) and L.dtype == torch.float64 and _is_valid_cell(L)
    assert bool(niggli_reduce(L).ok) and bool(niggli_reduce(L, rel_tol=1e-12).ok)


@pytest.mark.parametrize("max_entry", [1, 2, 5])
def test_near_face_rebasings_are_unimodular_with_entries_up_to_max_entry(max_entry):
    largest = set()

    @settings(max_examples=150, database=None)
    @given(rebasings(max_entry))
    def check(M):
        assert M.dtype == torch.int64 and bool(is_unimodular(M))
        largest.add(int(M.abs().max()))

    check()
    assert max(largest) == max_entry


@settings(max_examples=30)
@given(near_face_crystals(max_atoms=3, max_crystals=2))
def test_near_face_crystals_are_valid_batches_with_species(batch):
    _assert_valid_batch(batch, 2, 3)


# Found by the random profile: an fcc-like cell 1x rel_tol off three faces at once, whose two bases
# reduce to forms with c² = 3.99999 and 4.00008 (2.4 ε apart, ε = rel_tol · the largest squared length).
_FCC_LIKE_NEAR_THREE_FACES = CrystalBatch(torch.tensor(
    [[[-3.4854819122966063, -0.354024094839004, 1.5239481958134125],
      [3.3970954319942805, -3.8164976954871603, -14.773729508232647],
      [-11.521543231006934, 4.65160388595476, 26.94320188025516]],
     [[2.6001130822944596, 4.26252707113057, -12.690431608200592],
      [14.211634050093652, 0.697610957312623, 16.594037235507002],
      [-26.540919484668358, -9.297404242509984, 4.611869619908066]],
     [[-8.410710321340305, 0.9663328772082531, 0.5725023125415961],
      [4.047988114482328, 1.28948278993599, 1.3969037164251905],
      [-1.2146850883484026, 1.3440412991194073, 0.8474509560472815]]], dtype=torch.float64),
    torch.tensor([[0.35, 0.0, 0.07], [0.92, 0.0, 0.0], [0.35, 0.0, 0.07]], dtype=torch.float64), [1, 1, 1], [61, 78, 61])


@pytest.mark.invariance
@settings(max_examples=40)
@given(near_face_crystals(max_atoms=1))
@example(_FCC_LIKE_NEAR_THREE_FACES)
def test_reduced_lengths_near_cone_faces_agree_in_every_basis_to_rel_tol(batch):
    # Within rel_tol of a face several reduced forms pass the Niggli conditions, and the reducer's choice
    # among them depends on the input basis. Each condition holds to ε = rel_tol · s (s the largest
    # squared length), and two such forms are one unimodular step apart whose new squared length is a sum
    # of three metric entries (C' = A + C − 2 a·c, say): they differ by at most a few ε. 4 ε, relative to s.
    rel_tol = 1e-5

    def reduced_lengths(b):
        squared = niggli_reduce(b.lattice).lattice.pow(2).sum(-1)
        return squared / squared.amax(-1, keepdim=True)

    assert_gl3z_invariant(reduced_lengths, batch, max_entry=5, atol=4 * rel_tol, rtol=0.0)


def test_every_public_name_is_exported_and_the_lattice_kinds_include_near_face():
    assert sorted(soft_niggli.testing.__all__) == sorted(set(soft_niggli.testing.__all__))
    assert all(hasattr(soft_niggli.testing, name) for name in soft_niggli.testing.__all__)
    assert "near_face" in LATTICE_KINDS


# ------------------------------------------------------------------------------ speed on a busy machine


def _draw_milliseconds(strategy, n: int = 40) -> float:
    """Median milliseconds of thread CPU time per draw (not wall time, which another process can take)."""
    import statistics
    import time

    times = []

    @settings(max_examples=n, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.data())
    def probe(data):
        start = time.thread_time()
        data.draw(strategy)
        times.append(1e3 * (time.thread_time() - start))

    probe()
    return statistics.median(times)


_STRATEGIES = {
    "crystals": lambda: crystals(max_atoms=6), "crystals-symmetric": lambda: crystals(lattice_kind="symmetric"),
    "pathological": lambda: lattices("pathological"), "symmetric_lattices": lambda: symmetric_lattices(),
    "symmetric_crystals": lambda: symmetric_crystals(max_crystals=2),
    "near_face_crystals": lambda: near_face_crystals(),
    "rotations": lambda: rotations(), "unimodular_matrices": lambda: unimodular_matrices(2, depth=2),
}


@pytest.mark.parametrize("name", sorted(_STRATEGIES))
def test_strategies_draw_in_a_few_milliseconds(name):
    assert _draw_milliseconds(_STRATEGIES[name]()) < 20.0


@pytest.mark.parametrize("name", sorted(_STRATEGIES))
def test_strategies_make_no_lapack_call(name, monkeypatch):
    # With two OpenMP threads on a busy machine one 3x3 QR through MKL takes about 8 ms instead of 30 us:
    # enough to fail hypothesis's slow-generation health check in a user's test.
    def forbidden(*args, **kwargs):
        raise AssertionError("a strategy called a LAPACK factorisation")

    for fn in ("qr", "svd", "eig", "eigh", "inv", "solve", "lstsq", "cholesky"):
        monkeypatch.setattr(torch.linalg, fn, forbidden)
    _draw_milliseconds(_STRATEGIES[name](), n=20)
