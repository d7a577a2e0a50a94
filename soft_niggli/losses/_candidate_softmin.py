"""The machinery the ``"softmin"`` and ``"gram"`` losses share (:class:`CandidateSoftmin`): the label's
weighted reduced forms, the tapered windows of candidates, their distances, the offset of
``zero_at_match``, the softmin. What it computes and why is in :mod:`soft_niggli.losses.softmin`.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..canonical import reduce_or_identity
from ..crystal import CrystalBatch, repeat_atoms
from ..lattice import integer_inverse
from ._label_forms import FrameCache, Rows, weighted_form_classes
from ._match_offset import match_offset
from ._packed import group_slots, kth_smallest, packed_soft_minimum
from .base import CrystalLoss
from .candidates import candidate_set
from .options import choice_option, flag_option, int_option, positive_option, rel_tol_option
from .periodic import periodic_loss_of_pairs
from .terms import coordinate_term, form_penalty, lattice_term, tie_tolerance
from .windows import WindowMargin, grouped_window_candidates

__all__ = ["CandidateSoftmin", "CENTERS"]

CENTERS = ("label", "both")


class Pairs(NamedTuple):
    """Packed candidates: in frame ``frame[q]``, the row ``row[q]``'s form re-based by ``M[q]``."""

    frame: torch.Tensor  # (Q,) int64
    row: torch.Tensor  # (Q,) int64
    M: torch.Tensor  # (Q, 3, 3) int64


class CandidateSoftmin(CrystalLoss):
    """Shared machinery: the label's weighted reduced forms, tapered candidate windows, distances, the
    offset of ``zero_at_match``, softmin."""

    def _common_options(self, *, tau, bound, proper, normalize, lattice_metric, lattice_weight, coord_weight, coords,
                        blur, center, top_k, labels_canonical, zero_at_match, automorphism_rel_tol, cache_bytes):
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
        self.automorphism_rel_tol = rel_tol_option(automorphism_rel_tol, "automorphism_rel_tol")
        self.cache_bytes = int_option("cache_bytes", cache_bytes, 0, 2**40)
        self._rows_cache = FrameCache(self.cache_bytes)

    # -- the label's frame -------------------------------------------------------------------------

    def _label_frame(self, lattice: torch.Tensor):
        """:func:`~soft_niggli.losses._label_forms.weighted_form_classes` of ``lattice (B, 3, 3)`` with this
        loss's ``automorphism_rel_tol`` and ``proper``, each class weighted by :meth:`_class_log_weight`."""
        return weighted_form_classes(lattice, self.automorphism_rel_tol, self.proper, self._class_log_weight)

    def _class_log_weight(self, weight: torch.Tensor, form: torch.Tensor) -> torch.Tensor:
        """``(C,)`` float64 log of the softmin's weight of a class of the label's reduced forms, of weight
        ``weight (C,)`` (:meth:`~soft_niggli.canonical.ReducedForms.weights`, in (0, 1]) with the form
        ``form (C, 3, 3)``: ``-p / τ``, ``p`` its :func:`~soft_niggli.losses.terms.form_penalty`,
        ``(1 / w - 1)`` times the loss's own scale ``S`` (``lattice_weight · ‖R‖² / 9`` plus a quarter of
        the coordinate term's), what the nearest-form losses add to a faded form too.

        0 for a fully canonical class (``w = 1``: exact symmetries and faces score as without weights),
        C¹ where a form starts to fade (``1 / w - 1`` grows as ``x²`` from the band's inner edge, ``x``
        the form's position in the band), and ``-inf`` where it leaves the set (``w → 0``), so it leaves
        the softmin continuously. Where a fading class holds the candidate nearest the prediction, ``Δ``
        ahead of the others' best, the loss follows its penalty while that is below about ``Δ``, with a
        slope in ``x`` of at most about ``π (√(Δ S) + Δ^{3/2} / √S)``; the ~1e-14 by which a label given in
        another basis is another cell moves ``x`` by ~1e-9. With ``p = -τ log w`` that slope would reach
        ``π τ exp(Δ / 2τ)`` (``w`` falls as ``(1 - x)²`` at the edge): 1e-7 of the loss for a lead of 23 τ.
        """
        return -form_penalty(weight, form, self.lattice_weight, self.coord_weight, self.coords) / self.tau

    def _label_rows(self, labels: CrystalBatch) -> Rows:
        """:class:`Rows` of the label batch: :meth:`_label_frame` (remembered per label lattice, see
        ``cache_bytes``) and the atoms in each row's basis."""
        # The classes' weights depend on these options too (_class_log_weight).
        tag = repr((self.tau, self.lattice_weight, self.coord_weight, self.coords)).encode()
        crystal, T, T_inv, relative, lattice, log_weight = self._rows_cache(labels.lattice.detach(), self._label_frame,
                                                                            tag)
        T_inv = T_inv.to(labels.dtype)
        atom, row_of_atom = repeat_atoms(labels.num_atoms, crystal)
        frac = (labels.frac.detach()[atom][:, None, :] @ T_inv[row_of_atom]).squeeze(1)
        species = None if labels.species is None else labels.species[atom]
        num = labels.num_atoms[crystal]
        return Rows(crystal, T, relative, lattice.to(labels.dtype), frac, torch.cumsum(num, 0) - num, num, species,
                     log_weight)

    def _frames(self, L: torch.Tensor, F: torch.Tensor, batch: torch.Tensor, scorable: torch.Tensor):
        """Prediction frames to compare: ``[(L, F, None)]``, plus its Niggli form ``(N L, F N⁻¹, N)`` for
        ``center="both"``; and the reducer's status (zeros without a reduction)."""
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
        (``scale``: ‖L_p‖² plus the label's :meth:`_label_size`), at most τ of the distance. Wide enough
        that a tie broken by a small move stays inside it (ties split by far less than 1% of the terms),
        narrow enough not to keep the crowd of candidates that differ only by short vectors of a layered
        cell."""
        tau, floor = self._taper_parameters(lattice_weight, scale.dtype)
        return torch.clamp(0.01 * kth + floor * scale / 18, max=tau)

    def _taper_parameters(self, lattice_weight: float, dtype: torch.dtype) -> tuple[float, float]:
        """The taper's cap (τ in lattice-term units) and floor (relative to the cells' size)."""
        tau = self.tau / lattice_weight if lattice_weight > 0 else self.tau
        return tau, max(1e-6, 256 * torch.finfo(dtype).eps)  # the floor: above the exact terms' rounding

    def _label_size(self, rows: Rows, B: int) -> torch.Tensor:
        """``(B,)`` float64 the label's squared size ``‖R‖²`` (the taper's scale, with the prediction's),
        averaged over the classes of its forms with their weights in the softmin. Neither which class a
        candidate is taken from nor the order the classes come in (equal weights tie, in an order set by
        the label's basis) enters, and a class fading out of the set takes its share with it."""
        weight = torch.exp(rows.log_weight)
        size = rows.lattice.detach().double().square().sum(dim=(1, 2))
        total = torch.zeros(B, dtype=torch.float64, device=size.device).index_add(0, rows.crystal, weight)
        return torch.zeros_like(total).index_add(0, rows.crystal, weight * size) / total.clamp_min(1e-300)

    def _penalty(self, rows: Rows, lattice_weight: float) -> torch.Tensor:
        """``(R,)`` float64 each row's weight as a lattice term: ``-τ log w / lattice_weight`` with ``log w``
        its :meth:`_class_log_weight` (0 for a fully canonical class), what its candidates are ranked with
        against the other classes'."""
        tau, _ = self._taper_parameters(lattice_weight, torch.float64)
        return -tau * rows.log_weight

    def _pairs(self, frames, rows: Rows, lattice_weight: float) -> Pairs:
        """Every frame's window against the rows of its crystal, packed
        (:func:`~soft_niggli.losses.windows.grouped_window_candidates`).

        Per (frame, crystal), ``t_k`` is the k-th smallest of the candidates' lattice terms, each plus its
        row's :meth:`_penalty`, over the distinct bases that all the rows (classes of the label's forms)
        reach (``k = top_k``), and every basis up to ``t_k + width`` is kept (:meth:`_taper_width`), once,
        from the class that weighs it most; :meth:`_log_weights` weighs those beyond ``t_k`` down smoothly
        to 0 at ``t_k + width``. A hard top-k would keep an arbitrary subset of tied candidates (every
        automorphism of a symmetric label ties with ``lattice_metric="gram"``) and jump when a near-tie is
        broken by a tiny move; ``t_k`` is continuous in the cells, and in the classes' weights, and tied
        candidates get the same weight, so neither happens.

        Frame 2 (``center="both"``) compares ``N L_p`` with ``M R``, i.e. ``L_p`` with ``N⁻¹ M R``: a
        candidate lattice reached from both frames counts once, measured in the reduced frame
        (otherwise a prediction emitted already reduced would count every candidate twice).
        """
        n, B, n_frames = rows.crystal.shape[0], frames[0][0].shape[0], len(frames)
        L_cmp = torch.cat([f[0].detach()[rows.crystal] for f in frames])
        L_ref = rows.lattice.repeat(n_frames, 1, 1)
        label_size = self._label_size(rows, B)[rows.crystal].repeat(n_frames).to(L_cmp.dtype)
        scale = L_cmp.square().sum(dim=(1, 2)) + label_size
        # The taper's width (_taper_width), plus a few ulps: the search's sums round differently from
        # the exact terms.
        tau, floor = self._taper_parameters(lattice_weight, scale.dtype)
        margin = WindowMargin(relative=0.01, absolute=floor * scale / 18, cap=tau, extra=tie_tolerance(scale / 9))
        counts = torch.bincount(rows.crystal, minlength=B)
        start = torch.cat([torch.zeros(1, dtype=torch.int64, device=counts.device),
                           torch.cumsum(counts.repeat(n_frames), 0)])
        owner, X = grouped_window_candidates(L_cmp, L_ref, self.top_k, margin,
                                             self._penalty(rows, lattice_weight).repeat(n_frames), start,
                                             rows.relative.repeat(n_frames, 1, 1), self.bound, self.proper,
                                             self.lattice_metric)
        picked = [(owner[owner // n == i] - i * n, X[owner // n == i]) for i in range(n_frames)]
        if n_frames == 2:
            # One basis of the label may be reached from different classes in the two frames: compare the
            # bases themselves (relative to the crystal's first form), per crystal.
            (o1, X1), (o2, M2) = picked
            N = frames[1][2][rows.crystal]
            basis1 = X1 @ rows.relative[o1]
            basis2 = integer_inverse(N[o2]) @ M2 @ rows.relative[o2]
            single = ~rows_in(rows.crystal[o1], basis1, rows.crystal[o2], basis2)
            picked = [(o1[single], X1[single]), (o2, M2)]
        frame = torch.cat([torch.full_like(o, i) for i, (o, _) in enumerate(picked)])
        return Pairs(frame, torch.cat([o for o, _ in picked]), torch.cat([M for _, M in picked]))

    def _log_weights(self, lat: torch.Tensor, pairs: Pairs, rows: Rows, frames, lattice_weight: float) -> torch.Tensor:
        """``(Q,)`` float64 log of each candidate's weight: its row's (the forms' class) plus the taper's,
        ``(1 + cos πx) / 2`` with ``x = (e - t_k) / w`` in [0, 1] (``-inf`` at ``x = 1``), ``e`` the lattice
        term plus the row's :meth:`_penalty`, ``t_k`` the k-th smallest ``e`` of its (frame, crystal) and
        ``w`` :meth:`_taper_width` (of the prediction's size plus :meth:`_label_size`). The threshold
        comes from the exact terms, per frame: the sums that chose the window round differently in every
        basis (more than the exact terms do)."""
        B = frames[0][0].shape[0]
        crystal = rows.crystal[pairs.row]
        group = pairs.frame * B + crystal
        k = min(self.top_k, len(candidate_set(self.bound, self.proper, torch.int64, lat.device)))
        e = lat.double() + self._penalty(rows, lattice_weight)[pairs.row]
        kth = kth_smallest(e, group, len(frames) * B, k)[group]
        L_cmp = torch.stack([f[0].detach() for f in frames])[pairs.frame, crystal]
        size = L_cmp.square().sum(dim=(1, 2)).double() + self._label_size(rows, B)[crystal]
        width = self._taper_width(lattice_weight, kth, size.to(lat.dtype)).double()
        x = ((e - kth) / width).clamp(0, 1)
        taper = 0.5 * (1 + torch.cos(math.pi * x))
        return rows.log_weight[pairs.row] + torch.log(taper)

    # -- distances ---------------------------------------------------------------------------------

    def _kept(self, d_lat: torch.Tensor, log_w: torch.Tensor, group: torch.Tensor, G: int, dtype) -> torch.Tensor:
        """``(Q,)`` bool, candidates that get a coordinate term; the others are left out of the softmin.

        With periodic coordinates (at most 1/4), a candidate whose weighted lattice term alone, ``d_lat -
        τ log w``, exceeds its group's best by ``coord_weight / 4 + 40 τ`` carries a softmin weight below
        exp(-40) ≈ 4e-18 of the best (20 τ and 2e-9 when the terms are in float32 or below, whose rounding
        of the distances is larger than that). With Sinkhorn (no such bound) every candidate is kept.
        """
        kept = torch.isfinite(log_w)
        if not self.coord_weight or self.coords != "periodic":
            return kept
        e = torch.where(kept, d_lat - self.tau * log_w, torch.full_like(d_lat, math.inf))
        low = torch.full((G,), math.inf, dtype=e.dtype, device=e.device).scatter_reduce(0, group, e, "amin")
        reach = 40 if dtype == torch.float64 else 20
        return kept & (e <= low[group] + self.coord_weight / 4 + reach * self.tau)

    def _coordinates(self, F_obj, obj_first, obj_species, obj, rows: Rows, row, M, T_lat, kept) -> torch.Tensor:
        """``(Q,)`` coordinate term of the kept candidates (0 elsewhere): the atoms of object ``obj[q]``
        (``F_obj`` from ``obj_first[obj[q]]``) against those of row ``row[q]`` re-based by ``M[q]``
        (``F_row M⁻¹``); ``T_lat (Q, 3, 3)`` the candidates' lattices (Sinkhorn's metric)."""
        Q = obj.shape[0]
        out = torch.zeros(Q, dtype=F_obj.dtype, device=F_obj.device)
        q = kept.nonzero().flatten()
        if not self.coord_weight or not len(q):
            return out + 0 * F_obj.sum()
        obj, row, M_inv = obj[q], row[q], integer_inverse(M[q]).to(F_obj.dtype)
        counts = rows.num_atoms[row]
        if self.coords == "periodic":  # atoms laid out once per (object, row), not repeated per pair
            key = obj * rows.crystal.shape[0] + row
            units, unit = torch.unique(key, return_inverse=True)
            u_obj, u_row = units // rows.crystal.shape[0], units % rows.crystal.shape[0]
            n = rows.num_atoms[u_row]
            slot, owner = group_slots(n)
            cmp = F_obj[obj_first[u_obj][owner] + slot]
            ref = rows.frac[rows.first[u_row][owner] + slot]
            return out.index_put((q,), periodic_loss_of_pairs(cmp, ref, n, unit, M_inv))
        slot, owner = group_slots(counts)
        cmp = F_obj[obj_first[obj][owner] + slot]
        ref = (rows.frac[rows.first[row][owner] + slot][:, None, :] @ M_inv[owner]).squeeze(1)
        species_o = None if obj_species is None else obj_species[obj_first[obj][owner] + slot]
        species_r = None if rows.species is None else rows.species[rows.first[row][owner] + slot]
        if species_o is None or species_r is None:
            species_o = species_r = None
        crd = coordinate_term(self.coords, cmp, ref, owner, T_lat[q], species_o, species_r, self.blur)
        return out.index_put((q,), crd)

    # -- the softmin and its offset ----------------------------------------------------------------

    def _softmin(self, pred: CrystalBatch, L, F, scorable, labels: CrystalBatch, lattice_weight, rows: Rows):
        """``(value, lattice, coords, status)``, each ``(B,)``: the softmin over the candidates of every
        frame and every class of the label's reduced forms, minus the offset of ``zero_at_match``
        (:meth:`_offset`), and the softmin-weighted parts."""
        B, dtype, device = L.shape[0], L.dtype, L.device
        frames, status = self._frames(L, F, pred.batch, scorable)
        pairs = self._pairs(frames, rows, lattice_weight)
        crystal = rows.crystal[pairs.row]
        T_lat = pairs.M.to(dtype) @ rows.lattice[pairs.row]
        L_cmp = torch.stack([f[0] for f in frames])
        lat = lattice_term(L_cmp[pairs.frame, crystal], T_lat, self.lattice_metric)
        log_w = self._log_weights(lat.detach(), pairs, rows, frames, lattice_weight)
        live = torch.isfinite(log_w)
        pairs, crystal, T_lat, lat, log_w = (Pairs(*(x[live] for x in pairs)), crystal[live], T_lat[live], lat[live],
                                             log_w[live])
        d_lat = lattice_weight * lat.detach().double()
        kept = self._kept(d_lat, log_w, crystal, B, dtype)
        # The prediction's frames as objects: frame f of crystal b is object f·B + b, atoms from f·N + first[b].
        N_atoms = F.shape[0]
        first = torch.cumsum(pred.num_atoms, 0) - pred.num_atoms
        F_obj = torch.cat([f[1] for f in frames])
        obj_first = torch.cat([first + i * N_atoms for i in range(len(frames))])
        species = None if pred.species is None else pred.species.repeat(len(frames))
        crd = self._coordinates(F_obj, obj_first, species, pairs.frame * B + crystal, rows, pairs.row, pairs.M, T_lat,
                                kept)
        d = (lattice_weight * lat + self.coord_weight * crd).double()
        d = torch.where(kept, d - self.tau * log_w, torch.full_like(d, math.inf))
        values = packed_soft_minimum(d, crystal, B, self.tau, self.normalize and not self.zero_at_match)
        weight_q = torch.exp(-(d - values[crystal]) / self.tau)
        if self.normalize and not self.zero_at_match:
            weight_q = weight_q / torch.bincount(crystal[kept], minlength=B).clamp_min(1).to(d.dtype)[crystal]
        parts = [torch.zeros(B, dtype=lat.dtype, device=device).index_add(0, crystal, weight_q.to(lat.dtype) * term)
                 for term in (lat, crd)]
        if self.zero_at_match:
            plain = torch.where(kept, (d + self.tau * log_w).detach(), torch.full_like(d, math.inf))
            values = values - self._offset(plain, pairs, crystal, T_lat.detach(), log_w, frames, rows, labels,
                                           lattice_weight)
        return values.to(dtype), parts[0], parts[1], status

    def _offset(self, d: torch.Tensor, pairs: Pairs, crystal: torch.Tensor, T_lat, log_w, frames, rows: Rows,
                labels: CrystalBatch, lattice_weight: float) -> torch.Tensor:
        """The offset of ``zero_at_match``: :func:`~soft_niggli.losses._match_offset.match_offset`."""
        return match_offset(self, d, pairs, crystal, T_lat, log_w, frames, rows, labels, lattice_weight)

    def _tapers(self, pred: CrystalBatch, target: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(crystal (Q,), taper (Q,) float64)``: the window's taper weight of every candidate the
        prediction's windows hold (1 up to the k-th, 0 at the window's edge, between inside the band).
        Not part of the loss: what a test needs to know where the backward pass is the value's exact
        derivative (no candidate strictly inside the band; "Gradients" in :mod:`soft_niggli.losses.softmin`)."""
        with torch.no_grad():
            target = target.to(dtype=pred.dtype)
            L, F = self.sanitized(pred, target, self.scorable(pred))
            rows = self._label_rows(target)
            frames, _ = self._frames(L, F, pred.batch, self.scorable(pred))
            pairs = self._pairs(frames, rows, self.lattice_weight)
            crystal = rows.crystal[pairs.row]
            T_lat = pairs.M.to(L.dtype) @ rows.lattice[pairs.row]
            L_cmp = torch.stack([f[0] for f in frames])
            lat = lattice_term(L_cmp[pairs.frame, crystal], T_lat, self.lattice_metric)
            log_w = self._log_weights(lat, pairs, rows, frames, self.lattice_weight)
            return crystal, torch.exp(log_w - rows.log_weight[pairs.row])

    def _softmin_terms(self, pred: CrystalBatch, L, F, scorable, labels: CrystalBatch, lattice_weight, rows=None):
        rows = self._label_rows(labels) if rows is None else rows
        return self._softmin(pred, L, F, scorable, labels, lattice_weight, rows)


def rows_in(owner1, X1, owner2, X2) -> torch.Tensor:
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
