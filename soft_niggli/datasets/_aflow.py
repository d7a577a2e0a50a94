"""The AFLOW prototype structures bundled with pymatgen
(``pymatgen/analysis/prototypes/aflow_prototypes.json.gz``): real crystals that need no data folder.

Row convention: every structure's ``lattice.matrix`` has the lattice vectors as rows, as in pymatgen.
"""

from __future__ import annotations

import gzip
import io
import json
import warnings

from .._checks import check_count


def read_aflow_prototypes(max_atoms: int | None = 20) -> list:
    """The ordered AFLOW prototype structures bundled with pymatgen (288 in all, 250 with <= 20 atoms).

    Each structure carries ``properties["material_id"]``: its AFLOW prototype label and its index in
    the bundled file, ``"<label>#<index>"`` (the labels alone are not unique). ``max_atoms`` is None
    or an int >= 0 (``TypeError`` for other types, ``ValueError`` if negative).
    """
    import importlib.resources

    from pymatgen.core import Structure

    max_atoms = check_count(max_atoms, "max_atoms")
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
