"""The command's input (a CSV file, read with :func:`soft_niggli.datasets.open_csv`, or a folder of
CIFs) as a stream of records, and its output file."""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

from ..datasets import open_csv


@dataclass
class Source:
    """The input as the command reads it: its columns and a fresh iterator of ``(number, where, fields,
    problem)`` per call to ``records`` (rows numbered from 1; ``where`` names the line or file), with
    ``position()``, how far the current iteration has come in ``size`` (bytes of a CSV file; files of a
    folder)."""

    path: Path
    columns: tuple
    folder_files: list | None = None
    _done: int = 0
    _rows: object = None

    @property
    def size(self) -> int:
        return len(self.folder_files) if self.folder_files is not None else self.path.stat().st_size

    def position(self) -> int:
        return self._done if self._rows is None else self._rows.bytes_read()

    def records(self):
        if self.folder_files is not None:
            for number, p in enumerate(self.folder_files, start=1):
                # surrogateescape: bytes that are not UTF-8 reach the output CSV unchanged.
                text = p.read_text(encoding="utf-8", errors="surrogateescape")
                self._done = number
                yield number, f"file {p.name}", [p.stem, text], ""
            return
        with open_csv(self.path, ("cif",), errors="surrogateescape") as rows:
            self._rows = rows
            for row in rows:
                yield row.number, f"line {row.line}", row.fields, row.problem


def open_source(src: Path) -> Source:
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() == ".cif" and p.is_file())
        if not files:
            raise ValueError(f"{src}: a folder without *.cif files")
        return Source(src, ("material_id", "cif"), files)
    with open_csv(src, ("cif",), errors="surrogateescape") as rows:  # the header: checked before any work
        return Source(src, rows.columns)


def open_output(path: Path, gz: bool):
    if gz:
        # Level 6 (zlib's default), not gzip.open's 9: this process writes every row, so its time limits --jobs.
        raw = gzip.open(path, "wb", compresslevel=6)
        return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, "w", encoding="utf-8", errors="surrogateescape", newline="")
