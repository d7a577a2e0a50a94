"""The CSV reader of the CDVAE/DiffCSP files: :func:`open_csv` streams the rows of a file, gzipped or
plain, every column kept (duplicate names too), each row with its line in the file, a malformed row
flagged rather than fatal.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Errors of decompressing or decoding a damaged file; they name neither the file nor the problem.
READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError)


@dataclass(frozen=True)
class CsvRow:
    """One record of a CSV file, as :func:`open_csv` yields it.

    Attributes:
        number: the record's place among the data rows, from 1 (the header and blank lines not counted).
        line: the line of the file where the record starts; the header is line 1, and a quoted field
            (a CIF) spans several lines, so ``line`` is what an editor shows, not ``number + 1``.
        fields: the fields as read, in file order: as many as the header has, or more or fewer in a
            malformed row.
        problem: ``""`` for a well-formed row, else why it is malformed, e.g. ``"4 fields where the header
            has 3 columns"``.
    """

    number: int
    line: int
    fields: list
    problem: str = ""


class CsvRows:
    """A CSV file opened by :func:`open_csv`: its header, and its rows streamed one at a time.

    ``columns`` is the header as written, duplicate names included; iterating yields :class:`CsvRow`
    (once: the file is read as it goes, never held whole). A row whose field count differs from the
    header's, or that the csv module cannot read, comes with a ``problem`` and reading goes on; a file
    that ends mid-stream (truncated gzip) or does not decode raises ``ValueError`` naming the file and
    the last row read. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: Path, raw, fh, reader, columns: tuple[str, ...], gzipped: bool):
        self.path, self.columns, self.gzipped = path, columns, gzipped
        self._raw, self._fh, self._reader = raw, fh, reader
        self._read_at_close = 0

    def index(self, name: str) -> int:
        """Position of the column ``name`` (its first occurrence); ``ValueError`` listing the columns if absent."""
        if name not in self.columns:
            raise ValueError(f"{self.path}: no column {name!r}; columns present: {list(self.columns)}")
        return self.columns.index(name)

    def __iter__(self):
        reader, width = self._reader, len(self.columns)
        number, line = 0, reader.line_num
        try:
            while True:
                start = reader.line_num + 1
                try:
                    fields = next(reader)
                except StopIteration:
                    break
                except csv.Error as err:  # one unreadable record: flag it, the reader starts afresh after it
                    if reader.line_num < start:
                        raise  # nothing consumed: reading on would not advance
                    number += 1
                    yield CsvRow(number, start, [], f"unreadable CSV record ({err})")
                    continue
                line = reader.line_num
                if not fields:
                    continue  # a blank line holds no record
                number += 1
                problem = "" if len(fields) == width else \
                    f"{len(fields)} fields where the header has {width} columns"
                yield CsvRow(number, start, fields, problem)
        except READ_ERRORS + (csv.Error,) as err:
            raise ValueError(f"{self.path}: the file is truncated or corrupt: reading failed after row {number} "
                             f"(line {line}; {'gzip' if self.gzipped else 'text'}: {type(err).__name__}: {err})"
                             ) from err
        finally:
            self.close()

    def bytes_read(self) -> int:
        """How far reading has come in the file on disk, in bytes (compressed bytes for a gzipped file),
        read ahead included: with the file's size, a progress measure that needs no counting pass."""
        return self._read_at_close if self._raw.closed else self._raw.tell()

    def close(self) -> None:
        if not self._raw.closed:
            self._read_at_close = self._raw.tell()
        self._fh.close()
        self._raw.close()  # a GzipFile leaves the file object it was given open

    def __enter__(self) -> CsvRows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_csv(path: str | os.PathLike, required: Sequence[str] = ("cif",), *, errors: str = "strict") -> CsvRows:
    """Open a CSV file, gzipped (recognised by its magic bytes, whatever its name) or plain, for streaming.

    The reader of the CDVAE/DiffCSP files and of ``soft-niggli canonicalize``: every column is kept
    (duplicate names too), rows come with their file line, and a malformed row is reported in its
    :class:`CsvRow` rather than ending the read.

    Args:
        path: the file.
        required: columns that must each appear exactly once in the header.
        errors: how undecodable bytes are handled, as in :func:`open`: ``"strict"`` raises (as
            ``ValueError``); ``"surrogateescape"`` carries them through, so that writing the fields back
            with ``errors="surrogateescape"`` restores the bytes.

    Returns:
        :class:`CsvRows`: ``columns``, and its rows when iterated.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file; a required column missing (the message lists the columns present) or
            repeated; a damaged file (also while iterating, naming the last row read).

    >>> from soft_niggli.datasets import bundled_path
    >>> with open_csv(bundled_path("perov_5_small")) as rows:
    ...     first = next(iter(rows))
    >>> rows.columns[:2], first.number, first.line, first.problem
    (('', 'material_id'), 1, 2, '')
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" + (" (a folder)" if path.is_dir() else ""))
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    csv.field_size_limit(1 << 30)  # a CIF per field: far past csv's 128 KiB default for large cells
    # utf-8-sig: a byte-order mark is not part of the first column's name.
    raw = open(path, "rb")
    fh = io.TextIOWrapper(gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw, encoding="utf-8-sig",
                          errors=errors, newline="")
    try:
        reader = csv.reader(fh)
        header = None
        for header in reader:
            if header:
                break
        if not header:
            raise ValueError(f"{path}: the file is empty: expected a CSV header line with the columns "
                             f"{list(required)} (CDVAE/DiffCSP format: one CIF per row in 'cif')")
        columns = tuple(header)
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: expected a CSV with the columns {list(required)} (CDVAE/DiffCSP format: one "
                             f"CIF per row in 'cif'), missing {missing}; columns present: {list(columns)}")
        for c in required:
            if columns.count(c) > 1:
                where = [i + 1 for i, name in enumerate(columns) if name == c]
                raise ValueError(f"{path}: expected the column {c!r} once, got it {len(where)} times (columns "
                                 f"{', '.join(map(str, where))} of {list(columns)}): which one to read is ambiguous")
    except READ_ERRORS + (csv.Error,) as err:
        fh.close()
        raw.close()
        raise ValueError(f"{path}: the file is truncated or corrupt: its header could not be read "
                         f"({'gzip' if gzipped else 'text'}: {type(err).__name__}: {err})") from err
    except BaseException:
        fh.close()
        raw.close()
        raise
    return CsvRows(path, raw, fh, reader, columns, gzipped)


def whole_rows(path: Path, required: tuple[str, ...] = ("cif",)):
    """``(row number, row dict)`` of a CSV file for the dataset readers, which need whole rows.

    A malformed row raises ``ValueError`` naming the file, the row and its line: a row with a field too
    many or too few would shift the CIF into another column.
    """
    with open_csv(path, required) as rows:
        for row in rows:
            if row.problem:
                raise ValueError(f"{path}: row {row.number} (line {row.line}): {row.problem}")
            yield row.number, dict(zip(rows.columns, row.fields))


def row_place(path: Path, i: int, row: dict) -> str:
    mid = row.get("material_id")
    return f"{path}: row {i}" + (f" (material_id {mid!r})" if mid else "")

