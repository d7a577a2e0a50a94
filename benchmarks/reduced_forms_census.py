"""How often a real cell has more than one reduced form: the census behind the boundary-aware loss.

For every cell of each dataset's files (``<data-dir>/<dataset>/{train,val}.csv.gz``, cell parameters
only), :func:`soft_niggli.reduced_forms` lists the bases that satisfy the Niggli conditions within
``rel_tol``. Reported per dataset: the share of cells with more forms than ``±R`` (symmetric cells and
cells on a face of the Niggli cone), and the share whose forms have different metrics (true boundary
cases: a reducer may return either, depending on rounding and on the input basis), with the mean
number of forms. Rows of a lattice are its vectors.

    python -m benchmarks.reduced_forms_census

Writes ``reduced_forms_census.{md,json}`` under ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from soft_niggli import reduced_forms
from soft_niggli.canonical import automorphic_forms
from soft_niggli.datasets import read_cdvae_cells

from .harness.data import DATA_ENV, data_dir
from .harness.report import RESULTS, command_line, header, machine_description, markdown_table, write_results

DATASETS = ("perov_5", "carbon_24", "mp_20", "mp_20_biternary", "mpts_52")


def census(lattices: torch.Tensor, rel_tol: float, chunk: int = 4096) -> dict:
    """Counts of reduced forms for ``lattices (n, 3, 3)``, in chunks (memory stays small)."""
    counts, distinct, automorphisms, seconds = [], [], [], 0.0
    for start in range(0, len(lattices), chunk):
        part = lattices[start:start + chunk]
        t0 = time.perf_counter()
        forms = reduced_forms(part, rel_tol=rel_tol)
        seconds += time.perf_counter() - t0
        counts.append(forms.counts(len(part)))
        distinct.append(forms.distinct_metrics(len(part), rel_tol=rel_tol))
        same_metric = automorphic_forms(part, forms, rel_tol=rel_tol)
        automorphisms.append(torch.bincount(forms.owner[same_metric], minlength=len(part)))
    counts, distinct, automorphisms = torch.cat(counts), torch.cat(distinct), torch.cat(automorphisms)
    n = len(lattices)
    return {"cells": n, "more_than_two_forms": float((counts > 2).float().mean()) if n else 0.0,
            "distinct_metrics": float(distinct.float().mean()) if n else 0.0,
            "mean_forms": float(counts.float().mean()) if n else 0.0, "max_forms": int(counts.max()) if n else 0,
            "more_than_two_automorphisms": float((automorphisms > 2).float().mean()) if n else 0.0,
            "mean_automorphisms": float(automorphisms.float().mean()) if n else 0.0,
            "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with <dataset>/{train,val}.csv.gz")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--rel-tol", type=float, default=1e-5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    root = data_dir(args.data_dir) or os.environ.get(DATA_ENV)  # None there: the library would read the variable
    rows = []
    for name in args.datasets.split(","):
        for split in ("train", "val"):
            path = Path(root) / name / f"{split}.csv.gz" if root is not None else None
            if path is None or not path.is_file():
                continue
            row = {"dataset": name, "split": split, **census(read_cdvae_cells(path), args.rel_tol)}
            rows.append(row)
            print(f"{name}/{split}: {row['cells']} cells, >2 forms {row['more_than_two_forms']:.1%}, "
                  f"distinct metrics {row['distinct_metrics']:.1%}", flush=True)
    command = command_line("reduced_forms_census", argv)
    machine = machine_description()
    lines = header("Reduced forms of real cells", command, machine) + [
        f"`soft_niggli.reduced_forms(L, rel_tol={args.rel_tol:g})` on every cell of each file. *> ±R*: cells "
        "with more reduced forms than the Niggli cell and its negative (symmetric cells, cone faces); "
        "*distinct metrics*: cells whose forms have different metrics (a true boundary: which one a "
        "reducer returns depends on rounding and on the input basis); *automorphisms*: forms with the cell's "
        "own Niggli metric (`automorphic_forms`: what `couple_reduced_forms(among=\"automorphisms\")` chooses "
        "among), and the share of cells with more than `±R` of them.", ""]
    lines += markdown_table(
        ["dataset", "split", "cells", "> ±R", "distinct metrics", "mean forms", "max forms",
         "automorphisms > ±R", "mean automorphisms", "seconds"], rows,
        lambda r: [
            r["dataset"], r["split"], str(r["cells"]), f"{r['more_than_two_forms']:.1%}",
            f"{r['distinct_metrics']:.1%}", f"{r['mean_forms']:.1f}", str(r["max_forms"]),
            f"{r['more_than_two_automorphisms']:.1%}", f"{r['mean_automorphisms']:.1f}", f"{r['seconds']:.2f}"])
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_results(args.out, "reduced_forms_census", markdown,
                  {"command": command, "machine": machine, "rel_tol": args.rel_tol, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
