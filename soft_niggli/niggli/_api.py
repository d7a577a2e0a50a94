"""The reducer's public functions, :func:`niggli_reduce` and :func:`is_niggli_reduced`, and their
result type :class:`NiggliResult`.

Row convention: a lattice ``L (..., 3, 3)`` has the lattice vectors a, b, c as rows; the reduced
lattice is ``transform @ L``. Both functions validate their arguments here and hand the cells, as
float64 on the host, to the compiled loop or the NumPy core (``_kernel``, ``_core``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import DEFAULT_REL_TOL, as_lattice, check_int, check_rel_tol, require_values
from . import _kernel
from ._core import passes_niggli_check
from ._status import Status

__all__ = ["NiggliResult", "niggli_reduce", "is_niggli_reduced"]


@dataclass(frozen=True)
class NiggliResult:
    """Result of :func:`niggli_reduce`; shapes follow the input's leading dims ``(...)``. Always torch
    tensors on the input's device, whatever the input (tensor, NumPy array or list).

    Attributes:
        lattice: ``(..., 3, 3)`` reduced lattice (input dtype and device; detached; float64 for NumPy
            float64 input).
        transform: ``(..., 3, 3)`` int64, unimodular, ``lattice == transform @ L`` up to rounding.
        status: ``(...)`` int64 holding :class:`Status` values.
        iterations: ``(...)`` int64, reduction rounds each item took before it passed the check.
    """

    lattice: torch.Tensor
    transform: torch.Tensor
    status: torch.Tensor
    iterations: torch.Tensor

    @property
    def ok(self) -> torch.Tensor:
        """Boolean mask of items with ``Status.OK``."""
        return self.status == int(Status.OK)


def _host_items(L, name: str):
    """Validate ``L`` and return ``(X (n, 3, 3) float64 C-contiguous on the host, lead, dtype, device)``.
    ``X`` may share memory with ``L``: read only."""
    L = as_lattice(L, name)
    require_values(L, f"{name}: the Niggli reduction (a loop on the host over the cells' values)")
    X = np.ascontiguousarray(L.detach().to("cpu", torch.float64).reshape(-1, 3, 3).numpy())
    return X, L.shape[:-2], L.dtype, L.device


def is_niggli_reduced(lattice, *, rel_tol: float = DEFAULT_REL_TOL):
    """Whether each cell of ``lattice (..., 3, 3)`` satisfies the Niggli conditions, with relative tolerances.

    Checks (G6 = A, B, C, ξ, η, ζ): A ≤ B ≤ C; |ξ| ≤ B, |η| ≤ A, |ζ| ≤ A; ξ, η, ζ all positive or
    all non-positive; A + B + ξ + η + ζ ≥ 0; and the special conditions on the boundaries (A = B ⇒
    |ξ| ≤ |η|; B = C ⇒ |η| ≤ |ζ|; ξ = B ⇒ ζ ≤ 2η; η = A ⇒ ζ ≤ 2ξ; ζ = A ⇒ η ≤ 2ξ; ξ = −B ⇒ ζ = 0;
    η = −A ⇒ ζ = 0; ζ = −A ⇒ η = 0; A + B + ξ + η + ζ = 0 ⇒ 2A + 2η + ζ ≤ 0). Equalities hold within
    the same relative tolerances as :func:`niggli_reduce` uses, at ``rel_tol`` or at one of the reducer's
    finer levels ``rel_tol / 8`` and ``rel_tol / 64``; where type II is blocked, type I holds within the
    tolerance (see "Tolerance" in the reducer's design notes).

    Non-finite cells are not reduced, and neither are rank-deficient ones (a zero cell, a zero vector,
    a flat basis): the checker applies the reducer's own degeneracy tests to the cell as given (see
    "Resolution" in the reducer's design notes). So every ``OK`` result of :func:`niggli_reduce` passes this
    check, every ``DEGENERATE`` input fails it, and a cell that passes it at ``rel_tol`` itself comes back
    from :func:`niggli_reduce` (same ``rel_tol``) as ``OK`` with the identity transform.
    Returns a bool tensor of shape ``(...)`` on ``lattice``'s device (also for NumPy or list input).

    Raises:
        TypeError: if ``lattice`` is not a tensor, array or list of numbers, or ``rel_tol`` not a real number.
        ValueError: if ``lattice`` is not a floating ``(..., 3, 3)`` tensor/array or is on the meta device, or
            ``rel_tol`` is outside :data:`REL_TOL_RANGE`.
    """
    X, lead, _, device = _host_items(lattice, "lattice")
    rel_tol = check_rel_tol(rel_tol)
    return torch.from_numpy(passes_niggli_check(X, rel_tol).reshape(lead)).to(device)


def niggli_reduce(lattice, *, rel_tol: float = DEFAULT_REL_TOL, max_iter: int = 1000) -> NiggliResult:
    """Niggli-reduce every cell of ``lattice (..., 3, 3)`` (rows are lattice vectors); never raises on values.

    Args:
        lattice: torch tensor (any device but ``meta``), NumPy array or (nested) list of numbers, floating
            (a list of integers is taken as numbers). Gradients are not tracked: the computation runs on
            ``lattice.detach()`` in float64, on the host.
        rel_tol: relative tolerance of every comparison (lengths against each other, cosines), in
            :data:`REL_TOL_RANGE` (the lower end included; see "Tolerance" in the reducer's design notes).
        max_iter: cap on the rounds (each a size-reduction sweep plus one Křivý–Gruber pass).

    Returns:
        :class:`NiggliResult` with ``lattice``, ``transform`` (int64), ``status`` and ``iterations``:
        torch tensors on ``lattice``'s device, whatever ``lattice`` is (a NumPy float64 array gives a float64
        ``lattice``).

    Raises:
        TypeError: ``lattice`` not a tensor, array or list of numbers; ``rel_tol`` not a real number;
            ``max_iter`` not an int (a float, even integral, or a bool).
        ValueError: ``lattice`` not floating or not of shape ``(..., 3, 3)``, or on the meta device (no values
            to reduce); ``rel_tol`` outside :data:`REL_TOL_RANGE`; ``max_iter`` below 1.

    Example:
        >>> res = niggli_reduce(torch.tensor([[4.0, 0, 0], [4.0, 4, 0], [0, 0, 5]]))
        >>> res.lattice.tolist(), Status(int(res.status))
        ([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]], <Status.OK: 0>)
        >>> print(Status(int(res.status)))
        OK
    """
    X, lead, dtype, device = _host_items(lattice, "lattice")
    rel_tol = check_rel_tol(rel_tol)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    lattice, transform, status, iters = _kernel.reduce_cells(X, rel_tol, max_iter)
    lattice, transform = lattice.reshape(*lead, 3, 3), transform.reshape(*lead, 3, 3)
    status, iters = status.reshape(lead), iters.reshape(lead)
    return NiggliResult(torch.from_numpy(lattice).to(device=device, dtype=dtype), torch.from_numpy(transform).to(device),
                        torch.from_numpy(status).to(device), torch.from_numpy(iters).to(device))
