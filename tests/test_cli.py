"""The `soft-niggli` command: `canonicalize` on tiny CSVs and CIF folders written in tmp."""

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
    assert "nan-cell" in printed and "zero-cell, flat-cell" in printed and "rows/s" in printed
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
    script = shutil.which("soft-niggli")
    if script is None:
        pytest.skip("the soft-niggli console script is not on PATH (reinstall: pip install -e .)")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "canonicalize" in out.stdout
