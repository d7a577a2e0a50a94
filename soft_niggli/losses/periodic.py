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

The translation removed is the *best* one, exactly: per axis, ``t`` minimises
``Σ_i minimum_image(d_i - t)²`` over the circle. That minimum is found without iterating: sorted round
the circle, the images the optimum uses are those of one contiguous arc, so it is the smallest
variance of the ``n`` unwrapped arcs (one per cut between neighbours), computed from prefix sums. A
minimum over a finite set of continuous functions is continuous, and the set of arcs moves exactly
with any translation, so the error is exactly invariant (to rounding) to translating either structure
by any ``t`` and to wrapping any coordinate, and continuous everywhere: also where the differences are
spread evenly round the circle (e.g. two atoms ½ apart, common on symmetric crystals), where every
*centre* of the differences (a circular mean) is undefined and would switch by a threshold. Near a
match the best translation is the arithmetic mean of the differences. Gradients are those of the
chosen arc (exact away from the measure-zero set where two arcs tie).

>>> import torch
>>> pred = torch.tensor([[0.15, 0.0, 0.0], [0.35, 0.0, 0.0]], dtype=torch.float64)
>>> target = torch.tensor([[0.95, 0.0, 0.0], [0.25, 0.0, 0.0]], dtype=torch.float64)
>>> round(periodic_coordinate_loss(pred, target, torch.tensor([0, 0]), 1).item(), 6)  # d = 0.2, 0.1
0.000833
"""

from __future__ import annotations

import math

import torch

from .._checks import as_float_tensor, check_last_dim, has_values
from ..crystal import atom_slots

try:  # the compiled per-pair loop of periodic_loss_of_pairs (soft_niggli/_kernels/periodic_pairs.c); optional
    from .. import _loss_kernel as _kernel
except ImportError:  # not built (no C compiler at install time): the PyTorch code below does the same
    _kernel = None

__all__ = ["minimum_image", "best_translation", "periodic_coordinate_loss", "periodic_loss_of_pairs",
           "COMPILED_PAIRS"]

#: Whether :func:`periodic_loss_of_pairs` runs its compiled loop on CPU tensors (False: the PyTorch code
#: runs instead; same values to rounding, slower).
COMPILED_PAIRS = _kernel is not None


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
    """Per-crystal best common translation ``(num_crystals, 3)`` of fractional differences ``d (N_total, 3)``.

    Per axis the ``t`` in ``[-½, ½)`` minimising ``Σ_i minimum_image(d_i - t)²`` (module docstring);
    crystals without atoms get 0. ``batch (N_total,)`` holds each atom's crystal in ``[0, num_crystals)``.
    Differentiable (through the chosen arc), computed with sorts and scatter sums.
    """
    d = _check_flat(d, "d")
    batch = _check_batch(batch, d.shape[0], num_crystals, d.device)
    t, _ = _best_arcs(d, batch, num_crystals)
    return t


def atom_counts(batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """``(num_crystals,)`` int64 number of atoms per crystal from the ``batch`` vector (a scatter sum, not
    ``bincount``, so that its shape never depends on values)."""
    return torch.zeros(num_crystals, dtype=torch.int64, device=batch.device).index_add(
        0, batch, torch.ones_like(batch, dtype=torch.int64))


def _best_arcs(d: torch.Tensor, batch: torch.Tensor, B: int):
    """``(t (B, 3), sq (B, 3))``: the best translation per axis and the smallest sum of squared residuals.

    The differences are taken relative to one atom of each crystal and wrapped to ``[0, 1)``; the best
    arc's cut is found without gradient (:func:`_best_cuts`), and the residuals are then computed
    directly from the unwrapped values of that arc (one pass for the mean, one for the centred
    squares), so that near a match they keep the precision of the input (no cancellation of large
    sums) and carry the gradients of the chosen arc.
    """
    counts = atom_counts(batch, B)
    n_atoms = d.shape[0]
    if n_atoms == 0:
        zero = d.new_zeros(B, 3)
        return zero, zero
    first = torch.full((B,), n_atoms, dtype=torch.int64, device=d.device).scatter_reduce(
        0, batch, torch.arange(n_atoms, device=d.device), "amin").clamp_max(n_atoms - 1)
    x = d - d[first][batch]
    x = x - torch.floor(x).detach()  # in [0, 1): one image per atom, order round the circle
    if has_values(x):  # without values (meta tensors) only the shapes of the no-cut arcs can be traced
        with torch.no_grad():
            cut = _best_cuts(x.detach(), batch, counts, B)
        x = x + (x.detach() < cut[batch]).to(x.dtype)  # the chosen arc: values below the cut move up by 1
    n = counts.clamp_min(1).to(d.dtype)[:, None]
    mean = d.new_zeros(B, 3).index_add(0, batch, x) / n
    sq = d.new_zeros(B, 3).index_add(0, batch, (x - mean[batch]).square())
    t = d[first] + mean
    t = t - torch.round(t).detach()
    has_atoms = (counts > 0)[:, None]
    return torch.where(has_atoms, t, torch.zeros_like(t)), torch.where(has_atoms, sq, torch.zeros_like(sq))


def _best_cuts(x: torch.Tensor, batch: torch.Tensor, counts: torch.Tensor, B: int) -> torch.Tensor:
    """``(B, 3)`` per crystal and axis, the cut of the best arc of flat values ``x (N, 3)`` in ``[0, 1)``
    (:func:`_padded_cuts` on the atoms laid out per crystal)."""
    if bool((batch[1:] < batch[:-1]).any()):  # group each crystal's atoms together first
        order = torch.sort(batch, stable=True).indices
        x, batch = x[order], batch[order]
    n_max = int(counts.max())
    slots = (batch, atom_slots(counts, batch))
    padded = x.new_zeros(B, n_max, 3).index_put(slots, x)
    valid = torch.zeros(B, n_max, dtype=torch.bool, device=x.device).index_put(slots, torch.ones_like(batch, dtype=torch.bool))
    return _padded_cuts(padded, valid, counts)


def _padded_cuts(x: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(Q, 3)`` per crystal and axis, the cut of the best arc: values ``x (Q, n_max, 3)`` in ``[0, 1)``
    (where ``valid (Q, n_max)``) below it are unwrapped by +1 (a cut at the smallest value unwraps none).

    The values are sorted per crystal and axis (many small sorts along the contiguous axis, not one
    large one); every arc's sum of squared residuals comes from prefix sums (float64 for float64
    input, else float32: a cut chosen wrongly by rounding is one whose arc is within that rounding of
    the best, and the residuals are recomputed exactly for the cut chosen).
    """
    n_max = x.shape[1]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    padded = torch.where(valid[:, :, None], x.to(work), torch.full_like(x, 2.0, dtype=work))
    xs = torch.sort(padded.transpose(1, 2), dim=2).values  # (Q, 3, n_max); the padding (2.0) sorts last
    last = torch.arange(n_max, device=x.device)[None, None, :] < counts[:, None, None]
    xs0 = torch.where(last, xs, torch.zeros_like(xs))
    c = torch.arange(n_max, device=x.device, dtype=work)
    # Arc for cut c: values x_{c+1..n}, x_{1..c} + 1; sum S + c, sum of squares Q + 2 P_c + c with P_c
    # the sum of the c smallest, so its squared residuals are Q + 2 P_c + c - (S + c)² / n. Q is the
    # same for every cut: left out.
    n = counts.clamp_min(1).to(work)[:, None, None]
    key = 2 * (torch.cumsum(xs0, 2) - xs0) + c - (xs0.sum(2, keepdim=True) + c).square() / n
    chosen = torch.where(last, key, torch.full_like(key, math.inf)).argmin(dim=2, keepdim=True)
    return torch.gather(xs, 2, chosen).squeeze(2).to(x.dtype)


def periodic_loss_of_pairs(frac_pred: torch.Tensor, frac_target: torch.Tensor, num_atoms: torch.Tensor,
                           crystal: torch.Tensor, target_transform: torch.Tensor) -> torch.Tensor:
    """``(Q,)``: for each pair ``q``, :func:`periodic_coordinate_loss` of crystal ``crystal[q]``'s predicted
    atoms against its target atoms times ``target_transform[q]`` (``F_t @ X_q``, atoms matched by order).

    What the losses need to score one crystal against many re-based copies of its label (candidate
    bases, automorphisms, reduced forms) without repeating every atom per pair. On CPU tensors (and a
    ``target_transform`` without gradient) one compiled loop does every pair in float64
    (``soft_niggli/_kernels/periodic_pairs.c``, :data:`COMPILED_PAIRS`); elsewhere atoms are laid out per crystal
    once (``(B, n_max, 3)``), and each pair is one small matrix product and a few padded operations.
    ``frac_*`` are flat ``(N_total, 3)`` grouped by crystal, ``num_atoms (B,)``, ``crystal (Q,)``
    int64, ``target_transform (Q, 3, 3)`` floating. Gradients flow to ``frac_pred`` (and to
    ``frac_target`` if it carries them).
    """
    B, Q, device = num_atoms.shape[0], crystal.shape[0], frac_pred.device
    if Q == 0 or frac_pred.shape[0] == 0:
        return frac_pred.new_zeros(Q) + 0 * frac_pred.sum()  # still in the graph: backward works
    if (_kernel is not None and device.type == "cpu" and frac_target.device.type == "cpu"
            and not target_transform.requires_grad and has_values(frac_pred)):
        return _CompiledPairs.apply(frac_pred, frac_target, num_atoms, crystal, target_transform)
    n_max = int(num_atoms.max())
    batch = torch.repeat_interleave(torch.arange(B, device=device), num_atoms, output_size=frac_pred.shape[0])
    slots = (batch, atom_slots(num_atoms, batch))
    pred = frac_pred.new_zeros(B, n_max, 3).index_put(slots, frac_pred)
    target = frac_target.new_zeros(B, n_max, 3).index_put(slots, frac_target)
    valid = (torch.arange(n_max, device=device)[None, :] < num_atoms[:, None])[crystal]  # (Q, n_max)
    counts = num_atoms[crystal]
    d = pred[crystal] - target[crystal] @ target_transform
    x = d - d[:, :1]  # relative to each crystal's first atom
    x = x - torch.floor(x).detach()  # in [0, 1)
    if has_values(x):
        with torch.no_grad():
            cut = _padded_cuts(x.detach(), valid, counts)
        x = x + (x.detach() < cut[:, None, :]).to(x.dtype)  # the chosen arc: values below the cut move up by 1
    weight = valid[:, :, None].to(x.dtype)
    n = counts.clamp_min(1).to(x.dtype)
    mean = (x * weight).sum(1, keepdim=True) / n[:, None, None]
    sq = ((x - mean).square() * weight).sum(dim=(1, 2))
    return sq / (3 * n)


class _CompiledPairs(torch.autograd.Function):
    """:func:`periodic_loss_of_pairs` through the compiled loop (``soft_niggli/_kernels/periodic_pairs.c``), in
    float64: the forward pass keeps each pair's residuals, from which the backward pass accumulates
    ``2 r_i g_q / (3 n)`` into the predicted atoms (and minus that times ``X_qᵀ`` into the target's)."""

    @staticmethod
    def forward(ctx, frac_pred, frac_target, num_atoms, crystal, target_transform):
        counts = num_atoms.to(torch.int64).contiguous()
        start = (torch.cumsum(counts, 0) - counts).contiguous()
        crystal = crystal.to(torch.int64).contiguous()
        sizes = counts[crystal]
        resid_start = (torch.cumsum(sizes, 0) - sizes).contiguous()
        X = target_transform.detach().to(torch.float64).reshape(-1, 9).contiguous()
        loss = torch.empty(crystal.shape[0], dtype=torch.float64)
        resid = torch.empty(int(sizes.sum()), 3, dtype=torch.float64)
        _kernel.periodic_pairs(_buffer(frac_pred), _buffer(frac_target), start.numpy(), counts.numpy(),
                               crystal.numpy(), X.numpy(), resid_start.numpy(), loss.numpy(), resid.numpy())
        ctx.save_for_backward(resid, resid_start, start, counts, crystal, X)
        ctx.shapes = (frac_pred.shape, frac_pred.dtype, frac_target.dtype)
        return loss.to(frac_pred.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        resid, resid_start, start, counts, crystal, X = ctx.saved_tensors
        shape, pred_dtype, target_dtype = ctx.shapes
        grad_pred = torch.zeros(shape, dtype=torch.float64)
        grad_target = torch.zeros(shape if ctx.needs_input_grad[1] else (0, 3), dtype=torch.float64)
        g = grad.detach().to(torch.float64).contiguous()
        _kernel.periodic_pairs_grad(resid.numpy(), resid_start.numpy(), start.numpy(), counts.numpy(),
                                    crystal.numpy(), X.numpy(), g.numpy(), grad_pred.numpy(), grad_target.numpy())
        return (grad_pred.to(pred_dtype) if ctx.needs_input_grad[0] else None,
                grad_target.to(target_dtype) if ctx.needs_input_grad[1] else None, None, None, None)


def _buffer(frac: torch.Tensor):
    """A C-contiguous float64 NumPy view (or copy) of flat fractional coordinates, for the kernel."""
    return frac.detach().to(torch.float64).contiguous().numpy()


def periodic_coordinate_loss(frac_pred: torch.Tensor, frac_target: torch.Tensor, batch: torch.Tensor,
                             num_crystals: int) -> torch.Tensor:
    """Periodic mean squared error of fractional coordinates, per crystal, shape ``(num_crystals,)``.

    For the atoms of crystal ``b`` (``batch == b``, matched by order):
    ``d = frac_pred - frac_target``, ``t_b = best_translation(d)`` (exact minimiser), and the error is
    ``mean_atoms mean_axes minimum_image(d - t_b)²`` (dimensionless, fractional units;
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
    _, sq = _best_arcs(frac_pred - frac_target, batch, num_crystals)
    counts = atom_counts(batch, num_crystals).to(sq.dtype)
    return sq.sum(1) / (3 * counts.clamp_min(1.0))
