"""Train an untrained composition MLP a few hundred steps with the spglib proxy loss and the guarded one.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows; Cartesian ``X = F @ L``.

The question: the Niggli proxy loss as first published reduces each detached prediction with
``spglib.niggli_reduce`` and raises when that fails, which stopped the original training on the
pathological cells an untrained model emits. Does the guarded ``"proxy"`` loss train through the same
run, and what does it meet on the way?

Setup, identical for every strategy (same seed, same initial weights, same batches):

* data: the first rows of ``mp_20/train.csv.gz`` in the benchmark data folder
  (:func:`benchmarks.harness.data.data_dir`: ``--data-dir``, ``$SOFT_NIGGLI_DATA`` or ``../shared/data``),
  labels in the basis stored in the file (not canonical), the last ``--held-out`` rows held out
  (:class:`benchmarks.harness.data.Data`);
* model: the ablation's composition MLP (:class:`benchmarks.harness.models.CompositionMLP`) shaped as in the
  original study: two hidden layers of 256, 9 lattice numbers used as emitted (Å,
  ``volume_per_atom=None``) and 20 × 3 fractional coordinates, one triple per atom slot, atoms
  matched to the label's by order;
* training: Adam, float32, one torch thread, the guarded step of :func:`benchmarks.harness.training.guarded_step`
  (no gradient clipping).

Strategies: ``proxy-spglib`` (labels reduced by spglib inside the loss, as published), ``proxy``
(labels canonicalised with :func:`soft_niggli.canonicalize_labels`, fallback ``identity``),
``proxy`` with fallback ``skip``, ``proxy`` compared in the prediction's frame as published
(guarded reducer and automorphism choice kept), which separates the frame's effect from spglib's, and
``proxy`` with the optional skew penalty (``skew_weight=0.1``). Two reference rows need no training:
the untrained model, and predicting the training labels' mean Niggli metric for every crystal. When
the loss raises, the exception is counted, the step where it first happened is recorded (the original
training stopped there), the batch is skipped and training goes on, to count how many steps would have
raised.

Reported per strategy: steps with an update, first failing step, steps that raised, the reducer
statuses met by predictions (guarded losses only: spglib gives no per-item verdict), fallback uses,
the mean loss over the last 20 updates, and two basis-independent checks on the held-out crystals at
the end: the relative lattice error after Niggli reduction of prediction and label (G6 distance over
the label's largest G6 entry, median), and how skewed the emitted bases are (median of max |N_pred|,
the largest entry of the reducing transform: 1 means already reduced).

From the repository root::

    python -m benchmarks.proxy_training

writes ``benchmarks/results/proxy_training.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from soft_niggli import Status, canonicalize_labels, g6, get_loss, niggli_reduce
from soft_niggli.datasets import read_cdvae_csv, resolve_data_dir

from .harness.data import Data, data_dir
from .harness.models import build_model
from .harness.report import RESULTS, command_line, header, machine_description, markdown_table, write_results
from .harness.training import StepLog, guarded_step, predict

MAX_ATOMS = 20
STRATEGIES = [
    ("proxy-spglib", "proxy-spglib", {}),
    ("proxy", "proxy", {"labels_canonical": True, "fallback": "identity"}),
    ("proxy (skip)", "proxy", {"labels_canonical": True, "fallback": "skip"}),
    ("proxy (prediction frame)", "proxy", {"labels_canonical": True, "frame": "prediction"}),
    ("proxy (skew_weight=0.1)", "proxy", {"labels_canonical": True, "skew_weight": 0.1}),
]


def load_mp20(folder: str | None, structures: int, held_out: int) -> Data:
    """The first ``structures`` rows of ``mp_20/train.csv.gz``, the last ``held_out`` of them held out,
    in float32."""
    try:
        path = resolve_data_dir(data_dir(folder)) / "mp_20" / "train.csv.gz"
        rows = read_cdvae_csv(path, limit=structures, max_atoms=MAX_ATOMS)
    except FileNotFoundError as err:
        raise SystemExit(f"this benchmark needs mp_20/train.csv.gz from the benchmark data folder: {err}")
    if not 0 < held_out < len(rows):
        raise SystemExit(f"--held-out: expected 1 to {len(rows) - 1} of the {len(rows)} structures, got {held_out}")
    return Data.from_structures("mp_20", rows[:-held_out], rows[-held_out:], dtype=torch.float32)


def composition_mlp(seed: int) -> torch.nn.Module:
    """The original study's model, initialised from ``seed``: the same weights for every strategy."""
    torch.manual_seed(seed)
    return build_model("mlp", max_atoms=MAX_ATOMS, volume_per_atom=None, hidden=256, layers=2)


def invariant_errors(pred_lattice: torch.Tensor, label_lattice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crystal: relative G6 distance of the Niggli-reduced metrics, and max |N_pred| (basis skew)."""
    rp, rl = niggli_reduce(pred_lattice.double()), niggli_reduce(label_lattice.double())
    gp, gl = g6(rp.lattice), g6(rl.lattice)
    error = (gp - gl).abs().amax(-1) / gl[:, :3].amax(-1)
    error = torch.where(torch.isfinite(error), error, torch.full_like(error, float("inf")))
    return error, rp.transform.abs().flatten(1).amax(1).double()


def held_out_errors(model: torch.nn.Module, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`invariant_errors` of the model's predictions for the held-out crystals."""
    with torch.no_grad():
        pred = predict(model, data.val)
    return invariant_errors(pred.lattice, data.val.lattice)


def reference_rows(data: Data, seed: int) -> list[dict]:
    """Held-out errors of the untrained model and of the mean training metric (no loss, no training)."""
    error, skew = held_out_errors(composition_mlp(seed), data)
    rows = [{"strategy": "untrained model (step 0)", "heldout_lattice_error_median": float(error.median()),
             "heldout_basis_skew_median": float(skew.median())}]
    train_g6 = g6(niggli_reduce(data.train_raw.lattice.double()).lattice).mean(0)
    label_g6 = g6(niggli_reduce(data.val.lattice.double()).lattice)
    mean_error = (train_g6 - label_g6).abs().amax(-1) / label_g6[:, :3].amax(-1)
    rows.append({"strategy": "mean training metric", "heldout_lattice_error_median": float(mean_error.median()),
                 "heldout_basis_skew_median": None})
    return rows


def train(strategy: str, name: str, options: dict, data: Data, args) -> dict:
    """Train one model with one strategy for ``args.steps`` guarded steps; returns its record."""
    model = composition_mlp(args.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = get_loss(name, **options)
    canonical = options.get("labels_canonical", False)
    rng = np.random.default_rng(args.seed)
    log = StepLog()
    start = time.perf_counter()
    for _ in range(args.steps):
        idx = rng.choice(len(data.train_raw), size=args.batch_size, replace=False)
        labels = data.train_raw[torch.from_numpy(idx)]
        if canonical:  # the data pipeline's job; done per batch here to keep the script stateless
            labels = canonicalize_labels(labels).batch
        guarded_step(model, loss_fn, labels, optimiser, log)
    seconds = time.perf_counter() - start
    tail = log.losses[-20:]
    error, skew = held_out_errors(model, data)
    return {"strategy": strategy, "loss": name, "options": options, "updates": log.updates,
            "first_exception_step": log.first_exception_step, "steps_raised": log.exception_steps,
            "exception_types": dict(log.exception_types), "first_exception": log.first_exception,
            "nan_steps": log.nan_steps, "statuses": {s.name: log.statuses[s.name] for s in Status},
            "fallback_uses": log.fallback, "skipped": log.excluded, "losses": log.losses, "seconds": seconds,
            "final_loss": float(np.mean(tail)) if tail else None,
            "heldout_lattice_error_median": float(error.median()),
            "heldout_basis_skew_median": float(skew.median()),
            "heldout_basis_reduced_fraction": float((skew <= 1).double().mean())}


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def markdown(command: str, machine: str, config: dict, records: list[dict], references: list[dict]) -> str:
    lines = header("Proxy loss training: spglib as published vs the guarded reducer", command, machine) + [
        f"Data: first {config['structures']} structures of `mp_20/train.csv.gz` ({config['train']} for training, "
        f"{config['held_out']} held out). Model: the composition MLP (composition → 9 lattice numbers in Å + "
        f"{MAX_ATOMS}×3 coordinates), untrained at step 0. {config['steps']} steps, batch {config['batch_size']}, "
        f"Adam lr {config['lr']}, seed {config['seed']}, float32, {config['threads']} thread(s).",
        "",
    ]

    def cells(r: dict) -> list[str]:
        if "updates" not in r:  # a reference row: no training
            return [f"*{r['strategy']}*", *["—"] * 7, _fmt(r["heldout_lattice_error_median"]),
                    _fmt(r["heldout_basis_skew_median"]), "—"]
        st, spglib = r["statuses"], r["loss"] == "proxy-spglib"
        return [r["strategy"], f"{r['updates']} / {config['steps']}", _fmt(r["first_exception_step"]),
                str(r["steps_raised"]),
                "—" if spglib else f"{st['NOT_CONVERGED']} / {st['DEGENERATE']} / {st['NONFINITE']}",
                "—" if spglib else str(r["fallback_uses"]), "—" if spglib else str(r["skipped"]),
                _fmt(r["final_loss"]), _fmt(r["heldout_lattice_error_median"]),
                _fmt(r["heldout_basis_skew_median"]), f"{r['seconds']:.1f}"]

    lines += markdown_table(
        ["strategy", "updates", "stopped at step", "steps raised",
         "non-OK statuses (NOT_CONVERGED / DEGENERATE / NONFINITE)", "fallback uses", "skipped", "final loss",
         "held-out lattice error", "held-out basis skew", "s"], [*records, *references], cells)
    lines += [
        "",
        "Columns: *updates*: optimiser steps taken (a step whose loss raised, or whose loss or gradient is not "
        "finite, is skipped); *stopped at step*: the first step (counted from 1) whose loss raised, where the "
        "original training stopped (— if none); *steps raised*: how many "
        "steps raised in all when training goes on; *non-OK statuses*: crystals (over all steps) whose prediction "
        "the guarded reducer did not reduce to `OK`; *fallback uses*: those crystals handled by the fallback "
        "(`identity`: compared as emitted with the canonical label; `skip`: left out, also counted in *skipped*); "
        "*final loss*: mean over the last 20 updates, each strategy's own loss (the frames differ, so compare with "
        "care); *held-out lattice error*: median over held-out crystals of the G6 distance between the "
        "Niggli-reduced predicted and label metrics over the label's largest G6 entry (basis-independent); "
        "*held-out basis skew*: median of the largest |entry| of the transform reducing the predicted basis "
        "(1 = the model emits reduced bases). Reference rows (italics): the untrained model, and the training "
        "labels' mean Niggli metric predicted for every crystal.",
        "",
    ]
    for r in records:
        if r["first_exception"]:
            lines.append(f"First exception of {r['strategy']} (step {r['first_exception_step']}): "
                         f"`{r['first_exception']}`; by type: {r['exception_types']}.")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--structures", type=int, default=1000, help="rows of mp_20/train.csv.gz to use")
    p.add_argument("--held-out", type=int, default=200, help="last structures kept for the held-out check")
    p.add_argument("--data-dir", default=None,
                   help="folder of mp_20/train.csv.gz (default $SOFT_NIGGLI_DATA, else ../shared/data)")
    p.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Train with every strategy; prints the table and writes ``proxy_training.{md,json}`` under ``--out``;
    returns the exit status 0."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # small tensors: one thread leaves the other cores free
    command = command_line("proxy_training", argv)
    t0 = time.perf_counter()
    data = load_mp20(args.data_dir, args.structures, args.held_out)
    print(f"parsed {len(data.train_raw) + len(data.val)} structures in {time.perf_counter() - t0:.1f} s", flush=True)
    records = []
    for strategy, name, options in STRATEGIES:
        record = train(strategy, name, options, data, args)
        print(f"{strategy}: {record['updates']} updates, first exception at {record['first_exception_step']}, "
              f"{record['steps_raised']} raised, {record['seconds']:.1f} s", flush=True)
        records.append(record)
    config = {"structures": len(data.train_raw) + len(data.val), "train": len(data.train_raw),
              "held_out": len(data.val), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "threads": torch.get_num_threads()}
    references = reference_rows(data, args.seed)
    machine = machine_description()
    text = markdown(command, machine, config, records, references)
    print(text)
    write_results(args.out, "proxy_training", text, {"command": command, "machine": machine, "config": config,
                                                     "results": records, "references": references})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
