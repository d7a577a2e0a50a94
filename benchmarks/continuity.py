"""Continuity across a Niggli-cone boundary: the proxy loss jumps, the continuous losses do not.

A label crystal (two atoms, triclinic cell) is compared with predictions along a fine path
``L(t)`` whose second row is ``b(t) = (4t, 4.5, 0)`` against ``a = (4, 0, 0)``: at ``t = 0.5`` the
prediction crosses the boundary ``2 a·b = a·a`` of the Niggli cone, where its reduced basis changes
from ``b`` to ``b - a``. The prediction's coordinates equal the label's. Rows of a lattice are its
vectors a, b, c.

From the repository root::

    python -m benchmarks.continuity

Writes ``benchmarks/results/continuity.{md,json,png}`` with the largest step-to-step change of each
loss along the path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from soft_niggli import CrystalBatch, get_loss

from .harness.report import RESULTS, command_line, header, machine_description, markdown_table, pyplot, write_results

LOSSES = {
    "mse": ("mse", {}),
    "proxy": ("proxy", {}),
    "proxy (frame=prediction)": ("proxy", {"frame": "prediction"}),
    "softmin": ("softmin", {}),
    "softmin (center=both)": ("softmin", {"center": "both"}),
    "gram": ("gram", {}),
}


def path_batch(ts: torch.Tensor) -> tuple[CrystalBatch, CrystalBatch]:
    n = len(ts)
    lattice = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.5, 0.0], [0.6, 0.9, 5.2]], dtype=torch.float64).repeat(n, 1, 1)
    lattice[:, 1, 0] = 4.0 * ts
    label_lattice = lattice.clone()
    label_lattice[:, 1, 0] = 4.0 * 0.45
    frac = torch.tensor([[0.0, 0.0, 0.0], [0.31, 0.42, 0.57]], dtype=torch.float64).repeat(n, 1)
    num_atoms = torch.full((n,), 2)
    species = torch.tensor([8, 14]).repeat(n)
    return CrystalBatch(lattice, frac, num_atoms, species), CrystalBatch(label_lattice, frac, num_atoms, species)


def run(num_points: int = 601, t0: float = 0.35, t1: float = 0.65):
    ts = torch.linspace(t0, t1, num_points, dtype=torch.float64)
    pred, label = path_batch(ts)
    curves, rows = {}, []
    for name, (key, options) in LOSSES.items():
        values = get_loss(key, **options)(pred, label).per_crystal.detach()
        steps = values.diff().abs()
        k = int(steps.argmax())
        curves[name] = values.tolist()
        rows.append({"loss": name, "max_step": float(steps.max()), "at_t": float(ts[k]),
                     "median_step": float(steps.median()), "range": float(values.max() - values.min())})
    return ts, curves, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    command, machine = command_line("continuity", argv), machine_description()
    ts, curves, rows = run()
    dt = float(ts[1] - ts[0])
    lines = header("Continuity across a Niggli-cone boundary", command, machine) + [
        f"{len(ts)} predictions along b(t) = (4t, 4.5, 0), t in [{float(ts[0])}, {float(ts[-1])}] (step {dt:.1e}); "
        "the prediction's Niggli basis changes at t = 0.5; label at t = 0.45.", ""]
    lines += markdown_table(
        ["loss", "largest step-to-step change", "at t", "median step", "range along the path"], rows,
        lambda r: [r["loss"], f"{r['max_step']:.3e}", f"{r['at_t']:.4f}", f"{r['median_step']:.3e}",
                   f"{r['range']:.3e}"])
    table = "\n".join(lines) + "\n"
    print(table)
    write_results(args.out, "continuity", table, {"command": command, "machine": machine, "t": ts.tolist(),
                                                  "curves": curves, "rows": rows})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in curves.items():
        ax.plot(ts.numpy(), values, label=name)
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set(xlabel="t (prediction's b = (4t, 4.5, 0) Å)", ylabel="loss per crystal", yscale="symlog",
           title="Losses along a path crossing a Niggli boundary (t = 0.5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "continuity.png", dpi=120)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
