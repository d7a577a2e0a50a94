"""The ``soft-niggli`` console script: its arguments, and the run's errors as one line and an exit status."""

from __future__ import annotations

import argparse
import json
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .._checks import DEFAULT_REL_TOL
from ._canonicalize import canonicalize
from ._report import format_report


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written (they are laid out by hand), and every option's default (where it has one:
    not for flags, nor for options whose help says what their absence means)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from . import __doc__ as help_text  # the package's docstring is the command's help

    doc = (help_text or "").split("\n\n")
    parser = argparse.ArgumentParser(
        prog="soft-niggli", formatter_class=_HelpFormatter,
        description=doc[0] + "\n\nRun 'soft-niggli canonicalize --help' for what the command writes.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = sub.add_parser("canonicalize", formatter_class=_HelpFormatter,
                       help="Niggli-reduce every cell of a CDVAE/DiffCSP CSV file or a folder of CIFs",
                       description="\n\n".join(doc[1:]).strip())
    c.add_argument("input", metavar="IN", help="a CSV file (.csv or .csv.gz) with a 'cif' column, or a folder of *.cif")
    c.add_argument("output", metavar="OUT", help="the CSV file to write (gzipped if it ends in .gz); its folder must "
                   "exist")
    c.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="processes that parse and write CIFs (0: one per available core)")
    c.add_argument("--shard", metavar="K/N", default=None,
                   help="only the K-th of N contiguous parts of the rows, K from 1 (e.g. "
                        "--shard $SLURM_ARRAY_TASK_ID/8 with --array=1-8); without it, every row")
    c.add_argument("--rel-tol", type=float, default=DEFAULT_REL_TOL, metavar="TOL",
                   help="the reducer's relative tolerance")
    c.add_argument("--chunk", type=int, default=256, metavar="ROWS", help="rows per task and per reducer batch")
    c.add_argument("--keep-input-cif", action="store_true",
                   help="also write each row's input CIF, unchanged, in a column input_cif")
    c.add_argument("--compare-spglib", action="store_true",
                   help="also reduce each OK cell with spglib and count agreement (slower)")
    c.add_argument("--strict", action="store_true", help="exit with status 1 if any row was flagged")
    c.add_argument("--no-progress", action="store_true", help="draw no progress bar")
    c.add_argument("--json", metavar="PATH", default=None, help="also write the report as JSON to PATH")
    return parser


def main(argv=None) -> int:
    """Entry point of the ``soft-niggli`` console script; returns the exit status (0; 1 with ``--strict`` and
    a flagged row; 2 for an error, printed as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cmd = f"{parser.prog} {args.command}"
    try:
        import pymatgen.core  # noqa: F401
    except ImportError:
        parser.exit(2, f"{cmd}: error: reading and writing CIFs needs pymatgen: pip install pymatgen "
                       "(or pip install \"soft-niggli[bench]\")\n")
    if args.json:
        json_path = Path(args.json).expanduser()
        if json_path.is_dir() or not json_path.parent.is_dir():
            parser.exit(2, f"{cmd}: error: --json {json_path}: expected a file in an existing folder\n")
    try:
        report = canonicalize(args.input, args.output, rel_tol=args.rel_tol, jobs=args.jobs, shard=args.shard,
                                   chunk=args.chunk, keep_input_cif=args.keep_input_cif,
                                   progress=not args.no_progress, compare_spglib=args.compare_spglib)
    except (ValueError, TypeError, OSError) as err:
        parser.exit(2, f"{cmd}: error: {err}\n")
    except BrokenProcessPool as err:
        parser.exit(2, f"{cmd}: error: a worker process died ({err}); out of memory? Try fewer --jobs or a "
                       f"smaller --chunk. {args.output} not written\n")
    except KeyboardInterrupt:
        parser.exit(130, f"{cmd}: interrupted; {args.output} not written\n")
    print(format_report(report))
    if args.json:
        Path(args.json).expanduser().write_text(json.dumps(report, indent=1))
    flagged = sum(v for k, v in report["status"].items() if k != "OK")
    return 1 if args.strict and flagged else 0
