"""Train an untrained composition MLP a few hundred steps with the spglib proxy loss and the guarded one.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows; Cartesian ``X = F @ L``.

The question (issue 4): the Niggli proxy loss as first published reduces each detached prediction with
``spglib.niggli_reduce`` and raises when that fails, which stopped the original training on the
pathological cells an untrained model emits. Does the guarded ``"proxy"`` loss train through the same
run, and what does it meet on the way?

Setup, identical for every strategy (same seed, same initial weights, same batches):

* data: the first rows of ``../shared/data/mp_20/train.csv.gz`` (CIFs parsed with pymatgen, nothing
  cached), labels in the basis stored in the file (not canonical);
* model: a plain MLP, as in the original study: the element-count vector over Z = 1..100 normalised
  to fractions → 256 → 256 → 9 lattice numbers (Å, used as emitted) + 20 × 3 fractional coordinates,
  one triple per atom slot, atoms matched to the label's by order;
* training: Adam (lr 1e-3), batch 32, float32, ``torch.set_num_threads(1)``.

Strategies: ``proxy-spglib`` (labels reduced by spglib inside the loss, as published), ``proxy``
(labels canonicalised with :func:`soft_niggli.losses.canonicalize_labels`, fallback ``identity``),
``proxy`` with fallback ``skip``, ``proxy`` compared in the prediction's frame as published
(guarded reducer and automorphism choice kept), which separates the frame's effect from spglib's, and
``proxy`` with the optional skew penalty (``skew_weight=0.1``). Two reference rows need no training:
the untrained model, and predicting the training labels' mean Niggli metric for every crystal. When the loss raises, the exception is counted,
the step where it first happened is recorded (the original training stopped there), the batch is
skipped and training goes on, to count how many steps would have raised.

Reported per strategy: steps with an update, first failing step, steps that raised, the reducer
statuses met by predictions (guarded losses only: spglib gives no per-item verdict), fallback uses,
the mean loss over the last 20 updates, and two basis-independent checks on a held-out part of the
file at the end: the relative lattice error after Niggli reduction of prediction and label (G6
distance over the label's largest G6 entry, median), and how skewed the emitted bases are (median
of max |N_pred|, the largest entry of the reducing transform: 1 means already reduced).

Run from the repository root::

    python benchmarks/proxy_training.py            # ~1-2 min on 2 CPU cores

writes ``benchmarks/results/proxy_training.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: make soft_niggli/baselines importable
    sys.path.insert(0, str(ROOT))

from soft_niggli import CrystalBatch, Status, g6, niggli_reduce  # noqa: E402
from soft_niggli.losses import canonicalize_labels, get_loss  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mp_20" / "train.csv.gz"
RESULTS = ROOT / "benchmarks" / "results"
NUM_ELEMENTS = 100
MAX_ATOMS = 20
STRATEGIES = [
    ("proxy-spglib", "proxy-spglib", {}),
    ("proxy", "proxy", {"labels_canonical": True, "fallback": "identity"}),
    ("proxy (skip)", "proxy", {"labels_canonical": True, "fallback": "skip"}),
    ("proxy (prediction frame)", "proxy", {"labels_canonical": True, "frame": "prediction"}),
    ("proxy (skew_weight=0.1)", "proxy", {"labels_canonical": True, "skew_weight": 0.1}),
]


def load_structures(path: Path, limit: int) -> list:
    from soft_niggli.datasets import read_cdvae_csv

    if not path.exists():
        raise SystemExit(f"{path} not found: this benchmark needs ../shared/data (see its README)")
    return read_cdvae_csv(path, limit=limit, max_atoms=MAX_ATOMS)


class Data:
    """Per-crystal tensors (float32) so that batches of any indices are cheap to assemble."""

    def __init__(self, structures: list):
        self.lattice = [torch.tensor(np.asarray(s.lattice.matrix), dtype=torch.float32) for s in structures]
        self.frac = [torch.tensor(np.asarray(s.frac_coords), dtype=torch.float32) for s in structures]
        self.species = [torch.tensor(s.atomic_numbers, dtype=torch.int64) for s in structures]
        counts = torch.zeros(len(structures), NUM_ELEMENTS)
        for i, z in enumerate(self.species):
            counts[i].index_add_(0, (z - 1).clamp(0, NUM_ELEMENTS - 1), torch.ones(len(z)))
        self.features = counts / counts.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.lattice)

    def batch(self, idx: list[int]) -> CrystalBatch:
        return CrystalBatch(torch.stack([self.lattice[i] for i in idx]), torch.cat([self.frac[i] for i in idx]),
                            [len(self.species[i]) for i in idx], torch.cat([self.species[i] for i in idx]))


class MLP(nn.Module):
    """Composition fractions ``(B, 100)`` → lattice ``(B, 3, 3)`` (Å) and slot coordinates ``(B, 20, 3)``."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(NUM_ELEMENTS, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 9 + 3 * MAX_ATOMS))

    def forward(self, features: torch.Tensor, labels: CrystalBatch) -> CrystalBatch:
        out = self.net(features)
        slots = out[:, 9:].reshape(-1, MAX_ATOMS, 3)
        mask = torch.arange(MAX_ATOMS)[None, :] < labels.num_atoms[:, None]
        return CrystalBatch.from_padded(out[:, :9].reshape(-1, 3, 3), slots, mask)


def invariant_errors(pred_lattice: torch.Tensor, label_lattice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crystal: relative G6 distance of the Niggli-reduced metrics, and max |N_pred| (basis skew)."""
    rp, rl = niggli_reduce(pred_lattice.double()), niggli_reduce(label_lattice.double())
    gp, gl = g6(rp.lattice), g6(rl.lattice)
    error = (gp - gl).abs().amax(-1) / gl[:, :3].amax(-1)
    error = torch.where(torch.isfinite(error), error, torch.full_like(error, float("inf")))
    return error, rp.transform.abs().flatten(1).amax(1).double()


def reference_rows(data: Data, train_idx: np.ndarray, args) -> list[dict]:
    """Held-out errors of the untrained model and of the mean training metric (no loss, no training)."""
    held_out = data.batch(args.held_out)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        pred = MLP()(data.features[args.held_out], held_out)
    error, skew = invariant_errors(pred.lattice, held_out.lattice)
    rows = [{"strategy": "untrained model (step 0)", "heldout_lattice_error_median": float(error.median()),
             "heldout_basis_skew_median": float(skew.median())}]
    train_g6 = g6(niggli_reduce(data.batch(train_idx.tolist()).lattice.double()).lattice).mean(0)
    label_g6 = g6(niggli_reduce(held_out.lattice.double()).lattice)
    mean_error = (train_g6 - label_g6).abs().amax(-1) / label_g6[:, :3].amax(-1)
    rows.append({"strategy": "mean training metric", "heldout_lattice_error_median": float(mean_error.median()),
                 "heldout_basis_skew_median": None})
    return rows


def train(strategy: str, name: str, options: dict, data: Data, train_idx: np.ndarray, args) -> dict:
    torch.manual_seed(args.seed)
    model = MLP()
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = get_loss(name, **options)
    canonical = options.get("labels_canonical", False)
    rng = np.random.default_rng(args.seed)
    record = {"strategy": strategy, "loss": name, "options": options, "updates": 0, "first_exception_step": None,
              "steps_raised": 0, "exception_types": {}, "first_exception": None,
              "statuses": {s.name: 0 for s in Status}, "fallback_uses": 0, "skipped": 0, "losses": []}
    start = time.perf_counter()
    for step in range(args.steps):
        idx = rng.choice(train_idx, size=args.batch_size, replace=False).tolist()
        labels = data.batch(idx)
        if canonical:  # the data pipeline's job; done per batch here to keep the script stateless
            labels = canonicalize_labels(labels)[0]
        pred = model(data.features[idx], labels)
        try:
            result = loss_fn(pred, labels)
        except Exception as err:  # what stopped the original training: count it, note the first, go on
            record["steps_raised"] += 1
            kind = type(err).__name__
            record["exception_types"][kind] = record["exception_types"].get(kind, 0) + 1
            if record["first_exception_step"] is None:
                record["first_exception_step"] = step
                record["first_exception"] = f"{kind}: {str(err)[:200]}"
            continue
        if name != "proxy-spglib":
            for s in Status:
                record["statuses"][s.name] += int((result.status == int(s)).sum())
            record["fallback_uses"] += int(result.fallback.sum())
            record["skipped"] += result.skipped
        optimiser.zero_grad()
        result.loss.backward()
        optimiser.step()
        record["updates"] += 1
        record["losses"].append(result.loss.item())
    record["seconds"] = time.perf_counter() - start
    tail = record["losses"][-20:]
    record["final_loss"] = float(np.mean(tail)) if tail else None
    with torch.no_grad():
        held_out = data.batch(args.held_out)
        pred = model(data.features[args.held_out], held_out)
        error, skew = invariant_errors(pred.lattice, held_out.lattice)
    record["heldout_lattice_error_median"] = float(error.median())
    record["heldout_basis_skew_median"] = float(skew.median())
    record["heldout_basis_reduced_fraction"] = float((skew <= 1).double().mean())
    return record


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def markdown(command: str, config: dict, records: list[dict], references: list[dict]) -> str:
    lines = [
        "# Proxy loss training: spglib as published vs the guarded reducer",
        "",
        f"Command: `{command}`",
        "",
        f"Data: first {config['structures']} structures of `mp_20/train.csv.gz` ({config['train']} for training, "
        f"{config['held_out']} held out). Model: plain MLP (composition → 9 lattice numbers + "
        f"{MAX_ATOMS}×3 coordinates), untrained at step 0. {config['steps']} steps, batch {config['batch_size']}, "
        f"Adam lr {config['lr']}, seed {config['seed']}, float32, {config['threads']} thread(s); "
        f"{config['machine']}.",
        "",
        "| strategy | updates | stopped at step | steps raised | non-OK statuses (NOT_CONVERGED / DEGENERATE / "
        "NONFINITE) | fallback uses | skipped | final loss | held-out lattice error | held-out basis skew | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        st = r["statuses"]
        statuses = "—" if r["loss"] == "proxy-spglib" else \
            f"{st['NOT_CONVERGED']} / {st['DEGENERATE']} / {st['NONFINITE']}"
        fallback = "—" if r["loss"] == "proxy-spglib" else str(r["fallback_uses"])
        skipped = "—" if r["loss"] == "proxy-spglib" else str(r["skipped"])
        lines.append(
            f"| {r['strategy']} | {r['updates']} / {config['steps']} | {_fmt(r['first_exception_step'])} | "
            f"{r['steps_raised']} | {statuses} | {fallback} | {skipped} | {_fmt(r['final_loss'])} | "
            f"{_fmt(r['heldout_lattice_error_median'])} | {_fmt(r['heldout_basis_skew_median'])} | "
            f"{r['seconds']:.1f} |")
    for r in references:
        lines.append(f"| *{r['strategy']}* | — | — | — | — | — | — | — | {_fmt(r['heldout_lattice_error_median'])} | "
                     f"{_fmt(r['heldout_basis_skew_median'])} | — |")
    lines += [
        "",
        "Columns: *updates*: optimiser steps taken (a step whose loss raised is skipped); *stopped at step*: the "
        "first step whose loss raised, where the original training stopped (— if none); *steps raised*: how many "
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
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for proxy_training.md/.json")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)  # small tensors: one thread is as fast and leaves the other core free
    command = "python benchmarks/proxy_training.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                       " " + shlex.join(sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    data = Data(load_structures(DATA, args.structures))
    n = len(data)
    train_idx = np.arange(n - args.held_out)
    args.held_out = list(range(n - args.held_out, n))
    print(f"parsed {n} structures in {time.perf_counter() - t0:.1f} s", flush=True)
    records = []
    for strategy, name, options in STRATEGIES:
        record = train(strategy, name, options, data, train_idx, args)
        print(f"{strategy}: {record['updates']} updates, first exception at {record['first_exception_step']}, "
              f"{record['steps_raised']} raised, {record['seconds']:.1f} s", flush=True)
        records.append(record)
    config = {"structures": n, "train": len(train_idx), "held_out": len(args.held_out), "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "threads": torch.get_num_threads(),
              "machine": f"{platform.machine()} CPU, torch {torch.__version__}, Python {platform.python_version()}"}
    references = reference_rows(data, train_idx, args)
    text = markdown(command, config, records, references)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_training.md").write_text(text)
    (args.out / "proxy_training.json").write_text(json.dumps({"command": command, "config": config,
                                                              "results": records,
                                                              "references": references}, indent=1))
    return records


if __name__ == "__main__":
    main()
