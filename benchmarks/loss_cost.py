"""Forward + backward cost of every registered loss on one batch, as ratios in one process.

B = 256 crystals of up to 20 atoms, float32, CPU. Labels are real MP-20 cells when the benchmark data
folder is present (:func:`benchmarks.harness.data.data_dir`; else pymatgen's bundled AFLOW prototypes),
re-based by random unimodular matrices; predictions are the labels plus noise. Each loss is timed as
the median of ``--repeats`` forward+backward passes, the losses taking turns, and reported as a ratio
to ``"mse"`` and to two naive softmins: the lattice term alone over all K = 6960 candidates through
the explicit ``(B, K, 3, 3)`` tensor, and the same function as ``"softmin"`` computed that way with a
coordinate term for every candidate (no inner-product form, no pruning).
Rows of a lattice are its vectors.

From the repository root::

    python -m benchmarks.loss_cost --repeats 9

Writes ``benchmarks/results/loss_cost.{md,json}``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import warnings

import torch

from soft_niggli import (
    CrystalBatch,
    available_losses,
    canonicalize_labels,
    get_loss,
    integer_inverse,
    random_unimodular,
)
from soft_niggli.datasets import load_dataset
from soft_niggli.losses.candidates import candidate_set, lattice_distances_naive, soft_minimum
from soft_niggli.losses.periodic import periodic_coordinate_loss

from .harness.data import data_dir
from .harness.report import RESULTS, command_line, header, machine_description, markdown_table, write_results


LATTICE_NAIVE = "softmin, naive form, lattice term only"
FULL_NAIVE = "softmin, naive form"


def load_structures(n: int):
    try:
        structures = load_dataset("mp_20", split="val", data_dir=data_dir())
        source = "MP-20 val (../shared/data)"
    except Exception:  # noqa: BLE001 - fall back to the dataset every install has
        structures = load_dataset("aflow")
        source = "AFLOW prototypes bundled with pymatgen"
    structures = [s for s in structures if len(s) <= 20]
    while len(structures) < n:
        structures = structures + structures
    return structures[:n], source


def make_batch(n: int, seed: int, dtype):
    structures, source = load_structures(n)
    labels = CrystalBatch.from_structures(structures, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    M = random_unimodular((n,), max_entry=2, generator=g)
    labels = labels.apply_basis_change(M)
    noise_l = 0.1 * torch.randn(labels.lattice.shape, generator=g, dtype=torch.float64)
    noise_f = 0.02 * torch.randn(labels.frac.shape, generator=g, dtype=torch.float64)
    pred = CrystalBatch(labels.lattice + noise_l, labels.frac + noise_f, labels.num_atoms, labels.species)
    return pred.to(dtype=dtype), labels.to(dtype=dtype), source


def naive_softmin(pred: CrystalBatch, target: CrystalBatch, tau: float = 0.1) -> torch.Tensor:
    """``"softmin"`` (centre "label", periodic coordinates) the naive way: every candidate in full."""
    labels = canonicalize_labels(target).batch
    L_ref, F_ref = labels.lattice.detach(), labels.frac.detach()
    B = len(pred)
    d_lat = lattice_distances_naive(pred.lattice, L_ref)  # builds (B, K, 3, 3)
    U = candidate_set(1, False, torch.int64, pred.device)
    U_inv = integer_inverse(U).to(pred.dtype)
    K = len(U)
    coords = []
    for start in range(0, K, 512):  # chunks keep the (K, N, 3) tensor in memory
        chunk = U_inv[start:start + 512]
        k = len(chunk)
        T = torch.einsum("ni,kij->knj", F_ref, chunk).reshape(-1, 3)
        P = pred.frac[None].expand(k, -1, -1).reshape(-1, 3)
        batch = (pred.batch[None] + B * torch.arange(k)[:, None]).reshape(-1)
        coords.append(periodic_coordinate_loss(P, T, batch, k * B).reshape(k, B).T)
    d = d_lat + torch.cat(coords, 1)
    return soft_minimum(d, tau).mean()


def naive_lattice_softmin(pred: CrystalBatch, target: CrystalBatch, tau: float = 0.1) -> torch.Tensor:
    """The lattice-only naive reference: softmin over all K candidates of ``‖L_p - M L_n‖²/9`` through the
    explicit ``(B, K, 3, 3)`` tensor, no coordinate term, no pruning."""
    labels = canonicalize_labels(target).batch
    return soft_minimum(lattice_distances_naive(pred.lattice, labels.lattice.detach()), tau).mean()


def time_once(fn, pred: CrystalBatch, target: CrystalBatch) -> float:
    """Seconds for one forward + backward pass of ``fn(pred, target)`` (a scalar)."""
    L = pred.lattice.detach().clone().requires_grad_()
    F = pred.frac.detach().clone().requires_grad_()
    p = CrystalBatch(L, F, pred.num_atoms, pred.species)
    start = time.perf_counter()
    fn(p, target).backward()
    return time.perf_counter() - start


def freeze_garbage_collector() -> None:
    """Move every object alive now (torch, pymatgen, the batch: millions) out of the garbage
    collector's reach (:func:`gc.freeze`). Otherwise a full collection walks them all (milliseconds)
    inside whichever timed pass happens to trigger it; the objects a pass creates are still collected."""
    gc.collect()
    gc.freeze()


def _ratio(x: float) -> str:
    """A ratio to about three significant digits, never in scientific notation."""
    if not x == x:
        return "nan"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--out", default=str(RESULTS), help="output folder (default benchmarks/results)")
    parser.add_argument("--note", default="", help="a line on the conditions of the run (load, threads), printed "
                                                   "under the header")
    args = parser.parse_args(argv)
    command = command_line("loss_cost", argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(args.seed)
    pred, target, source = make_batch(args.batch, args.seed, torch.float32)

    variants = {name: {} for name in available_losses()}
    # The cold cost: training shows the same labels every epoch and hits the cache, this benchmark
    # repeats one batch and would measure only the hits.
    variants["reduced-forms"] = ("reduced-forms", {"cache_bytes": 0})
    variants["softmin (center=both)"] = ("softmin", {"center": "both"})
    variants["softmin (zero_at_match=False)"] = ("softmin", {"zero_at_match": False})
    variants["gram (zero_at_match=False)"] = ("gram", {"zero_at_match": False})
    # Without the memory of the labels' side (their reduced forms, the classes and weights of those, and
    # gram's theta series): the cost of a batch of new labels.
    variants["softmin (new labels)"] = ("softmin", {"cache_bytes": 0})
    variants["gram (new labels)"] = ("gram", {"cache_bytes": 0})
    slow = {"softmin (coords=sinkhorn)": ("softmin", {"coords": "sinkhorn"}),
            "gram (coords=sinkhorn)": ("gram", {"coords": "sinkhorn"})}
    timed, errors = {}, {}
    for label, spec in {**variants, **slow}.items():
        name, options = (label, spec) if isinstance(spec, dict) else spec
        loss = get_loss(name, **options)
        timed[label] = lambda p, t, loss=loss: loss(p, t).loss
    timed[LATTICE_NAIVE] = naive_lattice_softmin
    timed[FULL_NAIVE] = naive_softmin
    freeze_garbage_collector()
    # Round robin over the fast losses and the lattice-only reference, so that every one sees the same
    # state of the machine (it drifts: a shared host), then the slow ones (seconds per batch each).
    # Medians, not minima: a pass right after a large free can skip the page faults that the naive
    # form's 64 MB tensors otherwise pay on every call, a fluke a minimum would pick.
    times = {label: [] for label in timed}
    fast = [*variants, LATTICE_NAIVE]
    for _ in range(args.repeats):
        for label in fast:
            if label in errors:
                continue
            try:
                times[label].append(time_once(timed[label], pred, target))
            except Exception as err:  # noqa: BLE001 - proxy-spglib raises where spglib fails: report it
                errors[label] = f"{type(err).__name__}: {err}"[:200]
    slow_repeats = max(1, args.repeats // 4)
    for label in [*slow, FULL_NAIVE]:
        times[label] = [time_once(timed[label], pred, target) for _ in range(slow_repeats)]
    rows = []
    for label, seconds in times.items():
        row = {"loss": label, "ms": 1e3 * statistics.median(seconds) if seconds else float("nan"),
               "all_ms": [1e3 * s for s in seconds]}
        if label in errors:
            row["error"] = errors[label]
        rows.append(row)
        print(f"{label:>40}: {row['ms']:.1f} ms", flush=True)
    lattice_naive = next(r["ms"] for r in rows if r["loss"] == LATTICE_NAIVE) / 1e3
    naive = next(r["ms"] for r in rows if r["loss"] == FULL_NAIVE) / 1e3
    mse = next(r["ms"] for r in rows if r["loss"] == "mse")
    for r in rows:
        r["vs_mse"] = r["ms"] / mse
        r["lattice_naive_over_this"] = 1e3 * lattice_naive / r["ms"]
        r["naive_over_this"] = 1e3 * naive / r["ms"]

    machine = machine_description()
    lines = header("Loss cost: forward + backward per batch", command, machine) + [
        f"B = {args.batch} crystals ({source}, at most 20 atoms, {int(pred.num_atoms.sum())} atoms in all), float32, "
        f"CPU. Median of {args.repeats} runs, taken in turn (one pass of every loss and of the lattice-only "
        f"reference, then the next), then {slow_repeats} of the Sinkhorn variants and the full naive form; "
        "`reduced-forms` without its cache of the labels' forms (the cost of a batch of new labels); `softmin` "
        "and `gram` with the memory of their labels' side (the batch repeats, as labels do over epochs) and, as "
        "`(new labels)`, without it. Python's garbage collector frozen after setup (`gc.freeze`), so that no "
        "pass pays for walking the objects of torch and pymatgen.", "",
        *([f"Conditions: {args.note}", ""] if args.note else []),
        "Two references: the *lattice-only naive* softmin (the explicit `(B, K, 3, 3)` tensor over all "
        "K = 6960 candidates, no coordinate term) and the full naive softmin (the same plus a coordinate "
        "term for every candidate).", "",
    ]
    lines += markdown_table(
        ["loss", "ms per batch (median)", "range over the passes", "× mse", "lattice-only naive ÷ this",
         "full naive ÷ this"], rows,
        lambda r: [r["loss"] + (f" ({r['error']})" if "error" in r else ""), f"{r['ms']:.1f}",
                   f"{min(r['all_ms']):.1f}–{max(r['all_ms']):.1f}" if r["all_ms"] else "–", f"{r['vs_mse']:.1f}",
                   _ratio(r["lattice_naive_over_this"]), _ratio(r["naive_over_this"])])
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if not args.no_write:
        write_results(args.out, "loss_cost", table, {"command": command, "machine": machine, "batch": args.batch,
                                                     "source": source, "note": args.note, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
