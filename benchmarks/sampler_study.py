"""Why the flow model's match rate falls with more Euler steps: one trained model, several samplers.

Trains one flow model as :mod:`benchmarks.generative` does (same defaults, same seeds: the trained
weights are those of the matching run there) and samples the held-out crystals with

* ``euler``: plain Euler steps of the x₁-prediction's velocity on [0, 1) (the benchmark's sampler);
* ``jump@T``: ``steps − 1`` Euler steps on [0, T], then a jump onto the prediction made at T (at 10
  steps and T = 0.9 this is plain Euler);
* ``anneal=s``: the coordinates' velocity scaled by ``1 + s t`` (FlowMM's inference anti-annealing).

Each sampler at 10, 50 and 200 steps, from the same prior draw; match rate and RMSE as in the
benchmark. ``--strategy`` and ``--basis`` choose the x₁-loss and the labels' basis (default ``mse`` on
Niggli labels). Rows merge into ``<out>/sampler_study.{md,json}`` (keyed by dataset, x₁-loss, basis,
coupling, seed and training steps), so runs of several settings add up. From the repository root (one thread; about 15
minutes for perov_5 on the machine its results file names)::

    python -m benchmarks.sampler_study --dataset perov_5 --coupling independent --seed 0 --out benchmarks/results/generative
    python -m benchmarks.sampler_study --dataset perov_5 --coupling automorphisms:random --seed 0 --out benchmarks/results/generative
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .generative import DEFAULT_OUT, _locked, _mean_std
from .generative import _pm as pm
from .harness.data import load_data
from .harness.flow_matching import (COUPLINGS, FlowConfig, LatticePrior, build_loss, evaluate_samples, sample,
                                   train_flow)
from .harness.report import command_line, header, machine_description, markdown_table, write_results
from .harness.training import BASES

#: (name, options of :func:`benchmarks.harness.flow_matching.sample`)
SAMPLERS = (("euler", {}), ("jump@0.9", {"jump_at": 0.9}), ("anneal=3", {"anneal": 3.0}),
            ("anneal=10", {"anneal": 10.0}))
STEPS = (10, 50, 200)
NAME = "sampler_study"


def run(dataset: str, coupling: str, seed: int, max_steps: int, batch_size: int, limit: tuple,
        strategy: str = "mse", basis: str = "niggli") -> dict:
    data = load_data(dataset, *limit)
    config = FlowConfig(strategy=strategy, basis=basis, coupling=coupling, align_prior=True, seed=seed,
                        epochs=10_000, batch_size=batch_size, max_steps=max_steps, ode_steps=())  # sampled below
    record = train_flow(data, config, match=False)
    model = record.pop("model")
    prior = LatticePrior.fit(data.train_niggli, data.volume_per_atom)
    rows = []
    for name, options in SAMPLERS:
        for steps in STEPS:
            gen = torch.Generator().manual_seed(50_000 + seed)  # the benchmark's draw for its final metrics
            crystals = sample(model, data.val.num_atoms, data.val.species, steps, prior, gen, right_handed=True,
                              **options)
            m = evaluate_samples(crystals, data.val, match=True)
            rows.append({"sampler": name, "steps": steps, "match_rate": m["match_rate"], "rmse": m["rmse"],
                         "lattice_error": m["lattice_error"]})
            print(f"{name} @ {steps}: match {m['match_rate']:.3f} RMSE {m['rmse']:.4f}", flush=True)
    return {"dataset": dataset, "strategy": strategy, "basis": basis, "coupling": coupling, "seed": seed,
            "training_steps": record["steps"],
            "batch_size": batch_size, "train_size": record["train_size"], "held_out": record["val_size"],
            "train_time": record["train_time"], "source": f"training: {data.sources.get('train')}; "
                                                         f"held out: {data.sources.get('held_out')}",
            "rows": rows}


def _setting(r: dict) -> tuple:
    """(dataset, strategy, basis, coupling, training steps): one trained model but for its seed."""
    return r["dataset"], r.get("strategy", "mse"), r.get("basis", "niggli"), r["coupling"], r["training_steps"]


def _key(r: dict) -> tuple:
    return (*_setting(r), r["seed"])


def _pm(values: list[float], digits: int) -> str:
    """Mean ± sample std of the finite values (RMSE is NaN for a seed that matched nothing)."""
    return pm(*_mean_std(values), digits)


def summary_table(record: dict) -> list[str]:
    """Markdown lines: mean ± sample std over seeds per (dataset, strategy, basis, coupling, training steps,
    sampler)."""
    groups: dict[tuple, list[dict]] = {}
    for r in record["runs"]:
        groups.setdefault(_setting(r), []).append(r)
    cols = ["dataset", "x₁-loss", "labels", "coupling", "training steps", "sampler", "seeds"] + [f"match@{s}" for s in STEPS] + \
           [f"RMSE@{STEPS[-1]}", f"lattice err@{STEPS[-1]}"]
    table = []
    for (dataset, strategy, basis, coupling, steps), rs in sorted(groups.items()):
        for name, _ in SAMPLERS:
            by = [{x["steps"]: x for x in r["rows"] if x["sampler"] == name} for r in rs]
            table.append([dataset, strategy, basis, coupling, str(steps), name, str(len(rs))]
                         + [_pm([b[s]["match_rate"] for b in by], 3) for s in STEPS]
                         + [_pm([b[STEPS[-1]]["rmse"] for b in by], 4),
                            _pm([b[STEPS[-1]]["lattice_error"] for b in by], 3)])
    return markdown_table(cols, table)


def render(record: dict) -> str:
    lines = header("Sampler study: one flow model, several samplers", "; ".join(record["commands"]),
                   record["machine"])
    lines += ["One model per seed (the x₁-loss on the labels named, prior rotation aligned, the benchmark's "
              "defaults), the same prior draw for every sampler. Match rate at 10 / 50 / 200 steps, RMSE and "
              "lattice error (relative G6 distance of the Niggli cells) at 200; mean ± sample std over seeds.", ""]
    lines += summary_table(record) + ["", "Per seed:", ""]
    cols = ["dataset", "x₁-loss", "labels", "coupling", "seed", "training steps", "sampler"] + \
           [f"match@{s}" for s in STEPS] + [f"RMSE@{s}" for s in STEPS]
    table = []
    for r in sorted(record["runs"], key=_key):
        for name, _ in SAMPLERS:
            by = {x["steps"]: x for x in r["rows"] if x["sampler"] == name}
            table.append([r["dataset"], r.get("strategy", "mse"), r.get("basis", "niggli"), r["coupling"],
                          str(r["seed"]), str(r["training_steps"]), name]
                         + [f"{by[s]['match_rate']:.3f}" for s in STEPS] + [f"{by[s]['rmse']:.4f}" for s in STEPS])
    lines += markdown_table(cols, table)
    lines += ["", "Data: " + "; ".join(sorted({f"{r['dataset']}: {r['source']} ({r['train_size']} training, "
                                               f"{r['held_out']} held out)" for r in record["runs"]})) + "."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="perov_5")
    ap.add_argument("--coupling", default="independent", choices=COUPLINGS)
    ap.add_argument("--strategy", default="mse", help="the x₁-loss, a registered name (default mse)")
    ap.add_argument("--basis", default="niggli", choices=BASES, help="the labels' basis (default niggli)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--limit", default="", help="TRAIN[,HELD_OUT] crystals (as benchmarks.generative)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--render", action="store_true", help="rewrite the page from the JSON in --out; train nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    json_path = out / f"{NAME}.json"
    if args.render:
        if not json_path.exists():
            ap.error(f"--render: no {json_path} to render")
        with _locked(json_path):
            record = json.loads(json_path.read_text())
            write_results(out, NAME, render(record), record)
        return 0
    limit = tuple(int(x) if x.strip() else None for x in args.limit.split(",")) if args.limit else ()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        build_loss(FlowConfig(strategy=args.strategy))  # a bad name fails before training
    except ValueError as err:
        ap.error(f"--strategy: {err}")
    result = run(args.dataset, args.coupling, args.seed, args.max_steps, args.batch_size, limit, args.strategy,
                 args.basis)
    with _locked(json_path):
        record = json.loads(json_path.read_text()) if json_path.exists() else {"commands": [], "runs": []}
        record["runs"] = [r for r in record["runs"] if _key(r) != _key(result)] + [result]
        command = command_line(NAME, argv)
        record["commands"] = [c for c in record["commands"] if c != command] + [command]
        record["machine"] = machine_description()
        write_results(out, NAME, render(record), record)
    print(f"wrote {out / NAME}.md; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
