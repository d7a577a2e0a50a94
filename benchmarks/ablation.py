"""Ablation: does handling the change of basis (Type III) in the loss let a CSP model learn from labels
in any basis as well as from canonicalised ones, and which strategy does it best?

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular.

One model is trained per (dataset, model, strategy, label basis, seed), all with the same data, the
same number of epochs and steps, the same initial weights and batch order for a given seed, and the
same random bases for a given seed; then it is evaluated on a held-out split.

* **Strategies** are loss names from :func:`soft_niggli.losses.get_loss` (the library's and the
  baselines'), built with their default options unless ``--loss-options`` says otherwise; names not
  registered here are skipped with a warning.
* **Label bases**: ``niggli`` (what DiffCSP does, the reference: every label Niggli-reduced once with
  :func:`soft_niggli.losses.canonicalize_labels` and put in the standard orientation of its cell
  parameters, see :func:`diffcsp_canonical`); ``raw`` (the cells as stored, in the orientation the
  file gives); ``random`` (every epoch, each ``niggli`` label re-based by a fresh random unimodular
  matrix with entries bounded by 2, :func:`soft_niggli.random_unimodular`: the same Cartesian lattice
  as ``niggli``, only the basis differs; with ``--rotate`` also rotated by a random proper rotation,
  ``L' = L Qᵀ``, which only strategies with a rotation-invariant lattice term can follow).
* **Metrics** (held-out split, :mod:`soft_niggli.metrics`): basis-invariant lattice error (relative
  distance of spglib-Niggli-reduced G6 vectors; a failed reduction scores 1.0 and is counted), relative
  volume error, DiffCSP's match rate and RMSE (``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``).
* **Training stability**, per run: steps whose loss raised (caught, counted, the step skipped; the
  first such step is where an unguarded training loop would have crashed), steps with a non-finite
  loss or gradient (skipped), predictions the loss excluded, non-OK reducer statuses and fallback uses
  reported in :class:`~soft_niggli.losses.LossResult`, and wall time per epoch.

Writes ``<out>/ablation_<dataset>.{md,json}`` plus ``ablation_<dataset>_curves.png`` (validation
lattice error per epoch) and ``ablation_<dataset>_metrics.png`` (final metrics, mean ± std over seeds),
and prints the table. With ``--merge`` new runs are added to an existing JSON (replacing runs with the
same dataset, model, strategy, basis, seed and rotation) and the table and figures are rebuilt from all.

    python benchmarks/ablation.py                     # default: aflow (bundled with pymatgen), < 10 min
    python benchmarks/ablation.py --datasets perov_5 mp_20 carbon_24 --seeds 3 --train-size 1000 --val-size 200
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout: benchmarks/ and baselines/ are siblings

from benchmarks.models import MODELS, build_model  # noqa: E402
from soft_niggli import (  # noqa: E402
    CrystalBatch,
    Status,
    lattice_from_parameters,
    lattice_parameters,
    random_unimodular,
)
from soft_niggli.datasets import DATASETS, load_dataset  # noqa: E402
from soft_niggli.losses import available_losses, canonicalize_labels, get_loss  # noqa: E402
from soft_niggli.metrics import evaluate, lattice_error, volume_error  # noqa: E402
from soft_niggli.niggli import niggli_reduce  # noqa: E402

RESULTS = HERE / "results"
STRATEGIES = ("mse", "proxy-spglib", "proxy", "softmin", "gram")
BASES = ("niggli", "raw", "random")
SUMMARY_METRICS = ("lattice_error", "volume_error", "match_rate", "rmse")

# Defaults sized so that the default invocation (aflow, 5 strategies x 3 bases x 2 seeds, MLP, 30 runs)
# finishes in under 10 minutes on a shared 2-core CPU: measured 2.7 minutes (load average ~1.5) and
# 3.4 minutes (load average ~4, other jobs running), 1 torch thread.
DEFAULT_EPOCHS = 50
DEFAULT_BATCH = 32


# ------------------------------------------------------------------------------------------- data


@dataclass
class Data:
    name: str
    train_raw: CrystalBatch  # cells as stored
    train_niggli: CrystalBatch  # the same crystals as DiffCSP stores them (diffcsp_canonical)
    val: CrystalBatch
    max_atoms: int
    volume_per_atom: float
    label_reduction_not_ok: int
    reference: dict


def _reference(val: CrystalBatch, volume_per_atom: float) -> dict:
    """Scores of a label-free guess, to read the table against: a cube of the training mean volume per atom."""
    side = (volume_per_atom * val.num_atoms.double()).pow(1 / 3)
    cubes = side[:, None, None] * torch.eye(3, dtype=torch.float64)
    err, _ = lattice_error(cubes, val.lattice)
    return {"lattice_error": float(err.mean()), "volume_error": float(volume_error(cubes, val.lattice).mean())}


def diffcsp_canonical(batch: CrystalBatch) -> tuple[CrystalBatch, torch.Tensor]:
    """Labels as DiffCSP's data pipeline canonicalises them: Niggli-reduced, then rotated to the standard
    orientation of their cell parameters (a along x, b in the xy plane).

    Reduction by :func:`~soft_niggli.losses.canonicalize_labels` (the guarded reducer); a left-handed
    reduced basis is first replaced by its negative (``M = -I``, the same Niggli metric), so that the
    re-orientation is a proper rotation and never mirrors the crystal (DiffCSP's ``from_parameters``
    would). Fractional coordinates are unchanged by the rotation. Returns ``(labels, reducer status)``.
    """
    reduced, status = canonicalize_labels(batch)
    eye = torch.eye(3, dtype=torch.int64, device=batch.device)
    left = torch.linalg.det(reduced.lattice) < 0
    reduced = reduced.apply_basis_change(torch.where(left[:, None, None], -eye, eye))
    standard = lattice_from_parameters(*lattice_parameters(reduced.lattice).unbind(-1))
    return CrystalBatch(standard, reduced.frac, reduced.num_atoms, reduced.species), status


def prepare_data(name: str, train_size: int | None, val_size: int | None, data_dir: str | None,
                 max_atoms: int | None, device: torch.device) -> Data:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = load_dataset(name, "train", data_dir, limit=train_size, max_atoms=max_atoms)
        val = load_dataset(name, "val", data_dir, limit=val_size, max_atoms=max_atoms)
    if not train or not val:
        raise ValueError(f"dataset {name!r}: expected non-empty train and val splits, got {len(train)} and {len(val)}")
    train_raw = CrystalBatch.from_structures(train, dtype=torch.float64, device=device)
    val_b = CrystalBatch.from_structures(val, dtype=torch.float64, device=device)
    train_niggli, status = diffcsp_canonical(train_raw)
    vpa = float(np.mean([s.volume / len(s) for s in train]))
    n_max = max(max(len(s) for s in train), max(len(s) for s in val))
    return Data(name, train_raw, train_niggli, val_b, n_max, vpa, int((status != int(Status.OK)).sum()),
                _reference(val_b, vpa))


def select(batch: CrystalBatch, idx: torch.Tensor) -> CrystalBatch:
    """The crystals ``idx`` of ``batch`` (in that order) as a new batch."""
    first = torch.cumsum(batch.num_atoms, 0) - batch.num_atoms
    counts = batch.num_atoms[idx]
    owner = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts)
    start = torch.cumsum(counts, 0) - counts
    atoms = first[idx][owner] + torch.arange(int(counts.sum()), device=idx.device) - start[owner]
    return CrystalBatch(batch.lattice[idx], batch.frac[atoms], counts, batch.species[atoms])


def random_rotations(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """``(n, 3, 3)`` proper rotations, Haar-distributed (QR of a Gaussian with the sign fix)."""
    A = torch.randn(n, 3, 3, generator=generator, dtype=dtype)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(Q)
    Q[:, :, 0] = Q[:, :, 0] * det[:, None]
    return Q


def epoch_labels(data: Data, basis: str, generator: torch.Generator, rotate: bool) -> CrystalBatch:
    """Training labels of one epoch in the requested basis (``random``: fresh matrices each call)."""
    if basis == "niggli":
        labels = data.train_niggli
    elif basis == "raw":
        labels = data.train_raw
    else:
        n = len(data.train_niggli)
        M = random_unimodular((n,), max_entry=2, generator=generator).to(data.train_niggli.device)
        labels = data.train_niggli.apply_basis_change(M)
    if rotate:
        Q = random_rotations(len(labels), generator).to(labels.lattice)
        labels = CrystalBatch(labels.lattice @ Q.transpose(-1, -2), labels.frac, labels.num_atoms, labels.species)
    return labels


def parse_strategy(spec: str) -> tuple[str, dict]:
    """``"name"`` or ``"name:key=value,key=value"`` → ``(name, options)``; values are read as JSON where
    they parse (numbers, ``true``/``false``), else kept as strings: ``"proxy:frame=prediction"``."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"strategy {spec!r}: expected name:key=value[,key=value], got item {item!r}")
        if value in ("True", "False"):
            options[key] = value == "True"
            continue
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return name, options


# --------------------------------------------------------------------------------------- training


def _predict(model, batch: CrystalBatch) -> CrystalBatch:
    L, F = model(batch)
    return CrystalBatch(L.double(), F.double(), batch.num_atoms, batch.species)


def basis_skew(lattice: torch.Tensor) -> float:
    """Median over crystals of ``‖L‖_F / ‖N L‖_F`` (>= 1; 1 when the emitted basis is already Niggli-reduced).

    A diagnostic of drift into skewed bases (design notes); measured with the guarded reducer on the
    crystals it reduces ``OK``. NaN when none does.
    """
    res = niggli_reduce(lattice.detach())
    ok = res.status == int(Status.OK)
    if not bool(ok.any()):
        return math.nan
    ratio = lattice.detach()[ok].flatten(1).norm(dim=1) / res.lattice[ok].flatten(1).norm(dim=1)
    return float(ratio.median())


def _val_diagnostics(model, data: Data) -> tuple[float, int, float]:
    model.eval()
    with torch.no_grad():
        pred = _predict(model, data.val)
    model.train()
    err, failed = lattice_error(pred.lattice, data.val.lattice)
    return float(err.mean()), int(failed.sum()), basis_skew(pred.lattice)


def train_one(data: Data, strategy: str, basis: str, model_name: str, seed: int, *, epochs: int, batch_size: int,
              lr: float, grad_clip: float, rotate: bool, loss_options: dict, match: bool, device: torch.device,
              progress=None) -> dict:
    """Train and evaluate one model; returns the run's record (config, stability counts, curves, metrics)."""
    torch.manual_seed(seed)  # same initial weights for every strategy and basis of a seed
    model = build_model(model_name, max_atoms=data.max_atoms, volume_per_atom=data.volume_per_atom).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    name, spec_options = parse_strategy(strategy)
    loss_fn = get_loss(name, **{**loss_options, **spec_options})
    order_gen = torch.Generator().manual_seed(10_000 + seed)  # batch order: same for every strategy
    basis_gen = torch.Generator().manual_seed(20_000 + seed)  # random bases: same for every strategy

    n = len(data.train_raw)
    stats = Counter()
    exception_types = Counter()
    first_exception_step, first_exception = None, None
    curves = {"epoch": [], "train_loss": [], "train_terms": [], "val_lattice_error": [], "val_lattice_failures": [],
              "val_basis_skew": [], "exceptions": [], "epoch_time": []}

    def record(epoch, loss, terms, exceptions, dt):
        err, fail, skew = _val_diagnostics(model, data)
        for k, v in (("epoch", epoch), ("train_loss", loss), ("train_terms", terms), ("val_lattice_error", err),
                     ("val_lattice_failures", fail), ("val_basis_skew", skew), ("exceptions", exceptions),
                     ("epoch_time", dt)):
            curves[k].append(v)
        return err

    step = 0
    record(0, None, {}, 0, 0.0)
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        labels = epoch_labels(data, basis, basis_gen, rotate)
        perm = torch.randperm(n, generator=order_gen).to(device)
        losses, epoch_exceptions, term_sums = [], 0, Counter()
        for start in range(0, n, batch_size):
            step += 1
            stats["steps"] += 1
            target = select(labels, perm[start:start + batch_size])
            try:
                pred = _predict(model, target)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = loss_fn(pred, target)
                if not bool(torch.isfinite(res.loss)):
                    stats["nan_steps"] += 1
                    continue
                opt.zero_grad(set_to_none=True)
                res.loss.backward()
            except Exception as err:  # noqa: BLE001 - a strategy that raises is a result, not a crash
                stats["exception_steps"] += 1
                epoch_exceptions += 1
                exception_types[type(err).__name__] += 1
                if first_exception_step is None:
                    first_exception_step, first_exception = step, f"{type(err).__name__}: {str(err)[:300]}"
                continue
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            if not all(bool(torch.isfinite(g).all()) for g in grads):
                stats["nan_steps"] += 1
                continue
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            stats["updates"] += 1
            stats["crystals"] += len(target)
            stats["non_ok_status"] += int((res.status != int(Status.OK)).sum())
            stats["fallback"] += int(res.fallback.sum())
            stats["excluded"] += int(res.excluded.sum())
            losses.append(float(res.loss.detach()))
            for k, v in res.terms.items():
                term_sums[k] += float(v.detach().mean())
        dt = time.perf_counter() - t0
        terms = {k: v / len(losses) for k, v in term_sums.items()} if losses else {}
        err = record(epoch, float(np.mean(losses)) if losses else None, terms, epoch_exceptions, dt)
        if progress is not None:
            progress.set_postfix_str(f"{strategy}/{basis}/s{seed} ep {epoch} val err {err:.3f}", refresh=False)
            progress.update(1)

    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        pred = _predict(model, data.val)
    metrics = evaluate(pred, data.val, match=match)
    eval_time = time.perf_counter() - t0
    return {
        "dataset": data.name, "model": model_name, "strategy": strategy, "basis": basis, "seed": seed,
        "rotate": rotate, "epochs": epochs, "batch_size": batch_size, "lr": lr, "grad_clip": grad_clip,
        "train_size": n, "val_size": len(data.val), "loss": repr(loss_fn),
        "steps": stats["steps"], "updates": stats["updates"], "exception_steps": stats["exception_steps"],
        "first_exception_step": first_exception_step, "first_exception": first_exception,
        "exception_types": dict(exception_types), "nan_steps": stats["nan_steps"],
        "non_ok_status": stats["non_ok_status"], "fallback": stats["fallback"], "excluded": stats["excluded"],
        "crystals_seen": stats["crystals"],
        "time_per_epoch": float(np.mean(curves["epoch_time"][1:])) if epochs else 0.0,
        "eval_time": eval_time, "basis_skew": basis_skew(pred.lattice), "metrics": metrics, "curves": curves,
    }


# ---------------------------------------------------------------------------------------- summary


def _key(run: dict) -> tuple:
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


def table(rows: list[dict]) -> str:
    head = ("| model | strategy | basis | lattice err ↓ | best epoch err | volume err ↓ | match rate ↑ | RMSE ↓ "
            "| spglib fails | skew | exc. steps | first exc. step | NaN steps | non-OK | fallback | s/epoch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        basis = r["basis"] + ("+rot" if r["rotate"] else "")
        first = "—" if r["first_exception_step"] is None else f"{r['first_exception_step']} ({r['runs_with_exceptions']}/{r['seeds']})"
        exc = f"{r['exception_steps']:.0f}/{r['steps']:.0f}"
        skew = "—" if not np.isfinite(r["basis_skew"]) else (f"{r['basis_skew']:.2f}" if r["basis_skew"] < 100
                                                              else f"{r['basis_skew']:.1e}")
        lines.append(
            f"| {r['model']} | {r['strategy']} | {basis} | {_pm(r['lattice_error'], r['lattice_error_std'])} "
            f"| {_pm(r['best_val_lattice_error'], r['best_val_lattice_error_std'])} "
            f"| {_pm(r['volume_error'], r['volume_error_std'])} | {_pm(r['match_rate'], r['match_rate_std'])} "
            f"| {_pm(r['rmse'], r['rmse_std'], 4)} | {r['lattice_failures']:.1f} | {skew} | {exc} | {first} "
            f"| {r['nan_steps']:.0f} | {r['non_ok_status']:.0f} | {r['fallback']:.0f} "
            f"| {_pm(r['time_per_epoch'], r['time_per_epoch_std'], 2)} |")
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
            "(shared 2-core CPU, 1 torch thread).",
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


def figures(dataset: str, record: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = record["runs"]
    rows = record["summary"]
    models = sorted({r["model"] for r in runs})
    bases = [b for b in BASES if any(r["basis"] == b for r in runs)]
    strategies = [s for s in STRATEGIES if any(r["strategy"] == s for r in runs)]
    strategies += sorted({r["strategy"] for r in runs} - set(strategies))
    colors = {s: plt.cm.tab10(i) for i, s in enumerate(strategies)}
    paths = []

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
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="upper right")
    fig.suptitle(f"{dataset}: basis-invariant lattice error on held-out crystals (dotted: cube reference)")
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    p = out_dir / f"ablation_{dataset}_curves.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    labels = {"lattice_error": "lattice error ↓", "volume_error": "volume error ↓", "match_rate": "match rate ↑",
              "rmse": "RMSE ↓"}
    fig, axes = plt.subplots(len(models), 4, figsize=(17, 3.4 * len(models)), squeeze=False)
    width = 0.8 / max(len(bases), 1)
    for i, model in enumerate(models):
        for k, metric in enumerate(SUMMARY_METRICS):
            ax = axes[i][k]
            for j, basis in enumerate(bases):
                ms, ss = [], []
                for s in strategies:
                    row = next((r for r in rows if r["model"] == model and r["strategy"] == s
                                and r["basis"] == basis and not r["rotate"]), None)
                    ms.append(row[metric] if row else np.nan)
                    ss.append(row[metric + "_std"] if row else np.nan)
                x = np.arange(len(strategies)) + (j - (len(bases) - 1) / 2) * width
                ax.bar(x, np.nan_to_num(ms), width, yerr=np.nan_to_num(ss), capsize=2, label=basis)
            ax.set_xticks(np.arange(len(strategies)), strategies, rotation=30, fontsize=8)
            ax.set_title(f"{model}: {labels[metric]}")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, title="labels", fontsize=8, loc="upper right")
    fig.suptitle(f"{dataset}: final metrics on held-out crystals (mean ± std over seeds)")
    fig.tight_layout(rect=(0, 0, 0.94, 1))
    p = out_dir / f"ablation_{dataset}_metrics.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
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
        lines += [f"## {title}", "", "| model | strategy | " + " | ".join(f"{d} {b}" for d, b in cols) + " |",
                  "|" + "---|" * (len(cols) + 2)]
        for model, strategy in keys:
            cells = []
            for d, b in cols:
                rec = next(x for x in records if x["dataset"] == d)
                row = next((r for r in rec["summary"] if r["model"] == model and r["strategy"] == strategy
                            and r["basis"] == b and not r["rotate"]), None)
                cells.append(_pm(row[metric], row[metric + "_std"]) if row else "")
            lines.append(f"| {model} | {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    refs = ", ".join(f"{rec['dataset']} {rec['data']['reference']['lattice_error']:.3f}" for rec in records)
    lines += [f"Reference lattice error of a cube of the training mean volume per atom (no learning): {refs}.", ""]
    path = out_dir / "ablation_overview.md"
    path.write_text("\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------- main


def write_outputs(dataset: str, record: dict, out_dir: Path) -> None:
    """The JSON, markdown and figures of one dataset's record."""
    (out_dir / f"ablation_{dataset}.json").write_text(json.dumps(record, indent=1, default=float))
    (out_dir / f"ablation_{dataset}.md").write_text(markdown(dataset, record))
    try:
        figures(dataset, record, out_dir)
    except Exception as err:  # noqa: BLE001 - a plotting problem must not lose the numbers
        print(f"warning: figures for {dataset} failed: {err}", file=sys.stderr)


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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 is fastest for these small models)")
    ap.add_argument("--data-dir", default=None, help="folder of <dataset>/<split>.csv.gz (default ../shared/data)")
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


def _command(argv) -> str:
    return "python benchmarks/ablation.py" + ("" if not argv else " " + shlex.join(argv))


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
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{torch.get_num_threads()} thread(s), device {device}")
    command = _command(argv)
    records = {}
    t_start = time.perf_counter()
    for dataset in args.datasets:
        data = prepare_data(dataset, args.train_size, args.val_size, args.data_dir, args.max_atoms, device)
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
            new_keys = {_key(r) for r in runs}
            runs = [r for r in old["runs"] if _key(r) not in new_keys] + runs
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
