"""Cost of each loss as a share of one training step of the flow model (:mod:`benchmarks.generative`).

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``.

One training step = interpolant of a batch of ``--batch`` real training crystals (Niggli labels, aligned
prior, the step's prior noise and times fixed), the network's forward pass, the loss, the backward pass
(no optimiser step: the same for every loss), for ``mse`` and each other loss, and for ``mse`` with each
reduced-form coupling (:func:`soft_niggli.flow.couple_reduced_forms`, part of the step there; the labels'
forms come from its cache after the first step, as in every epoch after the first of a training run).
Timed in one process, float32, CPU, the variants in turn round after round (best of ``--repeats`` − 1
warm steps each). The overhead of a loss is ``(t_loss − t_mse) / t_mse``.

From the repository root::

    python -m benchmarks.generative_cost --dataset perov_5 mp_20 carbon_24 --threads 1 \
        --out benchmarks/results/generative

Writes ``<out>/generative_cost.{md,json}`` (default ``--out``: a scratch folder under the system's
temporary directory).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from soft_niggli import ReducedFormsCache

from .harness.data import load_data
from .harness.flow_matching import DistributedContext, FlowConfig, LatticePrior, build_loss, build_model, flow_loss
from .harness.report import command_line, header, machine_description, markdown_table, write_results

DEFAULT_OUT = Path(tempfile.gettempdir()) / "soft_niggli_generative"
# "reduced-forms" and the couplings cache each label's forms (warm after the first repeat, as in every epoch
# after the first); the cold cost of the loss is its own row, the coupling's first pass its own column.
VARIANTS = (("mse", "independent"), ("reduced-forms", "independent"), ("reduced-forms:cache_bytes=0", "independent"),
            ("softmin", "independent"), ("gram", "independent"), ("proxy", "independent"), ("mse", "automorphisms"),
            ("mse", "automorphisms:random"), ("mse", "reduced-forms"), ("mse", "reduced-forms:random"))


def time_steps(dataset: str, batch: int, repeats: int, hidden: int, layers: int,
               which: tuple[tuple[str, str], ...] = VARIANTS) -> tuple[list[dict], dict]:
    data = load_data(dataset, train_size=None, val_size=8)
    n = len(data.train_niggli)
    idx = torch.arange(min(batch, n))
    labels = data.train_niggli[idx]
    g = torch.Generator().manual_seed(0)
    prior = LatticePrior.fit(data.train_niggli, data.volume_per_atom)
    t = torch.rand(len(idx), generator=g, dtype=torch.float64)
    L0, f0 = prior.sample(labels.num_atoms, g)
    ctx = DistributedContext()
    variants = []
    for strategy, coupling in which:
        config = FlowConfig(strategy=strategy, coupling=coupling, align_prior=True, hidden=hidden, layers=layers)
        torch.manual_seed(0)
        variants.append({"strategy": strategy, "coupling": coupling, "config": config,
                         "model": build_model(config, data.volume_per_atom), "loss_fn": build_loss(config),
                         "cache": ReducedFormsCache(), "times": []})

    def step(v: dict) -> float:
        v["model"].zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss, _, _ = flow_loss(v["model"], v["loss_fn"], labels, L0, f0, t, v["config"], ctx, v["cache"],
                                   tie_generator=torch.Generator().manual_seed(0))
        loss.backward()
        return time.perf_counter() - t0

    # Round-robin over the variants, so that each one's best of `repeats` is drawn from the same stretch of
    # time: on a shared machine the load drifts over minutes, and timing variant after variant turned the
    # drift into spurious overheads (as low as -46%). The first pass is the cold one (forms not cached).
    for _ in range(repeats):
        for v in variants:
            v["times"].append(step(v))
    rows = []
    for v in variants:
        times = v["times"]
        row = {"dataset": dataset, "loss": v["strategy"], "coupling": v["coupling"], "ms": 1e3 * min(times[1:] or times),
               "ms_median": 1e3 * float(torch.tensor(times[1:] or times).median()),
               "atoms": int(labels.num_atoms.sum()), "crystals": len(idx),
               "parameters": sum(p.numel() for p in v["model"].parameters())}
        if v["coupling"] != "independent":
            row["first_step_s"] = times[0]  # the labels' forms found (cold cache)
        rows.append(row)
        print(f"{dataset:>10} {v['strategy']:>14} / {v['coupling']:<14}: {row['ms']:.1f} ms", flush=True)
    mse = rows[0]["ms"]
    for r in rows:
        r["overhead_vs_mse"] = (r["ms"] - mse) / mse
    return rows, {"train_size": n}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", nargs="+", default=["perov_5", "mp_20"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=FlowConfig.hidden)
    ap.add_argument("--layers", type=int, default=FlowConfig.layers)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--variants", nargs="+", default=None, metavar="LOSS/COUPLING",
                    help="time only these, e.g. mse/independent (default: every loss and coupling; the first "
                         "is the reference of the overheads)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    variants = VARIANTS
    if args.variants:
        known = {f"{s}/{c}": (s, c) for s, c in VARIANTS}
        unknown = [v for v in args.variants if v not in known]
        if unknown:
            ap.error(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")
        variants = tuple(known[v] for v in args.variants)
    if args.repeats < 2:
        ap.error(f"--repeats must be at least 2 (one cold step, then the timed warm ones); got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for dataset in args.dataset:
        rows += time_steps(dataset, args.batch, args.repeats, args.hidden, args.layers, variants)[0]
    command, machine = command_line("generative_cost", argv), machine_description()
    lines = header("Loss cost as a share of one flow-matching training step", command, machine) + [
        f"One step: interpolant, forward pass of the flow model (hidden {args.hidden}, {args.layers} layers, "
        f"{rows[0]['parameters']} parameters), loss, backward; batch of {args.batch} Niggli training labels, "
        f"aligned prior, float32, CPU; the variants timed in turn, round after round, and each one's best of its "
        f"{args.repeats - 1} warm steps reported (median beside it). Overhead = (t − t_mse) / t_mse; the target for "
        "the couplings is at most 15%. `reduced-forms` and the couplings cache each label's forms (warm after the "
        "first repeat, as in every epoch after the first; the couplings' first, cold step is its own column); "
        "`reduced-forms:cache_bytes=0` is the loss's cold cost.", ""]
    lines += markdown_table(
        ["dataset", "loss", "coupling", "atoms", "ms per step", "median", "overhead vs mse", "first (cold) step, s"],
        rows,
        lambda r: [r["dataset"], f"`{r['loss']}`", r["coupling"], str(r["atoms"]), f"{r['ms']:.1f}", f"{r['ms_median']:.1f}",
                   f"{100 * r['overhead_vs_mse']:+.0f}%", f"{r['first_step_s']:.2f}" if "first_step_s" in r else "–"])
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    write_results(args.out, "generative_cost", text, {"command": command, "machine": machine, "rows": rows,
                                                      "batch": args.batch, "repeats": args.repeats})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
