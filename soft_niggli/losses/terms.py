"""The terms every loss is made of: a lattice term, a coordinate term, and the choice of the label's
automorphic basis nearest the prediction.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; a unimodular ``A`` re-bases
a crystal as ``(A L, wrap(F A^{-1}))``. Lattice terms are in Å²; coordinate terms are fractional²
(``"periodic"``, at most 1/4) or Å² (``"sinkhorn"``).
"""

from __future__ import annotations

import math

import torch

from .._checks import as_float_tensor, as_lattice
from ..crystal import CrystalBatch, repeat_atoms
from ..lattice import integer_inverse
from ..unimodular import lattice_automorphisms
from .options import COORDINATE_TERMS, LATTICE_METRICS, choice_option
from .periodic import periodic_coordinate_loss, periodic_loss_of_pairs
from .sinkhorn import sinkhorn_coordinate_loss_flat

__all__ = [
    "LATTICE_METRICS",
    "COORDINATE_TERMS",
    "lattice_term",
    "coordinate_term",
    "tie_tolerance",
    "closest_automorphism",
    "form_penalty",
]

def lattice_term(pred_lattice: torch.Tensor, target_lattice: torch.Tensor, metric: str = "cartesian") -> torch.Tensor:
    """Lattice error ``(...)`` in Å² between ``(..., 3, 3)`` lattices (rows are lattice vectors; tensors,
    NumPy arrays or nested lists; the two shapes broadcast).

    ``"cartesian"``: ``mean_ij (L_p - L_t)_ij²``, the plain MSE (depends on orientation).
    ``"gram"``: ``mean_ij (G_p - G_t)_ij² / (‖L_p‖²_F + ‖L_t‖²_F)`` with ``G = L Lᵀ``: invariant to
    rotating either lattice, zero iff the metrics agree. Dividing the quartic ``‖ΔG‖²`` by the squared
    scale brings it back to Å², the same order as the Cartesian term near a match (for ``L = aI``,
    ``δL = εI`` it is ``2ε²/9`` against ``ε²/3``), and lets it be computed without overflow: both
    lattices are scaled by a common power of two (exact, detached) before squaring.
    """
    choice_option("metric", metric, LATTICE_METRICS)
    pred_lattice, target_lattice = as_lattice(pred_lattice, "pred_lattice"), as_lattice(target_lattice, "target_lattice")
    if metric == "cartesian":
        return (pred_lattice - target_lattice).square().mean(dim=(-1, -2))
    m = torch.maximum(pred_lattice.detach().abs().amax(dim=(-1, -2)), target_lattice.detach().abs().amax(dim=(-1, -2)))
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    _, exponent = torch.frexp(m)
    exponent = exponent.clamp(-1000, 1000)  # 2**±1000 is a normal float64; beyond it values underflow anyway
    down = torch.ldexp(torch.ones_like(m), -exponent)[..., None, None]
    up = torch.ldexp(torch.ones_like(m), exponent)
    P, T = pred_lattice * down, target_lattice * down
    dG = P @ P.transpose(-1, -2) - T @ T.transpose(-1, -2)
    norm = P.square().sum(dim=(-1, -2)) + T.square().sum(dim=(-1, -2))
    # After the scaling norm is at least 1/4 unless both cells are zero; 1 there keeps the gradient 0
    # (a clamp at a tiny floor would give 0 · 1/tiny² = NaN in backward).
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return dG.square().mean(dim=(-1, -2)) / norm * up * up


def coordinate_term(kind: str, frac_pred: torch.Tensor, frac_target: torch.Tensor, batch: torch.Tensor,
                    lattice: torch.Tensor, species_pred=None, species_target=None, blur: float = 0.1) -> torch.Tensor:
    """The coordinate term every strategy uses, ``(B,)``, with ``B = lattice.shape[0]``.

    ``"periodic"``: :func:`~soft_niggli.losses.periodic.periodic_coordinate_loss`, atoms matched by
    order, fractional² (at most 1/4). ``"sinkhorn"``:
    :func:`~soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss_flat` in ``lattice`` (detached), atom
    order free, species-aware, Å². Both ignore translations and wraps.
    """
    choice_option("coords", kind, COORDINATE_TERMS)
    if kind == "periodic":
        return periodic_coordinate_loss(frac_pred, frac_target, batch, lattice.shape[0])
    return sinkhorn_coordinate_loss_flat(frac_pred, frac_target, batch, lattice.detach(), species_pred,
                                         species_target, blur=blur)


def tie_tolerance(scale: torch.Tensor) -> torch.Tensor:
    """Absolute slack ``(...)`` within which two candidate distances of size ``scale`` count as tied.

    Distances of automorphic candidates of a symmetric crystal are equal in exact arithmetic but come
    out of different floating-point sums; 64 ulps of the scale of the summands covers that, and
    counting a near-tie as a tie only ever keeps a candidate more.
    """
    return 64 * torch.finfo(scale.dtype).eps * scale


def closest_automorphism(P_lat: torch.Tensor, P_frac: torch.Tensor, labels: CrystalBatch, left: torch.Tensor | None,
                         right: torch.Tensor | None, *, lattice_metric: str, coords: str, lattice_weight: float,
                         coord_weight: float, blur: float, rel_tol: float, species=None, group=None,
                         lattice_first: bool = False, penalty: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, 3, 3)`` int64: per crystal, the automorphism ``A`` of the reduced label whose target
    ``(left A L_n, F_n A^{-1} right)`` is closest to the prediction ``(P_lat, P_frac)``.

    Every automorphism of a Niggli-reduced label gives an equally canonical target (the group is the
    same set whichever basis the label came in), so choosing by distance to the prediction makes what
    follows independent of the label's input basis (``left`` and ``right`` may be None: the identity).
    "Closest" is measured by the full weighted loss,
    ``lattice_weight · lattice_term + coord_weight · coordinate_term``, over every (crystal,
    automorphism) pair, or (``lattice_first=True``, which the proxy loss uses with Sinkhorn coordinates,
    where one optimal-transport problem per pair would dominate the cost) over the pairs tied, within
    :func:`tie_tolerance`, with the nearest on the lattice term (with ``lattice_metric="gram"``, every
    exact automorphism); the coordinates then decide among those. The narrowing is cheaper but makes
    the choice jump when a tiny change of the label breaks a tie on the lattice term. Ties left after that are exact
    symmetries of the whole crystal, whose targets are the same crystal, so which one wins changes no
    value. Evaluated without gradient; ``labels`` is the reduced label batch (``L_n``, ``F_n``).
    ``group``: the :class:`~soft_niggli.unimodular.LatticeAutomorphisms` to choose from, if already
    known (each crystal's identity first); by default those of ``labels.lattice``. ``penalty``: ``(P,)``
    float, added to each element's distance before choosing (the fade of a reduced form near the
    tolerance's edge, :func:`form_penalty`); none by default.
    """
    L_n, F_n = labels.lattice.detach(), labels.frac.detach()
    B, device = L_n.shape[0], L_n.device
    group = lattice_automorphisms(L_n, rel_tol=rel_tol) if group is None else group
    owner, A = group.owner, group.matrices
    if owner.numel() == B:  # only identities: nothing to choose
        return A
    with torch.no_grad():
        P = owner.numel()
        A_f, A_inv_f = A.to(P_lat.dtype), integer_inverse(A).to(P_lat.dtype)
        T_lat = A_f @ L_n[owner] if left is None else left[owner] @ A_f @ L_n[owner]
        lat = lattice_term(P_lat[owner], T_lat, lattice_metric)
        best_lat = torch.full((B,), math.inf, dtype=lat.dtype, device=device).scatter_reduce(0, owner, lat, "amin")
        slack = tie_tolerance((P_lat.square().sum(dim=(1, 2)) + L_n.square().sum(dim=(1, 2))) / 9)[owner]
        if penalty is not None:  # a faded element competes with its penalty added to its lattice term
            lat = lat + (penalty / lattice_weight if lattice_weight else penalty * 0).to(lat.dtype)
            best_lat = torch.full((B,), math.inf, dtype=lat.dtype, device=device).scatter_reduce(0, owner, lat, "amin")
        if lattice_first:
            keep = lat <= best_lat[owner] + slack
        elif coords == "periodic":
            # The periodic term is at most 1/4: a pair whose weighted lattice term alone exceeds the best
            # one's by more than coord_weight / 4 cannot have the smallest total (exact pruning; on
            # cubic labels it leaves a handful of the 48 forms).
            keep = lattice_weight * lat <= lattice_weight * (best_lat[owner] + slack) + coord_weight / 4
        else:
            keep = torch.ones(P, dtype=torch.bool, device=device)
        pairs = keep.nonzero().flatten()
        sub = owner[pairs]
        A_inv_f = A_inv_f[pairs] if right is None else A_inv_f[pairs] @ right[sub]
        if coords == "periodic":  # atoms laid out once per crystal, not repeated per pair
            crd = periodic_loss_of_pairs(P_frac, F_n, labels.num_atoms, sub, A_inv_f)
        else:
            atom, pair_of_atom = repeat_atoms(labels.num_atoms, sub)  # pair p repeats crystal sub[p]
            T_frac = (F_n[atom][:, None, :] @ A_inv_f[pair_of_atom]).squeeze(1)
            species_p = None if species is None else species[atom]
            species_t = None if labels.species is None else labels.species[atom]
            crd = coordinate_term(coords, P_frac[atom], T_frac, pair_of_atom, T_lat[pairs], species_p, species_t,
                                  blur)
        total = torch.full((P,), math.inf, dtype=lat.dtype, device=device)
        total[pairs] = lattice_weight * lat[pairs] + coord_weight * crd
        if penalty is not None and not lattice_weight:
            total[pairs] = total[pairs] + penalty[pairs].to(total.dtype)
        best = torch.full((B,), math.inf, dtype=total.dtype, device=device).scatter_reduce(0, owner, total, "amin")
        # First pair attaining the minimum (the automorphisms are listed in a fixed order per crystal).
        candidate = torch.where(total <= best[owner], torch.arange(P, device=device), P)
        chosen = torch.full((B,), P, dtype=torch.int64, device=device).scatter_reduce(0, owner, candidate, "amin")
    return A[chosen]


def form_penalty(weight: torch.Tensor, lattice: torch.Tensor, lattice_weight: float, coord_weight: float,
                 coords: str) -> torch.Tensor:
    """``(...)`` what choosing a reduced form of weight ``weight (...)`` (in (0, 1],
    :meth:`~soft_niggli.canonical.ReducedForms.weights`) adds to a loss that takes the nearest form:
    ``(1 / w - 1)`` times the loss's own scale, ``lattice_weight · ‖R‖² / 9`` (the lattice term of
    predicting a zero cell against the form ``R``, ``lattice (..., 3, 3)``, shapes broadcast) plus ``coord_weight / 4`` (the
    periodic term's largest value; with Sinkhorn, the same quarter of ``‖R‖² / 9``).

    0 for a form that meets the Niggli conditions (``w = 1``) and growing without bound as the form
    fades out at the tolerance's edge (``w → 0``): the minimum over forms then moves continuously where a
    form enters or leaves the set, instead of jumping to or from it.
    """
    weight, lattice = as_float_tensor(weight, "weight"), as_lattice(lattice, "lattice")
    size = lattice.detach().double().square().sum(dim=(-1, -2)) / 9
    scale = lattice_weight * size + coord_weight * (0.25 if coords == "periodic" else 0.25 * size)
    return (1 / weight.double() - 1) * scale
