"""Reporting of the ablation (:mod:`benchmarks.ablation`): summary over seeds, tables, JSON, figures.

Everything here is computed from run records (the dicts of :func:`benchmarks.harness.training.train_one`), so
the tables and figures can be rebuilt from a results JSON without training (``--rebuild``).
A dataset's record holds ``dataset``, ``commands`` (every command whose runs it holds), ``machine``,
``data`` (sizes, source, reference scores), ``summary`` (:func:`summarize`) and ``runs``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from .harness.report import markdown_table, pyplot, write_results
from .harness.training import BASES, STRATEGIES, parse_strategy

__all__ = ["LEGEND", "SUMMARY_METRICS", "compact_table", "figures", "markdown", "run_key", "summarize", "table",
           "write_outputs", "write_overview"]

SUMMARY_METRICS = ("lattice_error", "volume_error", "match_rate", "rmse")


def run_key(run: dict) -> tuple:
    """What identifies a run: a merge replaces an old run with the same key."""
    return (run["dataset"], run["model"], run["strategy"], run["basis"], run["seed"], run.get("rotate", False))


def _mean_std(values) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (model, strategy, basis, rotate): mean and sample std over seeds, stability totals."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["strategy"], r["basis"], r.get("rotate", False)), []).append(r)
    strategy_rank = {s: i for i, s in enumerate(STRATEGIES)}
    basis_rank = {b: i for i, b in enumerate(BASES)}
    rows = []
    for (model, strategy, basis, rotate), rs in groups.items():
        row = {"model": model, "strategy": strategy, "basis": basis, "rotate": rotate, "seeds": len(rs),
               "epochs": sorted({r["epochs"] for r in rs})}
        for m in SUMMARY_METRICS + ("lattice_failures",):
            row[m], row[m + "_std"] = _mean_std([r["metrics"].get(m) for r in rs])
        firsts = [r["first_exception_step"] for r in rs if r["first_exception_step"] is not None]
        row["runs_with_exceptions"] = len(firsts)
        row["first_exception_step"] = min(firsts) if firsts else None
        for m in ("exception_steps", "nan_steps", "non_ok_status", "fallback", "excluded", "steps", "crystals_seen"):
            row[m] = float(np.mean([r[m] for r in rs]))
        row["time_per_epoch"], row["time_per_epoch_std"] = _mean_std([r["time_per_epoch"] for r in rs])
        row["basis_skew"] = float(np.nanmedian([r["basis_skew"] for r in rs])) if any(
            np.isfinite(r["basis_skew"]) for r in rs) else math.nan
        # Best validation error over epochs: separates "never learned" from "learned, then fell apart".
        row["best_val_lattice_error"], row["best_val_lattice_error_std"] = _mean_std(
            [min(r["curves"]["val_lattice_error"]) for r in rs])
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], strategy_rank.get(parse_strategy(r["strategy"])[0], 99), r["strategy"],
                             basis_rank.get(r["basis"], 99), r["rotate"]))
    return rows


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"


#: The columns of :func:`table`.
COLUMNS = ("model", "strategy", "basis", "lattice err ↓", "best epoch err", "volume err ↓", "match rate ↑",
           "RMSE ↓", "spglib fails", "skew", "exc. steps", "first exc. step", "NaN steps", "non-OK", "fallback",
           "s/epoch")


def _cells(r: dict) -> list[str]:
    first = ("—" if r["first_exception_step"] is None
             else f"{r['first_exception_step']} ({r['runs_with_exceptions']}/{r['seeds']})")
    skew = "—" if not np.isfinite(r["basis_skew"]) else (f"{r['basis_skew']:.2f}" if r["basis_skew"] < 100
                                                          else f"{r['basis_skew']:.1e}")
    return [r["model"], r["strategy"], r["basis"] + ("+rot" if r["rotate"] else ""),
            _pm(r["lattice_error"], r["lattice_error_std"]),
            _pm(r["best_val_lattice_error"], r["best_val_lattice_error_std"]),
            _pm(r["volume_error"], r["volume_error_std"]), _pm(r["match_rate"], r["match_rate_std"]),
            _pm(r["rmse"], r["rmse_std"], 4), f"{r['lattice_failures']:.1f}", skew,
            f"{r['exception_steps']:.0f}/{r['steps']:.0f}", first, f"{r['nan_steps']:.0f}",
            f"{r['non_ok_status']:.0f}", f"{r['fallback']:.0f}", _pm(r["time_per_epoch"], r["time_per_epoch_std"], 2)]


def table(rows: list[dict]) -> str:
    """The full markdown table of a dataset's summary rows (:func:`summarize`), one row per configuration."""
    return "\n".join(markdown_table(COLUMNS, rows, _cells))


#: The one-line legend printed under :func:`compact_table`.
LEGEND = ("legend: lattice error 0 = exact, 1 = collapsed (any basis); match = StructureMatcher rate; no learning = "
          "a cube of the mean volume; labels niggli/raw/random = canonical/as stored/re-based each epoch")


def _pm_short(mean: float, std: float, digits: int) -> str:
    if mean is None or not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}±{std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"


def compact_table(record: dict, order=()) -> str:
    """The table for a terminal (80 columns for three label bases): one row per strategy (per model where
    there are several), lattice error and match rate by label basis, mean ± std over seeds, with the
    no-learning reference first. ``order``: strategy names to list first, in that order."""
    rows = [r for r in record["summary"]]
    cols = []
    for b in BASES:
        for rot in (False, True):
            if any(r["basis"] == b and r["rotate"] == rot for r in rows):
                cols.append((b, rot))
    models = list(dict.fromkeys(r["model"] for r in rows))
    strategies = [s for s in order if any(r["strategy"] == s for r in rows)]
    strategies += [s for s in dict.fromkeys(r["strategy"] for r in rows) if s not in strategies]
    keys = [(m, s) for m in models for s in strategies if any(r["model"] == m and r["strategy"] == s for r in rows)]
    label = {k: (k[1] if len(models) == 1 else f"{k[0]} {k[1]}") for k in keys}
    width = max([15] + [len(v) + 2 for v in label.values()])
    names = [b + ("+rot" if rot else "") for b, rot in cols]
    heads = ("lattice error ↓ by label basis", "match rate ↑ by label basis")
    block = max(12 * len(cols), len(heads[0]) + 2)  # width of the lattice-error columns together

    def line(first: str, errors, matches) -> str:
        return (first.ljust(width) + "".join(e.ljust(12) for e in errors).ljust(block)
                + "".join(m.ljust(10) for m in matches)).rstrip()

    ref = record["data"]["reference"]["lattice_error"]
    lines = [line("", [heads[0]], [heads[1]]), line("strategy", names, names),
             line("no learning", [f"{ref:.3f}"] * len(cols), ["—"] * len(cols))]
    for key in keys:
        found = [next((r for r in rows if (r["model"], r["strategy"]) == key and (r["basis"], r["rotate"]) == c),
                      None) for c in cols]
        lines.append(line(label[key], [_pm_short(r["lattice_error"], r["lattice_error_std"], 3) if r else ""
                                       for r in found],
                          [_pm_short(r["match_rate"], r["match_rate_std"], 2) if r else "" for r in found]))
    return "\n".join(lines)


def markdown(dataset: str, record: dict) -> str:
    rows = record["summary"]
    runs = record["runs"]
    epochs = sorted({r["epochs"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    losses = {}
    for r in runs:
        losses.setdefault(r["strategy"], r["loss"])
    exceptions = {}
    for r in runs:
        if r["first_exception"] and (r["strategy"] not in exceptions
                                     or r["first_exception_step"] < exceptions[r["strategy"]][2]):
            exceptions[r["strategy"]] = (r["basis"], r["seed"], r["first_exception_step"], r["first_exception"])
    info = record["data"]
    out = [f"# Ablation on `{dataset}`", "", "Made by:", "", "```"]
    out += record["commands"]
    out += ["```", "",
            f"Data: {info['train_size']} training and {info['val_size']} held-out crystals "
            f"(at most {info['max_atoms']} atoms; {info['source']}). Labels whose guarded Niggli reduction was not OK: "
            f"{info['label_reduction_not_ok']}. "
            f"Budget per run: {', '.join(map(str, epochs))} epochs of batch {runs[0]['batch_size']} "
            f"(Adam, lr {runs[0]['lr']}, gradient norm clipped at {runs[0]['grad_clip']}); seeds {seeds}; "
            f"same initial weights, batch order and random bases for every strategy of a seed.",
            "",
            f"Reference (no learning): a cube of the training mean volume per atom scores lattice error "
            f"{info['reference']['lattice_error']:.3f}, volume error {info['reference']['volume_error']:.3f}.",
            "", table(rows), "",
            "Columns: mean ± sample std over seeds. *lattice err*: relative distance of the spglib-Niggli-reduced "
            "G6 vectors of prediction and label (basis- and rotation-invariant; a prediction spglib cannot reduce "
            "scores 1.0 and is counted in *spglib fails*, mean per run). *best epoch err*: the lowest validation "
            "lattice error over the epochs (no match), which separates never learning from learning and then "
            "falling apart. *volume err*: |V_pred − V|/V. *skew*: median over held-out crystals of "
            "‖L_pred‖/‖N L_pred‖ (1 = the model emits Niggli-reduced bases; large = it drifted into skewed "
            "bases), median over seeds. "
            "*match rate*, *RMSE*: pymatgen StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3) as in DiffCSP "
            "(RMSE over matched crystals; predictions with an interatomic distance < 0.5 Å, or a volume outside "
            "[V/10, 10V], count as unmatched). *exc. steps*: training steps whose loss raised (caught, step "
            "skipped), mean per run / steps per run; *first exc. step*: earliest over seeds (runs with any), the "
            "step where a training loop without the guard would have crashed. *NaN steps*: steps with a non-finite "
            "loss or gradient (skipped). *non-OK*, *fallback*: predicted crystals with a non-OK reducer status, "
            "and those the loss's fallback handled, summed over a run. *s/epoch*: training wall time per epoch "
            "(on the machine named below).",
            "", "Strategies as built (options, coordinate term):", ""]
    for s, rep in losses.items():
        out.append(f"- `{s}`: `{rep}`")
    if exceptions:
        out += ["", "Earliest exception per strategy (basis, seed, step, message):", ""]
        for s, (b, seed, k, msg) in exceptions.items():
            out.append(f"- `{s}` ({b}, seed {seed}, step {k}): `{msg[:200]}`")
    out += ["", f"Figures: `ablation_{dataset}_curves.png` (validation lattice error per epoch, mean over seeds), "
            f"`ablation_{dataset}_metrics.png` (final metrics, mean ± std). Raw numbers: `ablation_{dataset}.json`.",
            "", f"Machine: {record['machine']}.", ""]
    return "\n".join(out)


def _row(rows: list[dict], model: str, strategy: str, basis: str) -> dict | None:
    """The summary row of (model, strategy, basis) without rotation, or None."""
    return next((r for r in rows if r["model"] == model and r["strategy"] == strategy and r["basis"] == basis
                 and not r["rotate"]), None)


def _save(plt, fig, axes, suptitle: str, path: Path, right: float, **legend) -> Path:
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper right", **legend)
    fig.suptitle(suptitle)
    fig.tight_layout(rect=(0, 0, right, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figures(dataset: str, record: dict, out_dir: Path) -> list[Path]:
    """``ablation_<dataset>_curves.png`` (validation lattice error per epoch, mean ± std over seeds) and
    ``ablation_<dataset>_metrics.png`` (final metrics, mean ± std over seeds); returns their paths."""
    plt = pyplot()
    runs = record["runs"]
    models = sorted({r["model"] for r in runs})
    bases = [b for b in BASES if any(r["basis"] == b for r in runs)]
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]
    strategies += sorted({r["strategy"] for r in runs} - set(strategies))
    colors = {s: plt.cm.tab10(i) for i, s in enumerate(strategies)}

    fig, axes = plt.subplots(len(models), len(bases), figsize=(4.2 * len(bases), 3.3 * len(models)),
                             squeeze=False, sharey=True)
    for i, model in enumerate(models):
        for j, basis in enumerate(bases):
            ax = axes[i][j]
            for s in strategies:
                rs = [r for r in runs if r["model"] == model and r["basis"] == basis and r["strategy"] == s
                      and not r.get("rotate", False)]
                if not rs:
                    continue
                length = min(len(r["curves"]["val_lattice_error"]) for r in rs)
                curves = np.array([r["curves"]["val_lattice_error"][:length] for r in rs])
                x = rs[0]["curves"]["epoch"][:length]
                m, sd = curves.mean(0), curves.std(0)
                ax.plot(x, m, color=colors[s], label=s)
                ax.fill_between(x, m - sd, m + sd, color=colors[s], alpha=0.15)
            ax.axhline(record["data"]["reference"]["lattice_error"], color="gray", ls=":", lw=1)
            ax.set_title(f"{model}, {basis} labels")
            ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("val lattice error")
            ax.set_yscale("log")
    paths = [_save(plt, fig, axes, f"{dataset}: basis-invariant lattice error on held-out crystals "
                   "(dotted: cube reference)", out_dir / f"ablation_{dataset}_curves.png", 0.9)]

    labels = {"lattice_error": "lattice error ↓", "volume_error": "volume error ↓", "match_rate": "match rate ↑",
              "rmse": "RMSE ↓"}
    fig, axes = plt.subplots(len(models), 4, figsize=(17, 3.4 * len(models)), squeeze=False)
    width = 0.8 / max(len(bases), 1)
    for i, model in enumerate(models):
        for k, metric in enumerate(SUMMARY_METRICS):
            ax = axes[i][k]
            for j, basis in enumerate(bases):
                found = [_row(record["summary"], model, s, basis) for s in strategies]
                ms = [row[metric] if row else np.nan for row in found]
                ss = [row[metric + "_std"] if row else np.nan for row in found]
                x = np.arange(len(strategies)) + (j - (len(bases) - 1) / 2) * width
                ax.bar(x, np.nan_to_num(ms), width, yerr=np.nan_to_num(ss), capsize=2, label=basis)
            ax.set_xticks(np.arange(len(strategies)), strategies, rotation=30, fontsize=8)
            ax.set_title(f"{model}: {labels[metric]}")
    paths.append(_save(plt, fig, axes, f"{dataset}: final metrics on held-out crystals (mean ± std over seeds)",
                       out_dir / f"ablation_{dataset}_metrics.png", 0.94, title="labels"))
    return paths


def write_overview(out_dir: Path) -> Path | None:
    """``ablation_overview.md``: lattice error and match rate of every dataset found in ``out_dir``, one
    compact table per metric (rows: model and strategy; columns: dataset and label basis)."""
    records = []
    for p in sorted(out_dir.glob("ablation_*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "summary" in rec and "dataset" in rec:
            records.append(rec)
    if not records:
        return None
    cols = [(rec["dataset"], b) for rec in records for b in BASES
            if any(r["basis"] == b and not r["rotate"] for r in rec["summary"])]
    keys = []
    for rec in records:
        for r in rec["summary"]:
            if (r["model"], r["strategy"]) not in keys:
                keys.append((r["model"], r["strategy"]))
    lines = ["# Ablation overview", "",
             "Built from the `ablation_<dataset>.json` files next to this one (see each `ablation_<dataset>.md` for "
             "the command, data sizes, budget and the stability columns). Mean ± sample std over seeds.", ""]
    for metric, title in (("lattice_error", "Basis-invariant lattice error ↓"), ("match_rate", "Match rate ↑"),
                          ("volume_error", "Volume error ↓")):
        rows = []
        for model, strategy in keys:
            cells = [model, strategy]
            for d, b in cols:
                rec = next(x for x in records if x["dataset"] == d)
                row = _row(rec["summary"], model, strategy, b)
                cells.append(_pm(row[metric], row[metric + "_std"]) if row else "")
            rows.append(cells)
        lines += [f"## {title}", "", *markdown_table(["model", "strategy", *(f"{d} {b}" for d, b in cols)], rows), ""]
    refs = ", ".join(f"{rec['dataset']} {rec['data']['reference']['lattice_error']:.3f}" for rec in records)
    lines += [f"Reference lattice error of a cube of the training mean volume per atom (no learning): {refs}.", ""]
    path = out_dir / "ablation_overview.md"
    path.write_text("\n".join(lines))
    return path


def write_outputs(dataset: str, record: dict, out_dir: Path) -> None:
    """The JSON, markdown and figures of one dataset's record."""
    write_results(out_dir, f"ablation_{dataset}", markdown(dataset, record), record)
    try:
        figures(dataset, record, out_dir)
    except Exception as err:  # noqa: BLE001 - a plotting problem must not lose the numbers
        print(f"warning: figures for {dataset} failed: {err}", file=sys.stderr)
