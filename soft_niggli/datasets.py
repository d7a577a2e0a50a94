"""Crystal datasets: the CDVAE/DiffCSP CSV format, and a default set that ships with pymatgen.

Row convention: every structure's lattice matrix (``structure.lattice.matrix``) has the lattice
vectors a, b, c as rows, as in pymatgen and the rest of soft_niggli; Cartesian positions are
``X = F @ L``. Cells are returned *as stored* (not Niggli-reduced): choosing a basis is the caller's
business (see ``benchmarks/ablation.py``).

Two sources:

* :func:`read_cdvae_csv` reads the CSV files published with CDVAE and DiffCSP (one CIF per row in
  the ``cif`` column, gzipped or not). Parsing CIFs is slow (it dominates reading a dataset), so the
  parsed structures are cached, in compact JSON (lattice, atomic numbers, fractional coordinates,
  ``material_id``), under ``$SOFT_NIGGLI_CACHE`` or else ``$XDG_CACHE_HOME/soft_niggli`` or else
  ``~/.cache/soft_niggli``, keyed by the file's absolute path, size and modification time, never in
  the repository.
* ``"mp_20"``, ``"perov_5"``, ``"carbon_24"``, ``"mpts_52"``: those CSV files, in a data folder that
  the caller names: ``data_dir=`` or the environment variable ``SOFT_NIGGLI_DATA``
  (:func:`resolve_data_dir`), holding ``<name>/train.csv.gz`` and/or ``<name>/val.csv.gz``. The library
  never looks for data relative to its own files.
* ``"perov_5_small"``, ``"carbon_24_small"`` (:data:`BUNDLED`): real crystals that ship inside this
  package (``soft_niggli/data/``, :func:`bundled_path`): 500 rows of Perov-5's and 300 of Carbon-24's
  validation files, a seeded random sample in the same CSV format, with a ``NOTICE`` naming the
  sources and licences (CDVAE's files, MIT; Castelli et al. 2012; Pickard 2020). They need no data
  folder, so they are the default data of the examples and of the ablation benchmark; each is one
  file, split 80/20 by :func:`train_val_split`.
* ``"aflow"``: the 288 AFLOW prototype structures bundled with pymatgen
  (``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``), of which the 250 ordered ones with at
  most 20 atoms are kept. It needs nothing but an installed pymatgen.

:func:`load_dataset` resolves a name to structures and a split; :func:`train_val_split` is the
deterministic split used where a benchmark ships a single file.

For tools of your own: :func:`open_csv` streams the rows of such a CSV file (every column, duplicate
names too, each row with its line in the file, malformed rows flagged rather than fatal; the reader of
``soft-niggli canonicalize``), and :func:`cif_cell_parameters` reads a CIF's six cell parameters
without pymatgen.

pymatgen is an optional dependency of soft_niggli: it is imported inside the functions that need it.

Outputs are pymatgen ``Structure`` lists, or torch tensors (:func:`read_cdvae_cells`), never NumPy
arrays. Wrong argument types (a float or a bool for ``limit``, a number for ``name``) raise
``TypeError``, wrong values (unknown names, negative counts) ``ValueError``, missing files
``FileNotFoundError``.

>>> train = load_dataset("perov_5_small", split="train")      # doctest: +SKIP
>>> len(train), len(load_dataset("perov_5_small", split="val"))  # doctest: +SKIP
(400, 100)
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from ._checks import check_int, check_real

__all__ = [
    "DATASETS",
    "BUNDLED",
    "FOLDER_DATASETS",
    "SPLITS",
    "DATA_ENV",
    "cache_dir",
    "resolve_data_dir",
    "read_cdvae_csv",
    "read_cdvae_cells",
    "read_aflow_prototypes",
    "bundled_path",
    "train_val_split",
    "load_dataset",
    "split_files",
    "split_source",
    "open_csv",
    "CsvRows",
    "CsvRow",
    "cif_cell_parameters",
]

#: Datasets read from a data folder (``<data_dir>/<name>/{train,val,test}.csv[.gz]``, CDVAE/DiffCSP CSV
#: files); ``mp_20_biternary`` is MP-20 restricted to binary and ternary compounds.
FOLDER_DATASETS = ("mp_20", "perov_5", "carbon_24", "mpts_52", "mp_20_biternary")
#: Small real-crystal sets that ship inside the package (``soft_niggli/data/<name>.csv.gz``, see its NOTICE).
BUNDLED = ("perov_5_small", "carbon_24_small")
#: Names accepted by :func:`load_dataset`: ``"aflow"`` (bundled with pymatgen), the folder datasets, the
#: bundled ones.
DATASETS = ("aflow", *FOLDER_DATASETS, *BUNDLED)
#: Splits accepted by :func:`load_dataset`.
SPLITS = ("train", "val", "test", "all")

_CACHE_VERSION = 1
_T = TypeVar("_T")


# ----------------------------------------------------------------------------------------- places


def cache_dir() -> Path:
    """Where parsed datasets are cached: ``$SOFT_NIGGLI_CACHE``, else ``$XDG_CACHE_HOME/soft_niggli``,
    else ``~/.cache/soft_niggli``. Created on first use."""
    env = os.environ.get("SOFT_NIGGLI_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "soft_niggli"


#: Environment variable naming the data folder when no ``data_dir`` is passed.
DATA_ENV = "SOFT_NIGGLI_DATA"

_EXPECTED_FILES = ("<data_dir>/<name>/train.csv.gz, val.csv.gz and/or test.csv.gz (or .csv; the CDVAE/DiffCSP CSV "
                   "files, one CIF per row in a 'cif' column; <name> one of " + ", ".join(FOLDER_DATASETS) + ")")


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding ``<name>/<split>.csv.gz``: ``path`` if given, else ``$SOFT_NIGGLI_DATA``.

    Nothing else: the installed library never guesses a folder relative to its own files.

    Raises:
        FileNotFoundError: neither is given, or the folder does not exist; the message names both ways
            to give it and the files expected inside.
        TypeError: ``path`` is not a str or path-like.
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"data_dir: expected a str or os.PathLike folder, or None, got {type(path).__name__} {path!r}")
    how = (f"pass data_dir=... or set the environment variable {DATA_ENV} to a folder holding {_EXPECTED_FILES}; "
           "or use a dataset that needs no folder: " + ", ".join(repr(n) for n in BUNDLED)
           + " (real crystals shipped with soft_niggli) or 'aflow' (bundled with pymatgen)")
    if path is not None:
        folder, source = Path(path).expanduser(), "data_dir"
    elif os.environ.get(DATA_ENV):
        folder, source = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        raise FileNotFoundError(f"no data folder given: {how}")
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} (from {source}) does not exist: {how}")
    return folder


# --------------------------------------------------------------------------------- serialisation


def _to_record(structure) -> dict:
    return {
        "lattice": np.asarray(structure.lattice.matrix, dtype=float).tolist(),
        "species": [int(z) for z in structure.atomic_numbers],
        "frac": np.asarray(structure.frac_coords, dtype=float).tolist(),
        "material_id": structure.properties.get("material_id") if hasattr(structure, "properties") else None,
    }


def _from_record(rec: dict):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(rec["lattice"]), rec["species"], rec["frac"], coords_are_cartesian=False)
    if rec.get("material_id") is not None:
        s.properties["material_id"] = rec["material_id"]
    return s


def _cache_path(path: Path, limit: int | None) -> Path:
    st = path.stat()
    key = f"v{_CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    suffix = "all" if limit is None else f"first{limit}"
    return cache_dir() / f"{path.name.split('.')[0]}-{digest}-{suffix}.json.gz"


def _read_cache(p: Path) -> list[dict] | None:
    try:
        with gzip.open(p, "rt") as fh:
            data = json.load(fh)
        if data.get("version") == _CACHE_VERSION:
            return data["records"]
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        pass  # a missing or corrupt cache is simply rebuilt
    return None


def _write_cache(p: Path, records: list[dict]) -> None:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        with gzip.open(tmp, "wt") as fh:
            json.dump({"version": _CACHE_VERSION, "records": records}, fh)
        os.replace(tmp, p)  # atomic: concurrent readers never see half a file
    except OSError as err:
        warnings.warn(f"soft_niggli: could not write the dataset cache {p} ({err}); parsing again next time")


def _check_count(value, name: str) -> int | None:
    """``value`` as an int, for arguments that must be ``None`` or an int >= 0 (``limit``, ``max_atoms``).

    A negative count would slice from the end (``limit=-1`` drops the last structure, ``ValueError``), and
    ``True`` would read as 1 (``TypeError``, as for floats and strings): both are refused rather than given
    a meaning. NumPy integers are accepted.
    """
    return check_int(value, name, minimum=0, allow_none=True)


# Errors of decompressing or decoding a damaged file; they name neither the file nor the problem.
_READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError)


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
        except _READ_ERRORS + (csv.Error,) as err:
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
    except _READ_ERRORS + (csv.Error,) as err:
        fh.close()
        raw.close()
        raise ValueError(f"{path}: the file is truncated or corrupt: its header could not be read "
                         f"({'gzip' if gzipped else 'text'}: {type(err).__name__}: {err})") from err
    except BaseException:
        fh.close()
        raw.close()
        raise
    return CsvRows(path, raw, fh, reader, columns, gzipped)


def _csv_rows(path: Path, required: tuple[str, ...] = ("cif",)):
    """``(row number, row dict)`` of a CSV file for the dataset readers, which need whole rows.

    A malformed row raises ``ValueError`` naming the file, the row and its line: a row with a field too
    many or too few would shift the CIF into another column.
    """
    with open_csv(path, required) as rows:
        for row in rows:
            if row.problem:
                raise ValueError(f"{path}: row {row.number} (line {row.line}): {row.problem}")
            yield row.number, dict(zip(rows.columns, row.fields))


def _where(path: Path, i: int, row: dict) -> str:
    mid = row.get("material_id")
    return f"{path}: row {i}" + (f" (material_id {mid!r})" if mid else "")


def _parse_csv(path: Path, limit: int | None) -> list[dict]:
    from pymatgen.core import Structure

    records = []
    for i, row in _csv_rows(path):
        if limit is not None and len(records) >= limit:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CIF parser chatter (rounded occupancies, etc.)
                s = Structure.from_str(row["cif"], fmt="cif")
        except Exception as err:  # pymatgen raises many types (ValueError, KeyError, IndexError, ...)
            raise ValueError(f"{_where(path, i, row)}: could not parse the CIF "
                             f"({type(err).__name__}: {err})") from err
        if not s.is_ordered:
            # A disordered structure has no atomic numbers (pymatgen raises on them): keep just enough to
            # drop and count it, so the cache holds the same rows as the file and `limit` counts rows.
            records.append({"material_id": row.get("material_id"), "ordered": False})
            continue
        rec = _to_record(s)
        rec["material_id"] = row.get("material_id")
        rec["ordered"] = True
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------- readers


def read_cdvae_csv(path: str | os.PathLike, limit: int | None = None, max_atoms: int | None = None,
                   use_cache: bool = True) -> list:
    """pymatgen ``Structure`` objects from a CDVAE/DiffCSP CSV file (gzipped or plain).

    Args:
        path: the CSV file; its ``cif`` column is parsed with ``Structure.from_str(cif, fmt="cif")``.
        limit: read only the first ``limit`` rows (before filtering by ``max_atoms``).
        max_atoms: drop structures with more atoms than this.
        use_cache: read/write the parsed rows from/to :func:`cache_dir` (a full-file cache also serves
            any ``limit``).

    Returns:
        Structures in file order, cells as stored, each with ``properties["material_id"]``.
        Disordered structures (partial occupancies) are dropped, and one ``UserWarning`` says how many
        of the rows read were dropped and names the first few.

    Raises:
        TypeError: ``limit`` or ``max_atoms`` not None or an int.
        ValueError: ``limit`` or ``max_atoms`` negative; no ``cif`` column (the message
            lists the columns present); a CIF that does not parse (naming the file, the row and its
            ``material_id``); a truncated or corrupt file.
        FileNotFoundError: no such file.
    """
    limit = _check_count(limit, "limit")
    max_atoms = _check_count(max_atoms, "max_atoms")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    records = None
    if use_cache:
        full = _read_cache(_cache_path(path, None))
        if full is not None:
            records = full if limit is None else full[:limit]
        elif limit is not None:
            # Any cached prefix at least as long serves this limit.
            exact = _cache_path(path, limit)
            stem = exact.name.rsplit("-first", 1)[0]
            for p in sorted(exact.parent.glob(f"{stem}-first*.json.gz")):
                try:
                    k = int(p.name[len(stem) + len("-first"):].split(".")[0])
                except ValueError:
                    continue
                if k >= limit and (cached := _read_cache(p)) is not None:
                    records = cached[:limit]
                    break
    if records is None:
        records = _parse_csv(path, limit)
        if use_cache:
            _write_cache(_cache_path(path, limit), records)
    out, disordered = [], []
    for rec in records:
        if not rec.get("ordered", True):
            disordered.append(rec.get("material_id"))
            continue
        if max_atoms is not None and len(rec["species"]) > max_atoms:
            continue
        out.append(_from_record(rec))
    if disordered:
        # Said on every call, cached or not: the caller gets fewer structures than rows either way.
        warnings.warn(f"{path}: dropped {len(disordered)} of {len(records)} rows read: disordered structures "
                      f"(partial occupancies), material_id {disordered[:5]}"
                      + (" ..." if len(disordered) > 5 else ""), UserWarning, stacklevel=2)
    return out


_CELL_KEYS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
              "_cell_angle_gamma")
_CELL_PATTERN = re.compile(r"^(" + "|".join(_CELL_KEYS) + r")\s+([-+0-9.eE]+|\S+)", re.M)


def cif_cell_parameters(cif: str) -> tuple[float, float, float, float, float, float]:
    r"""The six cell parameters ``(a, b, c, alpha, beta, gamma)`` of a CIF (Å, degrees), read as text.

    No pymatgen: enough for the metric of a cell, and for saying why a CIF that pymatgen refuses is
    refused (a zero, flat or non-finite cell). Values are taken as written, ``nan`` and ``inf`` included;
    a standard uncertainty in parentheses (``5.4307(2)``) is dropped.

    >>> cif_cell_parameters("data_x\n_cell_length_a 3\n_cell_length_b 4\n_cell_length_c 5.0(1)\n"
    ...                     "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 120\n")
    (3.0, 4.0, 5.0, 90.0, 90.0, 120.0)

    Raises:
        ValueError: a parameter missing or not a number (the message names which).
    """
    if not isinstance(cif, str):
        raise TypeError(f"cif: expected the text of a CIF (str), got {type(cif).__name__}")
    found = dict(_CELL_PATTERN.findall(cif))
    missing = [k for k in _CELL_KEYS if k not in found]
    if missing:
        raise ValueError(f"expected a CIF with the six cell parameters {', '.join(_CELL_KEYS)}, "
                         f"missing {', '.join(missing)}")
    values = []
    for k in _CELL_KEYS:
        text = re.sub(r"\(\d+\)$", "", found[k])
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"{k}: expected a number, got {found[k]!r}") from None
    return tuple(values)


def read_cdvae_cells(path: str | os.PathLike, limit: int | None = None):
    """Just the lattices of a CDVAE/DiffCSP CSV file, fast: float64 tensor ``(n, 3, 3)``.

    Reads each CIF's six cell parameters (no pymatgen, no cache) and builds the lattice in the
    standard setting (a along x, b in the xy plane; rows are lattice vectors). Enough for anything
    that depends on the metric only, such as reducer tests and benchmarks. Disordered rows are kept:
    their cells are as good as any.

    Raises:
        TypeError: ``limit`` not None or an int.
        ValueError: ``limit`` negative; no ``cif`` column (listing the columns present);
            a CIF without the six cell parameters (naming the file, the row and its ``material_id``);
            a truncated or corrupt file.
        FileNotFoundError: no such file.
    """
    import torch

    from .lattice import lattice_from_parameters

    limit = _check_count(limit, "limit")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    params = []
    for i, row in _csv_rows(path):
        if limit is not None and len(params) >= limit:
            break
        try:
            params.append(cif_cell_parameters(row["cif"] or ""))
        except ValueError as err:  # a parameter missing, or a value such as "1.2.3" or "?"
            raise ValueError(f"{_where(path, i, row)}: {err}") from err
    p = torch.tensor(params, dtype=torch.float64).reshape(-1, 6)
    return lattice_from_parameters(*p.unbind(1))


def read_aflow_prototypes(max_atoms: int | None = 20) -> list:
    """The ordered AFLOW prototype structures bundled with pymatgen (288 in all, 250 with <= 20 atoms).

    Each structure carries ``properties["material_id"]``: its AFLOW prototype label and its index in
    the bundled file, ``"<label>#<index>"`` (the labels alone are not unique). ``max_atoms`` is None
    or an int >= 0 (``TypeError`` for other types, ``ValueError`` if negative).
    """
    import importlib.resources

    from pymatgen.core import Structure

    max_atoms = _check_count(max_atoms, "max_atoms")
    try:
        # Resolve the file from the top-level package: importing pymatgen.analysis.prototypes itself
        # would pull in most of pymatgen (seconds).
        # (pymatgen is a namespace package: join one part at a time.)
        resource = importlib.resources.files("pymatgen")
        for part in ("analysis", "prototypes", "aflow_prototypes.json.gz"):
            resource = resource.joinpath(part)
        raw = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise FileNotFoundError("the AFLOW prototypes bundled with pymatgen "
                                "(pymatgen/analysis/prototypes/aflow_prototypes.json.gz) were not found; "
                                f"is pymatgen installed? ({err})") from err
    entries = json.load(io.TextIOWrapper(gzip.GzipFile(fileobj=io.BytesIO(raw)), encoding="utf-8"))
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, e in enumerate(entries):
            # The entries are StructureNL dicts; Structure.from_dict reads their lattice and sites
            # directly, skipping StructureNL's slow parsing of the provenance (BibTeX) fields.
            s = Structure.from_dict(e["snl"])
            if not s.is_ordered or (max_atoms is not None and len(s) > max_atoms):
                continue
            # AFLOW labels repeat (15 are shared by two entries): the file index makes the id unique.
            s.properties["material_id"] = f"{(e.get('tags') or {}).get('aflow')}#{i}"
            out.append(s)
    return out


def bundled_path(name: str) -> Path:
    """The file of a bundled dataset (:data:`BUNDLED`): ``soft_niggli/data/<name>.csv.gz``, CDVAE CSV format.

    Found through :mod:`importlib.resources`, wherever the package is installed. The sources and
    licences are in ``soft_niggli/data/NOTICE``.

    >>> bundled_path("perov_5_small").name
    'perov_5_small.csv.gz'

    Raises:
        TypeError: ``name`` not a str.
        ValueError: ``name`` not one of :data:`BUNDLED`.
        FileNotFoundError: the file is missing from this installation (a build that left out the package
            data), or the package is installed in a form without files (a zip).
    """
    import importlib.resources

    if not isinstance(name, str):
        raise TypeError(f"name: expected one of {BUNDLED} (a str), got {type(name).__name__} {name!r}")
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
    resource = importlib.resources.files(__package__).joinpath("data", f"{name}.csv.gz")
    path = Path(os.fspath(resource)) if isinstance(resource, os.PathLike) else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"the bundled dataset {name!r} ({resource}) is missing from this installation of "
                                "soft_niggli: reinstall it (the wheel carries soft_niggli/data/*.csv.gz)")
    return path


# ------------------------------------------------------------------------------------------ split


def train_val_split(items: Sequence[_T], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[_T], list[_T]]:
    """Deterministic split by a seeded permutation: ``(train, val)``, ``val`` holding
    ``round(val_fraction · n)`` items (at least one when ``n >= 2``). Same input, same seed, same split.
    """
    if not 0 < check_real(val_fraction, "val_fraction", "a float in (0, 1)") < 1:
        raise ValueError(f"val_fraction: expected a float in (0, 1), got {val_fraction!r}")
    check_int(seed, "seed")
    n = len(items)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return [items[i] for i in train_idx], [items[i] for i in val_idx]


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                 limit: int | None = None, max_atoms: int | None = None, val_fraction: float = 0.2,
                 seed: int = 0) -> list:
    """Structures of a named dataset and split.

    Args:
        name: one of :data:`DATASETS`. ``"perov_5_small"`` and ``"carbon_24_small"`` ship with this
            package (:func:`bundled_path`), ``"aflow"`` with pymatgen; the others are read from
            ``<data_dir>/<name>/{train,val,test}.csv[.gz]``.
        data_dir: the data folder; ``None`` for ``$SOFT_NIGGLI_DATA`` (:func:`resolve_data_dir`). Not
            needed (and ignored) for the bundled sets and ``"aflow"``.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``. Files are ``<split>.csv.gz`` or
            ``<split>.csv`` (:func:`split_files`). Where the training file and the split's own file exist
            they are used as they are (``"test"`` without a test file: the val file); where only one
            file exists (and for the bundled sets and ``"aflow"``) it is split by
            :func:`train_val_split` with ``val_fraction`` and ``seed``, and ``"val"`` and ``"test"`` are
            both its held-out part. :func:`split_source` says in words which file was read.
        limit: keep at most this many structures of the split (the first ones, in file order).
        max_atoms: drop structures with more atoms (``"aflow"`` always keeps <= 20).

    Raises:
        TypeError: ``name`` or ``split`` not a str; ``limit`` or ``max_atoms`` not None or an int.
        ValueError: unknown name or split (listing the valid ones); ``limit`` or ``max_atoms`` negative;
            a damaged data file (see :func:`read_cdvae_csv`).
        FileNotFoundError: no data folder given (neither ``data_dir`` nor ``$SOFT_NIGGLI_DATA``) for a
            dataset that needs one, or the folder or the dataset's files are absent; the message says how
            to give the folder, which files it must hold, and which datasets need none.
    """
    # Checked here, not only by the readers: the "aflow" branch and the splits slice with `limit`.
    limit = _check_count(limit, "limit")
    max_atoms = _check_count(max_atoms, "max_atoms")
    if not isinstance(name, str):
        raise TypeError(f"name: expected a dataset name (str), one of {DATASETS}, got {type(name).__name__} {name!r}")
    if not isinstance(split, str):
        raise TypeError(f"split: expected one of {SPLITS} (a str), got {type(split).__name__} {split!r}")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if name == "aflow":
        structures = read_aflow_prototypes(max_atoms=20 if max_atoms is None else min(max_atoms, 20))
        if split == "all":
            return structures[:limit]
        train, val = train_val_split(structures, val_fraction, seed)
        return (train if split == "train" else val)[:limit]
    if name in BUNDLED:
        structures = read_cdvae_csv(bundled_path(name), max_atoms=max_atoms)
        if split == "all":
            return structures[:limit]
        train, val = train_val_split(structures, val_fraction, seed)
        return (train if split == "train" else val)[:limit]

    present = split_files(name, data_dir)
    if split == "all":
        out = []
        for p in present.values():
            out += read_cdvae_csv(p, max_atoms=max_atoms)
        return out[:limit]
    if split in present and ("train" in present or split == "train") and len(present) >= 2:
        # The split has its own file: without a filter there is no need to parse more rows than asked for.
        rows = limit if max_atoms is None else None
        return read_cdvae_csv(present[split], limit=rows, max_atoms=max_atoms)[:limit]
    if split == "test" and "val" in present and "train" in present:
        return read_cdvae_csv(present["val"], max_atoms=max_atoms)[:limit]  # no test file: the val file
    # One file (or no training file): split it.
    only = present.get("train") or present.get("val") or present["test"]
    train, val = train_val_split(read_cdvae_csv(only, max_atoms=max_atoms), val_fraction, seed)
    return (train if split == "train" else val)[:limit]


def split_files(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """The files of folder dataset ``name``: ``{split: path}`` for each of ``train``, ``val``, ``test``
    present as ``<data_dir>/<name>/<split>.csv.gz`` or ``.csv`` (the compressed one where both exist).

    Raises:
        FileNotFoundError: the folder holds none of them (the message lists what was looked for).
    """
    folder = resolve_data_dir(data_dir) / name
    present = {}
    for split in ("train", "val", "test"):
        for suffix in (".csv.gz", ".csv"):
            path = folder / f"{split}{suffix}"
            if path.is_file():
                present[split] = path
                break
    if not present:
        raise FileNotFoundError(f"dataset {name!r}: none of train, val, test (.csv.gz or .csv) exists in {folder} "
                                f"(expected {_EXPECTED_FILES})")
    return present


def split_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *, val_fraction: float = 0.2,
                 seed: int = 0) -> str:
    """Which file (and part of it) :func:`load_dataset` reads for ``name`` and ``split``, in words, for
    results files: e.g. ``"perov_5/val.csv.gz, the held-out 20% (seed 0)"``."""
    if name == "aflow":
        return "pymatgen's AFLOW prototypes" + ("" if split == "all" else f", {split} part of an 80/20 split")
    if name in BUNDLED:
        where = f"soft_niggli/data/{name}.csv.gz"
    else:
        present = split_files(name, data_dir)
        if split == "all":
            return ", ".join(f"{name}/{p.name}" for p in present.values())
        if split in present and ("train" in present or split == "train") and len(present) >= 2:
            return f"{name}/{present[split].name}"
        if split == "test" and "val" in present and "train" in present:
            return f"{name}/{present['val'].name} (no test file)"
        only = present.get("train") or present.get("val") or present["test"]
        where = f"{name}/{only.name}"
    if split == "all":
        return where
    part = f"the held-out {round(100 * val_fraction)}%" if split != "train" else \
        f"the other {round(100 * (1 - val_fraction))}%"
    return f"{where}, {part} (seed {seed})"
