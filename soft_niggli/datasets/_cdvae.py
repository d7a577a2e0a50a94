"""The CDVAE/DiffCSP CSV files (one CIF per row in the ``cif`` column): :func:`read_cdvae_csv` parses them
into pymatgen structures (cached, :mod:`._cache`), :func:`read_cdvae_cells` reads just the lattices, and
:func:`cif_cell_parameters` a CIF's six cell parameters without pymatgen.

Row convention: every lattice matrix has the lattice vectors a, b, c as rows; cells are returned as
stored, not Niggli-reduced.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from .._checks import check_count
from ._cache import cache_path, from_record, read_cached, to_record, write_cache
from ._csv import row_place, whole_rows


def _parse_csv(path: Path, limit: int | None) -> list[dict]:
    from pymatgen.core import Structure

    records = []
    for i, row in whole_rows(path):
        if limit is not None and len(records) >= limit:
            break
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CIF parser chatter (rounded occupancies, etc.)
                s = Structure.from_str(row["cif"], fmt="cif")
        except Exception as err:  # pymatgen raises many types (ValueError, KeyError, IndexError, ...)
            raise ValueError(f"{row_place(path, i, row)}: could not parse the CIF "
                             f"({type(err).__name__}: {err})") from err
        if not s.is_ordered:
            # A disordered structure has no atomic numbers (pymatgen raises on them): keep just enough to
            # drop and count it, so the cache holds the same rows as the file and `limit` counts rows.
            records.append({"material_id": row.get("material_id"), "ordered": False})
            continue
        rec = to_record(s)
        rec["material_id"] = row.get("material_id")
        rec["ordered"] = True
        records.append(rec)
    return records


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
    limit = check_count(limit, "limit")
    max_atoms = check_count(max_atoms, "max_atoms")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    records = read_cached(path, limit) if use_cache else None
    if records is None:
        records = _parse_csv(path, limit)
        if use_cache:
            write_cache(cache_path(path, limit), records)
    out, disordered = [], []
    for rec in records:
        if not rec.get("ordered", True):
            disordered.append(rec.get("material_id"))
            continue
        if max_atoms is not None and len(rec["species"]) > max_atoms:
            continue
        out.append(from_record(rec))
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

    from ..lattice import lattice_from_parameters

    limit = check_count(limit, "limit")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such CSV file")
    params = []
    for i, row in whole_rows(path):
        if limit is not None and len(params) >= limit:
            break
        try:
            params.append(cif_cell_parameters(row["cif"] or ""))
        except ValueError as err:  # a parameter missing, or a value such as "1.2.3" or "?"
            raise ValueError(f"{row_place(path, i, row)}: {err}") from err
    p = torch.tensor(params, dtype=torch.float64).reshape(-1, 6)
    return lattice_from_parameters(*p.unbind(1))
