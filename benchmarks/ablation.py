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
  parameters, see :func:`benchmarks.harness.data.diffcsp_canonical`); ``raw`` (the cells as stored, in the
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

Prints, per dataset, a compact table (strategy × label basis → lattice error and match rate, mean ±
std over seeds, the no-learning reference first) and a one-line legend. Writes to ``--out``
``ablation_<dataset>.{md,json}`` (the full table with the stability columns, and every run), plus
``ablation_<dataset>_curves.png`` (validation lattice error per epoch) and
``ablation_<dataset>_metrics.png`` (final metrics, mean ± std over seeds), and ``ablation_overview.md``
across datasets. ``--out`` defaults to a new scratch folder, ``<tmp>/soft_niggli_ablation/<timestamp>``
(printed); the committed results are refreshed only when asked, ``--out benchmarks/results``. With
``--merge`` new runs are added to an existing JSON in ``--out`` (replacing runs with the same dataset,
model, strategy, basis, seed and rotation) and the table and figures are rebuilt from all.
``--rebuild`` trains nothing and rebuilds them from the JSON files in ``--out``.

The default run: the 500 Perov-5 crystals that ship with soft_niggli (``perov_5_small``: 400 training,
100 held-out), the MLP, ``mse``, ``proxy``, ``softmin``, ``gram`` and ``reduced-forms`` on the three
label bases with 3 seeds, 30 epochs of batch 32 each (45 runs; about 4 minutes with one torch thread;
the README gives the measured time and machine). Data needing no folder: ``perov_5_small``,
``carbon_24_small`` (bundled, see ``soft_niggli/data/NOTICE``) and ``aflow`` (bundled with pymatgen);
the full CDVAE files (``perov_5``, ``carbon_24``, ``mp_20``, ``mpts_52``) come from ``--data-dir``,
``$SOFT_NIGGLI_DATA`` or ``../shared/data`` next to this checkout.

Modules: :mod:`benchmarks.harness.data` (the data holder), :mod:`benchmarks.harness.models`,
:mod:`benchmarks.harness.training` (fitting one model), :mod:`benchmarks.ablation_report` (tables, JSON,
figures); this one is the command line. From the repository root::

    python -m benchmarks.ablation                     # default: perov_5_small (bundled), ~4 minutes
    python -m benchmarks.ablation --datasets perov_5 carbon_24 --train-size 1000 --val-size 200 --epochs 25 \\
        --batch-size 64 --strategies mse proxy-spglib proxy softmin gram --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from soft_niggli import available_losses, get_loss
from soft_niggli.datasets import BUNDLED, DATASETS, resolve_data_dir

from .ablation_report import LEGEND, compact_table, run_key, summarize, write_outputs, write_overview
from .harness.data import CHECKOUT_DATA, data_dir, load_data
from .harness.models import MODELS, import_object
from .harness.report import RESULTS, command_line, machine_description
from .harness.training import BASES, parse_strategy, train_one

#: The default run (module docstring): sized to show the result in about 4 minutes of one CPU core (README).
DEFAULT_DATASETS = ("perov_5_small",)
DEFAULT_STRATEGIES = ("mse", "proxy", "softmin", "gram", "reduced-forms")
DEFAULT_EPOCHS = 30
DEFAULT_BATCH = 32
DEFAULT_SEEDS = 3
#: Datasets that need no data folder.
NO_FOLDER = (*BUNDLED, "aflow")


def scratch_dir() -> Path:
    """Where a run writes by default: ``<tmp>/soft_niggli_ablation/<timestamp>`` (not the repository)."""
    return Path(tempfile.gettempdir()) / "soft_niggli_ablation" / time.strftime("%Y%m%d-%H%M%S")


def source(dataset: str, folder: str | None) -> str:
    """Where ``dataset``'s crystals come from, in words (for the results file and the terminal)."""
    if dataset == "aflow":
        return "the AFLOW prototypes bundled with pymatgen, 80/20 seeded split"
    if dataset in BUNDLED:
        return (f"soft_niggli/data/{dataset}.csv.gz (bundled with soft_niggli: a seeded sample of CDVAE's "
                f"{dataset.removesuffix('_small')} val split; sources and licences in soft_niggli/data/NOTICE), "
                "80/20 seeded split")
    where = resolve_data_dir(data_dir(folder))
    shown = "../shared/data" if where.resolve() == CHECKOUT_DATA.resolve() else str(where)
    return (f"{shown}, CDVAE/DiffCSP CSV; files with only a val split are split 80/20 by a seeded permutation")


def source_short(dataset: str, folder: str | None) -> str:
    """:func:`source` in a few words, for the terminal."""
    if dataset == "aflow":
        return "AFLOW prototypes bundled with pymatgen"
    if dataset in BUNDLED:
        return "real crystals bundled with soft_niggli (soft_niggli/data/NOTICE)"
    return source(dataset, folder).split(",")[0]


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
        print(f"\n{dataset}\n\n{compact_table(record, DEFAULT_STRATEGIES)}\n{LEGEND}")
    write_overview(out_dir)
    print(f"\nrebuilt the full tables and figures in {out_dir}")
    return records


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                    help=f"from {', '.join(DATASETS)} (default: {' '.join(DEFAULT_DATASETS)}); "
                         f"{', '.join(NO_FOLDER)} need no data folder")
    ap.add_argument("--strategies", nargs="+", default=list(DEFAULT_STRATEGIES),
                    help="loss names for get_loss, optionally with options as name:key=value,key=value "
                         "(e.g. proxy:frame=prediction); unregistered names are skipped with a warning "
                         f"(default: {' '.join(DEFAULT_STRATEGIES)}; the published proxy is 'proxy-spglib')")
    ap.add_argument("--bases", nargs="+", default=list(BASES), choices=BASES)
    ap.add_argument("--models", nargs="+", default=["mlp"], metavar="MODEL",
                    help=f"{', '.join(sorted(MODELS))}, or your own as package.module:Class "
                         "(benchmarks.harness.models says what it is given and returns) (default: mlp)")
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="number of seeds (0, 1, ..., n-1)")
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
                    help="folder of <dataset>/<split>.csv.gz for the full CDVAE files (default $SOFT_NIGGLI_DATA, "
                         f"else ../shared/data next to this checkout); not used by {', '.join(NO_FOLDER)}")
    ap.add_argument("--out", default=None,
                    help="output folder for the full tables, JSON and figures (default: a new scratch folder "
                         f"<tmp>/soft_niggli_ablation/<timestamp>; the committed results: --out {RESULTS.parent.name}/"
                         f"{RESULTS.name})")
    ap.add_argument("--merge", action="store_true", help="add to an existing JSON in --out instead of replacing it")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--rebuild", action="store_true",
                    help="train nothing: rebuild the tables, figures and overview from the JSON files in --out")
    args = ap.parse_args(argv)
    for name in args.datasets:
        if name not in DATASETS:
            ap.error(f"--datasets: unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if args.seeds < 1 or args.epochs < 0:
        ap.error("--seeds must be >= 1 and --epochs >= 0")
    if (args.merge or args.rebuild) and args.out is None:
        ap.error(f"--{'merge' if args.merge else 'rebuild'} works on the JSON files of an existing folder: name it "
                 f"with --out (e.g. --out {RESULTS.parent.name}/{RESULTS.name})")
    return args


def main(argv=None) -> int:
    """Run the ablation (or ``--rebuild`` its tables); writes ``ablation_<dataset>.{md,json}``, figures and
    ``ablation_overview.md`` under ``--out`` and prints the compact table; returns the exit status 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    from tqdm.auto import tqdm

    if args.rebuild:
        rebuild(Path(args.out), args.datasets)
        return 0
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

    for m in args.models:  # a wrong model name fails before any data is read
        try:
            import_object(m) if ":" in m else MODELS[m]
        except (ValueError, KeyError) as err:
            raise SystemExit(f"--models: unknown model {m!r} ({err}); valid: {', '.join(sorted(MODELS))}, "
                             "or package.module:Class") from err
    out_dir = Path(args.out) if args.out is not None else scratch_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description([f"device {device}"])
    command = command_line("ablation", argv)
    t_start = time.perf_counter()
    for dataset in args.datasets:
        try:
            data = load_data(dataset, args.train_size, args.val_size, args.data_dir, args.max_atoms, device)
            where, where_short = source(dataset, args.data_dir), source_short(dataset, args.data_dir)
        except FileNotFoundError as err:
            raise SystemExit(f"error: dataset {dataset!r}: {err}\n(this command takes the folder as --data-dir; "
                             f"datasets that need no data folder: {', '.join(NO_FOLDER)}; the default is "
                             f"{' '.join(DEFAULT_DATASETS)})") from err
        configs = [(m, s, b, seed) for m in args.models for s in strategies for b in args.bases
                   for seed in range(args.seeds)]
        print(f"{dataset}: {len(data.train_raw)} training / {len(data.val)} held-out crystals, {where_short}\n"
              f"training {len(configs)} models ({', '.join(args.models)}: {len(strategies)} strategies × "
              f"{len(args.bases)} label bases × {args.seeds} seeds), {args.epochs} epochs of batch {args.batch_size}, "
              f"{device}, {torch.get_num_threads()} torch thread(s)", flush=True)
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
        record = {
            "dataset": dataset, "commands": commands, "machine": machine,
            "data": {"train_size": len(data.train_raw), "val_size": len(data.val), "max_atoms": data.max_atoms,
                     "volume_per_atom": data.volume_per_atom, "label_reduction_not_ok": data.label_reduction_not_ok,
                     "reference": data.reference, "source": where},
            "summary": summarize(runs), "runs": runs,
        }
        write_outputs(dataset, record, out_dir)
        print(f"\n{dataset}: held-out crystals, mean ± std over {args.seeds} seed(s)\n")
        print(compact_table(record, strategies))
        print(LEGEND)
        print(f"\nfull table (stability columns, each run), JSON and figures: {out_dir}/ablation_{dataset}.*\n",
              flush=True)
    write_overview(out_dir)
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
