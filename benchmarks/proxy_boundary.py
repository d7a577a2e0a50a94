"""How often the proxy loss jumps for a prediction next to its label, and what the label's reduced forms fix.

Real labels sit on faces of the Niggli cone, so a prediction a hair away from its label can reduce to
another Niggli form (fcc 60/60/60° to 90/120/120°, hexagonal 120° to 60°), and the proxy loss, which
compares in the prediction's Niggli basis, then scores it as far off. For the canonical (Niggli)
lattices of real cells plus Gaussian noise of ``--noise`` Å per entry (coordinates exact), the share of
crystals whose lattice term exceeds 0.1 and 1 Å² (a jump: the noise alone gives about noise²), with the
label's targets taken as its automorphisms (``label_forms="automorphisms"``, the default) or as all its
reduced forms (``"reduced"``) at a few tolerances. Rows of a lattice are its vectors.

    python -m benchmarks.proxy_boundary

Writes ``proxy_boundary.{md,json}`` under ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse

import torch

from soft_niggli import CrystalBatch, canonicalize_labels, get_loss
from soft_niggli.datasets import load_dataset

from .harness.data import data_dir
from .harness.report import RESULTS, command_line, header, machine_description, markdown_table, write_results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--dataset", default="mp_20")
    parser.add_argument("--crystals", type=int, default=512)
    parser.add_argument("--noise", default="0.01,0.05", help="comma-separated noise levels, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    structures = list(load_dataset(args.dataset, split="val", data_dir=data_dir(args.data_dir)))[:args.crystals]
    labels = canonicalize_labels(CrystalBatch.from_structures(structures, dtype=torch.float64)).batch
    settings = [("automorphisms", 1e-4), ("reduced", 1e-4), ("reduced", 1e-3), ("reduced", 1e-2)]
    rows = []
    for noise in (float(x) for x in args.noise.split(",")):
        g = torch.Generator().manual_seed(args.seed)
        noisy = labels.lattice + noise * torch.randn(labels.lattice.shape, generator=g, dtype=torch.float64)
        pred = CrystalBatch(noisy, labels.frac, labels.num_atoms, labels.species)
        for metric in ("cartesian", "gram"):
            for forms, tol in settings:
                loss = get_loss("proxy", lattice_metric=metric, label_forms=forms, automorphism_rel_tol=tol,
                                labels_canonical=True)
                lattice = loss(pred, labels).terms["lattice"]
                rows.append({"noise": noise, "lattice_metric": metric, "label_forms": forms, "tolerance": tol,
                             "above_0.1": float((lattice > 0.1).double().mean()),
                             "above_1": float((lattice > 1).double().mean()), "median": float(lattice.median())})
                print(rows[-1], flush=True)
    command = command_line("proxy_boundary", argv)
    machine = machine_description()
    lines = header("The proxy loss next to its label: jumps at the Niggli-cone boundary", command, machine) + [
        f"{len(labels)} {args.dataset} validation cells in their Niggli basis; prediction = label + Gaussian noise "
        "on the lattice entries (coordinates exact); `proxy(labels_canonical=True)`. Share of crystals whose "
        "lattice term exceeds 0.1 and 1 Å² (the noise alone gives about noise²).", ""]
    lines += markdown_table(
        ["noise (Å)", "lattice metric", "label targets", "tolerance", "> 0.1 Å²", "> 1 Å²", "median (Å²)"], rows,
        lambda r: [
            f"{r['noise']:g}", r["lattice_metric"], r["label_forms"], f"{r['tolerance']:g}", f"{r['above_0.1']:.1%}",
            f"{r['above_1']:.1%}", f"{r['median']:.2e}"])
    markdown = "\n".join(lines) + "\n"
    print(markdown)
    write_results(args.out, "proxy_boundary", markdown, {"command": command, "machine": machine,
                                                         "dataset": args.dataset, "crystals": len(labels),
                                                         "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
