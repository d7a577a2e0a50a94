"""Continuous losses over GL(3,Z): ``"softmin"`` and ``"gram"``, built by name like every loss.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))``.

Both losses compare the prediction with the label re-based by every candidate ``M`` of a bounded set
``U`` (entries in ``[-bound, bound]``, det ±1; 6960 matrices for bound 1), centred on the label's Niggli
basis, and combine the candidates with a softmin

    loss = -τ log Σ_{M ∈ U'} exp(-d_M / τ),   d_M = w_lat · d_lat(M) + w_coord · d_coord(M),

which is smooth in the prediction and tends to ``min_M d_M`` as τ → 0. No reducer sits in the gradient
path: the prediction's own basis enters only through the distances. Cost is kept down four ways:
the candidates nearest on the lattice term, ``U'``, are found without scoring all of ``U``
(:func:`~soft_niggli.losses.candidates.window_candidates`, a branch and bound over the short vectors
that make a candidate's rows, compiled on CPU); only those get an exact lattice term, and only those
within reach of the best a coordinate term (the periodic term of all of them in one compiled loop,
:func:`~soft_niggli.losses.periodic.periodic_loss_of_pairs`); the prediction and the offset of
``zero_at_match`` go through one pass; and the candidate tables are cached per dtype and device.

Symmetric labels (the common case in real data) need three rules, so that nothing depends on the basis
the label came in and nothing jumps when a tiny change breaks a symmetry:

* **No hard top-k: a tapered window.** With ``t_k`` the ``top_k``-th smallest lattice term, ``U'``
  holds every candidate up to ``t_k + w`` (``w``: 1% of ``t_k`` plus 1e-6 of the cells' mean squared
  entry, at most τ of the distance), and those beyond ``t_k`` are weighed down smoothly, by
  ``(1 + cos πx) / 2`` with ``x = (d_lat - t_k) / w``, to 0 at the edge (the weight is held fixed in
  backward). With ``lattice_metric="gram"`` all automorphisms of a symmetric label tie exactly (48 for
  a cube): a hard top-k would keep an arbitrary subset of them, chosen by the order in which the
  label's basis lists them, and jump when a tiny strain breaks the tie; tied candidates get equal
  weight here, and ``t_k`` moves continuously. Candidates whose lattice term alone exceeds the best
  candidate's whole distance by 40 τ in float64 (weight below 4e-18 of it), 20 τ in lower precision
  (2e-9, below float32's rounding of the distances), get no coordinate term and are left out.
* **The label is centred on its automorphic basis nearest the prediction.** The reducer returns the
  label's Niggli basis only up to an automorphism ``A`` of the cell, and ``U`` is not closed under
  them (``U A ≠ U`` for the non-permutation automorphisms of hexagonal or fcc cells): so the loss
  re-bases the reduced label by the automorphism whose target is closest to the prediction
  (:func:`~soft_niggli.losses.terms.closest_automorphism`, as the proxy loss does), a choice that depends on
  the label's lattice and atoms, not on its input basis.
* **A perfect prediction scores 0** (``zero_at_match=True``, the default). The softmin of a symmetric
  label is about ``-τ log n`` at a perfect prediction, ``n`` the number of its symmetries that tie
  (e.g. −0.07 for two duplicates of one carbon crystal). The loss therefore subtracts the same softmin
  of the label against itself, over the candidates kept for the prediction plus the label's
  automorphisms tied with the identity (detached): exactly 0 for the label in its Niggli basis (any
  translation, and any rotation with the metric), close to 0 in another basis within ``U`` (up to
  ``τ·exp(-d/τ)`` terms of candidates the two bases keep differently), and never rewarding a skewed
  basis, since far from a match the label's own automorphisms dominate the subtracted value. Values a
  little below 0 remain possible near a match. ``zero_at_match=False`` gives the plain softmin.

Centre (``center``): ``"label"`` (default) compares the prediction as emitted with ``M L_n``, so the
bounded set covers predictions emitted in a near-reduced basis and the loss pulls others towards one;
it has no reducer of the prediction anywhere. ``"both"`` also compares the prediction's own Niggli form
``N_p L_p`` (``N_p`` from the guarded reducer, detached) with ``M L_n`` and takes the softmin over both
sets, so a bounded set suffices however skewed the emitted basis is and nothing rewards drifting into
skewed bases (design notes, Carbon-24 pitfall). A candidate lattice reached from both frames
(``M₁ = N_p⁻¹ M₂``) counts once, measured in the reduced frame. The price: where the prediction crosses
a Niggli-cone boundary ``N_p`` jumps and the second set's distances with it, a jump proportional to
the residual error (zero at a perfect match).

Half precision and extreme values are handled as for every loss (:mod:`soft_niggli.losses.base`); the
softmin itself is evaluated in float64 and shifted by its minimum, so it is finite for any τ > 0.
"""

from __future__ import annotations

import math

import torch

from ..canonical import canonicalize_labels, reduce_or_identity
from ..crystal import CrystalBatch, atom_slots, repeat_atoms
from ..lattice import integer_inverse
from ..unimodular import LatticeAutomorphisms, lattice_automorphisms
from .base import (CrystalLoss, LossResult, choice_option, flag_option, fraction_option, int_option, positive_option,
                   register_loss, weight_option)
from .candidates import WindowMargin, candidate_set, window_candidates
from .invariants import theta_term, volume_term
from .periodic import periodic_loss_of_pairs
from .terms import closest_automorphism, coordinate_term, lattice_term, tie_tolerance

__all__ = ["SoftminLoss", "GramLoss", "CENTERS"]

CENTERS = ("label", "both")


class _CandidateSoftmin(CrystalLoss):
    """Shared machinery: label frame, tapered candidate window, distances, offset, softmin."""

    def _common_options(self, *, tau, bound, proper, normalize, lattice_metric, lattice_weight, coord_weight, coords,
                        blur, center, top_k, labels_canonical, zero_at_match, automorphism_rel_tol):
        self.set_term_options(lattice_weight=lattice_weight, coord_weight=coord_weight,
                              lattice_metric=lattice_metric, coords=coords, blur=blur)
        self.tau = positive_option("tau", tau)
        self.bound = int_option("bound", bound, 1, 2)
        self.proper = flag_option("proper", proper)
        self.normalize = flag_option("normalize", normalize)
        self.zero_at_match = flag_option("zero_at_match", zero_at_match)
        self.center = choice_option("center", center, CENTERS)
        # A Sinkhorn problem costs far more than a periodic MSE: give fewer candidates a coordinate term.
        self.top_k = (2 if coords == "sinkhorn" else 8) if top_k is None else int_option("top_k", top_k, 1, 135408)
        self.labels_canonical = flag_option("labels_canonical", labels_canonical)
        self.automorphism_rel_tol = fraction_option("automorphism_rel_tol", automorphism_rel_tol)

    # -- frames ------------------------------------------------------------------------------------

    def _label_frame(self, L: torch.Tensor, F: torch.Tensor, labels: CrystalBatch, species, lattice_weight: float):
        """The reduced label re-based by its automorphism closest to the prediction.

        The candidate set ``U`` is not closed under the label's automorphisms (``U A ≠ U`` when ``A`` is
        not a signed permutation, e.g. hexagonal or fcc cells), so the basis the reducer happened to
        return would decide which candidates exist. Centring on the automorphic basis nearest the
        prediction (:func:`~soft_niggli.losses.terms.closest_automorphism`) makes the candidate set a
        function of the label's lattice, not of the basis it came in.
        """
        B = len(labels)
        group = lattice_automorphisms(labels.lattice.detach(), self.automorphism_rel_tol)
        owner, matrices = group.owner, group.matrices
        keep = torch.ones_like(owner, dtype=torch.bool)
        if self.lattice_metric == "gram":
            # Automorphisms that differ by a signed permutation S give the same candidate set (U S = U)
            # and, compared by the metric, the same distances (S permutes and flips axes): only crystals
            # with other automorphisms (hexagonal, rhombohedral, fcc, ...) have a choice to make. With
            # Cartesian entries the copies differ by a rotation, and the lattice term alone decides.
            signed_permutation = ((matrices != 0).sum(-1) == 1).all(-1)
            choosing = torch.bincount(owner[~signed_permutation], minlength=B) > 0
            first = torch.ones_like(owner, dtype=torch.bool)
            first[1:] = owner[1:] != owner[:-1]  # each crystal's identity
            keep = choosing[owner] | first
        C = closest_automorphism(
            L.detach(), F.detach(), labels, None, None, lattice_metric=self.lattice_metric, coords=self.coords,
            lattice_weight=lattice_weight, coord_weight=self.coord_weight, blur=self.blur,
            rel_tol=self.automorphism_rel_tol, species=species,
            group=LatticeAutomorphisms(owner=owner[keep], matrices=matrices[keep]),
            lattice_first=self.lattice_metric == "cartesian")
        return labels.apply_basis_change(C)

    def _frames(self, L: torch.Tensor, F: torch.Tensor, batch: torch.Tensor, scorable: torch.Tensor):
        """Prediction frames to compare: ``[(L, F)]``, plus its Niggli form for ``center="both"``."""
        B = L.shape[0]
        status = torch.zeros(B, dtype=torch.int64, device=L.device)
        frames = [(L, F, None)]
        if self.center == "both":
            reduction = reduce_or_identity(L.detach(), scorable)
            N, status = reduction.transform, reduction.status
            N_inv = integer_inverse(N).to(L.dtype)
            frames.append((N.to(L.dtype) @ L, (F[:, None, :] @ N_inv[batch]).squeeze(1), N))
        return frames, status

    # -- candidates --------------------------------------------------------------------------------

    def _taper_width(self, lattice_weight: float, kth: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Width ``(B,)``, in lattice-term units, of the taper beyond the k-th candidate's term ``t_k``:
        1% of ``t_k`` plus 1e-6 (float64; 256 ulps in float32) of the cells' mean squared entry
        (``scale``: ‖L_p‖² + ‖L_ref‖²), at most τ of the distance. Wide enough that a tie broken by a small move stays inside it (ties split
        by far less than 1% of the terms), narrow enough not to keep the crowd of candidates that
        differ only by short vectors of a layered cell."""
        tau, floor = self._taper_parameters(lattice_weight, scale.dtype)
        return torch.clamp(0.01 * kth + floor * scale / 18, max=tau)

    def _taper_parameters(self, lattice_weight: float, dtype: torch.dtype) -> tuple[float, float]:
        """The taper's cap (τ in lattice-term units) and floor (relative to the cells' size)."""
        tau = self.tau / lattice_weight if lattice_weight > 0 else self.tau
        return tau, max(1e-6, 256 * torch.finfo(dtype).eps)  # the floor: above the exact terms' rounding

    def _select(self, L_cmp: torch.Tensor, L_ref: torch.Tensor, lattice_weight: float):
        """Candidates to score exactly, packed ``(owner, X)`` (:func:`~soft_niggli.losses.candidates.window_candidates`).

        Per crystal, ``t_k`` is the k-th smallest lattice term (``k = top_k``); every candidate up to
        ``t_k + width`` is kept (:meth:`_taper_width`), and :meth:`_softmin` weighs those beyond ``t_k``
        down smoothly to 0 at ``t_k + width``. A hard top-k would keep an arbitrary subset of tied
        candidates (every automorphism of a symmetric label ties with ``lattice_metric="gram"``) and
        jump when a near-tie is broken by a tiny move; ``t_k`` is continuous in the cells and tied
        candidates get the same weight, so neither happens.
        """
        L_cmp = L_cmp.detach()
        scale = L_cmp.square().sum(dim=(1, 2)) + L_ref.square().sum(dim=(1, 2))
        # The taper's width (_taper_width), plus a few ulps: the selection's sums round differently
        # from the exact terms.
        tau, floor = self._taper_parameters(lattice_weight, scale.dtype)
        margin = WindowMargin(relative=0.01, absolute=floor * scale / 18, cap=tau, extra=tie_tolerance(scale / 9))
        return window_candidates(L_cmp, L_ref, self.top_k, margin, self.bound, self.proper, self.lattice_metric)

    def _distances(self, L_cmp, F_cmp, L_ref, F_ref, batch, species_cmp, species_ref, owner, X, lattice_weight):
        """Exact ``(lattice, coords, kept)`` terms ``(Q,)`` of packed pairs: crystal ``owner`` against its
        reference re-based by the integer matrix ``X (Q, 3, 3)``, ``(X L_ref, F_ref X⁻¹)``.

        ``kept`` is False for candidates left out of the softmin without a coordinate term (``coords``
        0 there): with periodic coordinates, one whose lattice term alone exceeds the best candidate's
        whole distance (at most its lattice term + ``coord_weight / 4``, the periodic term's maximum)
        by 40 τ carries a softmin weight below exp(-40) ≈ 4e-18 of the best (20 τ and 2e-9 when the
        terms are in float32 or below, whose rounding of the distances is larger than that).
        """
        dtype, device = L_cmp.dtype, L_cmp.device
        T_lat = X.to(dtype) @ L_ref[owner]
        lat = lattice_term(L_cmp[owner], T_lat, self.lattice_metric)
        kept = torch.ones_like(owner, dtype=torch.bool)
        if not self.coord_weight:
            return lat, torch.zeros_like(lat), kept
        if self.coords == "periodic":
            with torch.no_grad():
                d_lat = lattice_weight * lat.detach()
                low = torch.full((L_cmp.shape[0],), math.inf, dtype=d_lat.dtype, device=device).scatter_reduce(
                    0, owner, d_lat, "amin")
                reach = 40 if dtype == torch.float64 else 20
                kept = d_lat <= low[owner] + self.coord_weight / 4 + reach * self.tau
        crd = self._coordinates(F_cmp, F_ref, batch, species_cmp, species_ref, owner[kept], X[kept], T_lat[kept],
                                L_cmp.shape[0])
        return lat, torch.zeros_like(lat).masked_scatter(kept, crd), kept

    def _coordinates(self, F_cmp, F_ref, batch, species_cmp, species_ref, owner, X, T_lat, B):
        """``(Q,)`` coordinate term of the packed pairs (see :meth:`_distances`)."""
        counts = torch.bincount(batch, minlength=B)
        X_inv = integer_inverse(X).to(F_cmp.dtype)
        if self.coords == "periodic":  # atoms laid out once per crystal, not repeated per pair
            return periodic_loss_of_pairs(F_cmp, F_ref, counts, owner, X_inv)
        atom, pair_of_atom = repeat_atoms(counts, owner)  # pair q: crystal owner[q]
        T_frac = (F_ref[atom][:, None, :] @ X_inv[pair_of_atom]).squeeze(1)
        return coordinate_term(self.coords, F_cmp[atom], T_frac, pair_of_atom, T_lat,
                               None if species_cmp is None else species_cmp[atom],
                               None if species_ref is None else species_ref[atom], self.blur)

    def _candidates(self, frames, L_ref, lattice_weight):
        """Per frame, packed ``(owner, X)``: the kept candidates as matrices acting on ``L_ref``.

        Frame 2 (``center="both"``) compares ``N L_p`` with ``M L_ref``, i.e. ``L_p`` with
        ``N⁻¹ M L_ref``: its pairs are stored in frame 1's terms, ``X = N⁻¹ M``, and a candidate lattice
        reached from both frames counts once (measured in the reduced frame): otherwise a prediction
        emitted already reduced would count every candidate twice.
        """
        owner, X = self._select(torch.cat([f[0] for f in frames]), L_ref.repeat(len(frames), 1, 1), lattice_weight)
        n = L_ref.shape[0]
        picked = [(owner[owner // n == i] - i * n, X[owner // n == i]) for i in range(len(frames))]
        if len(frames) == 2:
            (o1, X1), (o2, M2) = picked
            X2 = integer_inverse(frames[1][2])[o2] @ M2
            single = ~_rows_in(o1, X1, o2, X2)
            picked = [(o1[single], X1[single]), (o2, X2)]
        return picked

    def _softmin(self, pred: CrystalBatch, L, F, scorable, centred: CrystalBatch, lattice_weight):
        """``(value, lattice, coords, status)``, each ``(B,)``: the softmin over every frame's kept
        candidates, minus the offset of ``zero_at_match``, and the softmin-weighted parts.

        The offset is the same softmin for a perfect prediction, the centred label against itself: it
        is computed in the same pass as the prediction's (a doubled batch: crystals ``B..2B-1`` are the
        label, detached, so no gradient reaches it).
        """
        B = L.shape[0]
        L_ref, F_ref = centred.lattice.detach(), centred.frac.detach()
        copies = 2 if self.zero_at_match else 1
        L_q, F_q = (torch.cat([L, L_ref]), torch.cat([F, F_ref])) if copies == 2 else (L, F)
        batch_q = torch.cat([pred.batch + i * B for i in range(copies)])
        # Species where the prediction has them (periodic coordinates ignore them; Sinkhorn needs both).
        species_q = species_r = None
        if pred.species is not None and centred.species is not None:
            species_q = torch.cat([pred.species, centred.species][:copies])
            species_r = centred.species.repeat(copies)
        L_r, F_r = L_ref.repeat(copies, 1, 1), F_ref.repeat(copies, 1)
        frames, status = self._frames(L_q, F_q, batch_q, scorable.repeat(copies))
        picked = self._candidates(frames, L_r, lattice_weight)
        k = min(self.top_k, len(candidate_set(self.bound, self.proper, torch.int64, L.device)))
        owners, lats, crds, keeps, kths, widths = [], [], [], [], [], []
        for (L_cmp, F_cmp, N), (owner, X) in zip(frames, picked):
            # Frame 2 scores (N L_p, M L_ref) with M = N X.
            M = X if N is None else N[owner] @ X
            lat, crd, kept = self._distances(L_cmp, F_cmp, L_r, F_r, batch_q, species_q, species_r, owner, M,
                                             lattice_weight)
            # The taper's threshold from the exact terms, per frame: the sums that chose the window
            # round differently in every basis (more than the exact terms do).
            kth = _kth_smallest(lat.detach(), owner, copies * B, k)[owner]
            scale = (L_cmp.detach().square().sum(dim=(1, 2)) + L_r.square().sum(dim=(1, 2)))[owner]
            owners.append(owner)
            lats.append(lat)
            crds.append(crd)
            keeps.append(kept)
            kths.append(kth)
            widths.append(self._taper_width(lattice_weight, kth, scale))
        owner, lat, crd = torch.cat(owners), torch.cat(lats), torch.cat(crds)
        kept, kth, width = torch.cat(keeps), torch.cat(kths), torch.cat(widths)
        # The softmin and its offset are each about -τ log(number of tied candidates) while their
        # difference is near 0: combine them in float64 so single precision does not cancel it.
        d = (lattice_weight * lat + self.coord_weight * crd).double()
        # Taper beyond the k-th candidate: weight (1 + cos πx) / 2, x = (lat - t_k) / w in [0, 1]
        # (held fixed in backward), i.e. the distance grows by -τ log of it, to +inf at x = 1.
        x = ((lat.detach().double() - kth.double()) / width.double()).clamp(0, 1)
        taper = 0.5 * (1 + torch.cos(math.pi * x))
        kept = kept & (taper > 0)
        d = torch.where(kept, d - self.tau * torch.log(taper.clamp_min(1e-300)), torch.full_like(d, math.inf))
        values = packed_softmin(d, owner, copies * B, self.tau, self.normalize)
        # The prediction's candidates' shares of its softmin (their softmax weights), for the reported parts.
        mine = owner < B
        owner, d, lat, crd = owner[mine], d[mine], lat[mine], crd[mine]
        weight = torch.exp(-(d - values[owner]) / self.tau)
        if self.normalize:
            weight = weight / torch.bincount(owner, minlength=B).clamp_min(1).to(d.dtype)[owner]
        parts = [torch.zeros(B, dtype=lat.dtype, device=d.device).index_add(0, owner, weight.to(lat.dtype) * term)
                 for term in (lat, crd)]
        value = values[:B] - values[B:] if copies == 2 else values
        return value.to(lat.dtype), parts[0], parts[1], status[:B]

    def _softmin_terms(self, pred: CrystalBatch, L, F, scorable, labels: CrystalBatch, lattice_weight):
        centred = self._label_frame(L, F, labels, pred.species, lattice_weight)
        return self._softmin(pred, L, F, scorable, centred, lattice_weight)


def _kth_smallest(values: torch.Tensor, owner: torch.Tensor, B: int, k: int) -> torch.Tensor:
    """``(B,)`` the k-th smallest of packed ``values`` per ``owner`` (the largest where a group has fewer)."""
    order = torch.sort(values).indices
    order = order[torch.sort(owner[order], stable=True).indices]
    grouped = owner[order]
    counts = torch.bincount(owner, minlength=B)
    position = atom_slots(counts, grouped)  # rank within the group
    pick = position == torch.minimum(counts[grouped], torch.full_like(grouped, k)) - 1
    out = torch.zeros(B, dtype=values.dtype, device=values.device)
    return out.index_put((grouped[pick],), values[order][pick])


def _rows_in(owner1, X1, owner2, X2) -> torch.Tensor:
    """``(Q1,)`` bool: pair ``(owner1, X1)`` (integer matrices) also occurs among the pairs ``(owner2, X2)``.

    Each pair becomes one int64 key, the matrix's entries as digits in base ``2m + 1`` with ``m`` the
    largest entry of ``X1`` (pairs of ``X2`` with a larger entry cannot match), so one sorted
    membership test does it; where the keys would not fit in int64, rows are compared whole."""
    if not len(owner1) or not len(owner2):
        return torch.zeros(len(owner1), dtype=torch.bool, device=owner1.device)
    m = int(X1.abs().max())
    base, crystals = 2 * m + 1, int(torch.maximum(owner1.max(), owner2.max())) + 1
    if crystals * base ** 9 < 2 ** 62:
        inside = (X2.abs() <= m).flatten(1).all(1)
        weights = base ** torch.arange(9, device=X1.device, dtype=torch.int64)

        def keys(owner, X):
            return owner * base ** 9 + ((X.flatten(1) + m) * weights).sum(1)
        return torch.isin(keys(owner1, X1), keys(owner2[inside], X2[inside]))
    a = torch.cat([owner1[:, None], X1.flatten(1)], 1)
    b = torch.cat([owner2[:, None], X2.flatten(1)], 1)
    _, inverse = torch.unique(torch.cat([b, a]), dim=0, return_inverse=True)
    return torch.isin(inverse[len(b):], inverse[:len(b)])


def packed_softmin(d: torch.Tensor, owner: torch.Tensor, B: int, tau: float, normalize: bool = False) -> torch.Tensor:
    """``(B,)`` softmin ``-τ log Σ exp(-d/τ)`` of packed values ``d (Q,)`` grouped by ``owner (Q,)``.

    Shifted by each group's minimum before exponentiating, so it is finite for any finite ``d`` and
    any τ > 0 (``-d/τ`` alone overflows for a tiny τ); groups with no entry score 0.
    """
    low = torch.full((B,), math.inf, dtype=d.dtype, device=d.device).scatter_reduce(0, owner, d.detach(), "amin")
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
    total = torch.zeros(B, dtype=d.dtype, device=d.device).index_add(0, owner, torch.exp(-(d - low[owner]) / tau))
    count = torch.bincount(owner, minlength=B)
    value = low - tau * torch.log(total.clamp_min(torch.finfo(d.dtype).tiny))
    if normalize:
        value = value + tau * torch.log(count.clamp_min(1).to(d.dtype))
    return torch.where(count > 0, value, torch.zeros_like(value))


@register_loss("softmin")
class SoftminLoss(_CandidateSoftmin):
    """Softmin over a bounded set of unimodular re-basings of the label (see the module docstring).

    ``d_M = lattice_weight · d_lat + coord_weight · d_coord`` over the tapered window of candidates
    nearest on ``d_lat`` (module docstring), with ``d_lat`` the mean squared entry
    difference of ``L_p`` and ``M L_n`` (``lattice_metric="cartesian"``, Å²) or of the metrics
    ``L_p L_pᵀ`` and ``M G_n Mᵀ`` scaled like :func:`~soft_niggli.losses.terms.lattice_term` (``"gram"``:
    rotations of prediction and label do not matter), and ``d_coord`` the periodic MSE of
    :func:`~soft_niggli.losses.periodic.periodic_coordinate_loss` (``coords="periodic"``, atoms matched by
    order, translations removed) or the Sinkhorn divergence of
    :func:`~soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss` (``coords="sinkhorn"``, atom order free).

    Invariances (tested on symmetric and real crystals, ``tests/test_symmetric_invariance.py``): to the
    label's basis, exactly (the label is reduced, then centred on its automorphic basis nearest the
    prediction, and ties are kept); to translations and wraps of either structure; to rotations of
    the label with ``lattice_metric="gram"``; to atom order with ``coords="sinkhorn"`` (up to its
    translation rule, :mod:`soft_niggli.losses.sinkhorn`). As τ → 0 the value tends to the minimum over the
    candidates kept.

    ``zero_at_match=True`` (default) subtracts the label's own softmin, so a perfect prediction scores 0
    whatever the label's symmetry (module docstring). ``normalize=True`` adds ``τ log |U'|`` (the
    log-mean-exp form) to both, which cancels where the two keep the same number of candidates; with
    ``zero_at_match=False`` it makes the value never negative. ``terms`` reports the softmin-weighted
    lattice and coordinate parts; ``status`` is the reducer's status of the prediction for
    ``center="both"`` (zeros otherwise).

    Args (keyword-only, checked at construction):
        tau: finite temperature > 0, in the units of ``d`` (Å²). bound: 1 or 2. proper: det +1 only.
        normalize, zero_at_match: see above. lattice_metric: ``"cartesian"`` or ``"gram"``.
        lattice_weight, coord_weight: weights >= 0. coords: ``"periodic"`` or ``"sinkhorn"``.
        center: ``"label"`` or ``"both"``. top_k: candidates kept at full weight before the taper
            (1..135408; default 8 with periodic coordinates, 2 with Sinkhorn).
        labels_canonical: targets already Niggli-reduced (:func:`canonicalize_labels`).
        blur: Sinkhorn blur in Å, in (0, 10) (``coords="sinkhorn"`` only).
        automorphism_rel_tol: relative tolerance of the label's automorphisms, in (0, 0.1).
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 lattice_metric: str = "cartesian", lattice_weight: float = 1.0, coord_weight: float = 1.0,
                 coords: str = "periodic", center: str = "label", top_k: int | None = None, labels_canonical: bool = False,
                 blur: float = 0.1, zero_at_match: bool = True, automorphism_rel_tol: float = 1e-4):
        super().__init__()
        self._common_options(tau=tau, bound=bound, proper=proper, normalize=normalize, lattice_metric=lattice_metric,
                             lattice_weight=lattice_weight, coord_weight=coord_weight, coords=coords, blur=blur,
                             center=center, top_k=top_k, labels_canonical=labels_canonical,
                             zero_at_match=zero_at_match, automorphism_rel_tol=automorphism_rel_tol)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        labels = target if self.labels_canonical else canonicalize_labels(target).batch
        value, lat, crd, status = self._softmin_terms(pred, L, F, included, labels, self.lattice_weight)
        terms = {"softmin": value, "lattice": lat, "coords": crd}
        return self.assemble(terms, {"softmin": 1.0}, included, status)


@register_loss("gram")
class GramLoss(_CandidateSoftmin):
    """Losses on the metric ``G = L Lᵀ``: no rotation alignment anywhere.

    ``per_crystal = softmin_M(lattice_weight · d_G(M) + coord_weight · d_coord(M)) + volume_weight ·
    volume + theta_weight · theta`` where

    * ``d_G(M)``: ``‖G_p - M G_n Mᵀ‖² / 9`` over the squared size (Å²), the metric of the prediction
      against the label's re-based metrics: invariant to rotating either structure; to the label's
      basis within the candidate set (as ``"softmin"``).
    * ``d_coord(M)``: the coordinate term in the candidate's basis (periodic MSE or Sinkhorn), which is
      what ties each candidate basis to the atoms; fractional coordinates ignore rotations.
    * ``volume``: :func:`~soft_niggli.losses.invariants.volume_term`, ``(V_p^{1/3} - V_t^{1/3})²`` (Å²): exactly
      invariant to every change of basis and rotation.
    * ``theta``: :func:`~soft_niggli.losses.invariants.theta_term`, squared difference of normalised lattice
      theta series at ``theta_scales`` (dimensionless): exactly invariant to every change of basis and
      rotation (up to a negligible truncation), a smooth fingerprint of the lattice's shape.

    ``terms``: ``"lattice"`` (softmin-weighted ``d_G``), ``"coords"``, ``"volume"``, ``"theta"`` and
    ``"softmin"``. Options as for ``"softmin"`` (``lattice_weight`` weighs ``d_G``), plus ``volume_weight``,
    ``theta_weight`` (each >= 0; a zero weight switches the term off) and ``theta_scales`` (finite
    floats > 0). A perfect prediction scores 0 (``zero_at_match``; volume and theta vanish there too).
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 lattice_weight: float = 1.0, coord_weight: float = 1.0, volume_weight: float = 1.0,
                 theta_weight: float = 1.0, theta_scales: tuple = (1.0, 2.0, 4.0), coords: str = "periodic",
                 center: str = "label", top_k: int | None = None, labels_canonical: bool = False, blur: float = 0.1,
                 zero_at_match: bool = True, automorphism_rel_tol: float = 1e-4):
        super().__init__()
        self._common_options(tau=tau, bound=bound, proper=proper, normalize=normalize, lattice_metric="gram",
                             lattice_weight=lattice_weight, coord_weight=coord_weight, coords=coords, blur=blur,
                             center=center, top_k=top_k, labels_canonical=labels_canonical,
                             zero_at_match=zero_at_match, automorphism_rel_tol=automorphism_rel_tol)
        self.volume_weight = weight_option("volume_weight", volume_weight)
        self.theta_weight = weight_option("theta_weight", theta_weight)
        ok = isinstance(theta_scales, (tuple, list)) and len(theta_scales) > 0 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in theta_scales)
        if not ok:
            raise ValueError(f"theta_scales: expected a non-empty tuple of finite floats > 0, got {theta_scales!r}")
        self.theta_scales = tuple(float(x) for x in theta_scales)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        labels = target if self.labels_canonical else canonicalize_labels(target).batch
        value, lat, crd, status = self._softmin_terms(pred, L, F, included, labels, self.lattice_weight)
        L_t = labels.lattice.detach()
        zero = torch.zeros_like(value)
        terms = {
            "softmin": value, "lattice": lat, "coords": crd,
            "volume": volume_term(L, L_t) if self.volume_weight else zero,
            "theta": theta_term(L, L_t, self.theta_scales) if self.theta_weight else zero,
        }
        weights = {"softmin": 1.0, "volume": self.volume_weight, "theta": self.theta_weight}
        return self.assemble(terms, weights, included, status)
