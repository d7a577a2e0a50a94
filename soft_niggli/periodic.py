"""Periodic coordinate error: minimum-image differences with the best common translation removed.

Row convention (as everywhere in soft_niggli): lattices are ``(..., 3, 3)`` with the lattice vectors as
rows, Cartesian positions are ``X = F @ L``; this module only sees fractional coordinates ``F``, stored
flat as in :class:`~soft_niggli.crystal.CrystalBatch` (``(N_total, 3)`` plus a ``batch`` vector giving
each atom's crystal).

A crystal's fractional coordinates are defined only up to two symmetries the error must ignore:

* wrapping: ``F`` and ``F + k`` (``k`` integer) are the same atom, handled by minimum-image
  differences ``d - round(d)``;
* a common translation (Type II): ``wrap(F + t)`` for any ``t`` is the same crystal, handled by
  subtracting the best common translation of each crystal before squaring.

The translation is the per-axis *circular* mean of the minimum-image differences,
``t = atan2(Σ sin 2πd, Σ cos 2πd) / 2π``. The arithmetic mean of minimum-image differences is not used
because it is not translation-equivariant: shifting every difference by ``t`` moves some of them across
the ±½ cut where the minimum image jumps by 1, so the arithmetic mean moves by ``t - k/n`` instead of
``t``. The circular mean rotates exactly with ``t`` (``atan2`` of a rotated resultant), which makes the
error exactly invariant, up to floating-point rounding, to translating either structure by any ``t``
and to wrapping any coordinate by an integer. For small differences it coincides with the minimiser
of the squared error (the arithmetic mean) to second order.

The translation stays in the autograd graph, so the error is a smooth function of the coordinates
(away from the measure-zero cut points of the minimum image) whose gradient is exactly the derivative
of the value, as ``torch.autograd.gradcheck`` checks. Where a crystal's mean resultant vanishes
(differences spread uniformly round the circle, e.g. two atoms differing by exactly ½) no translation
is preferred: ``t = 0`` is used there, with zero gradient through ``t``.

>>> import torch
>>> pred = torch.tensor([[0.15, 0.0, 0.0], [0.35, 0.0, 0.0]], dtype=torch.float64)
>>> target = torch.tensor([[0.95, 0.0, 0.0], [0.25, 0.0, 0.0]], dtype=torch.float64)
>>> round(periodic_coordinate_loss(pred, target, torch.tensor([0, 0]), 1).item(), 6)  # d = 0.2, 0.1
0.000833
"""

from __future__ import annotations

import math

import torch

from ._checks import as_float_tensor, check_last_dim

__all__ = ["minimum_image", "best_translation", "periodic_coordinate_loss"]

_TWO_PI = 2.0 * math.pi


def minimum_image(d: torch.Tensor) -> torch.Tensor:
    """Minimum-image fractional differences ``d - round(d)`` in ``[-½, ½]``, any shape.

    The rounding is detached, so the gradient is the identity (the integer part is piecewise constant).
    """
    d = as_float_tensor(d, "d")
    return d - torch.round(d).detach()


def _check_flat(frac: torch.Tensor, name: str, n: int | None = None) -> torch.Tensor:
    frac = as_float_tensor(frac, name)
    if frac.dim() != 2:
        raise ValueError(f"{name}: expected shape (N_total, 3), got {tuple(frac.shape)}")
    check_last_dim(frac, name)
    if n is not None and frac.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n}, 3) to match frac_pred, got {tuple(frac.shape)}")
    return frac


def _check_batch(batch, n: int, num_crystals: int, device: torch.device) -> torch.Tensor:
    if isinstance(num_crystals, bool) or not isinstance(num_crystals, int) or num_crystals < 0:
        raise ValueError(f"num_crystals: expected an int >= 0, got {num_crystals!r}")
    if not isinstance(batch, torch.Tensor):
        batch = torch.as_tensor(batch)
    if batch.is_floating_point() or batch.is_complex() or batch.dtype == torch.bool:
        raise ValueError(f"batch: expected an integer dtype, got {batch.dtype}")
    if tuple(batch.shape) != (n,):
        raise ValueError(f"batch: expected shape ({n},) (one crystal index per atom), got {tuple(batch.shape)}")
    return batch.to(device=device, dtype=torch.int64)


def best_translation(d: torch.Tensor, batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """Per-crystal circular mean ``(num_crystals, 3)`` of fractional differences ``d (N_total, 3)``.

    ``batch (N_total,)`` holds each atom's crystal index in ``[0, num_crystals)``. The result lies in
    ``(-½, ½]``; crystals without atoms, or whose mean resultant vanishes along an axis, get 0 there.
    Differentiable, computed with scatter sums (no loop over crystals).
    """
    d = _check_flat(d, "d")
    batch = _check_batch(batch, d.shape[0], num_crystals, d.device)
    angle = _TWO_PI * d
    index = batch[:, None].expand(-1, 3)
    sin_sum = d.new_zeros(num_crystals, 3).scatter_add(0, index, torch.sin(angle))
    cos_sum = d.new_zeros(num_crystals, 3).scatter_add(0, index, torch.cos(angle))
    counts = torch.bincount(batch, minlength=num_crystals).to(d.dtype)[:, None]
    # atan2's gradient is 0/0 at a vanishing resultant: substitute (0, 1) there so both value and
    # gradient are 0 instead of NaN. The threshold is relative to the atom count (resultant ≤ n).
    eps = 64 * torch.finfo(d.dtype).eps
    vanishing = sin_sum.square() + cos_sum.square() <= (eps * counts.clamp_min(1.0)).square()
    sin_safe = torch.where(vanishing, torch.zeros_like(sin_sum), sin_sum)
    cos_safe = torch.where(vanishing, torch.ones_like(cos_sum), cos_sum)
    return torch.atan2(sin_safe, cos_safe) / _TWO_PI


def periodic_coordinate_loss(frac_pred: torch.Tensor, frac_target: torch.Tensor, batch: torch.Tensor,
                             num_crystals: int) -> torch.Tensor:
    """Periodic mean squared error of fractional coordinates, per crystal, shape ``(num_crystals,)``.

    For the atoms of crystal ``b`` (``batch == b``, matched by order):
    ``d = minimum_image(frac_pred - frac_target)``, ``t_b = best_translation(d)`` (circular mean), and
    the error is ``mean_atoms mean_axes minimum_image(d - t_b)²`` (dimensionless, fractional units;
    at most ``1/4``). Crystals with no atoms score 0. Invariant, to rounding, to wrapping any coordinate
    by an integer and to translating either structure by a common vector.

    Args:
        frac_pred: ``(N_total, 3)`` floating; gradients flow through it.
        frac_target: ``(N_total, 3)``, same dtype (it may carry gradients too).
        batch: ``(N_total,)`` integer crystal index per atom, values in ``[0, num_crystals)``.
        num_crystals: number of crystals ``B`` (needed because trailing crystals may have no atoms).

    Raises:
        ValueError: on shapes, dtypes or a non-integer ``batch``.
    """
    frac_pred = _check_flat(frac_pred, "frac_pred")
    frac_target = _check_flat(frac_target, "frac_target", frac_pred.shape[0])
    if frac_target.dtype != frac_pred.dtype:
        raise ValueError(f"frac_target: expected dtype {frac_pred.dtype} (frac_pred's), got {frac_target.dtype}")
    batch = _check_batch(batch, frac_pred.shape[0], num_crystals, frac_pred.device)
    d = minimum_image(frac_pred - frac_target)
    t = best_translation(d, batch, num_crystals)
    residual = minimum_image(d - t[batch])
    per_atom = residual.square().mean(dim=1)
    total = per_atom.new_zeros(num_crystals).index_add(0, batch, per_atom)
    counts = torch.bincount(batch, minlength=num_crystals).to(per_atom.dtype)
    return total / counts.clamp_min(1.0)
