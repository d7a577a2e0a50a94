"""The one writer of every benchmark's results: the command that ran, the machine, markdown and JSON.

Every results file records the exact command that produced it (:func:`command_line`) and a description
of the machine computed where it ran (:func:`machine_description`, :func:`load_average`): nothing about
the hardware is written by hand. :func:`write_results` refuses a record without them. :func:`header`
opens a results markdown file, and every table in one is written by :func:`markdown_table`.

>>> command_line("loss_cost", ["--repeats", "9"])
'python -m benchmarks.loss_cost --repeats 9'
>>> for line in markdown_table(["loss", "ms"], [("mse", 1.5)], lambda r: [r[0], f"{r[1]:.1f}"]):
...     print(line)
| loss | ms |
|---|---|
| mse | 1.5 |
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

__all__ = ["RESULTS", "command_line", "cpu_model", "header", "load_average", "machine_description",
           "markdown_table", "pyplot", "write_results"]

#: Where the committed results live; every benchmark's ``--out`` defaults to it.
RESULTS = Path(__file__).resolve().parents[1] / "results"


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that runs ``benchmarks.<module>`` with ``argv`` (default: this process's arguments),
    in the form to type from the repository root: ``python -m benchmarks.<module> [args]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return f"python -m benchmarks.{module}" + (" " + shlex.join(args) if args else "")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` where readable, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(extra: Iterable[str] = ()) -> str:
    """One line describing where this process runs: CPU model, ``os.cpu_count()``, platform, Python,
    torch and its thread count, then the benchmark's own ``extra`` items (e.g. the device)."""
    items = [f"{cpu_model()}, {os.cpu_count()} CPUs", platform.platform(), f"Python {platform.python_version()}",
             f"torch {torch.__version__} ({torch.get_num_threads()} thread(s))", *extra]
    return "; ".join(items)


def header(title: str, command: str, machine: str) -> list[str]:
    """The opening lines of a results markdown file: title, command, machine."""
    return [f"# {title}", "", f"Command: `{command}`", "", f"Machine: {machine}.", ""]


def load_average() -> str:
    """The 1-minute load average as the run starts: above the CPU count, other jobs share the cores and
    every wall-clock time grows (ratios of times taken in one process much less)."""
    try:
        return f"load average {os.getloadavg()[0]:.1f} at the start"
    except (AttributeError, OSError):  # not on every platform
        return "load average not available"


def markdown_table(columns: Sequence[str], rows: Iterable = (), cells: Callable[[object], Sequence[str]] | None = None
                   ) -> list[str]:
    """A markdown table as lines: the ``columns`` header, the ``|---|`` rule, then one line per row.

    ``cells(row)`` gives that row's cell strings; without ``cells`` each row is already its sequence of
    cell strings. A row with another number of cells than ``columns`` is a ``ValueError``.
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        values = list(cells(row) if cells is not None else row)
        if len(values) != len(columns):
            raise ValueError(f"markdown_table: {len(values)} cells for {len(columns)} columns: {values}")
        lines.append("| " + " | ".join(values) + " |")
    return lines


def write_results(out_dir: str | os.PathLike, name: str, markdown: str, record: dict) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.md`` and ``<out_dir>/<name>.json``; returns their paths.

    ``record`` must say how it was made: a ``"command"`` (or, for results merged from several runs,
    ``"commands"``) and a ``"machine"`` (``ValueError`` otherwise). NumPy scalars are written as floats.
    """
    if not isinstance(record, dict):
        raise TypeError(f"record: expected a dict, got {type(record).__name__}")
    if not (record.get("command") or record.get("commands")) or not record.get("machine"):
        raise ValueError(f"record: expected 'command' (or 'commands') and 'machine', got keys {sorted(record)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    md.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    js.write_text(json.dumps(record, indent=1, default=float))
    return md, js


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
