"""Datasets: the bundled AFLOW prototypes, the deterministic split, the CDVAE/DiffCSP CSV reader."""

from __future__ import annotations

import numpy as np
import pytest

from soft_niggli.datasets import (
    DATASETS,
    load_dataset,
    read_aflow_prototypes,
    read_cdvae_csv,
    train_val_split,
)

from conftest import SHARED_DATA, load_shared_structures

pytest.importorskip("pymatgen")


def _ids(structures):
    return [s.properties.get("material_id") for s in structures]


def test_aflow_loads_ordered_small_structures():
    structures = read_aflow_prototypes()
    assert len(structures) == 250
    assert all(s.is_ordered and 1 <= len(s) <= 20 for s in structures)
    assert all(isinstance(i, str) and i for i in _ids(structures))


def test_aflow_split_is_deterministic_and_disjoint():
    train, val = load_dataset("aflow", "train"), load_dataset("aflow", "val")
    assert (len(train), len(val)) == (200, 50)
    assert _ids(train) == _ids(load_dataset("aflow", "train"))
    assert not set(_ids(train)) & set(_ids(val))
    assert sorted(_ids(train) + _ids(val)) == sorted(_ids(load_dataset("aflow", "all")))


def test_train_val_split_depends_only_on_seed():
    items = list(range(103))
    a, b = train_val_split(items, 0.2, seed=3), train_val_split(items, 0.2, seed=3)
    assert a == b
    assert len(a[1]) == 21 and sorted(a[0] + a[1]) == items
    assert train_val_split(items, 0.2, seed=4) != a


def test_unknown_dataset_and_split_name_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="mp_20"):
        load_dataset("mp20")
    with pytest.raises(ValueError, match="train"):
        load_dataset("aflow", split="test")
    with pytest.raises(FileNotFoundError, match="perov_5"):
        load_dataset("perov_5", data_dir=tmp_path)
    assert "aflow" in DATASETS


def test_cdvae_reader_matches_pymatgen_and_caches(tmp_path, monkeypatch):
    path = SHARED_DATA / "mp_20" / "val.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    monkeypatch.setenv("SOFT_NIGGLI_CACHE", str(tmp_path / "cache"))
    expected = load_shared_structures("mp_20", "val", limit=4)
    first = read_cdvae_csv(path, limit=4)
    assert len(list((tmp_path / "cache").glob("*.json.gz"))) == 1
    again = read_cdvae_csv(path, limit=4)  # from the cache
    for s, t, u in zip(expected, first, again):
        np.testing.assert_allclose(t.lattice.matrix, s.lattice.matrix, atol=1e-12)
        np.testing.assert_allclose(t.frac_coords, s.frac_coords, atol=1e-12)
        assert t.atomic_numbers == s.atomic_numbers == u.atomic_numbers
        np.testing.assert_array_equal(u.lattice.matrix, t.lattice.matrix)
    assert first[0].properties["material_id"]
    small = read_cdvae_csv(path, limit=4, max_atoms=min(len(s) for s in expected))
    assert 1 <= len(small) <= 4 and all(len(s) <= min(len(t) for t in expected) for s in small)
