"""Robustness of Niggli reducers on the lattices an untrained model emits, and on re-based real cells.

For each suite and tool, every lattice is counted as one of
  reduced  the tool returned a cell that the independent checker (soft_niggli/testing/reduction_check.py)
           accepts: same lattice (exact transform, volume kept), Niggli conditions, and no {-1,0,1}
           change of basis shortens a+b+c;
  flagged  the tool said it failed (None, an exception, or a non-OK status);
  wrong    the tool returned a cell that is not a reduced equivalent cell, without saying so;
  hung     the call ran past the per-call budget and was killed.
A degenerate lattice (suite ``rank2``) has no reduced cell: there the right answer is ``flagged``.
Rows of a lattice are its vectors a, b, c.

The peers (soft_niggli.baselines.reducers: spglib, pymatgen, ASE, cctbx, moyopy) each run in a worker
process killed past the per-call budget, except spglib, which runs in-process. The budget is wall
time, so a loaded machine can turn a slow call into ``hung``.

From the repository root::

    python -m benchmarks.reducer_robustness                 # 500 per suite, every tool, writes results/
    python -m benchmarks.reducer_robustness --quick         # 100 per suite, prints the table only
    python -m benchmarks.reducer_robustness --tools moyopy --update   # redo one tool's rows in results/

Writes ``benchmarks/results/reducer_robustness.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from soft_niggli import Status, niggli_reduce, random_unimodular
from soft_niggli.baselines.reducers import PEER_REDUCERS, reduce_with, shutdown_workers
from soft_niggli.datasets import read_cdvae_cells, resolve_data_dir
from soft_niggli.testing.reduction_check import classify

from .harness.data import data_dir
from .harness.report import (RESULTS, command_line, header, load_average, machine_description, markdown_table,
                              write_results)

TOOLS = ("soft_niggli",) + PEER_REDUCERS
DEGENERATE_SUITES = {"rank2"}


# ----------------------------------------------------------------------------------------- suites

def gaussian(rng, n):
    """N(0, 1) entries: what a freshly initialised network's lattice head emits."""
    return rng.normal(size=(n, 3, 3))


def near_singular(rng, n):
    """A Gaussian cell with one random direction squeezed to 1e-6 of its size."""
    L = rng.normal(size=(n, 3, 3))
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    squeeze = np.eye(3) - (1 - 1e-6) * v[:, :, None] * v[:, None, :]
    return L @ squeeze


def rank2(rng, n):
    """Exactly singular: c = p a + q b with small integers p, q (entries on a 2^-10 grid, so exact)."""
    L = np.round(rng.normal(size=(n, 3, 3)) * 2**10) / 2**10
    p = rng.integers(-3, 4, size=(n, 2)).astype(float)
    L[:, 2] = p[:, :1] * L[:, 0] + p[:, 1:] * L[:, 1]
    return L


def skew_unimodular(rng, n):
    """A 4 Å cubic cell times a product of 30 random elementary operations with multipliers in [-3, 3]."""
    out = np.empty((n, 3, 3))
    for t in range(n):
        M = np.eye(3, dtype=np.int64)
        for _ in range(30):
            i, j = rng.choice(3, 2, replace=False)
            M[i] += rng.integers(-3, 4) * M[j]
        out[t] = 4.0 * M
    return out


def mixed_scale(rng, n):
    """Gaussian rows scaled by 1e-4, 1 and 1e4."""
    return rng.normal(size=(n, 3, 3)) * np.array([1e-4, 1.0, 1e4])[None, :, None]


def real_rebased(rng, n):
    """Cells of the benchmark data folder (val splits of four datasets), rotated and re-based by random
    unimodular matrices; None without the data folder."""
    try:
        folder = resolve_data_dir(data_dir())
    except FileNotFoundError:
        return None
    cells = []
    for dataset in ("mp_20", "perov_5", "carbon_24", "mpts_52"):
        path = folder / dataset / "val.csv.gz"
        if path.exists():
            cells.append(read_cdvae_cells(path, limit=n).numpy())
    if not cells:
        return None
    pool = np.concatenate(cells)
    L = pool[rng.choice(len(pool), size=n, replace=False)]
    # Haar rotations as in soft_niggli.lattice.random_rotations, but drawn from this suite's NumPy generator:
    # the committed results (and --update) need these very lattices.
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    Q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    M = random_unimodular((n,), max_entry=5, num_operations=20,
                          generator=torch.Generator().manual_seed(int(rng.integers(2**31)))).numpy()
    return M.astype(float) @ L @ np.swapaxes(Q, 1, 2)


SUITES = {
    "gaussian": gaussian, "near_singular": near_singular, "rank2": rank2, "skew_unimodular": skew_unimodular,
    "mixed_scale": mixed_scale, "real_rebased": real_rebased,
}


# -------------------------------------------------------------------------------------- scoring

def score(L_in: np.ndarray, L_out, failed: bool, hung: bool, degenerate: bool) -> str:
    if hung:
        return "hung"
    if failed:
        return "flagged"
    if degenerate:
        return "wrong"  # a degenerate lattice has no reduced cell: returning one is silently wrong
    return classify(L_in, L_out)  # "reduced" or "wrong"


def run_ours(L: np.ndarray, degenerate: bool):
    start = time.perf_counter()
    res = niggli_reduce(torch.from_numpy(L))
    seconds = time.perf_counter() - start
    verdicts = []
    for k in range(len(L)):
        failed = int(res.status[k]) != Status.OK
        verdicts.append(score(L[k], res.lattice[k].numpy(), failed, False, degenerate))
    statuses = {Status(s).name: int((res.status == s).sum()) for s in res.status.unique().tolist()}
    return verdicts, seconds, statuses


def run_peer(tool: str, L: np.ndarray, degenerate: bool, timeout: float):
    start = time.perf_counter()
    results = reduce_with(tool, L, timeout=timeout)
    seconds = time.perf_counter() - start
    verdicts = [score(L[k], r.lattice, r.outcome in ("none", "error"), r.outcome == "timeout", degenerate)
                for k, r in enumerate(results)]
    outcomes = {}
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    return verdicts, seconds, outcomes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="lattices per suite (default 500)")
    parser.add_argument("--timeout", type=float, default=1.0, help="per-call budget of the peer tools, s")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {TOOLS}")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset of {tuple(SUITES)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="100 per suite, 0.3 s budget, print only")
    parser.add_argument("--update", action="store_true",
                        help="replace only these tools' rows in the results in --out (same lattices: same "
                             "--n and --seed), so that a change to one tool does not mean rerunning every peer")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.timeout = 100, 0.3
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    for t in tools:
        if t not in TOOLS:
            parser.error(f"unknown tool {t!r}; valid: {', '.join(TOOLS)}")
    for s in suites:
        if s not in SUITES:
            parser.error(f"unknown suite {s!r}; valid: {', '.join(SUITES)}")
    warnings.filterwarnings("ignore")  # spglib's deprecation notice, pymatgen's CIF notes
    load = load_average()  # the budget is wall time: a loaded machine turns slow calls into "hung"

    rows = []
    try:
        for suite in suites:
            rng = np.random.default_rng([args.seed, list(SUITES).index(suite)])
            L = SUITES[suite](rng, args.n)
            if L is None:
                print(f"{suite}: skipped (no benchmark data folder)")
                continue
            degenerate = suite in DEGENERATE_SUITES
            for tool in tools:
                if tool == "soft_niggli":
                    verdicts, seconds, detail = run_ours(L, degenerate)
                else:
                    verdicts, seconds, detail = run_peer(tool, L, degenerate, args.timeout)
                counts = {k: verdicts.count(k) for k in ("reduced", "flagged", "wrong", "hung")}
                rows.append({"suite": suite, "tool": tool, "n": len(L), "degenerate": degenerate, **counts,
                             "seconds": seconds, "detail": detail})
                print(f"{suite:>16} {tool:>11}: " + "  ".join(f"{k} {v:>4}" for k, v in counts.items())
                      + f"  ({seconds:.1f} s)", flush=True)
    finally:
        shutdown_workers()

    record = {"command": command_line("reducer_robustness", argv), "machine": machine_description([load]),
              "n_per_suite": args.n, "seed": args.seed, "timeout_s": args.timeout, "rows": rows}
    if args.update and not args.quick:
        record = merged_with_committed(record, Path(args.out) / "reducer_robustness.json")
    table = markdown(record)
    print()
    print(table)
    if not args.quick:
        md, _ = write_results(args.out, "reducer_robustness", table, record)
        print(f"wrote {md}")
    return 0


def merged_with_committed(record: dict, path: Path) -> dict:
    """The results in ``path`` with the rows of ``record`` put in their place (order: suites, then TOOLS);
    the run is listed under ``updates`` with its command, tools and machine."""
    committed = json.loads(path.read_text())
    if (committed["n_per_suite"], committed.get("seed", 0)) != (record["n_per_suite"], record["seed"]):
        raise SystemExit("--update: the committed results used other --n/--seed; rerun everything")
    new = {(r["suite"], r["tool"]): r for r in record["rows"]}
    old = {(r["suite"], r["tool"]): r for r in committed["rows"]}
    keys = sorted(old.keys() | new.keys(), key=lambda k: (list(SUITES).index(k[0]), TOOLS.index(k[1])))
    update = {"command": record["command"], "machine": record["machine"],
              "tools": sorted({r["tool"] for r in record["rows"]}, key=TOOLS.index)}
    # The peers' rows keep the budget, command and machine of the run that made them; an earlier update
    # keeps only the tools that this one did not redo.
    earlier = [{**u, "tools": [t for t in u["tools"] if t not in update["tools"]]} for u in committed.get("updates", [])]
    return {**committed, "machine": committed.get("machine", "not recorded"),
            "updates": [u for u in earlier if u["tools"]] + [update], "rows": [new.get(k, old.get(k)) for k in keys]}


def markdown(record: dict) -> str:
    lines = header("Niggli reducer robustness", record["command"], record["machine"]) + [
        f"{record['n_per_suite']} lattices per suite; per-call budget {record['timeout_s']} s for the peer tools "
        "(each runs in a worker process that is killed past it).",
        "", "Verdicts from the independent checker `soft_niggli/testing/reduction_check.py`. `rank2` cells are exactly "
        "singular: there `flagged` is the right answer and a returned cell counts as wrong.", "",
    ]
    for u in record.get("updates", []):
        lines += [f"Rows of {', '.join(u['tools'])} from a separate run on the same lattices: `{u['command']}` "
                  f"(machine: {u['machine']}).", ""]
    lines += markdown_table(
        ["suite", "tool", "reduced", "flagged", "wrong", "hung", "time (s)", "raw outcomes"], record["rows"],
        lambda r: [r["suite"], r["tool"], str(r["reduced"]), str(r["flagged"]), str(r["wrong"]), str(r["hung"]),
                   f"{r['seconds']:.2f}", ", ".join(f"{k}: {v}" for k, v in sorted(r["detail"].items()))])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
