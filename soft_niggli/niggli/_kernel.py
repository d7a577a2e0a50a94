"""The glue to the compiled reduction loop (``_niggli_kernel.c``): which core runs, and the call.

The extension is optional: where it could not be built (no C compiler at install time), importing
this module warns once and :func:`reduce_cells` runs the NumPy core instead, with bit-identical
results. :data:`compiled` is the extension module or None; setting it to None forces the NumPy core
(the tests and the speed benchmark do, to compare the two).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from . import _core

try:
    from . import _niggli_kernel as compiled
except ImportError:  # not built: the NumPy core does the same work
    compiled = None
    if os.environ.get("SOFT_NIGGLI_NO_KERNEL_WARNING", "").strip() in ("", "0"):
        warnings.warn(
            "soft_niggli: the compiled reduction kernel (soft_niggli.niggli._niggli_kernel) is not built, so "
            "niggli_reduce runs its NumPy core instead: same results, slower (up to about 20x for small "
            "batches). To build it, reinstall from source with a C compiler available (in a checkout: "
            "`pip install -e .`; otherwise `pip install --force-reinstall --no-deps --no-binary soft-niggli "
            "soft-niggli`). Set SOFT_NIGGLI_NO_KERNEL_WARNING=1 to silence this warning.",
            RuntimeWarning, stacklevel=1)

#: Whether the compiled reduction loop was built and is in use (False: the NumPy core runs; same results).
COMPILED_KERNEL = compiled is not None


def reduce_cells(X: np.ndarray, rel_tol: float, max_iter: int):
    """Reduce the cells ``X (n, 3, 3)`` (float64, C-contiguous, rows are lattice vectors) with the
    compiled loop where it is in use, else with the NumPy core; returns item-major ``(lattice,
    transform (int64), status (int64), iterations (int64))``, the same from either."""
    if compiled is None:
        return _core.reduce_cells(X, rel_tol, max_iter)
    lattice, transform = np.empty_like(X), np.empty(X.shape, dtype=np.int64)
    status, iters = np.empty(len(X), dtype=np.int64), np.empty(len(X), dtype=np.int64)
    # The C loop takes the cap as a 64-bit integer (a cap above 2**62 is never reached anyway).
    compiled.reduce(X, lattice, transform, iters, status, rel_tol, min(max_iter, 2**62))
    return lattice, transform, status, iters
