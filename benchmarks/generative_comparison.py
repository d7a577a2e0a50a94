"""The generative comparison across datasets, in one page: each setting against independent pairing.

Reads the committed results of :mod:`benchmarks.generative` (``generative_<dataset>.json``, the 4000-step
matrix of ``benchmarks/generative_matrix.sh``) and :mod:`benchmarks.sampler_study` (``sampler_study.json``,
Perov-5 at 20 000 steps with plain Euler and with anti-annealing) in ``--results``, and writes
``generative_comparison.{md,json}`` there: per dataset, each setting's match rate at 10 / 50 / 200 Euler
steps, RMSE and lattice error (mean ± sample std over seeds), and its match rate at 200 steps minus that
of independent pairing on the same seeds (paired: a seed fixes the network's initialisation, the batches
and the prior's draws), with the mean difference over its standard error (``Δ / se``, Student's t with
``n − 1`` degrees of freedom: beyond ±12.7 with 2 seeds, ±4.3 with 3, the seeds agree at two-sided 5%).
It also names settings that trained the same network on a seed (equal parameter checksums; in the
sampler study, identical results with every sampler). Trains nothing. From the repository root::

    python -m benchmarks.generative_comparison
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from .generative import _mean_std
from .harness.report import RESULTS, command_line, header, markdown_table, write_results

DATASETS = ("perov_5", "carbon_24", "mp_20_biternary")
#: (strategy, basis, coupling, what it is), in the order of the issue's comparison.
SETTINGS = (
    ("mse", "niggli", "independent", "Niggli labels, `mse`, independent pairing"),
    ("mse", "niggli", "automorphisms:random", "coupling among automorphisms, random ties (library default)"),
    ("mse", "niggli", "automorphisms", "coupling among automorphisms, ties by coordinates"),
    ("mse", "niggli", "reduced-forms", "coupling among all reduced forms, ties by coordinates"),
    ("mse", "random", "automorphisms:random", "random-basis labels, coupling (default)"),
    ("softmin", "niggli", "independent", "`softmin` as the x₁-loss"),
    ("proxy", "niggli", "independent", "`proxy` as the x₁-loss"),
    ("reduced-forms", "niggli", "independent", "`reduced-forms` as the x₁-loss"),
)
STEPS = ("10", "50", "200")


def _stats(values) -> tuple[float, float, int]:
    """(mean, sample std, count) of the finite values (:func:`benchmarks.generative._mean_std`)."""
    return (*_mean_std(values), sum(1 for x in values if x is not None and np.isfinite(x)))


def _pm(stats: tuple[float, float, int], digits: int = 3) -> str:
    mean, std, n = stats
    return "—" if not n else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _same_as(mine: dict[int, object], earlier: list[tuple[str, dict[int, object]]]) -> tuple[str, list[int], list[int]]:
    """The first earlier setting whose runs match ``mine`` (seed → fingerprint: a checksum of the trained
    parameters, or every result) on some seed: ``(its label, the seeds that match, the shared seeds that
    do not)``, ``("", [], [])`` if none. Seeds without a fingerprint (``None``) count as neither."""
    for other, theirs in earlier:
        shared = sorted(k for k in set(mine) & set(theirs) if mine[k] is not None and theirs[k] is not None)
        same = [k for k in shared if mine[k] == theirs[k]]
        if same:
            return other, same, [k for k in shared if k not in same]
    return "", [], []


def _versus(this: dict[int, float], base: dict[int, float]) -> str:
    """``Δ (Δ / se), n seeds``: the mean over the seeds both have of the paired differences (seed → match
    rate), and its ratio to its standard error."""
    seeds = sorted(set(this) & set(base))
    d = np.array([this[k] - base[k] for k in seeds if np.isfinite(this[k]) and np.isfinite(base[k])], dtype=float)
    if not len(d):
        return "—"
    if len(d) == 1:
        return f"{d[0]:+.3f} (n/a, 1 seed)"
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    ratio = f"{d.mean() / se:+.1f}" if se > 0 else "n/a, equal differences"  # match rates are multiples of 1/n
    return f"{d.mean():+.3f} ({ratio}, {len(d)} seeds)"


def matrix_rows(dataset: str, runs: list[dict]) -> list[dict]:
    """One row per :data:`SETTINGS` entry present in ``runs`` (the 4000-step matrix: aligned prior)."""
    def runs_of(strategy, basis, coupling):
        return [r for r in runs if (r["config"]["strategy"], r["config"]["basis"], r["config"]["coupling"],
                                    bool(r["config"]["align_prior"])) == (strategy, basis, coupling, True)]

    def match_by_seed(rs) -> dict[int, float]:
        values = {r["config"]["seed"]: r["metrics"].get("200", {}).get("match_rate") for r in rs}
        return {seed: math.nan if v is None else float(v) for seed, v in values.items()}

    def checksums(rs) -> dict[int, float | None]:
        return {r["config"]["seed"]: r.get("state_checksum") for r in rs}

    base = match_by_seed(runs_of("mse", "niggli", "independent"))
    rows, trained = [], []
    for strategy, basis, coupling, label in SETTINGS:
        rs = runs_of(strategy, basis, coupling)
        if not rs:
            continue
        row = {"dataset": dataset, "setting": label, "strategy": strategy, "basis": basis, "coupling": coupling,
               "seeds": sorted(r["config"]["seed"] for r in rs), "steps": sorted({r["steps"] for r in rs})}
        # Two settings can train the same network: on Perov-5 every reduced form is an automorphism, so the
        # coupling among all of them is the coupling among automorphisms. The same sum of the trained
        # parameters (float64) on a seed says so; the first earlier setting that shares one is named, with
        # the seeds where it does and those where it does not (runs of other code versions, for example).
        mine = checksums(rs)
        row["same_as"], row["same_seeds"], row["other_seeds"] = _same_as(mine, trained)
        trained.append((label, mine))
        for k in STEPS:
            row[f"match@{k}"] = _stats([r["metrics"].get(k, {}).get("match_rate") for r in rs])
        row["rmse"] = _stats([r["metrics"].get("200", {}).get("rmse") for r in rs])
        row["lattice_error"] = _stats([r["metrics"].get("200", {}).get("lattice_error") for r in rs])
        row["minutes"] = _stats([(r["train_time"] + r.get("eval_time", 0)) / 60 for r in rs])
        row["versus_independent"] = "" if (strategy, basis, coupling) == ("mse", "niggli", "independent") else \
            _versus(match_by_seed(rs), base)
        rows.append(row)
    return rows


def sampler_rows(record: dict, training_steps: int = 20_000) -> list[dict]:
    """Perov-5 at ``training_steps`` from the sampler study: one row per :data:`SETTINGS` entry present and
    sampler (plain Euler, anti-annealing 3), each against independent pairing with the same sampler."""
    runs = [r for r in record["runs"] if r["training_steps"] == training_steps]

    def runs_of(strategy, basis, coupling):
        return [r for r in runs if (r.get("strategy", "mse"), r.get("basis", "niggli"), r["coupling"])
                == (strategy, basis, coupling)]

    def outcomes(rs) -> dict[int, tuple]:
        """Per seed, every sampler's match rate and RMSE at every step count."""
        return {r["seed"]: tuple((x["sampler"], x["steps"], x["match_rate"], x["rmse"]) for x in r["rows"]) for r in rs}

    # Settings whose runs gave identical results on every sampler, seed by seed (the study keeps no weights'
    # checksum): on Perov-5 the coupling among all reduced forms is the one among automorphisms.
    same: dict[str, tuple[str, list[int]]] = {}
    seen: list[tuple[str, dict]] = []
    for strategy, basis, coupling, label in SETTINGS:
        mine = outcomes(runs_of(strategy, basis, coupling))
        other, equal, differ = _same_as(mine, seen)
        if other and not differ:
            same[label] = (other, equal)
        if mine:
            seen.append((label, mine))

    rows = []
    for sampler in ("euler", "anneal=3"):
        base = None
        for strategy, basis, coupling, label in SETTINGS:
            rs = runs_of(strategy, basis, coupling)
            if not rs:
                continue
            by = [{x["steps"]: x for x in r["rows"] if x["sampler"] == sampler} for r in rs]
            row = {"dataset": rs[0]["dataset"], "setting": label, "strategy": strategy, "basis": basis,
                   "coupling": coupling, "sampler": sampler, "seeds": sorted(r["seed"] for r in rs),
                   "steps": [training_steps], "same_as": same.get(label, ("", []))[0],
                   "same_seeds": same.get(label, ("", []))[1]}
            for k in STEPS:
                row[f"match@{k}"] = _stats([b[int(k)]["match_rate"] for b in by])
            row["rmse"] = _stats([b[200]["rmse"] for b in by])
            row["lattice_error"] = _stats([b[200]["lattice_error"] for b in by])
            by_seed = {r["seed"]: b[200]["match_rate"] for r, b in zip(rs, by)}
            is_base = (strategy, basis, coupling) == ("mse", "niggli", "independent")
            row["versus_independent"] = "" if is_base or base is None else _versus(by_seed, base)
            base = by_seed if is_base else base
            rows.append(row)
    return rows


def _table(rows: list[dict], first: list[str], first_cells) -> list[str]:
    return markdown_table(
        first + ["seeds", "match@10", "match@50", "match@200", "Δ match@200 vs independent, paired (Δ / se)", "RMSE",
                 "lattice err"], rows,
        lambda r: first_cells(r) + [str(len(r["seeds"])), *(_pm(r[f"match@{k}"]) for k in STEPS),
                                    r["versus_independent"] or "—", _pm(r["rmse"], 4), _pm(r["lattice_error"])])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=str(RESULTS / "generative"),
                    help="folder with generative_<dataset>.json and sampler_study.json (default: the committed ones)")
    ap.add_argument("--out", default=None, help="where to write the page (default: --results)")
    args = ap.parse_args(argv)
    folder = Path(args.results)
    if not any((folder / f"generative_{d}.json").exists() for d in DATASETS) and not (folder / "sampler_study.json").exists():
        ap.error(f"--results: no generative_<dataset>.json or sampler_study.json in {folder}")
    record = {"command": command_line("generative_comparison", argv), "machine": "", "datasets": {}, "sources": []}
    lines = []
    machines = []
    for dataset in DATASETS:
        path = folder / f"generative_{dataset}.json"
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        machines.append(saved.get("machine", ""))
        rows = matrix_rows(dataset, saved["runs"])
        record["datasets"][dataset] = rows
        record["sources"].append(path.name)
        d = saved["data"]
        steps = ", ".join(str(s) for s in sorted({s for r in rows for s in r["steps"]}))
        lines += [f"## {dataset}: {steps} steps", "",
                  f"{d['train_size']} training / {d['val_size']} held-out crystals ({d['source']}); the budget and "
                  f"every command: [generative_{dataset}.md](generative_{dataset}.md).", ""]
        lines += _table(rows, ["setting"], lambda r: [r["setting"]]) + [""]
        lines += [f"- {r['setting']}: the same trained network as {r['same_as']} on seed(s) "
                  f"{', '.join(map(str, r['same_seeds']))} (equal sums of the trained parameters)"
                  + (f"; another on seed(s) {', '.join(map(str, r['other_seeds']))}" if r["other_seeds"] else "")
                  + "." for r in rows if r["same_as"]]
        lines += [""] if any(r["same_as"] for r in rows) else []
    study = folder / "sampler_study.json"
    if study.exists():
        saved = json.loads(study.read_text())
        machines.append(saved.get("machine", ""))
        rows = sampler_rows(saved)
        if rows:
            record["datasets"]["perov_5@20000"] = rows
            record["sources"].append(study.name)
            lines += ["## perov_5: 20 000 steps, two samplers", "",
                      "The same models sampled with plain Euler steps and with FlowMM's anti-annealing (the "
                      "coordinates' velocity scaled by 1 + 3t); every command: "
                      "[sampler_study.md](sampler_study.md).", ""]
            lines += _table(rows, ["setting", "sampler"], lambda r: [r["setting"], r["sampler"]]) + [""]
            identical = {r["setting"]: r for r in rows if r["same_as"]}.values()
            lines += [f"- {r['setting']}: the same results as {r['same_as']} with every sampler, at every step "
                      f"count, on seed(s) {', '.join(map(str, r['same_seeds']))}." for r in identical]
            lines += [""] if identical else []
    # Every source names its machine; the first stands for them here.
    record["machine"] = next((m for m in machines if m), "named in each source file")
    intro = ["Built from " + ", ".join(f"`{s}`" for s in record["sources"]) + " (each names its commands, data "
             "files and machine). Flow matching, x₁-prediction, prior rotation aligned, one CPU thread per run. "
             "Match rate (StructureMatcher stol 0.5, angle_tol 10, ltol 0.3) at 10 / 50 / 200 Euler steps, RMSE "
             "and lattice error at 200; mean ± sample std over seeds. Δ: the setting's match rate at 200 steps "
             "minus independent pairing's on the same seed, averaged over the seeds both have, with the mean "
             "over its standard error in parentheses (n/a with one seed). With so few seeds read it as Student's t with "
             "n − 1 degrees of freedom: the seeds agree on the sign (two-sided 5%) beyond ±12.7 with 2 seeds, ±4.3 "
             "with 3; a large ratio from 2 seeds can be chance.", ""]
    text = "\n".join(header("Generative comparison: each setting against independent pairing", record["command"],
                            record["machine"]) + intro + lines)
    print(text)
    write_results(args.out or folder, "generative_comparison", text, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
