"""Continuous lattice invariants that need neither a rotation alignment nor a choice of basis.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; lattice vectors are ``n @ L``
for integer row vectors ``n``. Every term takes one cell ``(3, 3)`` or any stack ``(..., 3, 3)`` (tensors,
NumPy arrays, nested lists) and returns values of its leading shape.

* :func:`volume_term` compares cell volumes: invariant to rotations, reflections and every change of
  basis (``|det M| = 1``).
* :func:`theta_series` is the lattice theta function ``θ(s) = Σ_{v ≠ 0} exp(-s |v|² / V^{2/3})`` at a few
  scales ``s``. It depends on the lattice only (not on the basis) and on no orientation; the lengths are
  measured in units of ``V^{1/3}`` so it describes the *shape*, leaving size to :func:`volume_term`.
  Theta series at all scales determine a 3-D lattice up to isometry (Schiemann 1997); a handful of
  scales is a strong, smooth fingerprint, not a proof of equality. The sum runs over a ball of lattice
  vectors (``|v| <= radius · V^{1/3}``) with a smooth cutoff, so neither the basis nor a vector entering
  the ball moves it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._checks import as_lattice
from ..niggli import niggli_reduce

try:  # the compiled enumeration of a ball's lattice vectors (soft_niggli/_kernels/ball_vectors.c); optional
    from .. import _loss_kernel as _kernel
except ImportError:  # not built: NumPy does the same, slower
    _kernel = None

__all__ = ["volume_term", "theta_series", "theta_term", "ball_vectors"]


def _power_of_two_scale(L: torch.Tensor) -> torch.Tensor:
    """``(...)`` detached power of two near the largest entry of each ``(..., 3, 3)`` cell (1 for a zero
    or non-finite cell). Dividing by it is exact, so what follows is free of the cell's absolute size."""
    m = L.detach().abs().amax(dim=(-1, -2))
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    _, exponent = torch.frexp(m)
    return torch.ldexp(torch.ones_like(m), exponent)


def _smooth_cbrt_volume(L: torch.Tensor, rel_floor: float) -> torch.Tensor:
    """``|det L|^(1/3)``, smoothed as ``(V² + f²)^(1/6)`` so degenerate cells keep finite gradients.

    Computed on the cell divided by a power of two near its largest entry (exact, detached), so neither
    the determinant nor its square overflows or underflows whatever the cell's size, and the floor
    ``f = rel_floor`` is relative to that size: the result is exactly proportional to the scale.
    """
    s = _power_of_two_scale(L)
    V = torch.linalg.det(L / s[..., None, None])
    # A cell of all zeros has no size to measure the floor by: its value is the limit of shrinking cells, 0.
    zero = (L.detach() == 0).flatten(-2).all(-1)
    return torch.where(zero, torch.zeros_like(V), (V.square() + rel_floor**2).pow(1.0 / 6.0) * s)


def volume_term(L_pred: torch.Tensor, L_target: torch.Tensor) -> torch.Tensor:
    """``(V_pred^{1/3} - V_target^{1/3})²`` per crystal, in Å² for lattices in Å, of shape ``(...)`` for
    lattices ``(..., 3, 3)`` (the two shapes broadcast).

    Cube roots put the term on the scale of lengths. Invariant to any change of basis and any
    rotation or reflection of either lattice.
    """
    L_pred, L_target = as_lattice(L_pred, "L_pred"), as_lattice(L_target, "L_target")
    # The floor is tiny so that re-basing by a skewed M (which changes the scaling) moves nothing visibly.
    return (_smooth_cbrt_volume(L_pred, 1e-12) - _smooth_cbrt_volume(L_target, 1e-12)).square()


#: Smallest and largest scaled distance² of the theta series' cutoff (:func:`theta_series`): full weight up
#: to ``(0.8 radius)²``, a cosine down to 0 at ``radius²``.
_CUTOFF_START = 0.64

#: Points a cell's ball enumeration may visit (:func:`ball_vectors`); a cell in any basis, however skewed,
#: stays below it unless it is nearly flat.
_BALL_CAP = 200_000

#: The cap :func:`theta_series` gives :func:`ball_vectors`. Its cells are reduced first, and a reduced
#: cell's ball holds about 260 vectors whatever its shape, until one of its rows is shorter than about
#: 4e-6 of the others (then a line of multiples of it fills the ball): only such nearly flat cells,
#: predictions to be pushed away from anyway, reach it. Each listed vector costs about 200 bytes through
#: the series and its gradient, so the cap bounds a batch of flat predictions (64 of them: 0.6 s and
#: 0.3 GB; with 200 000, 7 s and 2.3 GB).
_THETA_BALL_CAP = 20_000


def ball_vectors(G: torch.Tensor, radius: float, cap: int = _BALL_CAP) -> tuple[torch.Tensor, torch.Tensor]:
    """``(owner (Q,), n (Q, 3) int64)``: every integer vector ``n ≠ 0`` with ``n G nᵀ <= radius²`` for the
    metrics ``G (B, 3, 3)`` (detached; one of each pair ``±n``, the last nonzero coordinate positive).

    On the host: a compiled Fincke–Pohst enumeration (``soft_niggli/_kernels/ball_vectors.c``), or the same in
    NumPy, a box per cell from ``|n_i| <= radius √(G⁻¹)_ii`` filtered to the ball. A cell whose
    enumeration would visit more than ``cap`` points (only a nearly flat one) is truncated."""
    Gd = G.detach().to("cpu", torch.float64).reshape(-1, 9).contiguous()
    r2 = float(radius) ** 2
    if _kernel is not None and hasattr(_kernel, "ball_vectors"):
        capacity = 512 * max(Gd.shape[0], 1)
        while True:
            owner = torch.empty(capacity, dtype=torch.int64)
            n = torch.empty(capacity, 3, dtype=torch.int64)
            count = _kernel.ball_vectors(Gd.numpy(), r2, cap, owner.numpy(), n.numpy())
            if count <= capacity:
                return owner[:count].to(G.device), n[:count].to(G.device)
            capacity = count
    owners, vectors = [], []
    for b, g in enumerate(Gd.reshape(-1, 3, 3).numpy()):
        if not (np.isfinite(g).all() and np.linalg.eigvalsh(g).min() > 0):
            continue
        m = np.floor(float(radius) * np.sqrt(np.clip(np.diag(np.linalg.inv(g)), 0, None)) * (1 + 1e-9)).astype(np.int64)
        if np.prod(2 * m + 1) > 4 * cap:
            m = np.minimum(m, int(round((4 * cap) ** (1 / 3) / 2)))
        grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in m], indexing="ij"), -1).reshape(-1, 3)
        positive = (grid[:, 2] > 0) | ((grid[:, 2] == 0) & ((grid[:, 1] > 0) | ((grid[:, 1] == 0) & (grid[:, 0] > 0))))
        grid = grid[positive]
        q = np.einsum("pi,ij,pj->p", grid.astype(np.float64), g, grid.astype(np.float64))
        grid = grid[q <= r2]
        owners.append(np.full(len(grid), b, dtype=np.int64))
        vectors.append(grid)
    if not owners:
        return (torch.zeros(0, dtype=torch.int64, device=G.device), torch.zeros(0, 3, dtype=torch.int64, device=G.device))
    return (torch.from_numpy(np.concatenate(owners)).to(G.device),
            torch.from_numpy(np.concatenate(vectors)).to(G.device))


def theta_series(L: torch.Tensor, scales=(1.0, 2.0, 4.0), radius: float = 5.0) -> torch.Tensor:
    """Normalised lattice theta series ``(..., S)`` of lattices ``L (..., 3, 3)`` at ``scales``;
    differentiable in ``L``.

    ``θ(s) = Σ_v c(q_v) exp(-s q_v)`` over the nonzero lattice vectors ``v``, ``q_v = |v|² / V^{2/3}``, with
    a smooth cutoff ``c``: 1 for ``q <= (0.8 radius)²``, falling as a cosine to 0 at ``q = radius²``. The
    sum runs over a ball of the lattice, so it does not depend on the basis ``L`` is given in (a box of
    coefficients in some basis would: which vectors it holds changes with the basis), and the cutoff is
    smooth, so nothing jumps as vectors enter or leave the ball. The vectors are found in the cell's
    Niggli-reduced basis (guarded reducer, detached; :func:`ball_vectors`), and gradients flow through
    ``L`` itself. The terms cut off weigh at most ``exp(-16 s)`` of a shortest vector's in a cubic cell.
    Degenerate or non-finite cells (the reducer's non-OK statuses) are left unreduced; their volume is
    floored, so the value and gradient stay finite (the series tends to 0 as the cell flattens).
    """
    L = as_lattice(L, "L")
    scales_t = torch.as_tensor(scales, dtype=torch.float64)  # checked on the host: L may have no values
    if scales_t.dim() != 1 or not bool((scales_t > 0).all()):
        raise ValueError(f"scales: expected a 1-D sequence of positive floats, got {scales!r}")
    if not (isinstance(radius, (int, float)) and not isinstance(radius, bool) and 0 < radius <= 12):
        raise ValueError(f"radius: expected a number in (0, 12], got {radius!r}")
    lead = L.shape[:-2]
    series = _theta_series(L.reshape(-1, 3, 3), scales_t.to(dtype=L.dtype, device=L.device), radius)
    return series.reshape(*lead, series.shape[-1])


def _theta_series(L: torch.Tensor, scales_t: torch.Tensor, radius: float) -> torch.Tensor:
    """:func:`theta_series` of checked lattices ``(B, 3, 3)``: ``(B, S)``."""
    B = L.shape[0]
    N = niggli_reduce(L.detach()).transform.to(L.dtype)
    Lr = N @ L
    # Shape only: divide by an exact power of two first, so tiny or huge cells neither under- nor overflow.
    Lr = Lr / _power_of_two_scale(Lr)[:, None, None]
    norm = _smooth_cbrt_volume(Lr, 1e-9).square()  # ≈ V^{2/3}
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # a zero cell: no vector is in any ball
    G = Lr @ Lr.transpose(1, 2) / norm[:, None, None]
    owner, n = ball_vectors(G.detach(), radius, _THETA_BALL_CAP)
    # Per vector, not padded to the longest list: one nearly flat cell (a line of up to _THETA_BALL_CAP vectors)
    # would otherwise pad every cell of the batch to its length.
    v = (n.to(L.dtype)[:, None, :] @ Lr[owner]).squeeze(1)
    q = v.square().sum(-1) / norm[owner]
    x = ((q - _CUTOFF_START * radius**2) / ((1 - _CUTOFF_START) * radius**2)).clamp(0, 1)
    cutoff = 0.5 * (1 + torch.cos(math.pi * x))
    terms = cutoff[:, None] * torch.exp(-q[:, None] * scales_t)
    return 2 * torch.zeros(B, scales_t.shape[0], dtype=L.dtype, device=L.device).index_add(0, owner, terms)


def theta_term(L_pred: torch.Tensor, L_target: torch.Tensor, scales=(1.0, 2.0, 4.0), radius: float = 5.0,
               target_series: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference of the theta series of prediction and target, ``(...)`` (dimensionless),
    faded out for a prediction much smaller than the target.

    The series describes a cell's shape, which a cell shrinking towards zero no longer has: the series
    of ``s L`` is that of ``L`` for every ``s > 0`` and undefined at ``s = 0``, and its gradient grows as
    ``1 / s``. So the term is multiplied by ``1 - exp(-(r / 0.1)²)``, ``r`` the ratio of the cube roots of
    the volumes (prediction over target): 1 to within 1e-11 for ``r >= 1/2``, 0.98 at ``r = 1/10``, 0 for a
    cell of zero volume (where the volume term alone compares sizes). The term is then continuous at a
    zero cell and its gradient bounded as the prediction shrinks. ``target_series``: the target's
    :func:`theta_series` if already known (``(..., S)``, a loss remembers its labels'). Lattices
    ``(..., 3, 3)``, the two shapes broadcast; the result has their leading shape.
    """
    L_pred, L_target = as_lattice(L_pred, "L_pred"), as_lattice(L_target, "L_target")
    if target_series is None:
        target_series = theta_series(L_target, scales, radius)
    diff = (theta_series(L_pred, scales, radius) - target_series.detach()).square().mean(-1)
    ratio = _smooth_cbrt_volume(L_pred, 1e-12) / _smooth_cbrt_volume(L_target.detach(), 1e-12)
    fade = -torch.expm1(-(ratio / _THETA_FADE).square())
    return torch.where(fade > 0, fade * diff, torch.zeros_like(diff))


#: Ratio of cube-root volumes (prediction / target) below which :func:`theta_term` fades out.
_THETA_FADE = 0.1
