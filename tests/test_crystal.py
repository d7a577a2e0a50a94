"""Properties of CrystalBatch: layouts agree, basis changes preserve positions, conversions round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import load_shared_structures
from soft_niggli.crystal import CrystalBatch, atom_slots
from soft_niggli.lattice import integer_inverse, to_fractional
from soft_niggli.unimodular import random_unimodular


SETTINGS = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------- helpers


@st.composite
def crystal_data(draw, min_crystals=1, max_crystals=4, max_atoms=5):
    """Random crystals as NumPy float64 data: (lattice (B,3,3), counts (B,), frac (N,3), species (N,))."""
    counts = draw(st.lists(st.integers(0, max_atoms), min_size=min_crystals, max_size=max_crystals))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    B, N = len(counts), int(sum(counts))
    # Well-conditioned cells (scaled identity plus a perturbation) so inverses are accurate to ~1e-12.
    lattice = rng.uniform(2.0, 8.0, size=(B, 1, 1)) * np.eye(3) + rng.uniform(-1.0, 1.0, size=(B, 3, 3))
    frac = rng.uniform(-1.0, 2.0, size=(N, 3))  # deliberately not wrapped
    species = rng.integers(1, 95, size=N)
    return lattice, np.asarray(counts, dtype=np.int64), frac, species


def make_batch(data, dtype=torch.float64):
    lattice, counts, frac, species = data
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))
    return CrystalBatch.from_flat(torch.as_tensor(lattice, dtype=dtype), torch.as_tensor(frac, dtype=dtype),
                                  batch, torch.as_tensor(species))


def periodic_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a - b
    return (d - torch.round(d)).abs()


def assert_same_batch(x: CrystalBatch, y: CrystalBatch, atol=0.0):
    assert len(x) == len(y)
    assert torch.equal(x.num_atoms, y.num_atoms)
    assert torch.equal(x.batch, y.batch)
    torch.testing.assert_close(x.lattice, y.lattice, atol=atol, rtol=0)
    torch.testing.assert_close(x.frac, y.frac, atol=atol, rtol=0)
    if x.species is None or y.species is None:
        assert x.species is None and y.species is None
    else:
        assert torch.equal(x.species, y.species)


def load_mp20(n=5):
    return load_shared_structures("mp_20", "val", limit=n)


def rocksalt():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(5.64), ["Na", "Na", "Cl", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0], [0, 0.5, 0]])


def to_ase(structure):
    from ase import Atoms

    return Atoms(numbers=structure.atomic_numbers, cell=structure.lattice.matrix,
                 scaled_positions=structure.frac_coords, pbc=True)


# ---------------------------------------------------------------------------- layouts


@SETTINGS
@given(crystal_data())
def test_from_padded_and_from_flat_give_identical_batches(data):
    lattice, counts, frac, species = data
    flat = make_batch(data)
    B, n_max = len(counts), max(int(counts.max()), 1)
    frac_p = torch.full((B, n_max, 3), float("nan"), dtype=torch.float64)  # padding must be ignored
    species_p = torch.full((B, n_max), -1, dtype=torch.int64)
    mask = torch.arange(n_max)[None, :] < torch.as_tensor(counts)[:, None]
    frac_p[mask] = torch.as_tensor(frac)
    species_p[mask] = torch.as_tensor(species)
    padded = CrystalBatch.from_padded(torch.as_tensor(lattice), frac_p, mask, species_p)
    assert_same_batch(flat, padded)


@SETTINGS
@given(crystal_data())
def test_to_padded_round_trips_through_from_padded(data):
    cb = make_batch(data)
    frac_p, mask, species_p = cb.to_padded()
    assert frac_p.shape == (len(cb), int(cb.num_atoms.max()), 3)
    assert torch.equal(mask.sum(1), cb.num_atoms)
    assert_same_batch(cb, CrystalBatch.from_padded(cb.lattice, frac_p, mask, species_p))


@SETTINGS
@given(crystal_data())
def test_batch_vector_and_getitem_agree_with_counts(data):
    lattice, counts, frac, species = data
    cb = make_batch(data)
    assert cb.num_crystals == len(cb) == len(counts)
    assert cb.batch.tolist() == [b for b, n in enumerate(counts) for _ in range(n)]
    start = 0
    for b, n in enumerate(counts):
        one = cb[b]
        assert len(one) == 1 and one.num_atoms.tolist() == [n]
        assert torch.equal(one.lattice[0], cb.lattice[b])
        assert torch.equal(one.frac, cb.frac[start:start + n])
        assert torch.equal(one.species, cb.species[start:start + n])
        start += n
    assert_same_batch(cb[-1], cb[len(cb) - 1])


def test_padded_mask_need_not_be_left_aligned():
    lattice = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    frac = torch.arange(18, dtype=torch.float64).reshape(2, 3, 3)
    mask = torch.tensor([[False, True, True], [True, False, False]])
    cb = CrystalBatch.from_padded(lattice, frac, mask)
    assert cb.num_atoms.tolist() == [2, 1]
    assert torch.equal(cb.frac, frac[mask])
    assert cb.species is None and cb.to_padded()[2] is None


def test_crystals_without_atoms_are_represented_with_zero_counts():
    lattice = torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)
    cb = CrystalBatch.from_flat(lattice, torch.zeros(2, 3, dtype=torch.float64), torch.tensor([2, 2]))
    assert cb.num_atoms.tolist() == [0, 0, 2]
    frac_p, mask, _ = cb.to_padded()
    assert mask.tolist() == [[False, False], [False, False], [True, True]]
    empty = CrystalBatch.from_flat(torch.zeros(0, 3, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))
    assert len(empty) == 0 and empty.to_padded()[0].shape == (0, 0, 3)


def test_non_finite_values_are_accepted():
    lattice = torch.full((1, 3, 3), float("nan"), dtype=torch.float64)
    cb = CrystalBatch(lattice, torch.full((2, 3), float("inf"), dtype=torch.float64), torch.tensor([2]))
    assert cb.num_atoms.tolist() == [2]


# ---------------------------------------------------------------------------- basis changes


@SETTINGS
@given(crystal_data(), st.integers(0, 2**31 - 1))
def test_basis_change_then_inverse_returns_original(data, seed):
    cb = make_batch(data)
    M = random_unimodular((len(cb),), generator=torch.Generator().manual_seed(seed))
    back = cb.apply_basis_change(M).apply_basis_change(integer_inverse(M))
    torch.testing.assert_close(back.lattice, cb.lattice, atol=1e-12, rtol=1e-12)
    assert bool((periodic_distance(back.frac, cb.frac) <= 1e-9).all())
    assert torch.equal(back.species, cb.species) and torch.equal(back.num_atoms, cb.num_atoms)


@SETTINGS
@given(crystal_data(), st.integers(0, 2**31 - 1))
def test_basis_change_preserves_cartesian_positions(data, seed):
    cb = make_batch(data)
    M = random_unimodular((len(cb),), generator=torch.Generator().manual_seed(seed))
    new = cb.apply_basis_change(M)
    assert torch.equal(new.lattice, M.double() @ cb.lattice)
    assert bool(((new.frac >= 0) & (new.frac < 1)).all())
    # Express the new positions in the OLD lattice: they must be the old atoms up to lattice vectors.
    back = to_fractional(new.cartesian().unsqueeze(-2), cb.lattice[cb.batch]).squeeze(-2)
    assert bool((periodic_distance(back, cb.frac) <= 1e-9).all())


@SETTINGS
@given(crystal_data(), st.integers(0, 2**31 - 1))
def test_basis_change_accepts_integral_float_and_single_matrix(data, seed):
    cb = make_batch(data)
    M = random_unimodular((), generator=torch.Generator().manual_seed(seed))
    by_int = cb.apply_basis_change(M.expand(len(cb), 3, 3))
    assert_same_batch(by_int, cb.apply_basis_change(M.double()))
    assert_same_batch(by_int, cb.apply_basis_change(M))


def test_basis_change_passes_gradients_to_lattice_and_frac():
    lattice = (4 * torch.eye(3, dtype=torch.float64)).repeat(2, 1, 1).requires_grad_()
    frac = torch.rand(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    cb = CrystalBatch(lattice, frac, torch.tensor([2, 3]))
    M = random_unimodular((2,), generator=torch.Generator().manual_seed(1))
    new = cb.apply_basis_change(M)
    (new.cartesian().sum() + new.lattice.sum()).backward()
    assert lattice.grad is not None and frac.grad is not None
    assert torch.isfinite(lattice.grad).all() and torch.isfinite(frac.grad).all()


# ---------------------------------------------------------------------------- dtype / device


@SETTINGS
@given(crystal_data())
def test_to_float32_converts_values_and_keeps_counts(data):
    cb = make_batch(data)
    cb32 = cb.to(dtype=torch.float32)
    assert cb32.lattice.dtype == cb32.frac.dtype == cb32.dtype == torch.float32
    assert cb32.num_atoms.dtype == cb32.species.dtype == cb32.batch.dtype == torch.int64
    assert torch.equal(cb32.num_atoms, cb.num_atoms) and torch.equal(cb32.species, cb.species)
    assert torch.equal(cb32.lattice, cb.lattice.float()) and torch.equal(cb32.frac, cb.frac.float())
    assert_same_batch(cb, cb32.to(dtype=torch.float64), atol=1e-5)


# ---------------------------------------------------------------------------- pymatgen / ASE


def check_structures_agree_with_from_flat(structures):
    pytest.importorskip("pymatgen.core")
    pytest.importorskip("ase")
    lattice = torch.as_tensor(np.stack([s.lattice.matrix for s in structures]))
    frac = torch.as_tensor(np.concatenate([s.frac_coords for s in structures]))
    batch = torch.repeat_interleave(torch.arange(len(structures)), torch.tensor([len(s) for s in structures]))
    species = torch.as_tensor(np.concatenate([s.atomic_numbers for s in structures]))
    expected = CrystalBatch.from_flat(lattice, frac, batch, species)

    assert_same_batch(CrystalBatch.from_structures(structures), expected)
    assert_same_batch(CrystalBatch.from_structures([to_ase(s) for s in structures]), expected, atol=1e-12)
    mixed = [to_ase(s) if i % 2 else s for i, s in enumerate(structures)]
    assert_same_batch(CrystalBatch.from_structures(mixed), expected, atol=1e-12)
    # pymatgen keeps coordinates as given, so to_structures round-trips exactly.
    assert_same_batch(CrystalBatch.from_structures(expected.to_structures()), expected)


def test_from_structures_agrees_with_from_flat_on_hand_built_structure():
    pytest.importorskip("pymatgen.core")
    check_structures_agree_with_from_flat([rocksalt(), rocksalt().copy()])


def test_from_structures_agrees_with_from_flat_on_mp20():
    pytest.importorskip("pymatgen.core")
    check_structures_agree_with_from_flat(load_mp20(5))


def test_basis_change_gives_structures_pymatgen_matches():
    pytest.importorskip("pymatgen.core")
    from pymatgen.analysis.structure_matcher import StructureMatcher

    structures = load_mp20(3)
    cb = CrystalBatch.from_structures(structures)
    M = random_unimodular((len(cb),), generator=torch.Generator().manual_seed(0))
    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)
    for before, after in zip(structures, cb.apply_basis_change(M).to_structures()):
        assert after.lattice.volume == pytest.approx(before.lattice.volume, rel=1e-10)
        assert matcher.fit(before, after)


def test_from_structures_keeps_requested_dtype():
    pytest.importorskip("pymatgen.core")
    cb = CrystalBatch.from_structures([rocksalt()], dtype=torch.float32)
    assert cb.lattice.dtype == cb.frac.dtype == torch.float32
    assert cb.species.tolist() == [11, 11, 17, 17]


def test_from_structures_rejects_disordered_structures():
    pytest.importorskip("pymatgen.core")
    from pymatgen.core import Lattice, Structure

    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    with pytest.raises(ValueError, match=r"structures\[1\]: expected an ordered structure"):
        CrystalBatch.from_structures([rocksalt(), disordered])


def test_from_structures_rejects_unknown_objects_with_type_error():
    with pytest.raises(TypeError, match=r"structures\[0\]: expected a pymatgen Structure or an ASE Atoms, got dict"):
        CrystalBatch.from_structures([{"lattice": None}])
    for bad in (None, "rocksalt.cif", {"lattice": None}, 3):
        with pytest.raises(TypeError, match=r"structures: expected a pymatgen Structure, an ASE Atoms or a sequence"):
            CrystalBatch.from_structures(bad)


def test_to_structures_requires_species():
    cb = CrystalBatch(torch.eye(3)[None], torch.zeros(1, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match="species: expected atomic numbers"):
        cb.to_structures()


# ---------------------------------------------------------------------------- bad arguments


def _lattice(B=2, dtype=torch.float64):
    return torch.eye(3, dtype=dtype).repeat(B, 1, 1)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: CrystalBatch(_lattice()[:, :2], torch.zeros(3, 3, dtype=torch.float64), [1, 2]),
         r"lattice: expected shape \(B, 3, 3\) or \(3, 3\) \(one crystal\), got \(2, 2, 3\)"),
        (lambda: CrystalBatch(_lattice().long(), torch.zeros(3, 3), [1, 2]),
         r"lattice: expected a floating dtype"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(10, 3, dtype=torch.float64), torch.tensor([5, 7])),
         r"frac: expected shape \(N_total, 3\) with N_total = sum\(num_atoms\) = 12, got \(10, 3\)"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(3, 2, dtype=torch.float64), [1, 2]),
         r"frac: expected shape \(N_total, 3\) with N_total = sum\(num_atoms\) = 3, got \(3, 2\)"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(3, 3, dtype=torch.float32), [1, 2]),
         r"frac: expected dtype torch.float64 \(the lattice's\), got torch.float32"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(3, 3, dtype=torch.float64), [3]),
         r"num_atoms: expected shape \(B,\) = \(2,\) to match lattice, got \(1,\)"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(3, 3, dtype=torch.float64), [1.0, 2.0]),
         r"num_atoms: expected an integer dtype, got torch.float32"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(1, 3, dtype=torch.float64), [2, -1]),
         r"num_atoms: expected non-negative counts"),
        (lambda: CrystalBatch(_lattice(), torch.zeros(3, 3, dtype=torch.float64), [1, 2], species=[1, 2]),
         r"species: expected shape \(N_total,\) with N_total = sum\(num_atoms\) = 3, got \(2,\)"),
        (lambda: CrystalBatch.from_padded(_lattice(), torch.zeros(2, 4, 3, dtype=torch.float64),
                                          torch.ones(2, 5, dtype=torch.bool)),
         r"mask: expected shape \(B, Nmax\) = \(2, 4\) to match frac, got \(2, 5\)"),
        (lambda: CrystalBatch.from_padded(_lattice(), torch.zeros(3, 4, 3, dtype=torch.float64),
                                          torch.ones(3, 4, dtype=torch.bool)),
         r"frac: expected shape \(B, Nmax, 3\) with B = 2, got \(3, 4, 3\)"),
        (lambda: CrystalBatch.from_padded(_lattice(), torch.zeros(2, 4, 3, dtype=torch.float64),
                                          torch.ones(2, 4)),
         r"mask: expected dtype torch.bool, got torch.float32"),
        (lambda: CrystalBatch.from_padded(_lattice(), torch.zeros(2, 4, 3, dtype=torch.float64),
                                          torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 3, dtype=torch.int64)),
         r"species: expected shape \(B, Nmax\) = \(2, 4\) to match mask, got \(2, 3\)"),
        (lambda: CrystalBatch.from_flat(_lattice(), torch.zeros(4, 3, dtype=torch.float64), torch.tensor([0, 0, 1])),
         r"batch: expected shape \(N,\) with N = frac.shape\[0\], got batch \(3,\) and frac \(4, 3\)"),
        (lambda: CrystalBatch.from_flat(_lattice(), torch.zeros(3, 3, dtype=torch.float64), torch.tensor([0, 1, 0])),
         r"batch: expected non-decreasing"),
        (lambda: CrystalBatch.from_flat(_lattice(), torch.zeros(3, 3, dtype=torch.float64), torch.tensor([0, 1, 2])),
         r"batch: expected values in \[0, 2\) for B = lattice.shape\[0\] = 2, got values in \[0, 2\]"),
    ],
)
def test_bad_arguments_raise_value_error_naming_shapes(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_basis_change_rejects_bad_matrices():
    cb = CrystalBatch(_lattice(), torch.zeros(3, 3, dtype=torch.float64), [1, 2])
    with pytest.raises(ValueError, match=r"M: expected shape \(B, 3, 3\) = \(2, 3, 3\) or \(3, 3\), got \(3, 3, 3\)"):
        cb.apply_basis_change(torch.eye(3, dtype=torch.int64).repeat(3, 1, 1))
    M = torch.eye(3, dtype=torch.int64).repeat(2, 1, 1)
    M[1, 0, 0] = 2
    with pytest.raises(ValueError, match=r"determinant ±1, got other matrices at crystals \[1\]"):
        cb.apply_basis_change(M)
    with pytest.raises(ValueError, match=r"determinant ±1"):
        cb.apply_basis_change(torch.eye(3, dtype=torch.float64) * 1.5)
    with pytest.raises(ValueError, match="dtype: expected a floating dtype"):
        cb.to(dtype=torch.int64)


def test_empty_list_of_counts_is_a_batch_of_zero_crystals():
    lattice, frac = torch.zeros(0, 3, 3, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64)
    for species in (None, []):
        cb = CrystalBatch(lattice, frac, [], species)
        assert len(cb) == 0 and cb.num_atoms.dtype == torch.int64 and cb.num_atoms.shape == (0,)
        assert cb.batch.shape == (0,) and cb.cartesian().shape == (0, 3)
        padded, mask, sp = cb.to_padded()
        assert padded.shape == (0, 0, 3) and mask.shape == (0, 0)
        assert len(cb.apply_basis_change(torch.eye(3, dtype=torch.int64))) == 0
    assert cb.species.dtype == torch.int64 and cb.to_structures() == []
    assert len(CrystalBatch.from_flat(lattice, frac, [])) == 0
    assert len(CrystalBatch.from_padded(lattice, torch.zeros(0, 0, 3, dtype=torch.float64), np.zeros((0, 0), bool))) == 0
    assert len(CrystalBatch.from_structures([])) == 0
    with pytest.raises(ValueError, match=r"num_atoms: expected shape \(B,\) = \(2,\) to match lattice, got \(0,\)"):
        CrystalBatch(_lattice(), frac, [])


# ---------------------------------------------------------------------------- torch-style .to


def _small_batch(dtype=torch.float64):
    lattice = torch.stack([4 * torch.eye(3), 5 * torch.eye(3), 6 * torch.eye(3)]).to(dtype)
    frac = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)).to(dtype)
    return CrystalBatch(lattice, frac, [1, 2, 3], [1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize("call", [
    lambda cb: cb.to(torch.float32),
    lambda cb: cb.to(dtype=torch.float32),
    lambda cb: cb.to("cpu", torch.float32),
    lambda cb: cb.to(torch.device("cpu"), dtype=torch.float32),
    lambda cb: cb.to(device="cpu", dtype=torch.float32),
    lambda cb: cb.to(torch.zeros(2, dtype=torch.float32)),
    lambda cb: cb.to(_small_batch(torch.float32)),
    lambda cb: cb.to(torch.float32, copy=True),
])
def test_to_accepts_torch_signatures(call):
    cb = _small_batch()
    out = call(cb)
    assert isinstance(out, CrystalBatch) and out.dtype == torch.float32 and out.device == cb.device
    assert out.frac.dtype == torch.float32 and out.num_atoms.dtype == out.batch.dtype == torch.int64
    assert torch.equal(out.lattice, cb.lattice.float()) and torch.equal(out.species, cb.species)
    assert torch.equal(out.atom_slots, cb.atom_slots)


def test_to_device_only_keeps_dtype_and_shares_unchanged_tensors():
    cb = _small_batch()
    for out in (cb.to("cpu"), cb.to(torch.device("cpu")), cb.to(device="cpu"), cb.to(torch.float64)):
        assert out.dtype == torch.float64 and out.lattice is cb.lattice and out.frac is cb.frac
    assert cb.to(torch.float64, copy=True).lattice is not cb.lattice


def test_to_moves_to_meta_and_keeps_shapes():
    cb = _small_batch().to("meta")
    assert cb.device.type == "meta" and cb.species.device.type == "meta" and cb.batch.device.type == "meta"
    assert cb.lattice.shape == (3, 3, 3) and cb.frac.shape == (6, 3)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.int64,), {}, ValueError, "dtype: expected a floating dtype"),
    ((), {"dtype": torch.int32}, ValueError, "dtype: expected a floating dtype"),
    ((torch.zeros(2, dtype=torch.int64),), {}, ValueError, "dtype: expected a floating dtype"),
    (("gpu",), {}, ValueError, "to: .*gpu"),
    ((3.5,), {}, TypeError, "to: expected a device, a dtype, a tensor or a CrystalBatch, got float"),
    ((True,), {}, TypeError, "got bool"),
    ((), {"dtype": "float32"}, TypeError, "got str"),
])
def test_to_rejects_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        _small_batch().to(*args, **kwargs)


# ---------------------------------------------------------------------------- indexing


def reference_selection(cb: CrystalBatch, indices: list[int]) -> CrystalBatch:
    """The crystals ``indices`` one by one through int indexing, concatenated."""
    parts = [cb[i] for i in indices]
    if not parts:
        return CrystalBatch(cb.lattice[:0], cb.frac[:0], [], None if cb.species is None else cb.species[:0])
    return CrystalBatch(torch.cat([p.lattice for p in parts]), torch.cat([p.frac for p in parts]),
                        torch.cat([p.num_atoms for p in parts]),
                        None if cb.species is None else torch.cat([p.species for p in parts]))


def assert_consistent(x: CrystalBatch):
    """Index tensors agree with the counts (as the constructor would build them)."""
    rebuilt = CrystalBatch(x.lattice, x.frac, x.num_atoms, x.species)
    assert torch.equal(x.batch, rebuilt.batch) and torch.equal(x._ptr, rebuilt._ptr)
    assert torch.equal(x.atom_slots, rebuilt.atom_slots)


@SETTINGS
@given(crystal_data(min_crystals=0, max_crystals=5), st.data())
def test_every_kind_of_index_selects_the_crystals_in_order(data, draw):
    cb = make_batch(data) if len(data[1]) else CrystalBatch(np.zeros((0, 3, 3)), np.zeros((0, 3)), [], [])
    B = len(cb)
    picks = draw.draw(st.lists(st.integers(-B, B - 1), max_size=6)) if B else []
    mask = draw.draw(st.lists(st.booleans(), min_size=B, max_size=B))
    start, stop = draw.draw(st.integers(-B - 1, B + 1)), draw.draw(st.integers(-B - 1, B + 1))
    step = draw.draw(st.sampled_from([1, 2, -1, -2, 3]))
    normal = [i % B for i in picks]
    cases = {
        "list": (picks, normal),
        "tuple": (tuple(picks), normal),
        "tensor": (torch.tensor(picks, dtype=torch.int64), normal),
        "int32 tensor": (torch.tensor(picks, dtype=torch.int32), normal),
        "numpy": (np.array(picks, dtype=np.int64), normal),
        "mask": (torch.tensor(mask, dtype=torch.bool), [i for i, m in enumerate(mask) if m]),
        "mask list": (mask, [i for i, m in enumerate(mask) if m]) if B else ([], []),
        "numpy mask": (np.array(mask, dtype=bool), [i for i, m in enumerate(mask) if m]),
        "slice": (slice(start, stop, step), list(range(B))[start:stop:step]),
    }
    for name, (index, expected) in cases.items():
        selected = cb[index]
        assert isinstance(selected, CrystalBatch), name
        assert_same_batch(selected, reference_selection(cb, expected))
        assert_consistent(selected)


def test_int_and_step_one_slices_share_storage_and_pass_gradients():
    lattice = (4 * torch.eye(3, dtype=torch.float64)).repeat(3, 1, 1).requires_grad_()
    frac = torch.rand(6, 3, dtype=torch.float64, requires_grad=True)
    cb = CrystalBatch(lattice, frac, [1, 2, 3])
    view = cb[1:]
    assert view.frac.data_ptr() == cb.frac[1:].data_ptr() and view.num_atoms.tolist() == [2, 3]
    assert cb[-1].frac.data_ptr() == cb.frac[3:].data_ptr()
    (cb[[2, 0]].cartesian().sum() + cb[torch.tensor([False, True, False])].lattice.sum()).backward()
    # Crystals 2 and 0 through their atoms and lattices, crystal 1 through its lattice only.
    assert all(float(lattice.grad[b].abs().sum()) > 0 for b in range(3))
    assert float(frac.grad[1:3].abs().sum()) == 0.0
    assert float(frac.grad[:1].abs().sum()) > 0 and float(frac.grad[3:].abs().sum()) > 0


def test_iteration_gives_one_crystal_batches():
    cb = _small_batch()
    parts = list(cb)
    assert [len(p) for p in parts] == [1, 1, 1] and [p.num_atoms.item() for p in parts] == [1, 2, 3]
    assert_same_batch(parts[2], cb[2])


@pytest.mark.parametrize("index, error, match", [
    (3, IndexError, "crystal index 3 out of range for a batch of 3"),
    (-4, IndexError, "out of range"),
    ([0, 3], IndexError, "crystal index 3 out of range"),
    (torch.tensor([-4]), IndexError, "crystal index -4 out of range"),
    (torch.tensor([True, False]), IndexError, r"boolean mask: expected shape \(B,\) = \(3,\), got \(2,\)"),
    (torch.zeros(2, 2, dtype=torch.int64), IndexError, "one dimension"),
    (1.0, TypeError, "CrystalBatch indices must be integers"),
    ("0", TypeError, "CrystalBatch indices must be integers"),
    (None, TypeError, "CrystalBatch indices must be integers"),
    (True, TypeError, "got bool"),
    ([0.5, 1.0], TypeError, "got a tensor of dtype torch.float32"),
    (torch.tensor([1.0]), TypeError, "got a tensor of dtype torch.float32"),
])
def test_bad_indices_raise(index, error, match):
    with pytest.raises(error, match=match):
        _small_batch()[index]


def test_zero_dim_index_tensor_is_an_int():
    cb = _small_batch()
    assert_same_batch(cb[torch.tensor(2)], cb[2])
    assert_same_batch(cb[np.int64(-1)], cb[2])


# ---------------------------------------------------------------------------- atom slots


def test_atom_slots_count_atoms_within_each_crystal():
    assert atom_slots(torch.tensor([2, 0, 3])).tolist() == [0, 1, 0, 1, 2]
    assert atom_slots([2, 0, 3], batch=[0, 0, 2, 2, 2]).tolist() == [0, 1, 0, 1, 2]
    assert atom_slots(torch.zeros(0, dtype=torch.int64)).shape == (0,)
    cb = _small_batch()
    assert cb.atom_slots.tolist() == [0, 0, 1, 0, 1, 2]
    assert torch.equal(cb.atom_slots, atom_slots(cb.num_atoms, cb.batch))
    # The slots are where to_padded puts each atom.
    frac, mask, _ = cb.to_padded()
    assert torch.equal(frac[cb.batch, cb.atom_slots], cb.frac)
    meta = cb.to("meta")
    assert atom_slots(meta.num_atoms, meta.batch).shape == (6,) and meta.atom_slots.device.type == "meta"
    with pytest.raises(ValueError, match="meta"):
        atom_slots(meta.num_atoms)
    with pytest.raises(ValueError, match="num_atoms: expected an integer dtype"):
        atom_slots([1.5, 2.0])
    with pytest.raises(TypeError, match="num_atoms"):
        atom_slots("3")


# ---------------------------------------------------------------------------- inputs: lists and types


def test_lists_and_numpy_arrays_are_accepted_and_numpy_float64_stays_float64():
    from_lists = CrystalBatch([[[4.0, 0, 0], [0, 4, 0], [0, 0, 4]]], [[0.0, 0, 0], [0.5, 0.5, 0.5]], [2], [11, 17])
    assert from_lists.dtype == torch.get_default_dtype() and from_lists.species.tolist() == [11, 17]
    from_numpy = CrystalBatch(4 * np.eye(3)[None], np.zeros((2, 3)), np.array([2]), np.array([11, 17]))
    assert from_numpy.dtype == torch.float64 and isinstance(from_numpy.lattice, torch.Tensor)


@pytest.mark.parametrize("make, match", [
    (lambda: CrystalBatch("lattice", np.zeros((1, 3)), [1]), "lattice: expected a torch.Tensor"),
    (lambda: CrystalBatch(None, np.zeros((1, 3)), [1]), "lattice: expected .* got None"),
    (lambda: CrystalBatch(np.eye(3)[None], None, [1]), "frac: expected .* got None"),
    (lambda: CrystalBatch(np.eye(3)[None], np.zeros((1, 3)), "1"), "num_atoms: expected"),
    (lambda: CrystalBatch(np.eye(3)[None], np.zeros((1, 3)), [1], species="Na"), "species: expected"),
    (lambda: CrystalBatch(np.eye(3)[None], np.zeros((1, 3)), [1]).apply_basis_change("I"), "M: expected"),
    (lambda: CrystalBatch.from_structures([], dtype="float32"), "dtype: expected a torch.dtype, got str"),
])
def test_wrong_python_types_raise_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_from_structures_rejects_integer_dtypes_with_value_error():
    with pytest.raises(ValueError, match="dtype: expected a floating dtype"):
        CrystalBatch.from_structures([], dtype=torch.int64)


def test_from_structures_takes_a_single_structure_or_atoms():
    pytest.importorskip("pymatgen.core")
    s = rocksalt()
    one = CrystalBatch.from_structures(s)
    assert_same_batch(one, CrystalBatch.from_structures([s]))
    assert len(one) == 1 and one.num_atoms.tolist() == [4]
    pytest.importorskip("ase")
    assert_same_batch(CrystalBatch.from_structures(to_ase(s)), one, atol=1e-12)
    assert CrystalBatch.from_structures((s, to_ase(s)), dtype=torch.float32, device="meta").device.type == "meta"


def test_to_structures_can_put_none_for_cells_pymatgen_refuses(monkeypatch):
    pytest.importorskip("pymatgen.core")
    import pymatgen.core

    cb = CrystalBatch.from_structures([rocksalt(), rocksalt()])
    original = pymatgen.core.Structure

    class Refusing(original):
        calls = 0

        def __init__(self, *args, **kwargs):
            Refusing.calls += 1
            if Refusing.calls == 2:
                raise ValueError("refused")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pymatgen.core, "Structure", Refusing)
    out = cb.to_structures(errors="none")
    assert out[0] is not None and out[1] is None
    Refusing.calls = 0
    with pytest.raises(ValueError, match="refused"):
        cb.to_structures()
    with pytest.raises(ValueError, match="errors: expected 'raise' or 'none'"):
        cb.to_structures(errors="ignore")
