"""The report of a run, as the command prints it."""

from __future__ import annotations

from ._rows import STATUSES, WHY


def _rate(n: int, s: float) -> str:
    return f"{n / s:,.0f} rows/s" if s > 0 else "-"


def format_report(report: dict) -> str:
    """The report of :func:`canonicalize_file` as the command prints it."""
    n, sec = report["rows"], report["seconds"]
    ok = report["status"].get("OK", 0)
    where = ""
    if report.get("shard"):
        span = report["row_range"]
        where = (f" (shard {report['shard']}: rows {span[0]}-{span[1]} of {report['input_rows']})" if span
                 else f" (shard {report['shard']}: no rows of {report['input_rows']})")
    jobs = report.get("jobs", 1)
    lines = [f"canonicalized {n} rows{where}: {report['input']} -> {report['output']}",
             f"  time {sec['total']:.2f} s ({_rate(n, sec['total'])}) with {jobs} process{'es' * (jobs > 1)}; "
             f"CPU time{' summed over them' if jobs > 1 else ''}: parse CIFs {sec.get('parse', 0):.2f} s, "
             f"reduce {sec.get('reduce', 0):.3f} s, write CIFs {sec.get('write', 0):.2f} s"
             + (f", spglib comparison {sec['spglib']:.2f} s" if "spglib" in sec else "")
             + f"; read and write the CSV {sec.get('csv', 0):.2f} s",
             "  status: " + ", ".join(f"{k} {report['status'].get(k, 0)}" for k in STATUSES
                                      if k in ("OK", "PARSE_ERROR") or report["status"].get(k)),
             f"  already Niggli-reduced as given: {report['already_reduced']} of {ok} OK rows; "
             f"re-based: {ok - report['already_reduced']}"]
    if report.get("replaced_columns"):
        lines.append(f"  the input's columns {report['replaced_columns']} were replaced by this run's")
    for name, ids in report["flagged"].items():
        count = report["status"].get(name, len(ids))
        lines.append(f"  {name} ({count}): {WHY[name]}; first: {', '.join(map(str, ids[:5]))}"
                     + (" ..." if count > 5 else ""))
    if "spglib" in report:
        s = report["spglib"]
        lines.append(f"  spglib niggli_reduce on the {ok} OK rows: same metric {s.get('same', 0)}, another valid "
                     f"reduced form (Niggli-cone boundary) {s.get('other form', 0)}, "
                     f"different {s.get('different', 0)}, "
                     f"spglib failed {s.get('failed', 0)}")
    return "\n".join(lines)
