"""Datasets: the bundled AFLOW prototypes, the deterministic split, the CDVAE/DiffCSP CSV reader."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from soft_niggli.datasets import (
    DATASETS,
    load_dataset,
    read_aflow_prototypes,
    read_cdvae_csv,
    train_val_split,
)

from conftest import REPO_ROOT, load_shared_structures, shared_data_dir, shared_data_file

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
        load_dataset("aflow", split="holdout")
    with pytest.raises(FileNotFoundError, match="perov_5"):
        load_dataset("perov_5", data_dir=tmp_path)
    assert "aflow" in DATASETS


def test_splits_come_from_their_own_files_csv_or_gzip_and_say_where_they_came_from(tmp_path):
    import csv
    import gzip
    import shutil

    from soft_niggli.datasets import split_source

    source = shared_data_file("perov_5", "val")
    folder = tmp_path / "perov_5"
    folder.mkdir()
    with gzip.open(source, "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [row for _, row in zip(range(9), reader)]
        fields = reader.fieldnames
    for name, part in (("train.csv", rows[:6]), ("val.csv", rows[6:9])):
        with open(folder / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(part)
    shutil.copy(source, folder / "test.csv.gz")
    assert len(load_dataset("perov_5", "train", tmp_path)) == 6
    assert len(load_dataset("perov_5", "val", tmp_path)) == 3
    assert len(load_dataset("perov_5", "test", tmp_path, limit=4)) == 4
    assert split_source("perov_5", "test", tmp_path) == "perov_5/test.csv.gz"
    (folder / "test.csv.gz").unlink()
    assert split_source("perov_5", "test", tmp_path) == "perov_5/val.csv (no test file)"
    (folder / "train.csv").unlink()
    assert split_source("perov_5", "val", tmp_path) == "perov_5/val.csv, the held-out 20% (seed 0)"
    assert split_source("perov_5", "train", tmp_path) == "perov_5/val.csv, the other 80% (seed 0)"


def test_cdvae_reader_matches_pymatgen_and_caches(tmp_path, monkeypatch):
    path = shared_data_file("mp_20", "val")
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


# ---------------------------------------------------------------------------- bad rows, bad files, bad arguments


def _cif(structure) -> str:
    return structure.to(fmt="cif")


def _write_csv(path, rows, columns=("material_id", "cif"), gz=True):
    """A CDVAE-style CSV (gzipped unless ``gz=False``) with one dict per row."""
    import csv
    import gzip

    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _ordered(a=4.0):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _disordered():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])


def test_partially_occupied_rows_are_dropped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFT_NIGGLI_CACHE", str(tmp_path / "cache"))
    path = _write_csv(tmp_path / "mixed.csv.gz", [
        {"material_id": "a", "cif": _cif(_ordered(4.0))},
        {"material_id": "dis", "cif": _cif(_disordered())},
        {"material_id": "b", "cif": _cif(_ordered(5.0))},
    ])
    for _ in range(2):  # parsed, then from the cache: the same rows and the same report
        with pytest.warns(UserWarning, match=r"mixed\.csv\.gz: dropped 1 of 3 rows .*partial occupancies"):
            out = read_cdvae_csv(path)
        assert _ids(out) == ["a", "b"]
        assert all(s.is_ordered for s in out)
    with pytest.warns(UserWarning, match="dropped 1 of 2 rows"):
        assert _ids(read_cdvae_csv(path, limit=2, use_cache=False)) == ["a"]


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (3.0, TypeError), ("3", TypeError),
                                        (True, TypeError)])
def test_limit_must_be_none_or_a_non_negative_int(tmp_path, bad, error):
    from soft_niggli.datasets import read_cdvae_cells

    path = _write_csv(tmp_path / "one.csv.gz", [{"material_id": "a", "cif": _cif(_ordered())}])
    for call in (lambda: load_dataset("aflow", limit=bad), lambda: load_dataset("aflow", "all", limit=bad),
                 lambda: read_cdvae_csv(path, limit=bad), lambda: read_cdvae_cells(path, limit=bad),
                 lambda: read_aflow_prototypes(max_atoms=bad), lambda: read_cdvae_csv(path, max_atoms=bad)):
        with pytest.raises(error, match=r"expected an int >= 0 or None, got .*" + repr(bad).replace(".", r"\.")):
            call()
    assert len(load_dataset("aflow", "all", limit=np.int64(3))) == 3
    assert len(load_dataset("aflow", "all", limit=0)) == 0


def test_missing_cif_column_names_the_file_and_the_columns_present(tmp_path):
    from soft_niggli.datasets import read_cdvae_cells

    path = _write_csv(tmp_path / "nocif.csv.gz", [{"material_id": "a", "formula": "NaCl"}],
                      columns=("material_id", "formula"))
    for reader in (read_cdvae_cells, read_cdvae_csv):
        with pytest.raises(ValueError, match=r"nocif\.csv\.gz.*'cif'.*\['material_id', 'formula'\]"):
            reader(path)


def test_bad_cif_names_the_file_the_row_and_the_material_id(tmp_path):
    from soft_niggli.datasets import read_cdvae_cells

    no_cell = "\n".join(line for line in _cif(_ordered()).splitlines() if not line.startswith("_cell_length_b"))
    path = _write_csv(tmp_path / "badcif.csv", [
        {"material_id": "good", "cif": _cif(_ordered())},
        {"material_id": "mp-bad", "cif": no_cell},
    ], gz=False)
    with pytest.raises(ValueError, match=r"badcif\.csv: row 2 \(material_id 'mp-bad'\).*_cell_length_b"):
        read_cdvae_cells(path)
    garbage = _write_csv(tmp_path / "garbage.csv.gz", [
        {"material_id": "good", "cif": _cif(_ordered())},
        {"material_id": "mp-junk", "cif": "not a cif"},
    ])
    for reader in (read_cdvae_cells, lambda p: read_cdvae_csv(p, use_cache=False)):
        with pytest.raises(ValueError, match=r"garbage\.csv\.gz: row 2 \(material_id 'mp-junk'\)"):
            reader(garbage)


def test_truncated_gzip_is_reported_as_truncated_not_eof(tmp_path):
    from soft_niggli.datasets import read_cdvae_cells

    rows = [{"material_id": f"m{i}", "cif": _cif(_ordered(3.0 + 0.01 * i))} for i in range(200)]
    whole = _write_csv(tmp_path / "whole.csv.gz", rows).read_bytes()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    for reader in (read_cdvae_cells, lambda p: read_cdvae_csv(p, use_cache=False)):
        with pytest.raises(ValueError, match=r"cut\.csv\.gz.*truncated or corrupt"):
            reader(cut)


# ---------------------------------------------------------------------------- the data folder


def test_without_a_data_folder_the_error_names_both_ways_and_the_files(monkeypatch):
    from soft_niggli.datasets import resolve_data_dir

    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    # Even where ../shared/data exists next to the checkout, the library does not look there.
    for call in (lambda: load_dataset("mp_20", "val"), resolve_data_dir):
        with pytest.raises(FileNotFoundError) as info:
            call()
        message = str(info.value)
        assert "data_dir=" in message and "SOFT_NIGGLI_DATA" in message
        assert "train.csv.gz" in message and "val.csv.gz" in message and "'aflow'" in message


def test_a_missing_folder_or_dataset_is_named(tmp_path, monkeypatch):
    from soft_niggli.datasets import resolve_data_dir

    with pytest.raises(FileNotFoundError, match=r"data folder .*nowhere \(from data_dir\) does not exist"):
        load_dataset("mp_20", data_dir=tmp_path / "nowhere")
    monkeypatch.setenv("SOFT_NIGGLI_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"elsewhere \(from \$SOFT_NIGGLI_DATA\) does not exist"):
        resolve_data_dir()
    monkeypatch.setenv("SOFT_NIGGLI_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=r"dataset 'perov_5': none of train, val, test"):
        load_dataset("perov_5")


def test_data_folder_from_argument_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFT_NIGGLI_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "data"
    (folder / "perov_5").mkdir(parents=True)
    _write_csv(folder / "perov_5" / "val.csv.gz", [{"material_id": f"m{i}", "cif": _cif(_ordered(3.0 + i))}
                                                  for i in range(3)])
    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    by_argument = load_dataset("perov_5", "all", data_dir=folder)
    by_string = load_dataset("perov_5", "all", data_dir=str(folder))
    monkeypatch.setenv("SOFT_NIGGLI_DATA", str(folder))
    by_environment = load_dataset("perov_5", "all")
    assert _ids(by_argument) == _ids(by_string) == _ids(by_environment) == ["m0", "m1", "m2"]


def test_shared_data_through_the_environment_variable(monkeypatch):
    folder = shared_data_dir()
    if not (folder / "perov_5" / "val.csv.gz").exists():
        pytest.skip("perov_5 not in the shared data folder")
    monkeypatch.setenv("SOFT_NIGGLI_DATA", str(folder))
    assert len(load_dataset("perov_5", "val", limit=3)) == 3
    assert len(load_dataset("perov_5", "val", data_dir=folder, limit=2)) == 2


def test_aflow_needs_no_folder(monkeypatch):
    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    assert len(load_dataset("aflow", "val", limit=3)) == 3


@pytest.mark.parametrize("call, match", [
    (lambda: load_dataset(20), "name: expected a dataset name"),
    (lambda: load_dataset("aflow", split=None), "split: expected one of"),
    (lambda: load_dataset("mp_20", data_dir=5), "data_dir: expected a str or os.PathLike"),
    (lambda: train_val_split([1, 2, 3], val_fraction="0.2"), "val_fraction: expected a float"),
    (lambda: train_val_split([1, 2, 3], seed=1.0), "seed: expected an int"),
])
def test_wrong_argument_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


# ---------------------------------------------------------------------------- the bundled real crystals


@pytest.mark.parametrize("name, sizes, max_atoms", [("perov_5_small", (400, 100), 5), ("carbon_24_small", (240, 60), 24)])
def test_bundled_crystals_need_no_folder_and_split_deterministically(monkeypatch, name, sizes, max_atoms):
    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    assert name in DATASETS
    train, val = load_dataset(name, "train"), load_dataset(name, "val")
    assert (len(train), len(val)) == sizes
    assert not set(_ids(train)) & set(_ids(val)) and _ids(train) == _ids(load_dataset(name, "train"))
    assert sorted(_ids(train) + _ids(val)) == sorted(_ids(load_dataset(name, "all")))
    assert all(s.is_ordered and len(s) <= max_atoms for s in train + val)
    assert len(load_dataset(name, "val", limit=7)) == 7


def test_bundled_path_names_the_bundled_sets(monkeypatch):
    from soft_niggli.datasets import BUNDLED, bundled_path

    assert {bundled_path(n).name for n in BUNDLED} == {"perov_5_small.csv.gz", "carbon_24_small.csv.gz"}
    assert "MIT" in (bundled_path(BUNDLED[0]).parent / "NOTICE").read_text()
    with pytest.raises(ValueError, match="perov_5_small"):
        bundled_path("perov_5")
    with pytest.raises(TypeError):
        bundled_path(5)
    monkeypatch.delenv("SOFT_NIGGLI_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="perov_5_small"):  # the no-folder message names them
        load_dataset("mp_20")


def test_bundled_files_are_what_the_committed_script_makes():
    from soft_niggli.datasets import BUNDLED, bundled_path

    script = REPO_ROOT / "tools" / "make_bundled_data.py"
    spec = importlib.util.spec_from_file_location("make_bundled_data", script)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    SUBSETS, subset_csv = tool.SUBSETS, tool.subset_csv

    assert set(SUBSETS) == set(BUNDLED)
    total = 0
    for name, (dataset, _) in SUBSETS.items():
        blob, _ = subset_csv(shared_data_file(dataset, "val"), SUBSETS[name][1])
        assert blob == bundled_path(name).read_bytes(), f"{name}: rerun python tools/make_bundled_data.py"
        total += len(blob)
    assert total <= 500_000


# ---------------------------------------------------------------------------- the public CSV reader


def test_open_csv_streams_rows_with_their_lines_and_flags_malformed_ones(tmp_path):
    from soft_niggli.datasets import CsvRow, open_csv

    path = tmp_path / "rows.csv"
    path.write_text('id,cif,id\na,"two\nlines",x\n\nb,one,y,extra\nc\n')
    with open_csv(path) as rows:
        assert rows.columns == ("id", "cif", "id") and rows.index("cif") == 1
        got = list(rows)
    assert got == [CsvRow(1, 2, ["a", "two\nlines", "x"]),
                   CsvRow(2, 5, ["b", "one", "y", "extra"], "4 fields where the header has 3 columns"),
                   CsvRow(3, 6, ["c"], "1 fields where the header has 3 columns")]


@pytest.mark.parametrize("content, match", [
    (b"", "the file is empty"),
    (b"\n\n", "the file is empty"),
    (b"a,b\n1,2\n", r"missing \['cif'\]; columns present: \['a', 'b'\]"),
    (b"cif,x,cif\n1,2,3\n", r"'cif' once, got it 2 times \(columns 1, 3"),
])
def test_open_csv_refuses_a_file_it_cannot_read_rows_from(tmp_path, content, match):
    from soft_niggli.datasets import open_csv

    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        open_csv(path)


def test_open_csv_carries_undecodable_bytes_and_drops_a_byte_order_mark(tmp_path):
    import gzip

    from soft_niggli.datasets import open_csv

    path = tmp_path / "latin1.csv.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"\xef\xbb\xbfcif,name\nx,Fe\xe9\n")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        list(open_csv(path))
    with open_csv(path, errors="surrogateescape") as rows:
        (row,) = rows
    assert rows.columns == ("cif", "name") and row.fields[1].encode("utf-8", "surrogateescape") == b"Fe\xe9"


def test_dataset_readers_refuse_a_malformed_row_naming_its_line(tmp_path):
    from soft_niggli.datasets import read_cdvae_cells

    cif = _cif(_ordered())
    path = tmp_path / "shifted.csv"
    path.write_text(f'material_id,cif\na,"{cif}"\nb,"{cif}",stray\n')
    line = 2 + cif.count("\n") + 1
    for reader in (read_cdvae_cells, lambda p: read_cdvae_csv(p, use_cache=False)):
        with pytest.raises(ValueError, match=rf"shifted\.csv: row 2 \(line {line}\): 3 fields where the header has 2"):
            reader(path)


def test_cif_cell_parameters_reads_the_six_numbers_or_names_what_is_missing():
    from soft_niggli.datasets import cif_cell_parameters

    cif = _cif(_ordered(4.5))
    assert cif_cell_parameters(cif) == (4.5, 4.5, 4.5, 90.0, 90.0, 90.0)

    def with_value(key, value):
        return re.sub(rf"^{key}\s+\S+", f"{key}   {value}", cif, flags=re.M)

    assert np.isnan(cif_cell_parameters(with_value("_cell_length_a", "nan"))[0])
    assert cif_cell_parameters(with_value("_cell_length_c", "5.4307(2)"))[2] == 5.4307
    with pytest.raises(ValueError, match="missing _cell_angle_beta"):
        cif_cell_parameters("\n".join(x for x in cif.splitlines() if not x.startswith("_cell_angle_beta")))
    with pytest.raises(ValueError, match=r"_cell_length_b: expected a number, got '\?'"):
        cif_cell_parameters(with_value("_cell_length_b", "?"))
