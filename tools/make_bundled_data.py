"""Make the small real-crystal sets that ship inside the package (``soft_niggli/data/``).

Row convention: the files hold CIFs (cell parameters and fractional coordinates); nothing here
touches a lattice matrix.

Why: the ablation's default run and the examples must run on real crystals after a plain
``pip install``, with no data folder. Which rows: a seeded random sample (NumPy ``default_rng(0)``),
kept in file order, of the **validation** files of two CDVAE benchmarks (``<data-dir>/<name>/val.csv.gz``,
see ``../shared/data/README.md``):

* ``perov_5_small.csv.gz``: 500 of the 3787 rows of Perov-5's val split (cubic perovskites ABX3, 5 atoms:
  the easy case, where every strategy that can learn at all learns the lattice);
* ``carbon_24_small.csv.gz``: 300 of the 2032 rows of Carbon-24's val split (carbon, 6–24 atoms, 93% of
  the cells not Niggli-reduced as stored: the hard case, and the one where the basis matters).

A random sample rather than the first rows so that the subset is spread over the file as the full
split is. Rows are copied byte for byte, all columns (CDVAE CSV format: ``material_id``, ``cif``, the
properties). Written gzipped with a zero timestamp, so rerunning the script gives identical files; it
checks that every CIF parses to an ordered structure and that the files stay under 500 KB in all.
The sources and licences are in ``soft_niggli/data/NOTICE``.

    python tools/make_bundled_data.py [--data-dir ../shared/data]

The data folder: ``--data-dir``, else ``$SOFT_NIGGLI_DATA``, else ``../shared/data`` next to this checkout
(as the benchmarks find it).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np

#: Bundled name -> (source dataset, rows kept).
SUBSETS = {"perov_5_small": ("perov_5", 500), "carbon_24_small": ("carbon_24", 300)}
SEED = 0
MAX_BYTES = 500_000
REPOSITORY = Path(__file__).resolve().parents[1]
TARGET = REPOSITORY / "soft_niggli" / "data"
#: The data folder next to this checkout, the last place looked at.
CHECKOUT_DATA = REPOSITORY.parent / "shared" / "data"


def select_rows(n_rows: int, keep: int, seed: int = SEED) -> np.ndarray:
    """Indices of the rows kept: ``keep`` of ``n_rows`` drawn without replacement, sorted (file order)."""
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=min(keep, n_rows), replace=False))


def subset_csv(source: Path, keep: int) -> tuple[bytes, int]:
    """The gzipped CSV (header and the selected rows, as in ``source``) and the number of source rows."""
    with gzip.open(source, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    chosen = select_rows(len(rows), keep)
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows[i] for i in chosen)
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(text.getvalue().encode("utf-8"))
    return raw.getvalue(), len(rows)


def check_parses(blob: bytes, name: str) -> int:
    """Every CIF of the gzipped CSV parses with pymatgen to an ordered structure; returns the row count."""
    from pymatgen.core import Structure

    reader = csv.DictReader(io.StringIO(gzip.decompress(blob).decode("utf-8"), newline=""))
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, row in enumerate(reader, start=1):
            if not Structure.from_str(row["cif"], fmt="cif").is_ordered:
                raise SystemExit(f"{name}: row {n} ({row.get('material_id')}) is disordered")
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder of <name>/val.csv.gz (default $SOFT_NIGGLI_DATA, "
                                                     "else ../shared/data next to this checkout)")
    ap.add_argument("--out", default=str(TARGET), help=f"where to write (default {TARGET})")
    args = ap.parse_args(argv)
    folder = args.data_dir or os.environ.get("SOFT_NIGGLI_DATA") or (CHECKOUT_DATA if CHECKOUT_DATA.is_dir() else None)
    if folder is None or not Path(folder).is_dir():
        raise SystemExit("no data folder: pass --data-dir or set SOFT_NIGGLI_DATA to the folder of the CDVAE files")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, (dataset, keep) in SUBSETS.items():
        blob, n_source = subset_csv(Path(folder) / dataset / "val.csv.gz", keep)
        rows = check_parses(blob, name)
        (out / f"{name}.csv.gz").write_bytes(blob)
        total += len(blob)
        print(f"{name}.csv.gz: {rows} of {n_source} rows of {dataset}/val.csv.gz, {len(blob) / 1e3:.0f} KB")
    print(f"{total / 1e3:.0f} KB in all (limit {MAX_BYTES / 1e3:.0f} KB)")
    if total > MAX_BYTES:
        print("error: over the size limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
