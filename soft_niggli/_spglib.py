"""The one way soft_niggli calls ``spglib.niggli_reduce``: a batch in, a per-cell ``ok`` out.

Lattices are ``(..., 3, 3)`` with rows as lattice vectors (spglib-python uses rows too).

spglib reports a failed reduction in two ways, depending on its version and on
``SPGLIB_OLD_ERROR_HANDLING``: it returns ``None`` (and, from 2.7, warns on every call, successful
or not, that this will change), or it raises ``spglib.error.SpglibError``. Here both become
``ok = False`` and the warning is silenced for these calls only. spglib returns the reduced cell
alone, not the integer transform: callers that need it recover it from the two cells.

The warning filter is entered once per batch, not per cell: entering it costs about as much as
half a spglib call, which would distort the timings of the reducer benchmarks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import spglib

__all__ = ["SpglibReduction", "spglib_niggli_reduce"]


@dataclass(frozen=True)
class SpglibReduction:
    """Result of :func:`spglib_niggli_reduce`.

    Attributes:
        lattice: ``(..., 3, 3)`` float64, spglib's reduced cells as it returned them, NaN where not ``ok``.
            spglib checks little: a zero or non-finite cell can come back as itself with ``ok`` True,
            so callers that need a valid cell check its volume or its transform.
        ok: ``(...)`` bool, False where spglib returned ``None`` or raised.
    """

    lattice: np.ndarray
    ok: np.ndarray


def spglib_niggli_reduce(lattices, *, eps: float = 1e-5) -> SpglibReduction:
    """``spglib.niggli_reduce(cell, eps=eps)`` for every cell of a ``(..., 3, 3)`` array-like.

    ``eps`` is spglib's absolute tolerance (its default, 1e-5). A single ``(3, 3)`` cell gives a
    ``(3, 3)`` lattice and a 0-d ``ok``.

    >>> r = spglib_niggli_reduce([[4.0, 0, 0], [4, 4, 0], [0, 0, 5]])
    >>> bool(r.ok), r.lattice.shape
    (True, (3, 3))

    Raises:
        ValueError: ``lattices`` is not ``(..., 3, 3)`` real numbers, or ``eps`` is not a finite number > 0.
    """
    try:
        cells = np.asarray(lattices, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"lattices: expected real numbers of shape (..., 3, 3): {err}") from None
    if cells.ndim < 2 or cells.shape[-2:] != (3, 3):
        raise ValueError(f"lattices: expected shape (..., 3, 3), got {cells.shape}")
    if not (isinstance(eps, (int, float, np.floating, np.integer)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a finite number > 0 (spglib's absolute tolerance), got {eps!r}")
    eps = float(eps)
    flat = np.ascontiguousarray(cells.reshape(-1, 3, 3))
    out = np.full_like(flat, np.nan)
    ok = np.zeros(len(flat), dtype=bool)
    errors = _SPGLIB_ERRORS
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"spglib(\.|$)")
        for k, cell in enumerate(flat):
            try:
                reduced = spglib.niggli_reduce(cell, eps=eps)
            except errors:
                continue
            if reduced is not None:
                out[k], ok[k] = reduced, True
    return SpglibReduction(lattice=out.reshape(cells.shape), ok=ok.reshape(cells.shape[:-2]))


# spglib >= 2.7 raises this instead of returning None when asked to (and always from 3.0); older
# versions have no such class and only ever return None.
_SPGLIB_ERRORS = tuple(e for e in (getattr(getattr(spglib, "error", None), "SpglibError", None),) if e is not None)
