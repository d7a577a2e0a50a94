"""The offset of the softmin losses' ``zero_at_match``: what a perfect prediction would score, subtracted
so that it scores 0 whatever the label's symmetry (:func:`match_offset`).

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..crystal import CrystalBatch, repeat_atoms
from ..lattice import integer_inverse
from ._label_forms import Rows
from ._packed import group_keys, group_max, group_min, group_slots, packed_soft_minimum
from .sinkhorn import MAX_ANCHOR_PAIRS
from .terms import lattice_term

if TYPE_CHECKING:  # annotations only: the machinery imports this module
    from ._candidate_softmin import CandidateSoftmin, Pairs

#: The offset's choice of candidate (:func:`match_offset`) is a softmax at this fraction of
#: τ: sharp enough that a perfect prediction scores 0 (another candidate at a distance d weighs
#: exp(-1000 d / τ)), continuous where two candidates are equally near.
_SELECTION_SHARPNESS = 1e-3


#: The offset is whole while the prediction's nearest candidate is within this many τ of it, and fades out
#: (a cosine) by twice that: there the loss is at least 50 τ, against an offset of at most τ log(ties).
_NEAR = 50.0


def match_offset(loss: CandidateSoftmin, d: torch.Tensor, pairs: Pairs, crystal: torch.Tensor, T_lat, log_w, frames,
                 rows: Rows, labels: CrystalBatch, lattice_weight: float) -> torch.Tensor:
    """``(B,)`` float64, detached: what a perfect prediction would score, subtracted so that it scores 0
    (``loss`` the :class:`~soft_niggli.losses._candidate_softmin.CandidateSoftmin` whose options apply).

    The softmin of a symmetric label is about ``-τ log n`` at a perfect prediction (``n`` tied
    candidates; -0.07 for two duplicates of one carbon crystal), and the exact value depends on which
    candidate the prediction matches. So the candidates ``Y`` are weighed by how near the prediction
    each is, ``π_Y ∝ w_Y exp(-d(P, Y) / τ')`` (``d`` the candidates' distances ``(Q,)``, float64, their
    weights not included; ``w_Y`` the weight; ``τ' = 1e-3 τ``: in effect the nearest candidate, yet
    continuous), ``O_Y`` is the softmin of ``Y`` itself over the prediction's candidates, with their
    weights, and the offset is ``min(Σ_Y π_Y O_Y, 0)``, times a fade: 1 while the nearest candidate is
    within 50 τ, a cosine down to 0 at 100 τ (there the loss is at least that, against an offset of a
    few τ at most, and a prediction of all zeros would tie with hundreds of candidates). At a perfect
    prediction (the label in any of its fully weighted reduced forms, or re-based by a candidate) the
    offset is exactly the loss's own value there (same candidates, same weights, same distances), up
    to ``exp(-d/τ')`` of the candidates at a distance ``d``; elsewhere it moves continuously with the
    prediction. ``O_Y <= -τ log w_Y`` (``Y`` is among its own candidates), so the cap at 0 only acts for
    candidates of a faded form, whose perfect prediction then scores a little above 0."""
    with torch.no_grad():
        B, dtype, n_frames = frames[0][0].shape[0], T_lat.dtype, len(frames)
        # Far from every candidate the offset fades out (the docstring says why).
        near = group_min(d, crystal, B)
        fade = 0.5 * (1 + torch.cos(math.pi * ((near - _NEAR * loss.tau) / (_NEAR * loss.tau)).clamp(0, 1)))
        logit = log_w - d / (loss.tau * _SELECTION_SHARPNESS)
        top = group_max(logit, crystal, B)
        chosen = ((logit >= top[crystal] - 30) & torch.isfinite(logit) & (fade[crystal] > 0)).nonzero().flatten()
        J = chosen.shape[0]
        if not J:
            return torch.zeros(B, dtype=torch.float64, device=d.device)
        owner = crystal[chosen]
        pi = torch.exp(logit[chosen] - top[owner])
        pi = pi / torch.zeros(B, dtype=pi.dtype, device=pi.device).index_add(0, owner, pi)[owner]
        # The chosen candidates as predictions, in the prediction's own basis: Y = N_f⁻¹ M R (frame f).
        M = pairs.M[chosen]
        if n_frames == 2:
            N = frames[1][2][owner]
            M = torch.where((pairs.frame[chosen] == 1)[:, None, None], integer_inverse(N) @ M, M)
        # One crystal reached as several candidates (from several classes or frames, or automorphic
        # candidates of a symmetric label that the distance cannot tell apart) is one prediction: its
        # shares add up, its offset is computed once. Compared on a grid (same_crystals), atoms relative
        # to the first: a pair that falls on two sides of a grid line is only computed twice.
        Y = M.to(dtype) @ rows.lattice[pairs.row[chosen]]
        slot, j_of_atom = group_slots(rows.num_atoms[pairs.row[chosen]])
        atom = rows.first[pairs.row[chosen]][j_of_atom] + slot
        F_Y = (rows.frac[atom][:, None, :] @ integer_inverse(M).to(dtype)[j_of_atom]).squeeze(1)
        unique, pi = same_crystals(owner, Y, F_Y, slot, j_of_atom, pi, loss.lattice_metric,
                                    None if rows.species is None else rows.species[atom], loss.coords == "sinkhorn")
        keep_atom = torch.isin(j_of_atom, unique)
        relabel = torch.full((J,), -1, dtype=torch.int64, device=d.device)
        relabel[unique] = torch.arange(unique.shape[0], device=d.device)
        chosen, owner, M, Y, J = chosen[unique], owner[unique], M[unique], Y[unique], unique.shape[0]
        F_Y, slot, atom, j_of_atom = F_Y[keep_atom], slot[keep_atom], atom[keep_atom], relabel[j_of_atom[keep_atom]]
        if n_frames == 2:
            N = N[unique]
        lattices, fracs = [Y], [F_Y]
        if n_frames == 2:
            lattices.append(N.to(dtype) @ Y)
            fracs.append((F_Y[:, None, :] @ integer_inverse(N).to(dtype)[j_of_atom]).squeeze(1))
        L_obj, F_obj = torch.stack(lattices), torch.cat(fracs)
        num = rows.num_atoms[pairs.row[chosen]]
        obj_first = torch.cat([torch.cumsum(num, 0) - num + i * F_Y.shape[0] for i in range(n_frames)])
        obj_species = None if rows.species is None else rows.species[atom].repeat(n_frames)
        # Every candidate of the chosen one's crystal, against it.
        order = torch.sort(crystal, stable=True).indices
        idx, j_of = repeat_atoms(torch.bincount(crystal, minlength=B), owner)
        q = order[idx]
        lat = lattice_term(L_obj[pairs.frame[q], j_of], T_lat[q], loss.lattice_metric)
        d_lat = lattice_weight * lat.double()
        kept = loss._kept(d_lat, log_w[q], j_of, J, dtype)
        crd = loss._coordinates(F_obj, obj_first, obj_species, pairs.frame[q] * J + j_of, rows, pairs.row[q],
                                pairs.M[q], T_lat[q], kept)
        d_o = torch.where(kept, d_lat + loss.coord_weight * crd.double() - loss.tau * log_w[q],
                          torch.full_like(d_lat, math.inf))
        values = packed_soft_minimum(d_o, j_of, J, loss.tau)
        offset = torch.zeros(B, dtype=torch.float64, device=d.device).index_add(0, owner, pi * values)
        return offset.clamp(max=0) * fade


def same_crystals(owner, Y, F_Y, slot, j_of_atom, pi, metric: str, species=None, unordered: bool = False):
    """``(unique (U,), π (U,))``: one of each group of the candidates ``Y (J, 3, 3)`` (atoms ``F_Y``, atom
    ``slot`` of candidate ``j_of_atom``) of one crystal (``owner``) that describe the same crystal (the
    same metric with ``metric="gram"``, else the same lattice; the same atoms up to a translation, on a grid
    of 1e-9 of the cell's size, 1000 ulps in lower precision; with ``unordered`` (Sinkhorn coordinates,
    which ignore atom order) the same atoms as a set of (species, position)), and the summed shares
    ``π`` of each group."""
    J = owner.shape[0]
    if J < 2:
        return torch.arange(J, device=owner.device), pi
    grid = max(1e-9, 1000 * torch.finfo(Y.dtype).eps)  # above the rounding of Y = M R in the dtype
    cells = (Y @ Y.transpose(1, 2) if metric == "gram" else Y).double()
    scale = cells.abs().flatten(1).amax(1).clamp_min(torch.finfo(cells.dtype).tiny)
    lattice_key = torch.round(cells.flatten(1) / (scale[:, None] * grid)).to(torch.int64)
    n_max = int(slot.max()) + 1
    if unordered:
        atoms_key = _unordered_atoms_key(F_Y, species, j_of_atom, J, n_max, grid).to(owner.device)
    else:
        first = torch.cumsum(torch.bincount(j_of_atom, minlength=J), 0) - torch.bincount(j_of_atom, minlength=J)
        rel = (F_Y - F_Y[first][j_of_atom]).double()
        rel = torch.round((rel - torch.floor(rel)) / grid).remainder(round(1 / grid)).to(torch.int64)
        atoms_key = torch.zeros(J, n_max, 3, dtype=torch.int64, device=owner.device).index_put((j_of_atom, slot), rel)
    group = group_keys(torch.cat([owner[:, None], lattice_key, atoms_key.flatten(1)], 1))
    unique = torch.full((int(group.max()) + 1,), J, dtype=torch.int64, device=owner.device).scatter_reduce(
        0, group, torch.arange(J, device=owner.device), "amin")
    unique = torch.sort(unique).values
    pi = torch.zeros(J, dtype=pi.dtype, device=pi.device).index_add(0, group, pi)
    return unique, pi[group[unique]]


def _unordered_atoms_key(F_Y, species, j_of_atom, J: int, n_max: int, grid: float) -> torch.Tensor:
    """``(J, 4 n_max)`` int64: each candidate's atoms as a set, the same for any order of the atoms and any
    translation: positions on the grid, taken relative to each atom of the rarest species in turn (the
    anchors of the Sinkhorn term; as given where it has more anchor pairs than the term tries), rows
    ``(species, position)`` sorted, the smallest of those lists."""
    period = round(1 / grid)
    F = F_Y.detach().double().cpu().numpy()
    cells = np.round((F - np.floor(F)) / grid).astype(np.int64) % period
    kinds = np.zeros(len(F), dtype=np.int64) if species is None else species.cpu().numpy().astype(np.int64)
    owner = j_of_atom.cpu().numpy()
    out = np.zeros((J, 4 * n_max), dtype=np.int64)
    for j in range(J):
        g, z = cells[owner == j], kinds[owner == j]
        values, counts = np.unique(z, return_counts=True)
        rare = values[np.lexsort((values, counts))[0]]  # fewest atoms, then the smallest species
        anchors = np.nonzero(z == rare)[0]
        if len(anchors) ** 2 > MAX_ANCHOR_PAIRS:  # the Sinkhorn term compares such crystals as given
            anchors = [None]
        best = None
        for a in anchors:
            rows = np.column_stack([z, g if a is None else (g - g[a]) % period])
            rows = rows[np.lexsort(rows.T[::-1])].ravel()
            if best is None or tuple(rows) < tuple(best):
                best = rows
        out[j, :len(best)] = best
    return torch.from_numpy(out)
