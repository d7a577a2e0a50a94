"""Guarded, batched Niggli reduction with the integer transform and a per-item status.

Row convention: a lattice ``L (..., 3, 3)`` has the lattice vectors a, b, c as rows; the reduced
lattice is ``transform @ L`` with ``transform`` an integer matrix of determinant ±1. The Niggli cell
is unique as a metric (G6 vector), not as a basis: ``-transform`` (and, for symmetric lattices, other
automorphisms) give the same metric.

:func:`niggli_reduce` never raises on values and never loops unbounded: each cell comes back with a
:class:`Status` (``OK``, ``NOT_CONVERGED``, ``DEGENERATE``, ``NONFINITE``), every tolerance is relative
(``rel_tol`` in :data:`REL_TOL_RANGE`), and the result is verified against the full Niggli conditions
(those of :func:`is_niggli_reduced`). The reduction runs on detached float64 values on the host: a
compiled loop, or where that could not be built a NumPy core with bit-identical results
(``COMPILED_KERNEL`` says which). The design notes on the reducer give the full account: what
``DEGENERATE`` means exactly ("Resolution") and how the tolerance levels keep cells distorted by about
``rel_tol`` from cycling ("Tolerance").
"""

# One concept per module: _api (the public functions and NiggliResult), _status (Status), _kernel (the
# glue to the compiled loop _niggli_kernel.c), _core (the NumPy loop and the final checks), _round (one
# reduction round), _conditions (the Niggli conditions with tolerances), _resolution (the basis and its
# metric with error bounds) and _constants (the numbers the compiled loop mirrors).

from __future__ import annotations

from .._checks import REL_TOL_RANGE
from ._api import NiggliResult, is_niggli_reduced, niggli_reduce
from ._kernel import COMPILED_KERNEL  # noqa: F401 - which core runs: a fact of the install, not in __all__
from ._status import Status

__all__ = ["Status", "NiggliResult", "niggli_reduce", "is_niggli_reduced", "REL_TOL_RANGE"]
