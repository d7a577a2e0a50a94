"""Permutation-invariant coordinate error: a periodic, species-aware Sinkhorn divergence (geomloss).

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; Cartesian displacements are
``d @ L`` for fractional displacements ``d``.

Where a prediction's atom order is not the label's (generative models, set decoders), the periodic
MSE of :mod:`soft_niggli.losses.periodic` does not apply. This module compares the two atom sets as measures
with geomloss' debiased Sinkhorn divergence ``S`` (``SamplesLoss("sinkhorn", ...)``, tensorized
backend) under the ground cost

    C(i, j) = ½ min_image |(f_i - f_j + k) @ L|²  +  species_penalty · [Z_i ≠ Z_j],

the squared Cartesian distance to the nearest image in the reference lattice ``L`` (so the cost is
periodic: wrapping a coordinate changes nothing), plus a penalty that keeps atoms of different
elements from being matched. It is invariant to the order of the atoms in either structure.

The nearest image is searched in ``L``'s Niggli basis (both structures re-based with it: the same
crystals; the transform from :func:`~soft_niggli.niggli.niggli_reduce`, not differentiated), among the
8 images next to the fractional minimum image ``d`` in ``[-½, ½]³`` (each component ``d``, and ``d - 1``
for ``d >= 0`` or ``d + 1`` below): the corners of the basis cell that holds the difference. In a
reduced cell they hold the nearest image (checked against all images on 80 000 random reduced cells);
in a skewed one, such as the softmin losses' candidates ``M R``, they may not, and they switch sides
where a component crosses 0 (in an fcc-like candidate, atoms whose difference had a component of
exactly 0, as on symmetric sites, were √3 Å apart instead of 1). So the cost depends on the lattice,
not on its basis, and is continuous.

Translations (Type II). No centre of a periodic atom set can be both translation-equivariant and
continuous (two atoms ½ apart have no preferred centre, and real crystals such as wurtzite sit exactly
there), so none is used. Instead the term is the minimum over *anchor translations*

    term = min_{i, j} S(pred + t_ij, target),   t_ij = minimum_image(f_target[j] - f_pred[i]),

with ``i`` and ``j`` running over the atoms of the *anchor element*: the element with the fewest
atoms in the crystal (ties: the smallest atomic number; every atom when species are not given). Each
``t_ij`` puts one predicted anchor atom exactly on one target anchor atom. The set of candidates moves
exactly with a translation of either structure and with a permutation of its atoms, so the minimum is
exactly invariant to both; a minimum of continuous functions is continuous, so nothing jumps. A
perfect prediction (the label translated and permuted) scores 0. When a crystal has more than
``max_anchor_pairs`` anchor pairs (e.g. 24 carbon atoms: 576 pairs) its structures are compared as
given (one candidate, ``t = 0``): still continuous and invariant to atom order, not to translation.
"""

from __future__ import annotations

import math

import torch

from .._checks import has_values
from ..crystal import atom_slots
from .periodic import atom_counts

__all__ = ["sinkhorn_coordinate_loss", "sinkhorn_coordinate_loss_flat", "MAX_ANCHOR_PAIRS"]

# The 8 subsets of axes in Gray-code order, as steps from the empty one: (axis, +1 to add it, -1 to
# remove it); each step moves one component of a difference to its other image.
_GRAY_STEPS = ((0, 1), (1, 1), (0, -1), (2, 1), (0, 1), (1, -1), (0, -1))

#: Default cap on the anchor translations tried per crystal (rarest element with up to 8 atoms).
MAX_ANCHOR_PAIRS = 64


def _check_species(species_pred, species_target):
    if (species_pred is None) != (species_target is None):
        raise ValueError("species_pred, species_target: expected both or neither (species are compared between "
                         f"the two structures), got {'species_pred' if species_pred is not None else 'species_target'}"
                         " only")


def _anchor_translations(mask, z_pred, z_target, max_pairs: int):
    """Anchor pairs, packed: ``owner (Q,)`` crystal of each candidate, atom indices ``i``, ``j`` (Q,)
    into the padded pred and target, and ``use (Q,)``, False where the candidate is ``t = 0``.

    Crystals with no anchor pair, or more than ``max_pairs``, get one candidate ``t = 0``. Indices only:
    nothing here is differentiated. Without values (meta tensors) every crystal gets ``t = 0``.
    """
    B, N = mask.shape
    device = mask.device
    if not has_values(mask):
        zero = torch.zeros(B, dtype=torch.int64, device=device)
        return torch.arange(B, device=device), zero, zero, zero.bool()
    # Count of each atom's element in its crystal (target side), as a key: (count, element).
    same = (z_target[:, :, None] == z_target[:, None, :]) & mask[:, None, :]
    count = same.sum(-1)  # (B, N)
    big = int(z_target.abs().max()) + 1 if z_target.numel() else 1
    key = torch.where(mask, count * big + z_target, torch.full_like(count, torch.iinfo(torch.int64).max))
    anchor_key = key.min(1).values  # (B,)
    anchor_z = torch.where(anchor_key < torch.iinfo(torch.int64).max, anchor_key % big, torch.full_like(anchor_key, -1))
    anchor_t = mask & (z_target == anchor_z[:, None])
    anchor_p = mask & (z_pred == anchor_z[:, None])
    valid = (anchor_p[:, :, None] & anchor_t[:, None, :]).reshape(B, N * N)  # pair (i, j) as i*N + j
    pairs = valid.sum(1)
    use = (pairs >= 1) & (pairs <= max_pairs)
    per_crystal = torch.where(use, pairs, torch.ones_like(pairs))
    owner = torch.repeat_interleave(torch.arange(B, device=device), per_crystal)
    position = torch.arange(owner.numel(), device=device) - (torch.cumsum(per_crystal, 0) - per_crystal)[owner]
    # The valid pairs of each crystal first, in a fixed order (stable sort keeps index order).
    order = torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices  # (B, N*N)
    pair = order[owner, position]
    return owner, pair // N, pair % N, use[owner]


def _reduced_basis(frac_pred: torch.Tensor, frac_target: torch.Tensor, lattice: torch.Tensor):
    """``(frac_pred N⁻¹, frac_target N⁻¹, N L)``: both structures and the lattice in the lattice's Niggli
    basis ``N L`` (``N`` from :func:`~soft_niggli.niggli.niggli_reduce`, detached; for a cell it does not
    reduce ``OK``, the best basis it found or the identity, unimodular either way), where the cost's few
    images hold the nearest one. Without values (meta), as given."""
    if not has_values(lattice):
        return frac_pred, frac_target, lattice
    from ..lattice import integer_inverse
    from ..niggli import niggli_reduce

    N = niggli_reduce(lattice.detach().double()).transform.to(lattice.device)
    N_inv = integer_inverse(N)
    return (frac_pred @ N_inv.to(frac_pred.dtype), frac_target @ N_inv.to(frac_target.dtype),
            N.to(lattice.dtype) @ lattice)


def sinkhorn_coordinate_loss(frac_pred: torch.Tensor, frac_target: torch.Tensor, mask: torch.Tensor,
                             lattice: torch.Tensor, species_pred: torch.Tensor | None = None,
                             species_target: torch.Tensor | None = None, *, blur: float = 0.1,
                             scaling: float = 0.5, species_penalty: float = 100.0,
                             max_anchor_pairs: int = MAX_ANCHOR_PAIRS) -> torch.Tensor:
    """Sinkhorn divergence between predicted and target atom sets, per crystal, ``(B,)`` in Å².

    The minimum over anchor translations (module docstring): exactly invariant to translating either
    structure and to the order of its atoms, continuous in both.

    Args:
        frac_pred, frac_target: ``(B, N, 3)`` padded fractional coordinates in the same basis.
        mask: ``(B, N)`` bool, real atoms (both structures have the same atom count per crystal).
        lattice: ``(B, 3, 3)`` lattice measuring the cost (usually the target's, detached), in any basis
            (the cost is computed in its Niggli basis, module docstring).
        species_pred, species_target: ``(B, N)`` atomic numbers, both or neither (None: ignore species).
        blur: Sinkhorn blur in Å (the entropic scale ``ε = blur²``).
        scaling: geomloss' ε-scaling ratio (closer to 1 is more accurate and slower).
        species_penalty: cost in Å² added for matching atoms of different elements.
        max_anchor_pairs: most anchor translations tried per crystal (see the module docstring).
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
    _check_species(species_pred, species_target)
    if B == 0 or N == 0:
        return frac_pred.new_zeros(B)
    device = frac_pred.device
    zeros = torch.zeros(B, N, dtype=torch.int64, device=device)
    zp = zeros if species_pred is None else species_pred.to(device=device, dtype=torch.int64)
    zt = zeros if species_target is None else species_target.to(device=device, dtype=torch.int64)
    mask = mask.to(device=device, dtype=torch.bool)
    frac_pred, frac_target, lattice = _reduced_basis(frac_pred, frac_target, lattice)

    owner, i, j, use = _anchor_translations(mask, zp, zt, max_anchor_pairs)
    # t_ij stays in the graph: the value's gradient includes the moving anchor atom's share.
    t = frac_target[owner, j] - frac_pred[owner, i]
    t = torch.where(use[:, None], t - torch.round(t).detach(), torch.zeros_like(t))
    fp = frac_pred[owner] + t[:, None, :]
    ft = frac_target[owner]
    m = mask[owner]
    Q = owner.numel()
    Lflat = lattice[owner].reshape(Q, 1, 9).expand(Q, N, 9).to(fp.dtype)
    # geomloss passes (Q, N, D) point features to the cost; pack coordinates, species and the lattice.
    x = torch.cat([fp, zp[owner][..., None].to(fp.dtype), Lflat], dim=-1)
    y = torch.cat([ft, zt[owner][..., None].to(fp.dtype), Lflat], dim=-1)

    def cost(a, b):
        d = a[:, :, None, :3] - b[:, None, :, :3]
        d = d - torch.round(d).detach()
        L = a[:, 0, 4:].reshape(-1, 3, 3)
        # The nearest of the 8 images next to the fractional minimum image (each component d or d - 1
        # for d >= 0, d + 1 below; the lattice is reduced, module docstring). Walked in Gray-code
        # order, each image is the previous one moved along one lattice vector.
        flip = torch.where(d >= 0, 1.0, -1.0).to(d.dtype).detach()
        cart = torch.einsum("qijk,qkl->qijl", d, L)
        squared = cart.square().sum(-1)
        for axis, sign in _GRAY_STEPS:
            cart = cart - sign * flip[..., axis, None] * L[:, None, None, axis, :]
            squared = torch.minimum(squared, cart.square().sum(-1))
        different = (a[:, :, None, 3] != b[:, None, :, 3]).to(a.dtype)
        return 0.5 * squared + species_penalty * different

    weights = m.to(fp.dtype)
    weights = weights / weights.sum(1, keepdim=True).clamp_min(1.0)
    # geomloss wants the largest cost distance as a number; without values (meta), an upper bound's guess.
    largest_cell = float(lattice.detach().abs().sum(dim=(1, 2)).max().clamp_min(1.0)) if has_values(lattice) else 1e3
    diameter = largest_cell + math.sqrt(2 * species_penalty)
    loss = SamplesLoss("sinkhorn", p=2, blur=blur, scaling=scaling, cost=cost, backend="tensorized",
                       diameter=diameter, debias=True)
    values = loss(weights, x, weights, y)  # (Q,)
    # Minimum per crystal over its candidates (padded with +inf).
    position = torch.arange(Q, device=device) - torch.searchsorted(owner, owner, right=False)
    width = int(position.max()) + 1 if has_values(position) else 1  # meta: one candidate per crystal
    table = torch.full((B, width), math.inf, dtype=values.dtype, device=device)
    table = table.index_put((owner, position), values)
    return table.min(dim=1).values


def sinkhorn_coordinate_loss_flat(frac_pred: torch.Tensor, frac_target: torch.Tensor, batch: torch.Tensor,
                                  lattice: torch.Tensor, species_pred: torch.Tensor | None = None,
                                  species_target: torch.Tensor | None = None, **options) -> torch.Tensor:
    """:func:`sinkhorn_coordinate_loss` on flat ``(N_total, 3)`` coordinates with a ``batch`` vector.

    Both structures have the same atom count per crystal (``batch`` is shared); atoms are padded per
    crystal internally. ``species_*`` are ``(N_total,)``, both or neither. Returns ``(B,)`` with
    ``B = lattice.shape[0]``.
    """
    _check_species(species_pred, species_target)
    B = lattice.shape[0]
    counts = atom_counts(batch, B)
    # The padded width is the largest crystal's atom count; without values (meta), every atom's.
    n_max = (int(counts.max()) if counts.numel() else 0) if has_values(counts) else batch.numel()
    slot = atom_slots(counts, batch)
    mask = torch.zeros(B, max(n_max, 1), dtype=torch.bool, device=batch.device)
    mask[batch, slot] = True

    def padded(values, fill=0.0):
        if values is None:
            return None
        out = torch.full((B, max(n_max, 1)) + tuple(values.shape[1:]), fill, dtype=values.dtype, device=values.device)
        return out.index_put((batch, slot), values)

    return sinkhorn_coordinate_loss(padded(frac_pred), padded(frac_target), mask, lattice,
                                    padded(species_pred, 0), padded(species_target, 0), **options)
