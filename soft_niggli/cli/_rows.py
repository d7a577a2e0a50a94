"""One chunk of rows, canonicalised: each row's status and note, its CIF in the Niggli basis, the
transform, and the counts the report needs. This is the work that ``--jobs`` runs in parallel.

Row convention: lattices are ``(n, 3, 3)`` arrays whose rows are the lattice vectors; the reduced
lattice is ``T @ L``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ._cif import DATA_BLOCK, flag_structure, parse_cif, unparsed_status, write_cif

#: Every status a row can get, in the order the report lists them.
STATUSES = ("OK", "MALFORMED_ROW", "PARSE_ERROR", "MULTIPLE_BLOCKS", "DISORDERED", "NOT_WRITABLE", "NOT_CONVERGED",
            "DEGENERATE", "NONFINITE")
WHY = {
    "MALFORMED_ROW": "the CSV record does not match the header (written as read)",
    "PARSE_ERROR": "pymatgen could not read the CIF (input kept)",
    "MULTIPLE_BLOCKS": "more than one CIF data block in the field (input kept)",
    "DISORDERED": "partial occupancies (input kept)",
    "NOT_WRITABLE": "a site property a CIF cannot carry (input kept)",
    "NOT_CONVERGED": "the reducer's iteration cap was reached (input kept)",
    "DEGENERATE": "float64 cannot resolve the cell: flat, zero or extremely skewed (input kept)",
    "NONFINITE": "NaN or inf in the cell (input kept)",
}


@dataclass(frozen=True)
class Layout:
    """Where things are in an input record and in an output row."""

    cif: int
    width: int  # input columns
    out_width: int
    status: int
    transform: int
    note: int
    input_cif: int | None
    ident: int | None  # the material_id column, to name flagged rows in the report
    rel_tol: float
    compare_spglib: bool


@dataclass
class ChunkResult:
    rows: list
    flagged: list  # (status, name) of each flagged row
    statuses: Counter = field(default_factory=Counter)
    already: int = 0
    seconds: Counter = field(default_factory=Counter)
    spglib: Counter = field(default_factory=Counter)
    process: int = 0  # the id of the process that computed it: its seconds are that process's CPU time


def compare_spglib(lattices: np.ndarray, reduced: np.ndarray, rel_tol: float) -> Counter:
    """Counts of ``same``, ``other form``, ``different``, ``failed``: spglib's Niggli metric of each of
    ``lattices (n, 3, 3)`` against ours (``reduced``); where they differ, against every reduced form of the
    cell (:func:`soft_niggli.reduced_forms`, computed for those cells only)."""
    import torch

    from .._spglib import spglib_niggli_reduce
    from ..canonical import reduced_forms

    def same(g, lattice):  # to 1e-4 of the trace (spglib's tolerance is 1e-5 Å)
        return bool(np.abs(g - lattice @ lattice.T).max() <= 1e-4 * np.trace(g))

    theirs = spglib_niggli_reduce(lattices)
    counts, differing = Counter(), []
    for k, (N, ok, R) in enumerate(zip(theirs.lattice, theirs.ok, reduced)):
        if not ok or not np.all(np.isfinite(N)):
            counts["failed"] += 1
        elif same(N @ N.T, R):
            counts["same"] += 1
        else:
            differing.append((k, N @ N.T))
    if differing:
        forms = reduced_forms(torch.from_numpy(lattices[[k for k, _ in differing]]), rel_tol=rel_tol)
        owner, form_lattices = forms.owner.numpy(), forms.lattice.numpy()
        for i, (_, g) in enumerate(differing):
            counts["other form" if any(same(g, f) for f in form_lattices[owner == i]) else "different"] += 1
    return counts


def run_chunk(layout: Layout, records: list, columns: tuple) -> ChunkResult:
    """Canonicalise one chunk of records: the output rows, in order, and what the report needs."""
    import torch

    from ..lattice import integer_inverse
    from ..niggli import Status, niggli_reduce

    result = ChunkResult(rows=[], flagged=[], process=os.getpid())
    t0 = time.process_time()
    outs, status, notes, pending = [], [], [], []  # pending: (index, structure, block name)
    for i, (_, where, fields, problem) in enumerate(records):
        out = fields[:layout.width] + [""] * max(0, layout.width - len(fields))
        out += [""] * (layout.out_width - layout.width)
        cif = fields[layout.cif] if layout.cif < len(fields) else ""
        if layout.input_cif is not None:
            out[layout.input_cif] = cif
        outs.append(out)
        status.append("")
        notes.append("")
        if problem:
            note = f"{where}: {problem}"
            if len(fields) > layout.width:  # nothing is dropped: the surplus travels in the note
                note += f"; the fields past column {layout.width}, as JSON: {json.dumps(fields[layout.width:])}"
            elif fields:
                note += f"; written with {', '.join(map(repr, columns[len(fields):]))} empty"
            status[i], notes[i] = "MALFORMED_ROW", note
            continue
        blocks = DATA_BLOCK.findall(cif)
        if len(blocks) > 1:
            names = ", ".join(f"data_{b}" for b in blocks[:4]) + (", ..." if len(blocks) > 4 else "")
            status[i], notes[i] = "MULTIPLE_BLOCKS", (f"{len(blocks)} CIF data blocks ({names}) where one crystal "
                                                      "is expected: input kept")
            continue
        try:
            structure = parse_cif(cif)
        except Exception as err:  # noqa: BLE001 - pymatgen raises many types; the row is flagged
            status[i], notes[i] = unparsed_status(cif, err)
            continue
        flag = flag_structure(structure)
        if flag is not None:
            status[i], notes[i] = flag
            continue
        pending.append((i, structure, blocks[0] if blocks else None))
    result.seconds["parse"] += time.process_time() - t0

    if pending:
        t0 = time.process_time()
        lattices = np.array([s.lattice.matrix for _, s, _ in pending], dtype=np.float64).reshape(-1, 3, 3)
        res = niggli_reduce(lattices, rel_tol=layout.rel_tol)
        codes = res.status.numpy()
        transform, reduced = res.transform.clone(), res.lattice.clone()
        flip = torch.linalg.det(transform.double()) < 0  # left-handed: -T, the same metric
        transform[flip] = -transform[flip]
        reduced[flip] = -reduced[flip]
        ok = codes == int(Status.OK)
        inverse = integer_inverse(transform[torch.from_numpy(ok)]).numpy() if ok.any() else None
        transform, reduced = transform.numpy(), reduced.numpy()
        result.seconds["reduce"] += time.process_time() - t0
        if layout.compare_spglib and ok.any():
            t0 = time.process_time()
            result.spglib += compare_spglib(lattices[ok], reduced[ok], layout.rel_tol)
            result.seconds["spglib"] += time.process_time() - t0

        t0 = time.process_time()
        k_ok = 0
        for j, (i, structure, block) in enumerate(pending):
            name = Status(int(codes[j])).name
            status[i] = name
            if name != "OK":
                notes[i] = WHY[name]
                continue
            T = transform[j]
            frac = structure.frac_coords @ inverse[k_ok].astype(np.float64)
            frac = frac - np.floor(frac)
            frac[frac >= 1.0] = 0.0  # -1e-17 - floor(-1e-17) rounds to 1.0
            k_ok += 1
            try:
                outs[i][layout.cif] = write_cif(structure, reduced[j], frac, block)
            except Exception as err:  # noqa: BLE001 - a crystal the writer refuses is flagged, not lost
                status[i], notes[i] = "NOT_WRITABLE", f"pymatgen's CIF writer failed ({type(err).__name__}: {err})"
                continue
            outs[i][layout.transform] = json.dumps(T.tolist(), separators=(",", ":"))
            result.already += bool((T == np.eye(3, dtype=T.dtype)).all())
        result.seconds["write"] += time.process_time() - t0

    for (_, where, fields, _), out, name, note in zip(records, outs, status, notes):
        out[layout.status], out[layout.note] = name, note
        result.statuses[name] += 1
        if name != "OK":
            ident = fields[layout.ident] if layout.ident is not None and layout.ident < len(fields) else ""
            result.flagged.append((name, f"{ident} ({where})" if ident else where))
    result.rows = outs
    return result
