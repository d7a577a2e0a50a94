"""The cache of parsed CSV files: compact JSON (lattice, atomic numbers, fractional coordinates,
``material_id``) under :func:`cache_dir`, keyed by the file's absolute path, size and modification time.

Row convention: a cached lattice is the structure's ``lattice.matrix``, lattice vectors as rows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
import zlib
from pathlib import Path

import numpy as np

#: Bumped whenever the record format changes: older cache files are then parsed again.
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where parsed datasets are cached: ``$SOFT_NIGGLI_CACHE``, else ``$XDG_CACHE_HOME/soft_niggli``,
    else ``~/.cache/soft_niggli``. Created on first use."""
    env = os.environ.get("SOFT_NIGGLI_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "soft_niggli"


def to_record(structure) -> dict:
    return {
        "lattice": np.asarray(structure.lattice.matrix, dtype=float).tolist(),
        "species": [int(z) for z in structure.atomic_numbers],
        "frac": np.asarray(structure.frac_coords, dtype=float).tolist(),
        "material_id": structure.properties.get("material_id") if hasattr(structure, "properties") else None,
    }


def from_record(rec: dict):
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice(rec["lattice"]), rec["species"], rec["frac"], coords_are_cartesian=False)
    if rec.get("material_id") is not None:
        s.properties["material_id"] = rec["material_id"]
    return s


def cache_path(path: Path, limit: int | None) -> Path:
    st = path.stat()
    key = f"v{CACHE_VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    suffix = "all" if limit is None else f"first{limit}"
    return cache_dir() / f"{path.name.split('.')[0]}-{digest}-{suffix}.json.gz"


def read_cache(p: Path) -> list[dict] | None:
    try:
        with gzip.open(p, "rt") as fh:
            data = json.load(fh)
        if data.get("version") == CACHE_VERSION:
            return data["records"]
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        pass  # a missing or corrupt cache is simply rebuilt
    return None


def write_cache(p: Path, records: list[dict]) -> None:
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        with gzip.open(tmp, "wt") as fh:
            json.dump({"version": CACHE_VERSION, "records": records}, fh)
        os.replace(tmp, p)  # atomic: concurrent readers never see half a file
    except OSError as err:
        warnings.warn(f"soft_niggli: could not write the dataset cache {p} ({err}); parsing again next time")


def read_cached(path: Path, limit: int | None) -> list[dict] | None:
    """The cached records of the first ``limit`` rows of ``path`` (all rows for ``None``), or None.

    A full-file cache serves any ``limit``, and so does a cached prefix at least as long.
    """
    full = read_cache(cache_path(path, None))
    if full is not None:
        return full if limit is None else full[:limit]
    if limit is None:
        return None
    exact = cache_path(path, limit)
    stem = exact.name.rsplit("-first", 1)[0]
    for p in sorted(exact.parent.glob(f"{stem}-first*.json.gz")):
        try:
            k = int(p.name[len(stem) + len("-first"):].split(".")[0])
        except ValueError:
            continue
        if k >= limit and (cached := read_cache(p)) is not None:
            return cached[:limit]
    return None
