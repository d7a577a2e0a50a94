"""Generative benchmark: a DiffCSP-class flow-matching model trained with each soft_niggli loss.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular.

One flow model (:mod:`benchmarks.harness.flow_model`, :mod:`benchmarks.harness.flow_matching`) is trained per
(strategy, label basis, coupling, seed) with the same data, budget, initial weights, batch order and
prior noise for a given seed, then evaluated as DiffCSP does: one sample per held-out composition of
``val.csv.gz`` (or the first ``--limit`` ones), StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) match
rate and RMSE, the basis-invariant lattice error, the share of generated lattices the library's reducer
reduces ``OK``, and spglib's failures, at each of ``--ode-steps`` Euler steps; plus the match rate vs
epoch on a small held-out subset (``--eval-every``, ``--curve-size``).

* ``--strategies``: loss specs in the ablation's ``name:key=value`` syntax (``mse``, ``softmin:tau=0.05``,
  ``reduced-forms``, ...); every loss gets ``coord_weight=--coord-weight`` unless its spec says otherwise.
* ``--bases``: ``niggli`` (DiffCSP's canonical labels), ``raw`` (as stored), ``random`` (re-based every
  epoch by a random unimodular matrix, entries ≤ 2).
* ``--coupling``: ``independent`` and/or ``reduced-forms`` (each label re-expressed in its reduced form
  nearest its prior sample); ``--align-prior`` aligns the prior's rotation and handedness to the label.

Results (rank 0 only) go to ``<out>/generative_<dataset>.{md,json}`` and figures
``generative_<dataset>_epochs.png`` (match rate vs epoch), ``generative_<dataset>_steps.png`` (match rate
vs Euler steps) and, where the learning curve recorded it, ``generative_<dataset>_rmse.png`` (RMSE vs step), through :mod:`benchmarks.harness.report`; runs are merged into an existing JSON of that name
(a run with the same strategy, basis, coupling, alignment and seed is replaced), under a file lock, so
several commands can write into one folder. ``--out`` defaults to a scratch folder under the system's
temporary directory; give ``--out benchmarks/results/generative`` to write the committed results.

Runs unchanged under ``torchrun --nproc_per_node 2 -m benchmarks.generative ...`` (gloo,
DistributedDataParallel; see :mod:`benchmarks.harness.flow_matching`). From the repository root::

    python -m benchmarks.generative --dataset perov_5 --strategies mse softmin --seeds 2
    python -m benchmarks.generative --dataset carbon_24 --coupling reduced-forms --align-prior \\
        --out benchmarks/results/generative
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from soft_niggli import available_losses
from soft_niggli.datasets import DATASETS

from .harness.data import load_data
from .harness.flow_matching import (COUPLINGS, LR_SCHEDULES, FlowConfig, build_loss, distributed_context, import_object,
                                   train_flow)
from .harness.report import command_line, header, machine_description, markdown_table, pyplot, write_results
from .harness.training import BASES, parse_strategy

__all__ = ["has_runs", "main", "markdown", "run_key", "summarize"]

DEFAULT_OUT = Path(tempfile.gettempdir()) / "soft_niggli_generative"
DEFAULTS = FlowConfig()


# The settings besides (strategy, basis, coupling, align prior, seed) that change the trained model or its
# samples. Runs that differ in any of them are different rows, so that a run with another recipe written to
# the same folder is added beside the others instead of replacing the run it would otherwise share a key with.
RECIPE_FIELDS = ("epochs", "max_steps", "batch_size", "lr", "grad_clip", "t_floor", "coord_weight", "hidden", "layers",
                 "fourier", "loss_options", "model", "ema", "lr_schedule", "jump_at", "anneal")


def recipe(run: dict) -> tuple:
    """``(name, value)`` of every :data:`RECIPE_FIELDS` entry of the run (the default where an older record
    lacks the field); hashable."""
    c = run["config"]
    values = []
    for name in RECIPE_FIELDS:
        v = c.get(name, getattr(DEFAULTS, name))
        values.append((name, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v))
    return tuple(values)


def run_key(run: dict) -> tuple:
    """``(strategy, basis, coupling, align prior, recipe, seed)``: one run; ``[:5]`` is its row of the table."""
    c = run["config"]
    return (c["strategy"], c["basis"], c["coupling"], bool(c["align_prior"]), recipe(run), c["seed"])


def _sortable(key: tuple) -> tuple:
    """A :func:`run_key` (or its row, ``[:5]``) with the recipe as text: recipes may differ in a setting that
    is None in one and a number in the other (``max_steps``), which tuples cannot order."""
    return (*key[:4], str(key[4]), *key[5:])


def _mean_std(values) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _pm(mean, std, digits=3) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (strategy, basis, coupling, align, recipe): mean ± sample std over seeds of the metrics at
    the primary number of Euler steps (the largest evaluated), match rate at every evaluated step count."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(run_key(r)[:5], []).append(r)
    rows = []
    for (strategy, basis, coupling, align, run_recipe), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["config"]["seed"])
        steps = sorted({int(k) for r in rs for k in r["metrics"]})
        primary = str(max(steps)) if steps else None
        row = {"strategy": strategy, "basis": basis, "coupling": coupling, "align_prior": align, "seeds": len(rs),
               "epochs": sorted({r["epochs_run"] for r in rs}), "primary_steps": primary,
               "parameters": rs[0]["parameters"], "steps": sorted({r["steps"] for r in rs}),
               "recipe": dict(run_recipe)}
        for m in ("match_rate", "rmse", "lattice_error", "reducer_ok_share", "spglib_failures",
                  "volume_ratio_median", "left_handed_share"):
            vals = [r["metrics"].get(primary, {}).get(m) for r in rs]
            row[m], row[m + "_std"] = _mean_std(vals)
            row[m + "_per_seed"] = vals
        for k in steps:
            row[f"match_rate@{k}"], row[f"match_rate@{k}_std"] = _mean_std(
                [r["metrics"].get(str(k), {}).get("match_rate") for r in rs])
        row["minutes"], row["minutes_std"] = _mean_std([(r["train_time"] + r.get("eval_time", 0)) / 60 for r in rs])
        row["train_minutes"], _ = _mean_std([r["train_time"] / 60 for r in rs])
        rows.append(row)
    order = {"mse": 0, "reduced-forms": 1, "softmin": 2, "gram": 3, "proxy": 4}
    rows.sort(key=lambda r: (BASES.index(r["basis"]) if r["basis"] in BASES else 9, r["coupling"], r["align_prior"],
                             order.get(parse_strategy(r["strategy"])[0], 9), r["strategy"], str(r["recipe"])))
    return rows


def table(rows: list[dict]) -> str:
    steps = sorted({int(k.split("@")[1]) for r in rows for k in r if k.startswith("match_rate@") and
                    not k.endswith("_std")})
    # A recipe column only where the rows' recipes differ, naming the settings that differ.
    varying = [name for name in RECIPE_FIELDS if len({str(r["recipe"].get(name)) for r in rows}) > 1]
    columns = ["strategy", "basis", "coupling", "align prior", *(["recipe"] if varying else []), "seeds",
               "match rate ↑", "per seed", "RMSE ↓", "lattice err ↓", "reducer OK", "spglib fails",
               *(f"match@{k}" for k in steps), "min/run"]
    body = []
    for r in rows:
        seeds = ", ".join("—" if v is None else f"{v:.3f}" for v in r["match_rate_per_seed"])
        cells = [r["strategy"], r["basis"], r["coupling"], "yes" if r["align_prior"] else "no",
                 *([" ".join(f"{name}={r['recipe'].get(name)}" for name in varying)] if varying else []), str(r["seeds"]),
                 _pm(r["match_rate"], r["match_rate_std"]), seeds, _pm(r["rmse"], r["rmse_std"], 4),
                 _pm(r["lattice_error"], r["lattice_error_std"]), _pm(r["reducer_ok_share"], r["reducer_ok_share_std"]),
                 _pm(r["spglib_failures"], r["spglib_failures_std"], 1)]
        cells += [_pm(r.get(f"match_rate@{k}", math.nan), r.get(f"match_rate@{k}_std", math.nan)) for k in steps]
        cells.append(f"{r['minutes']:.1f}")
        body.append(cells)
    return "\n".join(markdown_table(columns, body))


def markdown(dataset: str, record: dict) -> str:
    d = record["data"]
    rows = record["summary"]
    steps = ", ".join(sorted({str(s) for r in rows for s in r["steps"]}, key=int))
    # The recipe's extras, where every run shares them (the title tells such pages apart).
    extras = {(r["config"].get("ema", 0.0), r["config"].get("lr_schedule", "constant"), r["config"].get("jump_at", 1.0),
               r["config"].get("anneal", 0.0)) for r in record["runs"]}
    ema, schedule, jump, anneal = next(iter(extras)) if len(extras) == 1 else (0.0, "constant", 1.0, 0.0)
    recipe = (f", EMA {ema:g}" if ema else "") + (f", {schedule} learning rate" if schedule != "constant" else "") \
        + (f", sampler jumps at t = {jump:g}" if jump < 1 else "") + (f", anti-annealing {anneal:g}" if anneal else "")
    lines = header(f"Generative benchmark (flow matching), {dataset}, {steps} steps{recipe}",
                   "; ".join(f"`{c}`" for c in record["commands"])
                   .strip("`"), record["machine"])
    lines += [f"Data: {d['train_size']} training / {d['val_size']} held-out crystals ({d['source']}); one sample "
              "per held-out composition. Metrics at the largest evaluated number of Euler steps unless a column "
              "names the steps; mean ± sample std over seeds. Match rate and RMSE: StructureMatcher(stol=0.5, "
              "angle_tol=10, ltol=0.3); lattice error: relative G6 distance of spglib-Niggli cells; reducer OK: "
              "share of generated lattices soft_niggli's reducer reduces OK; spglib fails: generated lattices "
              "spglib cannot reduce. Models: "
              + ", ".join(sorted({f"{r['parameters']} parameters" for r in rows})) + "; steps per run: "
              + ", ".join(sorted({str(s) for r in rows for s in r["steps"]})) + ".", "", table(rows), ""]
    lines += curve_tables(record["runs"])
    if len(record["commands"]) > 1:
        lines += ["Commands:", ""] + [f"- `{c}`" for c in record["commands"]] + [""]
    return "\n".join(lines)


def curve_tables(runs: list[dict]) -> list[str]:
    """Markdown lines: the learning curve of every run that recorded RMSE in it (``--eval-every``)."""
    lines = []
    for r in sorted(runs, key=lambda r: _sortable(run_key(r))):
        c = r["curves"]
        if not c.get("curve_rmse"):
            continue
        cfg = r["config"]
        lines += [f"Learning curve, {cfg['strategy']} / {cfg['basis']} / {cfg['coupling']} / seed {cfg['seed']}: "
                  f"the first {cfg['curve_size']} held-out crystals, {cfg['curve_steps']} Euler steps, every "
                  f"{cfg['eval_every']} epochs.", ""]
        def fmt(v, digits=3):
            return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"

        body = [[str(e), str(s), fmt(m), fmt(x, 4), fmt(le)]
                for e, s, m, x, le in zip(c["curve_epoch"], c["curve_step"], c["curve_match_rate"], c["curve_rmse"],
                                          c["curve_lattice_error"])]
        lines += markdown_table(["epoch", "optimiser step", "match rate", "RMSE", "lattice err"], body) + [""]
    return lines


def figures(dataset: str, record: dict, out_dir: Path) -> None:
    plt = pyplot()
    groups: dict[tuple, list[dict]] = {}
    for r in record["runs"]:
        groups.setdefault(run_key(r)[:5], []).append(r)
    varying = [name for name in RECIPE_FIELDS if len({dict(key[4]).get(name) for key in groups}) > 1]

    def label(key):
        s, b, c, a, rec = key
        extra = " ".join(f"{name}={dict(rec)[name]}" for name in varying)
        return (f"{s} / {b}" + ("" if c == "independent" else f" / {c}") + (" / aligned" if a else "")
                + (f" / {extra}" if extra else ""))

    def save(fig, ax, xlabel: str, ylabel: str, title: str, name: str) -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{dataset}: {title} (mean over seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"generative_{dataset}_{name}.png", dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, rs in sorted(groups.items(), key=lambda kv: _sortable(kv[0])):
        curves = [r["curves"] for r in rs if r["curves"]["curve_epoch"]]
        if not curves:
            continue
        epochs = curves[0]["curve_epoch"]
        n = min(len(c["curve_match_rate"]) for c in curves)
        y = np.mean([c["curve_match_rate"][:n] for c in curves], axis=0)
        ax.plot(epochs[:n], y, marker=".", label=label(key))
    save(fig, ax, "epoch", "match rate (held-out subset)", "match rate vs epoch", "epochs")

    with_rmse = {key: [r["curves"] for r in rs if r["curves"].get("curve_rmse")] for key, rs in groups.items()}
    if any(with_rmse.values()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, curves in sorted(with_rmse.items(), key=lambda kv: _sortable(kv[0])):
            if not curves:
                continue
            n = min(len(c["curve_rmse"]) for c in curves)
            steps = curves[0]["curve_step"][:n]
            y = np.nanmean([[np.nan if v is None else v for v in c["curve_rmse"][:n]] for c in curves], axis=0)
            ax.plot(steps, y, marker=".", label=label(key))
        save(fig, ax, "optimiser step", "RMSE of matched crystals (held-out subset)", "RMSE vs step", "rmse")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, rs in sorted(groups.items(), key=lambda kv: _sortable(kv[0])):
        steps = sorted({int(k) for r in rs for k in r["metrics"]})
        if not steps:
            continue
        y = [np.nanmean([r["metrics"].get(str(k), {}).get("match_rate", np.nan) for r in rs]) for k in steps]
        ax.plot(steps, y, marker="o", label=label(key))
    ax.set_xscale("log")
    save(fig, ax, "Euler steps", "match rate", "match rate vs Euler steps", "steps")


@contextlib.contextmanager
def _locked(path: Path):
    # The lock file lives in the temporary directory, not next to the results.
    path.parent.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"soft_niggli_generative_{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_dataset(dataset: str, runs: list[dict], command: str, machine: str, data_info: dict, out_dir: Path,
                  merge: bool = True) -> dict:
    """Merge ``runs`` into ``<out>/generative_<dataset>.json`` (under a lock) and rewrite the tables and figures."""
    json_path = out_dir / f"generative_{dataset}.json"
    with _locked(json_path):
        commands, machines = [command], [machine]
        if merge and json_path.exists():
            old = json.loads(json_path.read_text())
            new = {run_key(r) for r in runs}
            runs = [r for r in old["runs"] if run_key(r) not in new] + runs
            commands = old.get("commands", []) + [c for c in commands if c not in old.get("commands", [])]
            machines = old.get("machines", [old.get("machine")]) + [m for m in machines if
                                                                     m not in old.get("machines", [old.get("machine")])]
        record = {"dataset": dataset, "commands": commands, "machine": machines[-1], "machines": machines,
                  "data": data_info, "summary": None, "runs": runs}
        _write_record(dataset, record, out_dir)
    return record


def _write_record(dataset: str, record: dict, out_dir: Path) -> None:
    """Summarise ``record["runs"]`` and write the JSON, the page and the figures (the caller holds the lock)."""
    record["summary"] = summarize(record["runs"])
    write_results(out_dir, f"generative_{dataset}", markdown(dataset, record), record)
    try:
        figures(dataset, record, out_dir)
    except Exception as err:  # noqa: BLE001 - a plotting problem must not lose the numbers
        print(f"warning: figures for {dataset} failed: {err}", file=sys.stderr)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="perov_5", help=f"one of {DATASETS} (default perov_5)")
    ap.add_argument("--data-dir", default=None,
                    help="folder of <dataset>/<split>.csv.gz (default $SOFT_NIGGLI_DATA, else ../shared/data)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--strategies", nargs="+", default=["mse"], help="loss specs name[:key=value,...]")
    ap.add_argument("--bases", default="niggli", help="comma-separated from " + ",".join(BASES))
    ap.add_argument("--coupling", default="independent", help="comma-separated from " + ",".join(COUPLINGS))
    ap.add_argument("--align-prior", action="store_true", help="align the prior's rotation and handedness to the label")
    ap.add_argument("--ode-steps", default=",".join(map(str, DEFAULTS.ode_steps)),
                    help="comma-separated Euler step counts to evaluate (default 10,50,200; the largest is the "
                         "table's main column)")
    ap.add_argument("--seeds", default="1",
                    help="number of seeds n (0..n-1), or a comma-separated list of seeds ('2,' is seed 2 alone)")
    ap.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many optimisation steps")
    ap.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="global batch (all ranks)")
    ap.add_argument("--lr", type=float, default=DEFAULTS.lr)
    ap.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip)
    ap.add_argument("--coord-weight", type=float, default=DEFAULTS.coord_weight)
    ap.add_argument("--ema", type=float, default=DEFAULTS.ema,
                    help="sample with an exponential moving average of the weights of this decay (0: off)")
    ap.add_argument("--lr-schedule", default=DEFAULTS.lr_schedule, choices=LR_SCHEDULES,
                    help="constant, or cosine decay to 0 over the run's steps")
    ap.add_argument("--jump-at", type=float, default=DEFAULTS.jump_at,
                    help="sample with the Euler steps on [0, T] and a jump onto the prediction made at T "
                         "(default 1: plain Euler; benchmarks.sampler_study)")
    ap.add_argument("--anneal", type=float, default=DEFAULTS.anneal,
                    help="sample with the coordinates' velocity scaled by 1 + S t (FlowMM's anti-annealing; "
                         "default 0: off)")
    ap.add_argument("--t-floor", type=float, default=DEFAULTS.t_floor, help="loss weight 1/max(1-t, t_floor)^2")
    ap.add_argument("--model", default="", metavar="MODULE:CLASS",
                    help="your own network instead of the CSPNet-style FlowNet "
                         "(benchmarks.harness.flow_matching.build_model says what it is given and must return); "
                         "default: FlowNet")
    ap.add_argument("--hidden", type=int, default=DEFAULTS.hidden)
    ap.add_argument("--layers", type=int, default=DEFAULTS.layers)
    ap.add_argument("--fourier", type=int, default=DEFAULTS.fourier)
    ap.add_argument("--limit", default=None,
                    help="TRAIN[,VAL]: at most this many training (and held-out) crystals, the first in file order "
                         "(',200': all training crystals, 200 held-out)")
    ap.add_argument("--max-atoms", type=int, default=None, help="drop crystals with more atoms")
    ap.add_argument("--eval-every", type=int, default=0, help="match rate on a held-out subset every N epochs (0: off)")
    ap.add_argument("--curve-size", type=int, default=DEFAULTS.curve_size)
    ap.add_argument("--curve-steps", type=int, default=DEFAULTS.curve_steps)
    ap.add_argument("--no-match", action="store_true", help="skip StructureMatcher")
    ap.add_argument("--replace", action="store_true", help="replace the dataset's JSON instead of merging into it")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--render", action="store_true",
                    help="rewrite <out>/generative_<dataset>.md and its figures from the JSON there, without training")
    args = ap.parse_args(argv)
    if args.dataset not in DATASETS:
        ap.error(f"--dataset: unknown dataset {args.dataset!r}; valid names: {', '.join(DATASETS)}")
    args.bases = [b for b in args.bases.split(",") if b]
    args.coupling = [c for c in args.coupling.split(",") if c]
    for b in args.bases:
        if b not in BASES:
            ap.error(f"--bases: unknown basis {b!r}; valid: {', '.join(BASES)}")
    for c in args.coupling:
        if c not in COUPLINGS:
            ap.error(f"--coupling: unknown coupling {c!r}; valid: {', '.join(COUPLINGS)}")
    try:
        args.ode_steps = _ints(args.ode_steps)
        args.seeds_text, seeds = args.seeds, _ints(args.seeds)
        args.limit = tuple(int(x) if x.strip() else None for x in args.limit.split(",")) if args.limit else ()
    except ValueError as err:
        ap.error(str(err))
    args.seeds = seeds if "," in args.seeds_text else tuple(range(seeds[0]))
    if not 0 <= args.ema < 1:
        ap.error(f"--ema: expected a decay in [0, 1), got {args.ema}")
    if not 0 < args.jump_at <= 1:
        ap.error(f"--jump-at: expected a time in (0, 1], got {args.jump_at}")
    if not 0 <= args.anneal <= 100:
        ap.error(f"--anneal: expected a number in [0, 100], got {args.anneal}")
    if not args.ode_steps or min(args.ode_steps) < 1 or not args.seeds or args.epochs < 1 or len(args.limit) > 2:
        ap.error("--ode-steps must be >= 1, --seeds and --epochs >= 1, --limit TRAIN[,VAL]")
    return args


def run_configs(args: argparse.Namespace) -> list[FlowConfig]:
    """The runs a parsed command line (:func:`parse_args`) makes, in order."""
    return [FlowConfig(strategy=s, basis=b, coupling=c, align_prior=args.align_prior, seed=seed, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, grad_clip=args.grad_clip, t_floor=args.t_floor,
                       coord_weight=args.coord_weight, hidden=args.hidden, layers=args.layers, fourier=args.fourier,
                       ode_steps=args.ode_steps, eval_every=args.eval_every, curve_size=args.curve_size,
                       curve_steps=args.curve_steps, max_steps=args.max_steps, model=args.model,
                       ema=args.ema, lr_schedule=args.lr_schedule, jump_at=args.jump_at,
                       anneal=args.anneal)
            for s in args.strategies for b in args.bases for c in args.coupling for seed in args.seeds]


def has_runs(argv: list[str]) -> bool:
    """Whether ``<out>/generative_<dataset>.json`` already holds every run the command line ``argv`` would make
    (the same :func:`run_key`: setting, recipe and seed; a run of another recipe there is not one of them).
    ``benchmarks/generative_matrix.sh`` skips such commands."""
    args = parse_args(argv)
    json_path = Path(args.out) / f"generative_{args.dataset}.json"
    if not json_path.exists():
        return False
    done = {run_key(r) for r in json.loads(json_path.read_text())["runs"]}
    return all(run_key({"config": asdict(c)}) in done for c in run_configs(args))


def main(argv=None) -> int:
    """Run the benchmark; rank 0 writes ``generative_<dataset>.{md,json}`` and the figures under ``--out``
    and prints the table; returns the exit status 0 (on every rank)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render:
        out_dir = Path(args.out)
        json_path = out_dir / f"generative_{args.dataset}.json"
        with _locked(json_path):
            _write_record(args.dataset, json.loads(json_path.read_text()), out_dir)
        print(f"rewrote {out_dir / f'generative_{args.dataset}.md'} and its figures")
        return 0
    if args.threads:
        torch.set_num_threads(max(1, args.threads))
    ctx = distributed_context()
    registered = set(available_losses())
    for s in args.strategies:
        name, _ = parse_strategy(s)
        if name not in registered:
            raise SystemExit(f"loss {name!r} is not registered (available: {', '.join(sorted(registered))})")
        build_loss(FlowConfig(strategy=s, coord_weight=args.coord_weight))  # bad options fail before training
    if args.model:
        try:
            import_object(args.model)  # a wrong name fails before the data is read
        except ValueError as err:
            raise SystemExit(f"--model: {err}") from err
    device = torch.device(args.device)
    train_size = args.limit[0] if args.limit else None
    val_size = args.limit[1] if len(args.limit) > 1 else None
    data = load_data(args.dataset, train_size, val_size, args.data_dir, args.max_atoms, device)
    configs = run_configs(args)
    from tqdm.auto import tqdm

    steps_per_run = args.epochs * math.ceil(len(data.train_niggli) / args.batch_size)
    if args.max_steps is not None:
        steps_per_run = min(steps_per_run, args.max_steps)
    command = command_line("generative", argv)
    if ctx.active:
        command = f"torchrun --nproc_per_node {ctx.world} -m benchmarks.generative " + command.split(" ", 3)[-1] \
            if len(argv) else f"torchrun --nproc_per_node {ctx.world} -m benchmarks.generative"
    machine = machine_description([f"device {device}", f"{ctx.world} process(es)"])
    runs = []
    t0 = time.perf_counter()
    with tqdm(total=len(configs) * steps_per_run, desc=f"{args.dataset}: {len(configs)} runs", unit="step",
              disable=args.no_progress or ctx.rank != 0, file=sys.stderr, dynamic_ncols=True) as bar:
        for config in configs:
            run = train_flow(data, config, device=device, ctx=ctx, progress=bar if ctx.rank == 0 else None,
                             match=not args.no_match)
            run.pop("model")
            runs.append(run)
            if ctx.rank == 0:
                m = run["metrics"].get(str(max(args.ode_steps)), {})
                aligned = "/aligned" if config.align_prior else ""
                bar.write(f"{config.strategy}/{config.basis}/{config.coupling}{aligned}"
                          f"/seed {config.seed}: match {m.get('match_rate', math.nan):.3f} "
                          f"lattice err {m.get('lattice_error', math.nan):.3f} "
                          f"({run['train_time']:.0f} s train, {run.get('eval_time', 0):.0f} s eval)")
    if ctx.rank == 0:
        out_dir = Path(args.out)
        source = f"training: {data.sources.get('train')}; held out: {data.sources.get('held_out')}"
        info = {"train_size": len(data.train_raw), "val_size": len(data.val), "max_atoms": data.max_atoms,
                "volume_per_atom": data.volume_per_atom, "label_reduction_not_ok": data.label_reduction_not_ok,
                "source": source}
        record = write_dataset(args.dataset, runs, command, machine, info, out_dir, merge=not args.replace)
        print(f"\n## {args.dataset}\n\n{table(record['summary'])}\n")
        print(f"wrote {out_dir / f'generative_{args.dataset}.md'} (+ .json, _epochs.png, _steps.png); "
              f"{time.perf_counter() - t0:.0f} s")
    ctx.barrier()
    ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
