"""Permutation-invariant coordinate error: a periodic, species-aware Sinkhorn divergence (geomloss).

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; Cartesian displacements are
``d @ L`` for fractional displacements ``d``.

Where a prediction's atom order is not the label's (generative models, set decoders), the periodic
MSE of :mod:`soft_niggli.periodic` does not apply. This module compares the two atom sets as measures
with geomloss' debiased Sinkhorn divergence (``SamplesLoss("sinkhorn", ...)``, tensorized backend)
under the ground cost

    C(i, j) = ½ |minimum_image(f_i - f_j) @ L|²  +  species_penalty · [Z_i ≠ Z_j],

the squared minimum-image Cartesian distance in the reference lattice ``L`` (so the cost is periodic:
wrapping a coordinate changes nothing), plus a penalty that keeps atoms of different elements from
being matched. It is invariant to the order of the atoms in either structure. A common translation
(Type II) is removed by centring each structure on its own circular mean position (per axis,
``atan2(Σ sin 2πf, Σ cos 2πf) / 2π``), which moves exactly with any translation; where a structure's
positions are spread evenly round the circle along an axis (a vanishing resultant, e.g. two atoms
½ apart) no centre exists and that axis is not centred, so translation invariance then holds only up
to the Sinkhorn blur.
"""

from __future__ import annotations

import math

import torch

__all__ = ["sinkhorn_coordinate_loss", "sinkhorn_coordinate_loss_flat"]

_TWO_PI = 2.0 * math.pi


def _circular_centre(frac: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # frac (B, N, 3), mask (B, N) -> (B, 1, 3) circular mean per axis; 0 where the resultant vanishes.
    w = mask.to(frac.dtype)[..., None]
    s = (torch.sin(_TWO_PI * frac) * w).sum(1)
    c = (torch.cos(_TWO_PI * frac) * w).sum(1)
    vanishing = s.square() + c.square() <= (1e-6 * w.sum(1).clamp_min(1.0)).square()
    s = torch.where(vanishing, torch.zeros_like(s), s)
    c = torch.where(vanishing, torch.ones_like(c), c)
    return (torch.atan2(s, c) / _TWO_PI)[:, None, :]


def sinkhorn_coordinate_loss(frac_pred: torch.Tensor, frac_target: torch.Tensor, mask: torch.Tensor,
                             lattice: torch.Tensor, species_pred: torch.Tensor | None = None,
                             species_target: torch.Tensor | None = None, *, blur: float = 0.1,
                             scaling: float = 0.7, species_penalty: float = 100.0) -> torch.Tensor:
    """Sinkhorn divergence between predicted and target atom sets, per crystal, ``(B,)`` in Å².

    Args:
        frac_pred, frac_target: ``(B, N, 3)`` padded fractional coordinates in the same basis.
        mask: ``(B, N)`` bool, real atoms (both structures have the same atom count per crystal).
        lattice: ``(B, 3, 3)`` lattice measuring the cost (usually the target's, detached).
        species_pred, species_target: ``(B, N)`` atomic numbers, or None to ignore species.
        blur: Sinkhorn blur in Å (the entropic scale ``ε = blur²``).
        scaling: geomloss' ε-scaling ratio (closer to 1 is more accurate and slower).
        species_penalty: cost in Å² added for matching atoms of different elements.
    """
    from geomloss import SamplesLoss  # core dependency; imported here to keep `import soft_niggli` light

    if frac_pred.shape != frac_target.shape or frac_pred.dim() != 3 or frac_pred.shape[-1] != 3:
        raise ValueError(f"frac_pred, frac_target: expected equal shapes (B, N, 3), got "
                         f"{tuple(frac_pred.shape)} and {tuple(frac_target.shape)}")
    B, N, _ = frac_pred.shape
    if tuple(mask.shape) != (B, N):
        raise ValueError(f"mask: expected shape ({B}, {N}), got {tuple(mask.shape)}")
    if tuple(lattice.shape) != (B, 3, 3):
        raise ValueError(f"lattice: expected shape ({B}, 3, 3), got {tuple(lattice.shape)}")
    fp = frac_pred - _circular_centre(frac_pred, mask)
    ft = frac_target - _circular_centre(frac_target, mask)
    zp = (species_pred if species_pred is not None else torch.zeros(B, N)).to(fp.dtype)
    zt = (species_target if species_target is not None else torch.zeros(B, N)).to(fp.dtype)
    Lflat = lattice.reshape(B, 1, 9).expand(B, N, 9).to(fp.dtype)
    # geomloss passes (B, N, D) point features to the cost; pack coordinates, species and the lattice.
    x = torch.cat([fp, zp[..., None], Lflat], dim=-1)
    y = torch.cat([ft, zt[..., None], Lflat], dim=-1)

    def cost(a, b):
        d = a[:, :, None, :3] - b[:, None, :, :3]
        d = d - torch.round(d).detach()
        L = a[:, 0, 4:].reshape(-1, 1, 1, 3, 3)
        cart = (d[..., None, :] @ L).squeeze(-2)
        different = (a[:, :, None, 3] != b[:, None, :, 3]).to(a.dtype)
        return 0.5 * cart.square().sum(-1) + species_penalty * different

    weights = mask.to(fp.dtype)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1.0)
    diameter = float(lattice.detach().abs().sum(dim=(1, 2)).max().clamp_min(1.0)) + math.sqrt(2 * species_penalty)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, cost=cost, backend="tensorized",
                       diameter=diameter, debias=True)
    return loss(weights, x, weights, y)


def sinkhorn_coordinate_loss_flat(frac_pred: torch.Tensor, frac_target: torch.Tensor, batch: torch.Tensor,
                                  lattice: torch.Tensor, species_pred: torch.Tensor | None = None,
                                  species_target: torch.Tensor | None = None, **options) -> torch.Tensor:
    """:func:`sinkhorn_coordinate_loss` on flat ``(N_total, 3)`` coordinates with a ``batch`` vector.

    Both structures have the same atom count per crystal (``batch`` is shared); atoms are padded per
    crystal internally. ``species_*`` are ``(N_total,)`` or None. Returns ``(B,)`` with
    ``B = lattice.shape[0]``.
    """
    B = lattice.shape[0]
    counts = torch.bincount(batch, minlength=B)
    n_max = int(counts.max()) if counts.numel() else 0
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch.numel(), device=batch.device) - start[batch]
    mask = torch.zeros(B, max(n_max, 1), dtype=torch.bool, device=batch.device)
    mask[batch, slot] = True

    def padded(values, fill=0.0):
        if values is None:
            return None
        out = torch.full((B, max(n_max, 1)) + tuple(values.shape[1:]), fill, dtype=values.dtype, device=values.device)
        return out.index_put((batch, slot), values)

    return sinkhorn_coordinate_loss(padded(frac_pred), padded(frac_target), mask, lattice,
                                    padded(species_pred, 0), padded(species_target, 0), **options)
