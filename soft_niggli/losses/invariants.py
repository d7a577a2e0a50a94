"""Continuous lattice invariants that need neither a rotation alignment nor a choice of basis.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; lattice vectors are ``n @ L``
for integer row vectors ``n``.

* :func:`volume_term` compares cell volumes: invariant to rotations, reflections and every change of
  basis (``|det M| = 1``).
* :func:`theta_series` is the lattice theta function ``θ(s) = Σ_{v ≠ 0} exp(-s |v|² / V^{2/3})`` at a few
  scales ``s``. It depends on the lattice only (not on the basis) and on no orientation; the lengths are
  measured in units of ``V^{1/3}`` so it describes the *shape*, leaving size to :func:`volume_term`.
  Theta series at all scales determine a 3-D lattice up to isometry (Schiemann 1997); a handful of
  scales is a strong, smooth fingerprint, not a proof of equality. The sum runs over the integer box
  ``|n_i| <= radius`` in the prediction's own *Niggli-reduced* basis (from the guarded reducer, detached),
  where every short vector has small coefficients; the truncation error is below
  ``exp(-s (radius+1)² λ₁² / V^{2/3})``, λ₁ the shortest vector, negligible for the defaults.
"""

from __future__ import annotations

import functools
import itertools

import torch

from ..niggli import niggli_reduce

__all__ = ["volume_term", "theta_series", "theta_term"]


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
    return (V.square() + rel_floor**2).pow(1.0 / 6.0) * s


def volume_term(L_pred: torch.Tensor, L_target: torch.Tensor) -> torch.Tensor:
    """``(V_pred^{1/3} - V_target^{1/3})²`` per crystal, in Å² for lattices in Å, shape ``(B,)``.

    Cube roots put the term on the scale of lengths. Invariant to any change of basis and any
    rotation or reflection of either lattice.
    """
    # The floor is tiny so that re-basing by a skewed M (which changes the scaling) moves nothing visibly.
    return (_smooth_cbrt_volume(L_pred, 1e-12) - _smooth_cbrt_volume(L_target, 1e-12)).square()


@functools.lru_cache(maxsize=8)
def _half_box(radius: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """One of each pair ``±n`` of nonzero integer vectors with ``|n_i| <= radius`` (the first nonzero
    entry positive): ``n`` and ``-n`` have the same length, so the sum counts each pair twice."""
    n = [v for v in itertools.product(range(-radius, radius + 1), repeat=3) if any(v) and v > (0, 0, 0)]
    return torch.tensor(n, dtype=dtype, device=device)


def theta_series(L: torch.Tensor, scales=(1.0, 2.0, 4.0), radius: int = 3) -> torch.Tensor:
    """Normalised lattice theta series ``(B, S)`` at ``scales``; differentiable in ``L``.

    ``L`` is reduced first (detached, guarded reducer) and the sum runs over ``n @ (N L)`` with ``N`` the
    reducer's transform, so gradients flow through ``L`` itself. Degenerate or non-finite cells (the
    reducer's non-OK statuses) are left unreduced; their volume is floored, so the value and gradient
    stay finite (the series tends to 0 as the cell flattens).
    """
    if L.dim() != 3 or L.shape[1:] != (3, 3):
        raise ValueError(f"L: expected shape (B, 3, 3), got {tuple(L.shape)}")
    scales_t = torch.as_tensor(scales, dtype=torch.float64)  # checked on the host: L may have no values
    if scales_t.dim() != 1 or not bool((scales_t > 0).all()):
        raise ValueError(f"scales: expected a 1-D sequence of positive floats, got {scales!r}")
    scales_t = scales_t.to(dtype=L.dtype, device=L.device)
    N = niggli_reduce(L.detach()).transform.to(L.dtype)
    Lr = N @ L
    # Shape only: divide by an exact power of two first, so tiny or huge cells neither under- nor overflow.
    Lr = Lr / _power_of_two_scale(Lr)[:, None, None]
    G = Lr @ Lr.transpose(1, 2)
    norm = _smooth_cbrt_volume(Lr, 1e-9).square()  # ≈ V^{2/3}
    n = _half_box(radius, L.dtype, str(L.device))
    sq = torch.einsum("pi,bij,pj->bp", n, G, n) / norm[:, None]
    return 2 * torch.exp(-sq[:, None, :] * scales_t[None, :, None]).sum(-1)


def theta_term(L_pred: torch.Tensor, L_target: torch.Tensor, scales=(1.0, 2.0, 4.0), radius: int = 3) -> torch.Tensor:
    """Mean squared difference of the theta series of prediction and target, ``(B,)`` (dimensionless)."""
    return (theta_series(L_pred, scales, radius) - theta_series(L_target, scales, radius)).square().mean(-1)
