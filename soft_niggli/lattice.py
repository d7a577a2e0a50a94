"""Lattice geometry: metric, volume, parameters, fractional coordinates and changes of basis.

Row convention (used everywhere in soft_niggli): a lattice is a ``(..., 3, 3)`` tensor whose *rows*
are the lattice vectors a, b, c; Cartesian positions are ``X = F @ L`` for fractional coordinates
``F`` of shape ``(..., N, 3)``. A change of basis by an integer matrix ``M`` with ``det M = ±1`` is
``L' = M @ L`` and ``F' = wrap(F @ M^{-1})``; it leaves every Cartesian position (modulo the lattice)
unchanged.

All functions broadcast over leading dimensions, keep the input's dtype and device, and are
differentiable where that makes sense (everything except :func:`wrap`'s integer part).

Inputs and outputs: every function accepts torch tensors, NumPy arrays or (nested) lists of numbers and
returns torch tensors, never NumPy arrays (a NumPy float64 array gives a float64 tensor, as
``torch.as_tensor`` would). A wrong Python type (a string, ``None``, a bool) raises ``TypeError``; a
wrong value (shape, dtype, a matrix that is not unimodular) raises ``ValueError``.

Devices: everything runs on any device, ``meta`` included; on ``meta`` (shapes without values) the
checks that read values, such as :func:`integer_inverse`'s unimodularity test, are skipped.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import (as_float_tensor, as_lattice, as_tensor, check_dtype, check_int, check_last_dim,
                      check_matrix_shape, has_values)

__all__ = [
    "gram",
    "volume",
    "g6",
    "wrap",
    "to_cartesian",
    "to_fractional",
    "lattice_from_parameters",
    "lattice_parameters",
    "integer_inverse",
    "apply_basis_change",
    "random_rotations",
]


def _coordinates_and_lattice(x, L, x_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x (..., N, 3), L (..., 3, 3))`` as float tensors of one dtype and device (checked here: torch
    would raise a RuntimeError deep inside)."""
    x = as_float_tensor(x, x_name)
    L = as_lattice(L)
    check_last_dim(x, x_name)
    if x.dtype != L.dtype:
        raise ValueError(f"{x_name}: expected the lattice's dtype {L.dtype}, got {x.dtype}")
    if x.device != L.device:
        raise ValueError(f"{x_name}: expected the lattice's device {L.device}, got {x.device}")
    return x, L


def gram(lattice) -> torch.Tensor:
    """Metric tensor ``G = L L^T`` of shape ``(..., 3, 3)``; invariant to rotations ``L Q^T``."""
    L = as_lattice(lattice)
    return L @ L.transpose(-1, -2)


def volume(lattice, *, signed: bool = False) -> torch.Tensor:
    """Cell volume ``det L`` (``signed=True``) or ``|det L|``, shape ``(...)``."""
    if not isinstance(signed, bool):
        raise TypeError(f"signed: expected a bool, got {type(signed).__name__} {signed!r}")
    L = as_lattice(lattice)
    det = torch.linalg.det(L)
    return det if signed else det.abs()


def g6(lattice) -> torch.Tensor:
    """Niggli's G6 vector ``(A, B, C, ξ, η, ζ)`` with ``A = a·a``, ``ξ = 2 b·c``, ``η = 2 a·c``, ``ζ = 2 a·b``.

    Shape ``(..., 6)``. The one definition of G6 in soft_niggli (the metrics use it too).
    """
    G = gram(lattice)
    return torch.stack(
        [G[..., 0, 0], G[..., 1, 1], G[..., 2, 2], 2 * G[..., 1, 2], 2 * G[..., 0, 2], 2 * G[..., 0, 1]],
        dim=-1,
    )


def wrap(frac) -> torch.Tensor:
    """Fractional coordinates wrapped into ``[0, 1)``.

    ``F - floor(F)`` can round to exactly 1.0 for tiny negative inputs; those are mapped to 0.0 so the
    result always lies in the half-open interval. The gradient is the identity (floor is piecewise
    constant).
    """
    F = as_float_tensor(frac, "frac")
    out = F - torch.floor(F).detach()
    return torch.where(out >= 1.0, out - 1.0, out)


def to_cartesian(frac, lattice) -> torch.Tensor:
    """Cartesian positions ``X = F @ L``; ``frac F (..., N, 3)``, ``lattice L (..., 3, 3)`` → ``(..., N, 3)``."""
    F, L = _coordinates_and_lattice(frac, lattice, "frac")
    return F @ L


def to_fractional(cartesian, lattice) -> torch.Tensor:
    """Fractional coordinates ``F = X @ L^{-1}`` (not wrapped); ``cartesian X (..., N, 3)``, ``lattice L (..., 3, 3)``."""
    X, L = _coordinates_and_lattice(cartesian, lattice, "cartesian")
    # Solve X = F L  <=>  L^T F^T = X^T, avoiding an explicit inverse.
    return torch.linalg.solve(L.transpose(-1, -2), X.transpose(-1, -2)).transpose(-1, -2)


def _as_tensor_like(values: dict) -> list[torch.Tensor]:
    """The values as tensors of one floating dtype and device: the first tensor's (its dtype if floating,
    else the default dtype), NumPy arrays as tensors (float64 stays float64), numbers and lists alike."""
    converted = {k: as_tensor(v, k) for k, v in values.items()}
    for k, v in converted.items():
        if v.dtype == torch.bool or v.is_complex():
            raise ValueError(f"{k}: expected real numbers, got a tensor of dtype {v.dtype}")
    given = [converted[k] for k, v in values.items() if isinstance(v, (torch.Tensor, np.ndarray))]
    dtype = given[0].dtype if given else torch.get_default_dtype()
    device = given[0].device if given else None
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return [v.to(dtype=dtype, device=device) for v in converted.values()]


def lattice_from_parameters(a, b, c, alpha, beta, gamma) -> torch.Tensor:
    """Lattice ``(..., 3, 3)`` from lengths and angles in degrees (tensors, arrays or numbers, broadcast).

    Orientation follows the usual crystallographic setting: ``a`` along x, ``b`` in the xy plane,
    ``c`` completing a right-handed cell. Impossible angle triples give NaN in the third row. The result
    has the dtype and device of the first tensor (or array) argument, the default dtype when all are
    numbers.
    """
    params = _as_tensor_like({"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma})
    a, b, c, alpha, beta, gamma = torch.broadcast_tensors(*params)
    ca, cb, cg = torch.cos(torch.deg2rad(alpha)), torch.cos(torch.deg2rad(beta)), torch.cos(torch.deg2rad(gamma))
    sg = torch.sin(torch.deg2rad(gamma))
    zero = torch.zeros_like(a)
    cx = cb
    cy = (ca - cb * cg) / sg
    cz = torch.sqrt(1.0 - cx**2 - cy**2)
    rows = [
        torch.stack([a, zero, zero], dim=-1),
        torch.stack([b * cg, b * sg, zero], dim=-1),
        torch.stack([c * cx, c * cy, c * cz], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def lattice_parameters(lattice) -> torch.Tensor:
    """Lengths and angles ``(a, b, c, α, β, γ)`` of shape ``(..., 6)``, angles in degrees.

    α is the angle between b and c, β between a and c, γ between a and b.
    """
    G = gram(lattice)
    lengths = torch.sqrt(torch.diagonal(G, dim1=-2, dim2=-1))
    a, b, c = lengths.unbind(-1)

    def angle(dot, n1, n2):
        return torch.rad2deg(torch.acos(torch.clamp(dot / (n1 * n2), -1.0, 1.0)))

    alpha = angle(G[..., 1, 2], b, c)
    beta = angle(G[..., 0, 2], a, c)
    gamma = angle(G[..., 0, 1], a, b)
    return torch.stack([a, b, c, alpha, beta, gamma], dim=-1)


# int64 arithmetic wraps silently (it is exact modulo 2^64). With every |entry| < 2^20 no value that
# integer_inverse forms can wrap: a cofactor is at most 2·m² < 2^41 and the determinant at most
# 6·m³ < 2^63. Larger entries (never seen in practice) are checked exactly, one matrix at a time.
_EXACT_BOUND = 2**20
_INT64_MAX = 2**63 - 1


def _cofactors(c):
    # Cofactors C_ij = (-1)^(i+j) * minor_ij; with cyclic indices the sign is built in. Works on
    # nested lists of Python ints and of tensors alike.
    return [
        [c[(i + 1) % 3][(j + 1) % 3] * c[(i + 2) % 3][(j + 2) % 3] - c[(i + 1) % 3][(j + 2) % 3] * c[(i + 2) % 3][(j + 1) % 3]
         for j in range(3)]
        for i in range(3)
    ]


def adjugate_and_determinant(Mi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(adj (..., 3, 3), det (...))`` of integer matrices, in their dtype: ``M adj = det I``.

    The columns of the adjugate are the cross products of pairs of rows (``r1×r2, r2×r0, r0×r1``), and
    ``det = r0 · (r1×r2)``: a handful of vectorised operations. Exact in int64 while no value wraps
    (see ``_EXACT_BOUND``).
    """
    r0, r1, r2 = Mi.unbind(-2)
    first = torch.linalg.cross(r1, r2)
    adjugate = torch.stack([first, torch.linalg.cross(r2, r0), torch.linalg.cross(r0, r1)], dim=-1)
    return adjugate, (r0 * first).sum(-1)


def integer_inverse(M: torch.Tensor) -> torch.Tensor:
    """Exact inverse of integer matrices with ``det = ±1``, as int64 ``(..., 3, 3)``.

    ``M`` may be an integer tensor or a float tensor holding integers (it is rounded). The inverse
    is the adjugate divided by the determinant, computed in integer arithmetic, so it is exact.
    Raises ``ValueError`` if some ``M`` is not unimodular, or if an entry of ``M`` or of its inverse
    does not fit in int64 (entries of ``M`` around 2^40 can have an inverse entry of 2^80: it is
    refused, not returned wrapped); ``TypeError`` if ``M`` is not a tensor, array or list. On the meta
    device these checks are skipped (there are no values).
    """
    M = as_tensor(M, "M")
    check_matrix_shape(M, "M")
    if M.dtype == torch.bool or M.is_complex():
        raise ValueError(f"M: expected an integer or integral floating dtype, got {M.dtype}")
    checked = has_values(M)  # on the meta device there are no values to check
    if M.is_floating_point():
        # Converting NaN, inf or |x| >= 2^63 to int64 is undefined behaviour: refuse before rounding.
        bad = ~torch.isfinite(M) | (M.abs() >= 2.0**63)
        if checked and bool(bad.any()):
            raise ValueError(f"M: expected finite integral entries within int64 (|entry| <= 2^63 - 1), "
                             f"got {M[bad].flatten()[0].item()!r}")
        Mi = torch.round(M).to(torch.int64)
    else:
        Mi = M.to(torch.int64)
    adjugate, det = adjugate_and_determinant(Mi)
    unimodular = (det == 1) | (det == -1)
    # Comparisons, not abs(): abs(-2^63) wraps to itself in int64.
    large = ((Mi >= _EXACT_BOUND) | (Mi <= -_EXACT_BOUND)).flatten(-2).any(-1)
    worst = None  # (largest |inverse entry|, batch index) past int64
    if checked and bool(large.any()):
        # Exact check in Python ints for these matrices only. Where the true cofactors and det fit
        # in int64 the wrapped int64 values equal them, so the tensors computed above stay valid.
        exact = []
        for index, m in zip(large.nonzero().tolist(), Mi[large].tolist()):
            cof_m = _cofactors(m)
            exact.append(abs(sum(m[0][j] * cof_m[0][j] for j in range(3))) == 1)
            top = max(abs(x) for row in cof_m for x in row)
            if exact[-1] and top > _INT64_MAX and (worst is None or top > worst[0]):
                worst = (top, tuple(index))
        unimodular = unimodular.clone()
        unimodular[large] = torch.tensor(exact, dtype=torch.bool, device=unimodular.device)
    if checked and not bool(unimodular.all()):
        first = tuple((~unimodular).nonzero()[0].tolist())
        raise ValueError("M: expected integer matrices with determinant ±1 (unimodular), got other determinants"
                         + (f" (first at batch index {first})" if first else ""))
    if worst is not None:
        top, index = worst
        raise ValueError(f"M: expected unimodular matrices whose inverse fits in int64, got an inverse with "
                         f"largest entry {top} ≈ 2^{math.log2(top):.1f}"
                         + (f" at batch index {index}" if index else "")
                         + f", past the int64 limit 2^63 - 1 = {_INT64_MAX}")
    return adjugate * det[..., None, None]  # 1/det == det for det = ±1


def apply_basis_change(lattice, frac, M) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-express a crystal in the basis ``M L``: returns ``(M @ L, wrap(F @ M^{-1}))``.

    ``lattice L (..., 3, 3)``, ``frac F (..., N, 3)`` and unimodular ``M (..., 3, 3)`` (integer or integral float).
    ``M^{-1}`` is computed exactly in integers (:func:`integer_inverse`), which raises ``ValueError``
    for a non-unimodular ``M`` or one whose inverse does not fit in int64. Cartesian positions modulo
    the lattice are unchanged: ``F' @ L' = F @ L`` up to lattice translations.
    """
    F, L = _coordinates_and_lattice(frac, lattice, "frac")
    M = as_tensor(M, "M").to(L.device)
    Minv = integer_inverse(M)
    Mf = (torch.round(M) if M.is_floating_point() else M).to(dtype=L.dtype)
    return Mf @ L, wrap(F @ Minv.to(dtype=F.dtype, device=F.device))


def random_rotations(shape=(), *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None, proper: bool = False) -> torch.Tensor:
    """Haar-distributed random orthogonal matrices ``(*shape, 3, 3)`` (``shape`` an int or a tuple, as for
    :func:`~soft_niggli.unimodular.random_unimodular`).

    The QR decomposition of a Gaussian matrix with the signs of ``R``'s diagonal moved into ``Q``
    (Mezzadri 2007) gives a uniform draw from O(3): rotations and, with ``proper=False``, reflections
    (det −1) half of the time; ``proper=True`` negates those, which gives a uniform draw from SO(3). Used
    as ``L @ Q.mT`` (rows are lattice vectors: rotating a lattice rotates its rows).

    The numbers are drawn in float64 on ``generator``'s device (the CPU by default), then cast to ``dtype``
    and moved to ``device``: the same seed gives the same rotations on every device.

    >>> Q = random_rotations(4, generator=torch.Generator().manual_seed(0), proper=True)
    >>> Q.shape, bool(torch.allclose(Q @ Q.mT, torch.eye(3, dtype=torch.float64).expand(4, 3, 3)))
    (torch.Size([4, 3, 3]), True)
    """
    shape = (shape,) if not isinstance(shape, (tuple, list, torch.Size)) else tuple(shape)
    shape = tuple(check_int(k, "shape", minimum=0) for k in shape)
    dtype = check_dtype(dtype, "dtype")
    if not isinstance(proper, bool):
        raise TypeError(f"proper: expected a bool, got {type(proper).__name__} {proper!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    source = generator.device if generator is not None else torch.device("cpu")
    A = torch.randn(*shape, 3, 3, generator=generator, dtype=torch.float64, device=source)
    Q, R = torch.linalg.qr(A)
    sign = torch.where(torch.diagonal(R, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(torch.float64)
    Q = Q * sign[..., None, :]
    if proper:
        Q = Q * torch.where(torch.linalg.det(Q) < 0, -1.0, 1.0).to(torch.float64)[..., None, None]
    return Q.to(dtype=dtype, device=device)
