"""Reading and writing the CIF of one row: pymatgen's parser and writer, and the statuses of a crystal
that the command must leave as it came.

Row convention: lattices are ``(3, 3)`` arrays whose rows are the lattice vectors, as in pymatgen.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np

#: Site properties the written CIF carries (pymatgen reads nothing else from a CIF but implicit hydrogens).
WRITABLE_SITE_PROPERTIES = {"magmom"}
DATA_BLOCK = re.compile(r"^\s*data_(\S*)", re.M | re.I)  # how pymatgen's CifFile splits blocks


def parse_cif(cif: str):
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rounded coordinates and the like
        # on_error="raise": the note then says what failed, not only "no structures".
        return CifParser.from_str(cif).parse_structures(primitive=False, on_error="raise")[0]


def unparsed_status(cif: str, error: Exception) -> tuple[str, str]:
    """Status and note of a CIF that pymatgen refused: ``NONFINITE`` or ``DEGENERATE`` when its six cell
    parameters say why (pymatgen refuses zero lengths and flat cells alike), else ``PARSE_ERROR``."""
    from ..datasets import cif_cell_parameters

    why = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
    try:
        a, b, c, alpha, beta, gamma = params = cif_cell_parameters(cif)
    except ValueError:
        return "PARSE_ERROR", why
    if not all(math.isfinite(x) for x in params):
        return "NONFINITE", f"cell parameters {list(params)} are not finite"
    ca, cb, cg = np.cos(np.radians([alpha, beta, gamma]))
    flatness = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg  # (V / abc)²: 0 for a flat cell
    if min(a, b, c) <= 0 or flatness <= 1e-12:
        return "DEGENERATE", (f"cell parameters a, b, c = {a}, {b}, {c}, angles {alpha}, {beta}, {gamma}: a zero "
                              f"or flat cell (pymatgen: {why})")
    return "PARSE_ERROR", why


def flag_structure(structure) -> tuple[str, str] | None:
    """Status and note of a parsed crystal the command must leave as it came, or None."""
    if not structure.is_ordered:
        partial = [i for i, site in enumerate(structure) if not site.is_ordered]
        i = partial[0]
        return "DISORDERED", (f"partial occupancies on {len(partial)} of {len(structure)} sites (site {i}: "
                              f"{structure[i].species_string}); CrystalBatch.from_structures refuses disordered "
                              "structures: input kept")
    extra = sorted(set(structure.site_properties) - WRITABLE_SITE_PROPERTIES)
    if extra:
        return "NOT_WRITABLE", (f"site properties {extra} cannot be written to a CIF (it carries "
                                f"{sorted(WRITABLE_SITE_PROPERTIES)}): input kept")
    return None


def write_cif(structure, lattice: np.ndarray, frac: np.ndarray, block: str | None) -> str:
    """The crystal with ``lattice`` and ``frac`` as a P1 CIF: species, labels and magnetic moments kept."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.electronic_structure.core import Magmom
    from pymatgen.io.cif import CifWriter

    props = structure.site_properties
    labels = [site.label for site in structure]
    unique = len(set(labels)) == len(labels)  # a CIF names each site once; magnetic moments refer to labels
    moments = props.get("magmom")
    # A moment loop with no rows is a CIF pymatgen cannot read back: all-zero moments are not written.
    magnetic = moments is not None and any(abs(Magmom(m)) > 0 for m in moments)
    new = Structure(Lattice(lattice), [site.species for site in structure], frac, site_properties=props or None,
                    labels=labels if unique else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        writer = CifWriter(new, write_magmoms=magnetic)
    data = next(iter(writer.cif_file.data.values()))
    if unique:  # the writer renames labels equal to the species and those of magnetic sites
        data.data["_atom_site_label"] = labels
        if magnetic:
            data.data["_atom_site_moment_label"] = [lab for lab, m in zip(labels, moments) if abs(Magmom(m)) > 0]
    if block:
        data.header = block
    return str(writer)
