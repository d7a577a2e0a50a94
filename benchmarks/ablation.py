"""Ablation: does handling the change of basis (Type III) in the loss let a CSP model learn from labels
in any basis as well as from canonicalised ones, and which strategy does it best?

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular.

One model is trained per (dataset, model, strategy, label basis, seed), all with the same data, the
same number of epochs and steps, the same initial weights and batch order for a given seed, and the
same random bases for a given seed; then it is evaluated on a held-out split.

* **Strategies** are loss names from :func:`soft_niggli.get_loss` (the library's and the
  baselines'), built with their default options unless ``--loss-options`` says otherwise; names not
  registered here are skipped with a warning.
* **Label bases**: ``niggli`` (what DiffCSP does, the reference: every label Niggli-reduced once with
  :func:`soft_niggli.canonicalize_labels` and put in the standard orientation of its cell
  parameters, see :func:`benchmarks.data.diffcsp_canonical`); ``raw`` (the cells as stored, in the
  orientation the file gives); ``random`` (every epoch, each ``niggli`` label re-based by a fresh random unimodular
  matrix with entries bounded by 2, :func:`soft_niggli.random_unimodular`: the same Cartesian lattice
  as ``niggli``, only the basis differs; with ``--rotate`` also rotated by a random proper rotation,
  ``L' = L Qᵀ``, which only strategies with a rotation-invariant lattice term can follow).
* **Metrics** (held-out split, :mod:`soft_niggli.metrics`): basis-invariant lattice error (relative
  distance of spglib-Niggli-reduced G6 vectors; a failed reduction scores 1.0 and is counted), relative
  volume error, DiffCSP's match rate and RMSE (``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``).
* **Training stability**, per run: steps whose loss raised (caught, counted, the step skipped; the
  first such step is where an unguarded training loop would have crashed), steps with a non-finite
  loss or gradient (skipped), predictions the loss excluded, non-OK reducer statuses and fallback uses
  reported in :class:`~soft_niggli.LossResult`, and wall time per epoch.

Writes ``<out>/ablation_<dataset>.{md,json}`` plus ``ablation_<dataset>_curves.png`` (validation
lattice error per epoch) and ``ablation_<dataset>_metrics.png`` (final metrics, mean ± std over seeds),
and ``ablation_overview.md`` across datasets, and prints the table. With ``--merge`` new runs are added
to an existing JSON (replacing runs with the same dataset, model, strategy, basis, seed and rotation)
and the table and figures are rebuilt from all. ``--rebuild`` trains nothing and rebuilds them from
the JSON files.

Modules: :mod:`benchmarks.data` (the data holder), :mod:`benchmarks.models`, :mod:`benchmarks.training`
(fitting one model), :mod:`benchmarks.ablation_report` (tables, JSON, figures); this one is the command
line. From the repository root::

    python -m benchmarks.ablation                     # default: aflow (bundled with pymatgen)
    python -m benchmarks.ablation --datasets perov_5 mp_20 carbon_24 --seeds 3 --train-size 1000 --val-size 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from soft_niggli import available_losses, get_loss
from soft_niggli.datasets import DATASETS

from .ablation_report import run_key, summarize, table, write_outputs, write_overview
from .data import load_data
from .models import MODELS
from .report import RESULTS, command_line, machine_description
from .training import BASES, STRATEGIES, parse_strategy, train_one

DEFAULT_EPOCHS = 50
DEFAULT_BATCH = 32


def rebuild(out_dir: Path, datasets) -> dict:
    """Recompute summaries, tables and figures from the JSON files already in ``out_dir``."""
    records = {}
    for dataset in datasets:
        path = out_dir / f"ablation_{dataset}.json"
        if not path.exists():
            print(f"warning: {path} not found; nothing to rebuild for {dataset}", file=sys.stderr)
            continue
        record = json.loads(path.read_text())
        record["summary"] = summarize(record["runs"])
        write_outputs(dataset, record, out_dir)
        records[dataset] = record
        print(f"\n## {dataset}\n\n{table(record['summary'])}")
    write_overview(out_dir)
    return records


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=["aflow"], help=f"from {DATASETS} (default: aflow)")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES),
                    help="loss names for get_loss, optionally with options as name:key=value,key=value "
                         "(e.g. proxy:frame=prediction); unregistered names are skipped with a warning")
    ap.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    ap.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(MODELS))
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--seeds", type=int, default=2, help="number of seeds (0, 1, ..., n-1)")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--grad-clip", type=float, default=10.0, help="gradient-norm clip, same for all (0: none)")
    ap.add_argument("--train-size", type=int, default=None, help="at most this many training crystals")
    ap.add_argument("--val-size", type=int, default=None, help="at most this many held-out crystals")
    ap.add_argument("--max-atoms", type=int, default=None, help="drop crystals with more atoms")
    ap.add_argument("--rotate", action="store_true", help="random labels are also randomly rotated")
    ap.add_argument("--loss-options", type=json.loads, default={},
                    help='JSON: per-strategy options for get_loss, e.g. \'{"softmin": {"tau": 0.05}}\'')
    ap.add_argument("--no-match", action="store_true", help="skip StructureMatcher (match rate, RMSE)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--data-dir", default=None,
                    help="folder of <dataset>/<split>.csv.gz (default $SOFT_NIGGLI_DATA, else ../shared/data)")
    ap.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    ap.add_argument("--merge", action="store_true", help="add to an existing JSON instead of replacing it")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--rebuild", action="store_true",
                    help="train nothing: rebuild the tables, figures and overview from the JSON files in --out")
    args = ap.parse_args(argv)
    for name in args.datasets:
        if name not in DATASETS:
            ap.error(f"--datasets: unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if args.seeds < 1 or args.epochs < 0:
        ap.error("--seeds must be >= 1 and --epochs >= 0")
    return args


def main(argv=None) -> dict:
    """Run the ablation; returns ``{dataset: record}`` (the JSON written for each dataset)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    from tqdm.auto import tqdm

    if args.rebuild:
        return rebuild(Path(args.out), args.datasets)
    registered = set(available_losses())
    strategies = []
    for s in args.strategies:
        name, spec_options = parse_strategy(s)
        if name in registered:
            # Fail fast on bad options, before any training.
            get_loss(name, **{**args.loss_options.get(name, {}), **spec_options})
            strategies.append(s)
        else:
            print(f"warning: loss {name!r} is not registered here (available: {', '.join(sorted(registered))}); "
                  "skipping it", file=sys.stderr)
    if not strategies:
        raise SystemExit("no registered strategy to run")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description([f"device {device}"])
    command = command_line("ablation", argv)
    records = {}
    t_start = time.perf_counter()
    for dataset in args.datasets:
        data = load_data(dataset, args.train_size, args.val_size, args.data_dir, args.max_atoms, device)
        configs = [(m, s, b, seed) for m in args.models for s in strategies for b in args.bases
                   for seed in range(args.seeds)]
        total = len(configs) * max(args.epochs, 1)
        runs = []
        with tqdm(total=total, desc=f"{dataset}: {len(configs)} runs", unit="epoch", disable=args.no_progress,
                  file=sys.stderr, dynamic_ncols=True) as bar:
            for m, s, b, seed in configs:
                run = train_one(data, s, b, m, seed, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                grad_clip=args.grad_clip, rotate=args.rotate and b == "random",
                                loss_options=args.loss_options.get(parse_strategy(s)[0], {}), match=not args.no_match,
                                device=device, progress=bar)
                if args.epochs == 0:
                    bar.update(1)
                runs.append(run)
        json_path = out_dir / f"ablation_{dataset}.json"
        commands = [command]
        if args.merge and json_path.exists():
            old = json.loads(json_path.read_text())
            new_keys = {run_key(r) for r in runs}
            runs = [r for r in old["runs"] if run_key(r) not in new_keys] + runs
            commands = old.get("commands", []) + [c for c in commands if c not in old.get("commands", [])]
        source = "bundled with pymatgen (AFLOW prototypes), 80/20 seeded split" if dataset == "aflow" else \
            "../shared/data, CDVAE/DiffCSP CSV; files with only a val split are split 80/20 by a seeded permutation"
        record = {
            "dataset": dataset, "commands": commands, "machine": machine,
            "data": {"train_size": len(data.train_raw), "val_size": len(data.val), "max_atoms": data.max_atoms,
                     "volume_per_atom": data.volume_per_atom, "label_reduction_not_ok": data.label_reduction_not_ok,
                     "reference": data.reference, "source": source},
            "summary": summarize(runs), "runs": runs,
        }
        write_outputs(dataset, record, out_dir)
        records[dataset] = record
        print(f"\n## {dataset} ({len(data.train_raw)} train / {len(data.val)} val)\n")
        print(table(record["summary"]))
        print(f"\nwrote {out_dir / f'ablation_{dataset}.md'} (+ .json, _curves.png, _metrics.png)")
    write_overview(out_dir)
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    return records


if __name__ == "__main__":
    main()
