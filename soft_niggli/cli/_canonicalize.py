"""The driver of ``soft-niggli canonicalize``: :func:`canonicalize_file` checks its arguments, streams the
input in chunks through :mod:`._rows` (in parallel with ``jobs``), and writes the rows in input order."""

from __future__ import annotations

import csv
import os
import re
import sys
import time
from collections import Counter, deque
from pathlib import Path

import numpy as np

from .._checks import DEFAULT_REL_TOL
from ._parallel import ordered_results, process_pool
from ._rows import STATUSES, Layout, run_chunk
from ._source import open_output, open_source

EXTRA_COLUMNS = ("niggli_status", "niggli_transform", "niggli_note")
INPUT_CIF_COLUMN = "input_cif"
#: Flagged rows named in the report per status (the output file has them all).
FLAGGED_KEPT = 100


def parse_shard(shard) -> tuple[int, int] | None:
    """``"K/N"`` or ``(K, N)`` as ``(K, N)`` with ``1 <= K <= N``; ``None`` for the whole file."""
    if shard is None:
        return None
    text = shard if isinstance(shard, str) else "/".join(map(str, shard)) if isinstance(shard, (tuple, list)) else None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if match is None or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"shard: expected K/N with integers 1 <= K <= N (the K-th of N parts, numbered from 1), "
                         f"got {shard!r}")
    return int(match[1]), int(match[2])


def check_jobs(jobs) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or jobs < 0:
        raise ValueError(f"jobs: expected an int >= 1 (processes), or 0 for one per available core, got {jobs!r}")
    if jobs == 0:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return int(jobs)


def check_paths(src: Path, dst: Path) -> None:
    """Every problem with the two paths, as one line, before any work."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if dst.is_dir():
        raise ValueError(f"{dst}: is a folder; expected the path of the CSV file to write")
    folder = dst.parent
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                raise ValueError(f"{dst}: {above} is a file, not a folder")
            break
    if not folder.is_dir():
        raise ValueError(f"{dst}: the folder {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{dst}: cannot write in the folder {folder} (permission denied)")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the output would overwrite the input")


def canonicalize_file(src: str | os.PathLike, dst: str | os.PathLike, *, rel_tol: float = DEFAULT_REL_TOL,
                      jobs: int = 1, shard: str | tuple[int, int] | None = None, chunk: int = 256,
                      keep_input_cif: bool = False, progress: bool = True, compare_spglib: bool = False) -> dict:
    """Canonicalise ``src`` (a CSV file or a folder of CIFs) into the CSV file ``dst``, as
    ``soft-niggli canonicalize`` does (:mod:`soft_niggli.cli` says what is written, and the statuses).

    Args:
        src, dst: input and output paths; ``dst`` ending in ``.gz`` is gzipped. Its folder must exist.
        rel_tol: the reducer's relative tolerance (:func:`soft_niggli.niggli_reduce`).
        jobs: processes parsing and writing CIFs, this one included; 0 for one per available core. With
            ``jobs > 1`` the ``jobs - 1`` workers start as multiprocessing's forkserver (or spawn) does: a
            script calling this must do so under ``if __name__ == "__main__":``.
        shard: ``"K/N"`` or ``(K, N)``: only the K-th of N contiguous parts of the rows (K from 1).
        chunk: rows per task (and per batch of the reducer).
        keep_input_cif: also write each row's input CIF in a column ``input_cif``.
        progress: draw a progress bar on stderr (with tqdm, if installed).
        compare_spglib: also reduce every OK cell with spglib and count agreement (``report["spglib"]``).

    Returns:
        The report (a dict): ``rows`` (written), ``row_range`` (first and last input row, from 1, or None),
        ``status`` (counts), ``flagged`` (per status, the first 100 rows named by ``material_id`` and line),
        ``already_reduced`` (OK rows with ``T = I``), ``seconds`` (``total``: wall time; ``parse``,
        ``reduce``, ``write``: CPU time summed over the processes; ``csv``: CPU time of this process reading,
        dispatching and writing rows, the part that does not run in parallel), ``input_rows`` (None where
        not counted), ``jobs``, ``shard``, ``replaced_columns``.

    Raises:
        FileNotFoundError: no ``src``.
        ValueError: a bad argument, an output path that cannot be written (a folder, under a file, in a
            folder that does not exist), an empty or damaged input, a CSV without a ``cif`` column or with
            it twice: all before any row is parsed; and a file that turns out truncated part-way (then
            nothing is written; with ``shard``, found before any work).
    """
    return canonicalize(src, dst, rel_tol=rel_tol, jobs=jobs, shard=shard, chunk=chunk, keep_input_cif=keep_input_cif,
                        progress=progress, compare_spglib=compare_spglib)


def canonicalize(src, dst, *, rel_tol: float = DEFAULT_REL_TOL, jobs: int = 1, shard=None, chunk: int = 256,
                 keep_input_cif: bool = False, progress: bool = True, compare_spglib: bool = False,
                 fork: bool = False) -> dict:
    """:func:`canonicalize_file`, and ``fork``: the workers may be forked from this process (the command's
    own process asks for it; see :func:`._parallel.process_pool`)."""
    from ..niggli import niggli_reduce

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    shard = parse_shard(shard)
    jobs = check_jobs(jobs)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk: expected an int >= 1 (rows per task), got {chunk!r}")
    niggli_reduce(np.eye(3), rel_tol=rel_tol)  # the reducer's own check of rel_tol, before any work
    check_paths(src, dst)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    source = open_source(src)
    columns = source.columns
    extra = [c for c in EXTRA_COLUMNS + ((INPUT_CIF_COLUMN,) if keep_input_cif else ()) if c not in columns]
    replaced = [c for c in EXTRA_COLUMNS + ((INPUT_CIF_COLUMN,) if keep_input_cif else ()) if c in columns]
    for c in replaced:
        if columns.count(c) > 1:
            raise ValueError(f"{src}: the column {c!r} appears {columns.count(c)} times; it is one this command "
                             "writes, so which one to replace is ambiguous")
    out_columns = list(columns) + extra
    layout = Layout(cif=columns.index("cif"), width=len(columns), out_width=len(out_columns),
                    status=out_columns.index("niggli_status"), transform=out_columns.index("niggli_transform"),
                    note=out_columns.index("niggli_note"),
                    input_cif=out_columns.index(INPUT_CIF_COLUMN) if keep_input_cif else None,
                    ident=columns.index("material_id") if "material_id" in columns else None,
                    rel_tol=float(rel_tol), compare_spglib=compare_spglib)

    total = None
    if shard is not None:
        # A first pass for the shard's bounds (no CIF is parsed: about as long as reading the file); it
        # also finds a truncated file before any work.
        total = sum(1 for _ in source.records())
    first, last = 1, total
    if shard is not None:
        k, n = shard
        first, last = (k - 1) * total // n + 1, k * total // n
        jobs = max(1, min(jobs, -(-(last - first + 1) // chunk)))  # no more processes than chunks
    marks = deque()  # where reading stood after each chunk, for the progress bar

    def tasks():
        block = []
        for record in source.records():
            if record[0] < first:
                continue
            if last is not None and record[0] > last:
                break
            block.append(record)
            if len(block) == chunk:
                marks.append(source.position())
                yield layout, block, columns
                block = []
        if block:
            marks.append(source.position())
            yield layout, block, columns

    statuses, flagged, spglib, seconds = Counter(), {}, Counter(), Counter()
    already = rows_written = 0
    own = 0.0  # CPU time of the chunks this process computed
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    # The workers start before the progress bar starts its thread: forked ones must (process_pool).
    pool = process_pool(jobs - 1, fork) if jobs > 1 else None
    bar = None
    try:
        if progress:
            bar = _progress_bar(source, None if shard is None else max(0, last - first + 1))
        with open_output(tmp, gz=dst.name.endswith(".gz")) as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(out_columns)
            for res in ordered_results(run_chunk, tasks(), jobs, pool=pool):
                writer.writerows(res.rows)
                rows_written += len(res.rows)
                statuses += res.statuses
                seconds += res.seconds
                if res.process == os.getpid():
                    own += sum(res.seconds.values())
                spglib += res.spglib
                already += res.already
                for name, where in res.flagged:
                    kept = flagged.setdefault(name, [])
                    if len(kept) < FLAGGED_KEPT:
                        kept.append(where)
                mark = marks.popleft()
                if bar is not None:
                    bar.set_postfix_str(f"{rows_written} rows", refresh=False)
                    bar.update(len(res.rows) if shard is not None else mark - bar.n)
        os.replace(tmp, dst)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            tmp.unlink()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds["total"] = time.perf_counter() - t_all
    # This process's share that is not chunks: reading, dispatching and writing the CSV.
    seconds["csv"] = time.process_time() - cpu_all - own
    report = {"input": str(src), "output": str(dst), "rows": rows_written,
              "row_range": [first, first + rows_written - 1] if rows_written else None,
              "input_rows": total, "status": {k: statuses[k] for k in STATUSES if statuses[k]},
              "flagged": {k: flagged[k] for k in STATUSES if k in flagged}, "already_reduced": already,
              "seconds": {k: seconds[k] for k in ("total", "parse", "reduce", "write", "spglib", "csv")
                          if k in seconds},
              "jobs": jobs, "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
              "replaced_columns": replaced}
    if compare_spglib:
        report["spglib"] = dict(spglib)
    return report


def _progress_bar(source, rows: int | None):
    """A tqdm bar on stderr, or None without tqdm: of ``rows`` where they are counted (a shard); otherwise
    of how much of the input has been read, which needs no counting pass."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    if rows is not None:
        unit = {"total": rows, "unit": "row"}
    elif source.folder_files is not None:
        unit = {"total": source.size, "unit": "file"}
    else:
        unit = {"total": source.size, "unit": "B", "unit_scale": True, "unit_divisor": 1024}
    return tqdm(desc="canonicalize", file=sys.stderr, dynamic_ncols=True, **unit)
