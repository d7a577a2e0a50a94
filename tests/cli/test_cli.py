"""The `soft-niggli` command: `canonicalize` on tiny CSVs and CIF folders written in tmp.

Every way a row could lose or change data is here: it either comes back whole or comes back flagged,
with a status and a note; never `OK` with less.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("pymatgen")

from soft_niggli import is_niggli_reduced  # noqa: E402
from soft_niggli.cli import canonicalize_file, main  # noqa: E402
from soft_niggli.datasets import bundled_path  # noqa: E402


def _structure(cif: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def _bundled_rows(name: str, n: int) -> tuple[list[str], list[dict]]:
    with gzip.open(bundled_path(name), "rt", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), [row for _, row in zip(range(n), reader)]


def _write_csv(path, columns, rows, gz=False):
    with (gzip.open(path, "wt", newline="") if gz else open(path, "w", newline="")) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _read_csv(path):
    with (gzip.open(path, "rt", newline="") if str(path).endswith(".gz") else open(path, newline="")) as fh:
        return list(csv.DictReader(fh))


def _set_cell(cif: str, key: str, value: str) -> str:
    return re.sub(rf"^{key}\s+\S+", f"{key}   {value}", cif, flags=re.M)


def _check_same_crystals_reduced(inputs: list[dict], outputs: list[dict]) -> int:
    """Every OK output row: Niggli-reduced, det T = +1, and the input crystal by its written transform
    (metric T G Tᵀ, fractional coordinates wrap(F T⁻¹), species). Returns the number of OK rows."""
    n_ok = 0
    for src, out in zip(inputs, outputs):
        if out["niggli_status"] != "OK":
            assert out["cif"] == src["cif"] and out["niggli_transform"] == "" and out["niggli_note"]
            continue
        n_ok += 1
        a, b = _structure(src["cif"]), _structure(out["cif"])
        T = np.array(json.loads(out["niggli_transform"]))
        assert T.dtype.kind == "i" and round(np.linalg.det(T)) == 1
        La, Lb = T @ a.lattice.matrix, b.lattice.matrix
        np.testing.assert_allclose(Lb @ Lb.T, La @ La.T, rtol=0, atol=1e-6 * np.trace(La @ La.T))
        assert bool(is_niggli_reduced(torch.tensor(Lb)))
        frac = a.frac_coords @ np.linalg.inv(T)
        diff = (b.frac_coords - frac + 0.5) % 1.0 - 0.5  # equal modulo lattice translations
        assert np.abs(diff).max() < 1e-6
        assert [s.symbol for s in a.species] == [s.symbol for s in b.species]
        assert {k: v for k, v in src.items() if k not in ("cif",)}.items() <= out.items()  # other columns kept
    return n_ok


def test_canonicalize_writes_reduced_cells_that_are_the_input_crystals(tmp_path):
    columns, rows = _bundled_rows("carbon_24_small", 12)
    src = tmp_path / "in.csv.gz"
    _write_csv(src, columns, rows, gz=True)
    report = canonicalize_file(src, tmp_path / "out.csv", progress=False, compare_spglib=True)
    out = _read_csv(tmp_path / "out.csv")
    assert [r["material_id"] for r in out] == [r["material_id"] for r in rows]
    assert list(out[0]) == columns + ["niggli_status", "niggli_transform", "niggli_note"]
    assert _check_same_crystals_reduced(rows, out) == 12 == report["status"]["OK"]
    assert report["already_reduced"] < 12  # carbon cells are mostly not reduced as stored
    assert sum(report["spglib"].values()) == 12 and report["spglib"].get("different", 0) == 0


def test_bad_cells_are_flagged_not_crashed(tmp_path, capsys):
    columns, rows = _bundled_rows("perov_5_small", 4)
    bad = [dict(rows[0], material_id="nan-cell", cif=_set_cell(rows[0]["cif"], "_cell_length_a", "nan")),
           dict(rows[1], material_id="zero-cell", cif=_set_cell(rows[1]["cif"], "_cell_length_b", "0.0")),
           dict(rows[2], material_id="flat-cell",
                cif=_set_cell(_set_cell(rows[2]["cif"], "_cell_angle_beta", "45"), "_cell_angle_gamma", "45")),
           dict(rows[3], material_id="not-a-cif", cif="hello")]
    table = rows + bad
    src = tmp_path / "in.csv"
    _write_csv(src, columns, table)
    dst = tmp_path / "out.csv.gz"
    assert main(["canonicalize", str(src), str(dst), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    out = _read_csv(dst)
    assert len(out) == 8
    status = {r["material_id"]: r["niggli_status"] for r in out}
    assert status["nan-cell"] == "NONFINITE"
    assert (status["zero-cell"], status["flat-cell"], status["not-a-cif"]) == ("DEGENERATE", "DEGENERATE", "PARSE_ERROR")
    notes = {r["material_id"]: r["niggli_note"] for r in out}
    assert "flat" in notes["flat-cell"] and "ValueError" in notes["not-a-cif"]
    assert _check_same_crystals_reduced(table, out) == 4
    assert "OK 4" in printed and "NONFINITE 1" in printed and "DEGENERATE 2" in printed and "PARSE_ERROR 1" in printed
    assert "nan-cell (line " in printed and "zero-cell (line " in printed and "flat-cell (line " in printed
    assert "rows/s" in printed
    assert main(["canonicalize", str(src), str(tmp_path / "again.csv"), "--no-progress", "--strict"]) == 1


def test_a_folder_of_cifs(tmp_path):
    _, rows = _bundled_rows("carbon_24_small", 3)
    folder = tmp_path / "cifs"
    folder.mkdir()
    for row in rows:
        (folder / f"{row['material_id']}.cif").write_text(row["cif"])
    report = canonicalize_file(folder, tmp_path / "out.csv", progress=False)
    out = _read_csv(tmp_path / "out.csv")
    by_id = {r["material_id"]: r for r in rows}
    assert sorted(by_id) == [r["material_id"] for r in out] and report["status"] == {"OK": 3}
    inputs = [{"material_id": r["material_id"], "cif": by_id[r["material_id"]]["cif"]} for r in out]
    assert _check_same_crystals_reduced(inputs, out) == 3


def test_errors_are_messages_not_tracebacks(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["canonicalize", str(tmp_path / "missing.csv"), str(tmp_path / "out.csv")])
    assert exc.value.code == 2 and "missing.csv" in capsys.readouterr().err
    (tmp_path / "nocif.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit):
        main(["canonicalize", str(tmp_path / "nocif.csv"), str(tmp_path / "out.csv")])
    assert "'cif'" in capsys.readouterr().err and not (tmp_path / "out.csv").exists()


def test_help_and_console_script():
    out = subprocess.run([sys.executable, "-m", "soft_niggli.cli", "canonicalize", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "niggli_transform" in out.stdout and "--compare-spglib" in out.stdout
    assert not out.stderr
    script = shutil.which("soft-niggli")
    if script is None:
        pytest.skip("the soft-niggli console script is not on PATH (reinstall: pip install -e .)")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "canonicalize" in out.stdout


# ------------------------------------------------------------------------- nothing lost, nothing silent


def _crystal(lattice=((3.0, 0, 0), (4.0, 4.0, 0), (1.0, 1.0, 5.0)), species=("Fe", "O"), **kwargs):
    """A two-site crystal whose stored cell is far from reduced (T is not the identity)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(np.array(lattice)), list(species), [[0.1, 0.2, 0.3], [0.6, 0.55, 0.8]], **kwargs)


def _cif(structure, **kwargs) -> str:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(CifWriter(structure, **kwargs))


def _run(tmp_path, rows, columns=("material_id", "cif"), *extra, name="in.csv"):
    """Canonicalise ``rows`` (lists of fields) written under ``columns``; the output rows as lists."""
    src = tmp_path / name
    with open(src, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    dst = tmp_path / "out.csv"
    assert main(["canonicalize", str(src), str(dst), "--no-progress", *extra]) == 0
    with open(dst, newline="") as fh:
        return list(csv.reader(fh))


def test_duplicate_column_names_keep_every_column(tmp_path):
    cif = _cif(_crystal())
    out = _run(tmp_path, [["first", cif, "second"]], ("id", "cif", "id"))
    assert out[0] == ["id", "cif", "id", "niggli_status", "niggli_transform", "niggli_note"]
    assert (out[1][0], out[1][2], out[1][3]) == ("first", "second", "OK")


def test_a_repeated_cif_column_is_refused_with_both_positions(tmp_path, capsys):
    src = tmp_path / "two.csv"
    src.write_text("material_id,cif,cif\na,x,y\n")
    with pytest.raises(SystemExit) as exc:
        main(["canonicalize", str(src), str(tmp_path / "out.csv")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "'cif' once, got it 2 times (columns 2, 3" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.csv").exists()


def _moments_in_cartesian(structure):
    return np.array([np.asarray(m.get_moment()) for m in structure.site_properties["magmom"]])


def test_magnetic_moments_labels_and_block_name_round_trip(tmp_path):
    """Moments are axial vectors fixed in space: read back in the reduced cell's own frame they are the
    input's turned by the rotation Q that takes T @ L to the lattice read back, L_out = T @ L @ Q."""
    from pymatgen.electronic_structure.core import Magmom

    structure = _crystal(site_properties={"magmom": [Magmom([0.5, -1.0, 2.0]), Magmom([0.0, 0.0, 0.0])]})
    cif = _cif(structure, write_magmoms=True).replace("data_FeO", "data_mp-42")
    cif = re.sub(r"\bFe0\b", "Fe_a", re.sub(r"\bO1\b", "O_b", cif))  # labels of the input's own
    out = _run(tmp_path, [["mp-42", cif]])
    assert out[1][2] == "OK" and out[1][4] == ""
    a, b = _structure(cif), _structure(out[1][1])
    T = np.array(json.loads(out[1][3]))
    assert not np.array_equal(T, np.eye(3))
    Q = np.linalg.solve(T @ a.lattice.matrix, b.lattice.matrix)
    np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-7)
    np.testing.assert_allclose(_moments_in_cartesian(b), _moments_in_cartesian(a) @ Q, atol=1e-6)
    assert [s.label for s in b] == [s.label for s in a] == ["Fe_a", "O_b"]
    assert out[1][1].splitlines()[1] == "data_mp-42"


def test_scalar_moments_round_trip_as_their_size(tmp_path):
    structure = _crystal(site_properties={"magmom": [2.0, 0.0]})
    out = _run(tmp_path, [["m", _cif(structure, write_magmoms=True)]])
    moments = _moments_in_cartesian(_structure(out[1][1]))
    np.testing.assert_allclose(np.linalg.norm(moments, axis=1), [2.0, 0.0], atol=1e-6)


def test_two_data_blocks_are_flagged_and_kept_whole(tmp_path):
    two = _cif(_crystal()) + _cif(_crystal(species=("Na", "Cl"))).replace("data_NaCl", "data_second")
    out = _run(tmp_path, [["two", two], ["one", _cif(_crystal())]])
    assert [r[2] for r in out[1:]] == ["MULTIPLE_BLOCKS", "OK"]
    assert out[1][1] == two and out[1][3] == "" and "data_FeO, data_second" in out[1][4]


def test_partial_occupancy_is_flagged_disordered_as_crystal_batch_refuses_it(tmp_path):
    from soft_niggli import CrystalBatch

    disordered = _crystal(species=({"Fe": 0.5, "Co": 0.5}, "O"))
    with pytest.raises(ValueError, match="disordered"):
        CrystalBatch.from_structures([disordered])
    cif = _cif(disordered)
    out = _run(tmp_path, [["dis", cif]])
    assert out[1][1:3] == [cif, "DISORDERED"] and "partial occupancies on 1 of 2 sites" in out[1][4]


_WATER = """data_w
_cell_length_a 5
_cell_length_b 6
_cell_length_c 7
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
 _atom_site_label
 _atom_site_type_symbol
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 Ow1 Wat 0.1 0.2 0.3
 Na1 Na 0.5 0.5 0.5
"""


def test_implicit_hydrogens_a_cif_cannot_write_are_flagged_not_dropped(tmp_path):
    out = _run(tmp_path, [["water", _WATER]])
    assert out[1][1:3] == [_WATER, "NOT_WRITABLE"] and "implicit_hydrogens" in out[1][4]


def test_a_malformed_row_is_flagged_with_its_line_and_the_run_goes_on(tmp_path):
    """A quoted CIF spans many lines: the note names the line an editor shows, and an extra field is
    kept in the note rather than dropped."""
    cif = _cif(_crystal())
    out = _run(tmp_path, [["a", cif], ["b", cif, "stray"], ["c"], ["d", cif]])
    assert [r[2] for r in out[1:]] == ["OK", "MALFORMED_ROW", "MALFORMED_ROW", "OK"]
    first_line = 2 + cif.count("\n") + 1
    assert out[2][:2] == ["b", cif] and out[2][4].startswith(f"line {first_line}: 3 fields where the header has 2")
    assert '["stray"]' in out[2][4]
    assert out[3][:2] == ["c", ""] and "1 fields where the header has 2" in out[3][4] and "'cif' empty" in out[3][4]


@pytest.mark.parametrize("where", ["under a file", "an existing folder", "a missing folder"])
def test_output_path_problems_are_one_line_before_any_work(tmp_path, capsys, monkeypatch, where):
    import soft_niggli.cli._rows as rows_module

    columns, rows = _bundled_rows("perov_5_small", 2)
    src = tmp_path / "in.csv"
    _write_csv(src, columns, rows)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    dst = {"under a file": tmp_path / "a_file" / "out.csv", "an existing folder": tmp_path / "a_folder",
           "a missing folder": tmp_path / "nowhere" / "out.csv"}[where]
    monkeypatch.setattr(rows_module, "parse_cif",
                        lambda cif: pytest.fail("a CIF was parsed before the output path was checked"))
    with pytest.raises(SystemExit) as exc:
        main(["canonicalize", str(src), str(dst), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert {"under a file": "a_file is a file, not a folder", "an existing folder": "is a folder",
            "a missing folder": "does not exist (create it first)"}[where] in err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("gz", [False, True])
def test_an_empty_file_is_reported_as_empty(tmp_path, capsys, gz):
    src = tmp_path / ("empty.csv.gz" if gz else "empty.csv")
    if gz:
        with gzip.open(src, "wb"):
            pass
    else:
        src.write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main(["canonicalize", str(src), str(tmp_path / "out.csv")])
    assert exc.value.code == 2 and "the file is empty" in capsys.readouterr().err


def test_bytes_that_are_not_utf8_reach_the_output_unchanged(tmp_path):
    cif = _cif(_crystal())
    src = tmp_path / "latin1.csv"
    src.write_bytes(b"material_id,formula,cif\nm1,Fe\xe9O,\"" + cif.encode() + b"\"\n")
    dst = tmp_path / "out.csv"
    assert main(["canonicalize", str(src), str(dst), "--no-progress"]) == 0
    assert b"m1,Fe\xe9O," in dst.read_bytes() and b",OK," in dst.read_bytes()


def test_rerun_on_its_own_output_replaces_its_columns_and_changes_nothing(tmp_path, capsys):
    columns, rows = _bundled_rows("carbon_24_small", 4)
    src = tmp_path / "in.csv"
    _write_csv(src, columns, rows)
    assert main(["canonicalize", str(src), str(tmp_path / "once.csv"), "--no-progress", "--keep-input-cif"]) == 0
    report = canonicalize_file(tmp_path / "once.csv", tmp_path / "twice.csv", progress=False, keep_input_cif=True)
    once, twice = _read_csv(tmp_path / "once.csv"), _read_csv(tmp_path / "twice.csv")
    assert report["replaced_columns"] == ["niggli_status", "niggli_transform", "niggli_note", "input_cif"]
    assert list(twice[0]) == list(once[0]) == columns + report["replaced_columns"]
    assert [r["input_cif"] for r in once] == [r["cif"] for r in rows]
    assert all(r["niggli_transform"] == "[[1,0,0],[0,1,0],[0,0,1]]" for r in twice)

    def without_volume(cif):  # derived from the parameters as written (8 decimals): its last digit moves
        return re.sub(r"_cell_volume.*", "", cif)

    assert [without_volume(r["cif"]) for r in twice] == [without_volume(r["cif"]) for r in once]


def test_the_transform_maps_the_input_lattice_and_the_cif_keeps_the_metric_not_the_orientation(tmp_path):
    columns, rows = _bundled_rows("carbon_24_small", 12)
    src = tmp_path / "in.csv"
    _write_csv(src, columns, rows)
    canonicalize_file(src, tmp_path / "out.csv", progress=False)
    turned = 0
    for a, b in zip(rows, _read_csv(tmp_path / "out.csv")):
        L, T = _structure(a["cif"]).lattice.matrix, np.array(json.loads(b["niggli_transform"]))
        R = _structure(b["cif"]).lattice.matrix
        Q = np.linalg.solve(T @ L, R)  # R = T @ L @ Q
        np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-7)
        assert np.linalg.det(Q) > 0  # a rotation: nothing mirrored
        turned += not np.allclose(Q, np.eye(3), atol=1e-7)
    assert turned  # so a reader must compare metrics, as the help says


# --------------------------------------------------------------------------------------- the scale


def test_jobs_and_shards_write_the_same_rows_as_one_process(tmp_path):
    columns, rows = _bundled_rows("carbon_24_small", 10)
    src = tmp_path / "in.csv.gz"
    _write_csv(src, columns, rows, gz=True)
    canonicalize_file(src, tmp_path / "one.csv", progress=False)
    whole = (tmp_path / "one.csv").read_text()
    report = canonicalize_file(src, tmp_path / "two.csv", progress=False, jobs=2, chunk=3)
    assert (tmp_path / "two.csv").read_text() == whole and report["jobs"] == 2
    parts = []
    for k in (1, 2, 3):
        report = canonicalize_file(src, tmp_path / f"part{k}.csv", progress=False, shard=f"{k}/3")
        parts.append((tmp_path / f"part{k}.csv").read_text().split("\n", 1))
        assert report["shard"] == f"{k}/3" and report["input_rows"] == 10
    assert {header for header, _ in parts} == {whole.split("\n", 1)[0]}
    assert "".join(body for _, body in parts) == whole.split("\n", 1)[1]


@pytest.mark.parametrize("fork", [False, True])
def test_worker_processes_write_the_same_rows_as_this_process(tmp_path, fork):
    """Every chunk computed by a worker (``share=False``), forked or from the forkserver, compared with the
    same chunk computed here."""
    import os

    from soft_niggli.cli._parallel import ordered_results, process_pool
    from soft_niggli.cli._rows import Layout, run_chunk
    from soft_niggli.cli._source import open_source

    columns, rows = _bundled_rows("carbon_24_small", 14)
    src = tmp_path / "in.csv"
    _write_csv(src, columns, rows)
    source = open_source(src)
    layout = Layout(cif=columns.index("cif"), width=len(columns), out_width=len(columns) + 3,
                    status=len(columns), transform=len(columns) + 1, note=len(columns) + 2, input_cif=None,
                    ident=columns.index("material_id"), rel_tol=1e-5, compare_spglib=False)
    records = list(source.records())
    tasks = [(layout, records[i:i + 3], source.columns) for i in range(0, len(records), 3)]
    here = [run_chunk(*task) for task in tasks]
    pool = process_pool(1, fork=fork)
    try:
        there = list(ordered_results(run_chunk, iter(tasks), jobs=2, pool=pool, share=False))
    finally:
        pool.shutdown()
    assert all(res.process not in (0, os.getpid()) for res in there)
    assert [res.rows for res in there] == [res.rows for res in here]
    assert [res.statuses for res in there] == [res.statuses for res in here]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_the_command_forks_its_workers_and_writes_what_one_process_writes(tmp_path):
    columns, rows = _bundled_rows("carbon_24_small", 9)
    src = tmp_path / "in.csv"
    _write_csv(src, columns, rows)
    method = subprocess.run([sys.executable, "-c", "from soft_niggli.cli._parallel import pool_context; "
                             "print(pool_context(fork=True).get_start_method())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert method == "fork"
    for jobs in (1, 2):
        subprocess.run([sys.executable, "-m", "soft_niggli.cli", "canonicalize", str(src),
                        str(tmp_path / f"{jobs}.csv"), "--jobs", str(jobs), "--chunk", "2", "--no-progress"],
                       capture_output=True, check=True)
    assert (tmp_path / "2.csv").read_bytes() == (tmp_path / "1.csv").read_bytes()


@pytest.mark.parametrize("jobs", [2, 3])
def test_results_come_in_order_with_bounded_memory_and_this_process_sharing_the_work(jobs):
    """Chunks of random durations, a thread pool standing in for the workers: results in input order, at
    most ``held_at_most(jobs)`` tasks read and not yet handed back, and both this thread and the pool
    computing chunks."""
    import random
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from soft_niggli.cli._parallel import held_at_most, ordered_results

    durations = random.Random(jobs).choices([0.0, 0.002, 0.01], k=120)
    pulled = []

    def work(i, seconds):
        time.sleep(seconds)
        return i, threading.get_ident()

    def tasks():
        for i, seconds in enumerate(durations):
            pulled.append(i)
            yield i, seconds

    computed_by = set()
    with ThreadPoolExecutor(jobs - 1) as pool:
        for k, (i, ident) in enumerate(ordered_results(work, tasks(), jobs, pool=pool)):
            assert i == k
            assert len(pulled) - k <= held_at_most(jobs)
            computed_by.add(ident == threading.get_ident())
    assert computed_by == {True, False}
    assert held_at_most(jobs) < len(durations)  # so that the bound says something


@pytest.mark.parametrize("kwargs, match", [
    ({"jobs": -1}, r"jobs: expected an int >= 1 .*got -1"),
    ({"jobs": 1.5}, r"jobs: expected an int >= 1 .*got 1.5"),
    ({"shard": "0/4"}, r"shard: expected K/N with integers 1 <= K <= N .*got '0/4'"),
    ({"shard": "5/4"}, r"got '5/4'"),
    ({"shard": "two"}, r"got 'two'"),
    ({"chunk": 0}, r"chunk: expected an int >= 1 .*got 0"),
    ({"rel_tol": 2.0}, r"rel_tol"),
])
def test_bad_arguments_name_what_was_expected_and_what_came(tmp_path, kwargs, match):
    columns, rows = _bundled_rows("perov_5_small", 1)
    _write_csv(tmp_path / "in.csv", columns, rows)
    with pytest.raises(ValueError, match=match):
        canonicalize_file(tmp_path / "in.csv", tmp_path / "out.csv", progress=False, **kwargs)
    assert not (tmp_path / "out.csv").exists()


def test_help_is_plain_text_with_defaults():
    from soft_niggli.cli._command import build_parser

    parser = build_parser()
    top = parser.format_help()
    sub = parser._subparsers._group_actions[0].choices["canonicalize"].format_help()
    for text in (top, sub):
        assert "``" not in text and ":func:" not in text and ":class:" not in text
    assert "canonicalize" in top
    assert "(default: 1)" in sub and "(default: 256)" in sub and "(default: 1e-05)" in sub
    for said in ("reduced lattice is T @ L", "not an orientation", "compare metrics", "MULTIPLE_BLOCKS", "DISORDERED",
                 "MALFORMED_ROW", "--shard K/N"):
        assert said in sub, said


@pytest.mark.parametrize("progress", [True, False])
def test_a_truncated_file_is_one_line_and_no_output(tmp_path, capsys, progress):
    columns, rows = _bundled_rows("perov_5_small", 60)
    whole = tmp_path / "whole.csv.gz"
    _write_csv(whole, columns, rows, gz=True)
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    dst = tmp_path / "out.csv"
    with pytest.raises(SystemExit) as exc:
        main(["canonicalize", str(cut), str(dst), "--chunk", "8"] + ([] if progress else ["--no-progress"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and "cut.csv.gz: the file is truncated or corrupt" in err[-1]
    assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
