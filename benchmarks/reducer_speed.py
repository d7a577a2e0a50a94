"""Speed of the guarded reducer against spglib's and moyopy's per-lattice loops, and iterations against skew.

All tools reduce the same lattices in the same process, one after the other, so the ratios hold up
under machine noise and load far better than the absolute times; each timing is the best of
``--repeats`` runs. Rows of a lattice are its
vectors a, b, c. spglib runs through ``soft_niggli._spglib.spglib_niggli_reduce`` (the library's one
spglib call, which stores each reduced cell into one array), moyopy as ``moyopy.niggli_reduce(cell)``
(no tolerance to set).

From the repository root::

    python -m benchmarks.reducer_speed            # full run (batch 256 and 65536), writes results/
    python -m benchmarks.reducer_speed --quick    # small smoke run, prints only

Writes ``benchmarks/results/reducer_speed.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import faulthandler
import time
from pathlib import Path

import moyopy
import numpy as np
import spglib
import torch

import soft_niggli.niggli as niggli_module
from soft_niggli import Status, lattice_from_parameters, niggli_reduce, random_unimodular
from soft_niggli._spglib import spglib_niggli_reduce
from soft_niggli.niggli import _kernel as kernel_glue

from .harness.report import (RESULTS, command_line, header, load_average, machine_description, markdown_table,
                              pyplot, write_results)


def realistic_cells(n: int, seed: int) -> np.ndarray:
    """Cells like real crystals (lengths 3–15 Å, angles 60–120°) re-based by a bound-2 unimodular matrix."""
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(3, 15, size=(n, 3))
    angles = rng.uniform(60, 120, size=(n, 3))
    L = lattice_from_parameters(*torch.from_numpy(np.concatenate([lengths, angles], 1)).unbind(1))
    ok = torch.isfinite(L).all(dim=(1, 2)) & (torch.linalg.det(L).abs() > 0.3 * torch.from_numpy(lengths.prod(1)))
    L = L[ok]
    while len(L) < n:  # replace rejected angle triples
        L = torch.cat([L, torch.from_numpy(realistic_cells(n - len(L), seed + 1))])
    M = random_unimodular((n,), max_entry=2, generator=torch.Generator().manual_seed(seed))
    return (M.double() @ L[:n]).numpy()


def gaussian_cells(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=4.0, size=(n, 3, 3))


def skewed_cells(n: int, max_entry: int, seed: int) -> np.ndarray:
    """A 4 Å cubic cell times random unimodular matrices whose entries reach about ``max_entry``."""
    gen = torch.Generator().manual_seed(seed)
    ops = int(8 + 3 * np.log2(max_entry + 1))  # enough elementary operations to reach the cap
    M = random_unimodular((n,), max_entry=max_entry, num_operations=ops, generator=gen)
    return (M.double() @ (4.0 * torch.eye(3, dtype=torch.float64))).numpy()


def time_spglib(L: np.ndarray) -> tuple[float, int]:
    start = time.perf_counter()
    result = spglib_niggli_reduce(L, eps=1e-5)
    return time.perf_counter() - start, int((~result.ok).sum())


def time_moyopy(L: np.ndarray) -> tuple[float, int]:
    """moyopy's loop (it raises ``ValueError`` where it fails). moyopy can run for minutes on some cells
    (mixed scales: ``benchmarks.reducer_robustness``); none of these suites holds one, and should one
    appear the run stops with a traceback rather than hang. faulthandler's timer runs in a thread of
    its own that needs no GIL, so it fires even inside moyopy's compiled loop."""
    failures = 0
    faulthandler.dump_traceback_later(60 + 1e-3 * len(L), exit=True)
    try:
        start = time.perf_counter()
        for cell in L:
            try:
                # Not kept: 65536 results are half a million small Python lists, and the garbage
                # collector's passes over them would be timed as moyopy's (4x slower per lattice).
                moyopy.niggli_reduce(cell)
            except ValueError:
                failures += 1
        return time.perf_counter() - start, failures
    finally:
        faulthandler.cancel_dump_traceback_later()


def time_ours(L: torch.Tensor, core: str = "default"):
    """Our reducer on the whole batch; ``core="numpy"`` forces the NumPy fallback core (the one that runs
    where the C extension was not built)."""
    saved = kernel_glue.compiled
    if core == "numpy":
        kernel_glue.compiled = None
    try:
        start = time.perf_counter()
        res = niggli_reduce(L)
        return time.perf_counter() - start, res
    finally:
        kernel_glue.compiled = saved


def best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t, o = fn()
        if t < best:
            best, out = t, o
    return best, out


def batch_rows(sizes, families, repeats, seed):
    rows = []
    for family, make in families.items():
        for n in sizes:
            L = make(n, seed)
            Lt = torch.from_numpy(L)
            niggli_reduce(Lt[:8])  # warm-up
            t_spg, failures = best_of(lambda: time_spglib(L), repeats)
            t_moyo, moyo_failures = best_of(lambda: time_moyopy(L), repeats)
            t_ours, res = best_of(lambda: time_ours(Lt), repeats)
            t_numpy, res_numpy = best_of(lambda: time_ours(Lt, "numpy"), repeats)
            assert torch.equal(res.transform, res_numpy.transform)  # the two cores agree bit for bit
            rows.append({
                "family": family, "batch": n,
                "spglib_us_per_lattice": 1e6 * t_spg / n, "ours_us_per_lattice": 1e6 * t_ours / n,
                "speedup": t_spg / t_ours, "spglib_failures": failures,
                "moyopy_us_per_lattice": 1e6 * t_moyo / n, "moyopy_speedup": t_moyo / t_ours,
                "moyopy_failures": moyo_failures,
                "numpy_core_us_per_lattice": 1e6 * t_numpy / n, "numpy_core_speedup": t_spg / t_numpy,
                "ours_ok": int((res.status == Status.OK).sum()),
                "ours_iterations_mean": float(res.iterations.double().mean()),
                "ours_iterations_max": int(res.iterations.max()),
            })
            print(f"{family:>10} batch {n:>6}: spglib {rows[-1]['spglib_us_per_lattice']:.2f} us, "
                  f"moyopy {rows[-1]['moyopy_us_per_lattice']:.2f} us, "
                  f"ours {rows[-1]['ours_us_per_lattice']:.2f} us, speedup x{rows[-1]['speedup']:.2f} "
                  f"(vs moyopy x{rows[-1]['moyopy_speedup']:.2f}) "
                  f"(NumPy core {rows[-1]['numpy_core_us_per_lattice']:.2f} us)", flush=True)
    return rows


def skew_rows(levels, n, repeats, seed):
    rows = []
    for level in levels:
        L = skewed_cells(n, level, seed)
        Lt = torch.from_numpy(L)
        t_spg, failures = best_of(lambda: time_spglib(L), repeats)
        t_moyo, moyo_failures = best_of(lambda: time_moyopy(L), repeats)
        t_ours, res = best_of(lambda: time_ours(Lt), repeats)
        input_skew = int(np.abs(np.round(L / 4.0)).max())
        rows.append({
            "max_entry_cap": level, "input_max_entry": input_skew,
            "transform_max_entry": int(res.transform.abs().max()),
            "ours_iterations_mean": float(res.iterations.double().mean()),
            "ours_iterations_max": int(res.iterations.max()),
            "ours_ok": int((res.status == Status.OK).sum()), "batch": n,
            "ours_us_per_lattice": 1e6 * t_ours / n, "spglib_us_per_lattice": 1e6 * t_spg / n,
            "spglib_failures": failures,
            "moyopy_us_per_lattice": 1e6 * t_moyo / n, "moyopy_failures": moyo_failures,
        })
        print(f"skew {level:>7}: iterations mean {rows[-1]['ours_iterations_mean']:.1f} max "
              f"{rows[-1]['ours_iterations_max']}, ours {rows[-1]['ours_us_per_lattice']:.1f} us, spglib "
              f"{rows[-1]['spglib_us_per_lattice']:.1f} us ({failures} failed), moyopy "
              f"{rows[-1]['moyopy_us_per_lattice']:.1f} us ({moyo_failures} failed)", flush=True)
    return rows


def machine() -> str:
    """:func:`benchmarks.harness.report.machine_description` plus what the reducers' speed depends on."""
    core = "compiled C core (one thread)" if niggli_module.COMPILED_KERNEL else "NumPy core only (C core not built)"
    return machine_description([f"soft_niggli {core}", f"numpy {np.__version__} (the fallback core, one thread)",
                                f"spglib {spglib.__version__}", f"moyopy {moyopy.__version__}", load_average()])


def write_outputs(out: Path, command: str, batch, skew) -> Path:
    """``reducer_speed.{md,json,png}`` in ``out``; returns the markdown's path."""
    description = machine()
    lines = header("Reducer speed: soft_niggli (batched) vs spglib and moyopy (per-lattice Python loops)",
                   command, description) + [
        "Same lattices, same process, one tool after the other, best of the repeats; microseconds per "
        "lattice. Read the ratios: the absolute times depend on what else the machine was running.", "",
        "`ours` is the reducer as installed (compiled core); `NumPy core` is the fallback that runs where "
        "the C extension could not be built (same results, bit for bit); speed-ups are the peer's time "
        "over ours (the NumPy core's: spglib's over the NumPy core's).", "",
    ]
    lines += markdown_table(
        ["lattices", "batch", "spglib loop (µs)", "moyopy loop (µs)", "ours (µs)", "speed-up vs spglib",
         "speed-up vs moyopy", "NumPy core (µs)", "NumPy core speed-up", "ours OK", "ours iterations mean / max",
         "spglib / moyopy failures"], batch,
        lambda r: [r["family"], str(r["batch"]), f"{r['spglib_us_per_lattice']:.2f}",
                   f"{r['moyopy_us_per_lattice']:.2f}", f"{r['ours_us_per_lattice']:.2f}", f"{r['speedup']:.2f}×",
                   f"{r['moyopy_speedup']:.2f}×", f"{r['numpy_core_us_per_lattice']:.2f}",
                   f"{r['numpy_core_speedup']:.2f}×", f"{r['ours_ok']}/{r['batch']}",
                   f"{r['ours_iterations_mean']:.2f} / {r['ours_iterations_max']}",
                   f"{r['spglib_failures']} / {r['moyopy_failures']}"])
    lines += [
        "", "## Iterations against skew", "",
        "A 4 Å cubic cell times random unimodular matrices with entries up to the cap; the transform that "
        "reduces it back has entries of the same size.", "",
    ]
    lines += markdown_table(
        ["cap", "input max entry", "transform max entry", "ours iterations mean / max", "ours OK", "ours (µs)",
         "spglib (µs)", "spglib failures", "moyopy (µs)", "moyopy failures"], skew,
        lambda r: [str(r["max_entry_cap"]), str(r["input_max_entry"]), str(r["transform_max_entry"]),
                   f"{r['ours_iterations_mean']:.1f} / {r['ours_iterations_max']}", f"{r['ours_ok']}/{r['batch']}",
                   f"{r['ours_us_per_lattice']:.1f}", f"{r['spglib_us_per_lattice']:.1f}",
                   f"{r['spglib_failures']}/{r['batch']}", f"{r['moyopy_us_per_lattice']:.1f}",
                   f"{r['moyopy_failures']}/{r['batch']}"])
    md, _ = write_results(out, "reducer_speed", "\n".join(lines), {"command": command, "machine": description,
                                                                    "batch": batch, "skew": skew})
    plot(skew, out / "reducer_speed.png")
    return md


def plot(skew, path: Path) -> None:
    plt = pyplot()
    x = [r["transform_max_entry"] for r in skew]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(x, [r["ours_iterations_mean"] for r in skew], "o-", label="mean")
    axes[0].plot(x, [r["ours_iterations_max"] for r in skew], "s--", label="max")
    axes[0].set(xscale="log", xlabel="max |transform entry|", ylabel="iterations",
                title="soft_niggli iterations vs skew")
    axes[0].legend()
    axes[1].plot(x, [r["ours_us_per_lattice"] for r in skew], "o-", label="soft_niggli (batched)")
    axes[1].plot(x, [r["spglib_us_per_lattice"] for r in skew], "s-", label="spglib (loop)")
    axes[1].plot(x, [r["moyopy_us_per_lattice"] for r in skew], "^-", label="moyopy (loop)")
    axes[1].set(xscale="log", yscale="log", xlabel="max |transform entry|", ylabel="µs per lattice",
                title=f"time per lattice, batch {skew[0]['batch']}")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, print only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    families = {"realistic": realistic_cells, "gaussian": gaussian_cells}
    sizes = [256, 2048] if args.quick else [256, 65536]
    levels = [1, 10, 100] if args.quick else [1, 10, 100, 1000, 10000, 100000]
    batch = batch_rows(sizes, families, 1 if args.quick else args.repeats, args.seed)
    skew = skew_rows(levels, 256 if args.quick else 4096, 1 if args.quick else args.repeats, args.seed)
    if not args.quick:
        print(f"wrote {write_outputs(Path(args.out), command_line('reducer_speed', argv), batch, skew)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
