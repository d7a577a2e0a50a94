"""The ``soft-niggli`` command: dataset tools. One subcommand so far, ``canonicalize``.

Row convention: a lattice ``L (3, 3)`` has the lattice vectors as rows; a crystal is re-based by a
unimodular ``T`` as ``(T L, wrap(F T^{-1}))``.

``soft-niggli canonicalize IN OUT`` reads a CDVAE/DiffCSP CSV (one CIF per row in a ``cif`` column,
gzipped or not) or a folder of ``*.cif`` files, reduces every cell with the guarded reducer
(:func:`soft_niggli.niggli_reduce`, batched) and writes a CSV (gzipped if ``OUT`` ends in ``.gz``)
with the input's columns, the ``cif`` column rewritten in the Niggli basis, and three more:

* ``niggli_status``: ``OK``, ``NOT_CONVERGED``, ``DEGENERATE``, ``NONFINITE`` (:class:`soft_niggli.Status`;
  a CIF whose cell parameters are a zero or flat cell, which pymatgen refuses, is ``DEGENERATE`` too)
  or ``PARSE_ERROR`` (pymatgen could not read the CIF for another reason);
* ``niggli_transform``: for ``OK`` rows the integer matrix ``T`` (JSON, ``det T = +1``) with
  ``reduced lattice = T @ input lattice`` (the input lattice as pymatgen builds it from the CIF) and
  ``reduced fractional coordinates = wrap(F T^{-1})``; empty for flagged rows;
* ``niggli_note``: why a row was flagged, empty for ``OK``.

Flagged rows keep their input CIF unchanged, so the output holds every row of the input, in order. A
reduced basis that comes out left-handed is replaced by its negative (``-T``: the same Niggli metric), so
no crystal is mirrored. The written CIFs are P1 (pymatgen's ``CifWriter``); the cell parameters are
those of the reduced cell. A folder input gives the columns ``material_id`` (the file name without
``.cif``) and ``cif``.

The run reports counts per status with the first few ids of each flagged kind, how many cells were
already reduced as given, and the time of each part (CIF parsing dominates; the reducer is microseconds
per cell). ``--compare-spglib`` also checks each reduced cell against spglib's ``niggli_reduce``:
spglib's metric is the same, or another of the cell's equally valid reduced forms
(:func:`soft_niggli.reduced_forms`, cells on a Niggli-cone boundary), or different, or spglib failed.

Needs pymatgen (CIF reading and writing); tqdm, if installed, draws the progress bar.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["main", "canonicalize_file"]

PARSE_ERROR = "PARSE_ERROR"
EXTRA_COLUMNS = ("niggli_status", "niggli_transform", "niggli_note")
_WHY = {
    "NOT_CONVERGED": "the reducer's iteration cap was reached (input kept)",
    "DEGENERATE": "float64 cannot resolve the cell: flat, zero or extremely skewed (input kept)",
    "NONFINITE": "NaN or inf in the cell (input kept)",
    PARSE_ERROR: "pymatgen could not read the CIF (input kept)",
}


# ----------------------------------------------------------------------------------------- input


def _input_rows(path: Path):
    """``(columns, total, rows)``: the columns of the input, its row count, and an iterator of row dicts."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif" and p.is_file())
        if not files:
            raise ValueError(f"{path}: a folder without *.cif files")

        def folder_rows():
            for p in files:
                yield {"material_id": p.stem, "cif": p.read_text(encoding="utf-8", errors="replace")}

        return ["material_id", "cif"], len(files), folder_rows()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    from .datasets import _csv_rows  # the reader of soft_niggli.datasets: gzip or not, damage named

    total, columns = 0, None
    for total, row in _csv_rows(path):  # a cheap first pass (no CIF parsing) for the progress bar
        if columns is None:
            columns = list(row)
    if columns is None:  # header only
        with (gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open)(path, "rt", newline="") as fh:
            columns = next(csv.reader(fh), ["cif"])
    return columns, total, (row for _, row in _csv_rows(path))


def _open_output(path: Path, gz: bool):
    if gz:
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline="")
    return open(path, "w", encoding="utf-8", newline="")


# ------------------------------------------------------------------------------------------ work


def _parse(cif: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rounded occupancies and the like
        return Structure.from_str(cif, fmt="cif")


def _unparsed_status(cif: str, error: Exception) -> tuple[str, str]:
    """Status and note of a CIF that pymatgen refused: ``NONFINITE`` or ``DEGENERATE`` when its six cell
    parameters say why (pymatgen refuses zero lengths and flat cells alike), else ``PARSE_ERROR``."""
    from .datasets import _CELL_KEYS, _CELL_PATTERN

    found = dict(_CELL_PATTERN.findall(cif))
    why = f"{type(error).__name__}: {error}"[:300]
    try:
        a, b, c, alpha, beta, gamma = (float(found[k]) for k in _CELL_KEYS)
    except (KeyError, ValueError):
        return PARSE_ERROR, why
    params = np.array([a, b, c, alpha, beta, gamma])
    if not np.all(np.isfinite(params)):
        return "NONFINITE", f"cell parameters {params.tolist()} are not finite"
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    flatness = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg  # (V / abc)²: 0 for a flat cell
    if min(a, b, c) <= 0 or flatness <= 1e-12:
        return "DEGENERATE", (f"cell parameters a, b, c = {a}, {b}, {c}, angles {alpha}, {beta}, {gamma}: a zero "
                              f"or flat cell (pymatgen: {why})")
    return PARSE_ERROR, why


def _write_cif(structure, lattice: np.ndarray, frac: np.ndarray) -> str:
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    new = Structure(Lattice(lattice), [site.species for site in structure], frac,
                    site_properties=structure.site_properties or None)
    return str(CifWriter(new))


def _spglib_metric(lattice: np.ndarray) -> np.ndarray | None:
    """spglib's Niggli-reduced metric ``G = N Nᵀ`` of one lattice, or None where spglib fails."""
    import spglib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = spglib.niggli_reduce(lattice, eps=1e-5)
    except Exception:  # noqa: BLE001 - spglib raising is an outcome to count
        return None
    if theirs is None or not np.all(np.isfinite(theirs)):
        return None
    theirs = np.asarray(theirs, dtype=np.float64)
    return theirs @ theirs.T


def _same_metric(g: np.ndarray, lattice: np.ndarray) -> bool:
    """``g`` equals the metric of ``lattice`` to 1e-4 of its trace (spglib's tolerance is 1e-5 Å)."""
    return bool(np.abs(g - lattice @ lattice.T).max() <= 1e-4 * np.trace(g))


def _compare_spglib(lattices: np.ndarray, reduced: np.ndarray, rel_tol: float) -> Counter:
    """Counts of ``same``, ``other form``, ``different``, ``failed``: spglib's Niggli metric of each of
    ``lattices (n, 3, 3)`` against ours (``reduced``); where they differ, against every reduced form of the
    cell (:func:`soft_niggli.reduced_forms`, computed for those cells only)."""
    import torch

    from .canonical import reduced_forms

    counts, differing = Counter(), []
    for k, (L, R) in enumerate(zip(lattices, reduced)):
        g = _spglib_metric(L)
        if g is None:
            counts["failed"] += 1
        elif _same_metric(g, R):
            counts["same"] += 1
        else:
            differing.append((k, g))
    if differing:
        forms = reduced_forms(torch.from_numpy(lattices[[k for k, _ in differing]]), rel_tol=rel_tol)
        owner, form_lattices = forms.owner.numpy(), forms.lattice.numpy()
        for i, (_, g) in enumerate(differing):
            counts["other form" if any(_same_metric(g, f) for f in form_lattices[owner == i]) else "different"] += 1
    return counts


def canonicalize_file(src: str | os.PathLike, dst: str | os.PathLike, *, rel_tol: float = 1e-5, chunk: int = 1024,
                      progress: bool = True, compare_spglib: bool = False) -> dict:
    """Canonicalise ``src`` (CSV or folder of CIFs) into the CSV ``dst``; returns the report (a dict:
    ``rows``, ``status`` counts, ``flagged`` ids per status, ``already_reduced``, ``seconds`` per part,
    ``spglib`` counts when asked). The command line prints it (:func:`main`)."""
    import torch

    from .lattice import integer_inverse
    from .niggli import Status, niggli_reduce

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output would overwrite the input")
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    columns, total, rows = _input_rows(src)
    if "cif" not in columns:
        raise ValueError(f"{src}: expected a 'cif' column, columns present: {columns}")
    fieldnames = columns + [c for c in EXTRA_COLUMNS if c not in columns]
    seconds = {"read": time.perf_counter() - t0, "parse": 0.0, "reduce": 0.0, "write": 0.0}
    status_counts, flagged, spglib_counts = Counter(), {}, Counter()
    already = 0
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="row", desc="canonicalize", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            bar = None
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        with _open_output(tmp, gz=dst.suffix == ".gz") as fh:
            writer = csv.DictWriter(fh, fieldnames=fieldnames, lineterminator="\n")
            writer.writeheader()
            while True:
                t0 = time.perf_counter()
                block = [row for _, row in zip(range(chunk), rows)]
                seconds["read"] += time.perf_counter() - t0
                if not block:
                    break
                t0 = time.perf_counter()
                structures, unparsed = [], {}
                for i, row in enumerate(block):
                    try:
                        structures.append(_parse(row["cif"] or ""))
                    except Exception as err:  # noqa: BLE001 - pymatgen raises many types; the row is flagged
                        structures.append(None)
                        unparsed[i] = _unparsed_status(row["cif"] or "", err)
                seconds["parse"] += time.perf_counter() - t0

                t0 = time.perf_counter()
                parsed = [i for i, s in enumerate(structures) if s is not None]
                lattices = np.array([structures[i].lattice.matrix for i in parsed], dtype=np.float64).reshape(-1, 3, 3)
                res = niggli_reduce(lattices, rel_tol=rel_tol)
                status = res.status.numpy()
                transform = res.transform.clone()
                reduced = res.lattice.clone()
                flip = torch.linalg.det(transform.double()) < 0  # left-handed: -T, the same metric
                transform[flip] = -transform[flip]
                reduced[flip] = -reduced[flip]
                ok = status == int(Status.OK)
                inverse = integer_inverse(transform[torch.from_numpy(ok)]) if ok.any() else None
                transform, reduced = transform.numpy(), reduced.numpy()
                seconds["reduce"] += time.perf_counter() - t0
                if compare_spglib and ok.any():
                    t0 = time.perf_counter()
                    spglib_counts += _compare_spglib(lattices[ok], reduced[ok], rel_tol)
                    seconds["spglib"] = seconds.get("spglib", 0.0) + time.perf_counter() - t0

                t0 = time.perf_counter()
                k_ok = 0
                position = {i: j for j, i in enumerate(parsed)}
                for i, row in enumerate(block):
                    out = dict(row)
                    j = position.get(i)
                    if j is None:
                        name, note = unparsed[i]
                    else:
                        name, note = Status(int(status[j])).name, ""
                    if name == "OK":
                        T = transform[j]
                        frac = structures[i].frac_coords @ inverse[k_ok].numpy().astype(np.float64)
                        frac = frac - np.floor(frac)
                        frac[frac >= 1.0] = 0.0  # -1e-17 - floor(-1e-17) rounds to 1.0
                        out["cif"] = _write_cif(structures[i], reduced[j], frac)
                        out["niggli_transform"] = json.dumps(T.tolist(), separators=(",", ":"))
                        already += bool((T == np.eye(3, dtype=T.dtype)).all())
                        k_ok += 1
                    else:
                        out["niggli_transform"] = ""
                        note = note or _WHY[name]
                        flagged.setdefault(name, []).append(row.get("material_id") or f"row {status_counts.total() + 1}")
                    out["niggli_status"], out["niggli_note"] = name, note
                    status_counts[name] += 1
                    writer.writerow(out)
                seconds["write"] += time.perf_counter() - t0
                if bar is not None:
                    bar.update(len(block))
        os.replace(tmp, dst)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
    seconds["total"] = time.perf_counter() - t_all
    report = {"input": str(src), "output": str(dst), "rows": status_counts.total(), "status": dict(status_counts),
              "flagged": flagged, "already_reduced": already, "seconds": seconds}
    if compare_spglib:
        report["spglib"] = dict(spglib_counts)
    return report


# ------------------------------------------------------------------------------------- reporting


def _rate(n: int, s: float) -> str:
    return f"{n / s:,.0f} rows/s" if s > 0 else "—"


def format_report(report: dict) -> str:
    """The report of :func:`canonicalize_file` as the command prints it."""
    n, sec = report["rows"], report["seconds"]
    ok = report["status"].get("OK", 0)
    lines = [f"canonicalized {n} rows: {report['input']} -> {report['output']}",
             f"  time {sec['total']:.2f} s ({_rate(n, sec['total'])}): parse CIFs {sec['parse']:.2f} s "
             f"({_rate(n, sec['parse'])}), reduce {sec['reduce']:.3f} s ({_rate(n, sec['reduce'])}), "
             f"write CIFs {sec['write']:.2f} s ({_rate(n, sec['write'])}), read CSV {sec['read']:.2f} s"
             + (f", spglib comparison {sec['spglib']:.2f} s" if "spglib" in sec else ""),
             "  status: " + ", ".join(f"{k} {report['status'].get(k, 0)}" for k in
                                      ("OK", "NOT_CONVERGED", "DEGENERATE", "NONFINITE", PARSE_ERROR)),
             f"  already Niggli-reduced as given: {report['already_reduced']} of {ok} OK rows; "
             f"re-based: {ok - report['already_reduced']}"]
    for name, ids in report["flagged"].items():
        lines.append(f"  {name} ({len(ids)}): {_WHY[name]}; first ids: {', '.join(map(str, ids[:5]))}"
                     + (" ..." if len(ids) > 5 else ""))
    if "spglib" in report:
        s = report["spglib"]
        lines.append(f"  spglib niggli_reduce on the {ok} OK rows: same metric {s.get('same', 0)}, another valid "
                     f"reduced form (Niggli-cone boundary) {s.get('other form', 0)}, different {s.get('different', 0)}, "
                     f"spglib failed {s.get('failed', 0)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Entry point of the ``soft-niggli`` console script; returns the exit status."""
    parser = argparse.ArgumentParser(prog="soft-niggli", description="soft_niggli's dataset tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doc = __doc__.split("\n\n")
    c = sub.add_parser(
        "canonicalize", help="Niggli-reduce every cell of a CDVAE/DiffCSP CSV or a folder of CIFs",
        description="\n\n".join(doc[2:6]), formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("input", metavar="IN", help="a CSV (.csv or .csv.gz) with a 'cif' column, or a folder of *.cif")
    c.add_argument("output", metavar="OUT", help="the CSV to write (.csv.gz: gzipped)")
    c.add_argument("--rel-tol", type=float, default=1e-5, help="the reducer's relative tolerance (default 1e-5)")
    c.add_argument("--chunk", type=int, default=1024, help="rows reduced per batch (default 1024)")
    c.add_argument("--compare-spglib", action="store_true",
                   help="also reduce each cell with spglib and count agreement (slower)")
    c.add_argument("--strict", action="store_true", help="exit with status 1 if any row was flagged")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.chunk < 1:
        parser.error("--chunk must be >= 1")
    try:
        import pymatgen.core  # noqa: F401
    except ImportError:
        parser.exit(2, "soft-niggli canonicalize needs pymatgen to read and write CIFs: pip install pymatgen\n")
    try:
        report = canonicalize_file(args.input, args.output, rel_tol=args.rel_tol, chunk=args.chunk,
                                   progress=not args.no_progress, compare_spglib=args.compare_spglib)
    except (ValueError, FileNotFoundError, TypeError) as err:
        parser.exit(2, f"soft-niggli canonicalize: error: {err}\n")
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    flagged = sum(len(v) for v in report["flagged"].values())
    return 1 if args.strict and flagged else 0


if __name__ == "__main__":
    raise SystemExit(main())
