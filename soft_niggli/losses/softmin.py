"""Continuous losses over GL(3,Z): ``"softmin"`` and ``"gram"``, built by name like every loss.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))``.

Both losses compare the prediction with the label re-based by candidates ``M`` of a bounded set ``U``
(entries in ``[-bound, bound]``, det ±1; 6960 matrices for bound 1) around each of the label's reduced
forms, and combine the candidates with a softmin

    loss = -τ log Σ_Y w_Y exp(-d_Y / τ),   d_Y = w_lat · d_lat(Y) + w_coord · d_coord(Y),

which is smooth in the prediction and tends to ``min_Y d_Y`` as τ → 0. No reducer sits in the gradient
path: the prediction's own basis enters only through the distances. Cost is kept down four ways:
the candidates nearest on the lattice term are found without scoring all of ``U``
(:func:`~soft_niggli.losses.candidates.grouped_window_candidates`, a branch and bound over the short
vectors that make a candidate's rows, compiled on CPU); only those get an exact lattice term, and only
those within reach of the best a coordinate term (the periodic term of all of them in one compiled
loop, :func:`~soft_niggli.losses.periodic.periodic_loss_of_pairs`); the label's side (its forms and
their weights, ``gram``'s theta series) is remembered per label lattice (``cache_bytes``); and the
candidate tables are cached per dtype and device.

Real labels sit on or near the faces of the Niggli cone, so that nothing depends on the basis the label
came in and nothing jumps when a tiny change breaks a symmetry or moves a form across the tolerance:

* **The label's frame is all its reduced forms, weighted.** Near a face several bases pass the Niggli
  conditions within the tolerance (``automorphism_rel_tol``; :func:`~soft_niggli.canonical.reduced_forms`)
  and no automorphism relates them, and the set ``U`` is not closed under the automorphisms that
  relate the others (``U A ≠ U`` for hexagonal or fcc cells): which basis a reducer returns depends on
  the input basis, and a loss centred on it does too. The candidates are the union of ``U R`` over
  every form ``R``, grouped in classes that differ by a signed permutation (``U S = U``: the same
  candidates), and each candidate counts once, with the largest weight of a class that reaches it.
  A form's weight (:meth:`~soft_niggli.canonical.ReducedForms.weights`) is 1 while it meets the
  conditions within half the tolerance and falls smoothly to 0 at the tolerance, where it leaves the
  set: nothing jumps as a strained label moves a form across the edge. Exact symmetries and faces
  weigh 1.
* **No hard top-k: a tapered window.** Per crystal, with ``t_k`` the ``top_k``-th smallest of the
  distinct candidates' lattice terms, each plus ``-τ log`` of its class's weight, every candidate up
  to ``t_k + w`` is kept (``w``: 1% of ``t_k`` plus 1e-6 of the cells' mean squared entry, at most τ of
  the distance), and those beyond ``t_k`` are weighed down smoothly, by ``(1 + cos πx) / 2`` with
  ``x = (e - t_k) / w``, to 0 at the edge. With ``lattice_metric="gram"`` all automorphisms of a
  symmetric label tie exactly (48 for a cube): a hard top-k would keep an arbitrary subset of them,
  chosen by the order in which the label's basis lists them, and jump when a tiny strain breaks the
  tie; tied candidates get equal weight here, and ``t_k`` moves continuously. Candidates whose
  weighted lattice term alone exceeds the best candidate's whole distance by 40 τ in float64 (weight
  below 4e-18 of it), 20 τ in lower precision (2e-9, below float32's rounding of the distances), get
  no coordinate term and are left out.
* **A perfect prediction scores 0** (``zero_at_match=True``, the default). The softmin of a symmetric
  label is about ``-τ log n`` at a perfect prediction, ``n`` the number of its symmetries that tie
  (e.g. −0.07 for two duplicates of one carbon crystal). The loss therefore subtracts what the
  candidate nearest the prediction would score as a prediction, over the prediction's own candidates
  (chosen by a softmax 1000 times sharper than τ, so continuous; detached; faded out when the nearest
  candidate is more than 50 τ away, where the loss is at least that): exactly 0 for the label in any
  of its fully weighted reduced forms or re-based by a candidate (any translation, and any rotation
  with the metric), and never rewarding a skewed basis. Values a little below 0 remain possible near a
  match. ``zero_at_match=False`` gives the plain softmin.

Centre (``center``): ``"label"`` (default) compares the prediction as emitted with the candidates, so
the bounded set covers predictions emitted in a near-reduced basis and the loss pulls others towards
one; it has no reducer of the prediction anywhere. ``"both"`` also compares the prediction's own Niggli
form ``N_p L_p`` (``N_p`` from the guarded reducer, detached) with the candidates and takes the softmin
over both sets, so a bounded set suffices however skewed the emitted basis is and nothing rewards
drifting into skewed bases (design notes, Carbon-24 pitfall). A candidate lattice reached from both
frames counts once, measured in the reduced frame. The price: where the prediction crosses a
Niggli-cone boundary ``N_p`` jumps and the second set's distances with it, a jump proportional to the
residual error (zero at a perfect match).

Gradients. The backward pass differentiates the distances ``d_Y`` with every weight held fixed: the
forms' weights (functions of the label, which gets no gradient), and the window's taper, whose own
derivative is left out on purpose (it would pull candidates into or out of the window). Where every
candidate's taper is 0 or 1 this is the value's exact derivative (tested against finite differences);
inside the taper band it is not. The offset of ``zero_at_match`` is detached: the gradient is the plain
softmin's, while the value's derivative also has the offset's change with the prediction (through which
candidate it is nearest, and the tapers). With ``center="both"`` the prediction's Niggli frame ``N_p``
is piecewise constant and not differentiated.

Half precision and extreme values are handled as for every loss (:mod:`soft_niggli.losses.base`); the
softmin itself is evaluated in float64 and shifted by its minimum, so it is finite for any τ > 0.
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from .._checks import has_values
from ..canonical import reduce_or_identity, reduced_forms
from ..crystal import CrystalBatch, atom_slots, repeat_atoms
from ..lattice import integer_inverse
from .base import CrystalLoss
from .candidates import WindowMargin, candidate_set, grouped_window_candidates
from .invariants import theta_series, theta_term, volume_term
from .options import choice_option, flag_option, int_option, positive_option, rel_tol_option, weight_option
from .periodic import periodic_loss_of_pairs
from .registry import register_loss
from .result import LossResult
from .sinkhorn import MAX_ANCHOR_PAIRS
from .terms import coordinate_term, lattice_term, tie_tolerance

__all__ = ["SoftminLoss", "GramLoss", "CENTERS"]

CENTERS = ("label", "both")


class _Rows(NamedTuple):
    """The label's frame: one row per (crystal, class of its reduced forms), the class's first form
    standing for it (every member gives the same candidate set: they differ by a signed permutation)."""

    crystal: torch.Tensor  # (R,) int64, crystals in order
    transform: torch.Tensor  # (R, 3, 3) int64, the form is transform @ the label's lattice
    relative: torch.Tensor  # (R, 3, 3) int64, transform @ (the crystal's first row's transform)⁻¹
    lattice: torch.Tensor  # (R, 3, 3) the form (from the reducer's accurate cell), detached
    frac: torch.Tensor  # (A, 3) its atoms, row by row (num_atoms[r] atoms from first[r])
    first: torch.Tensor  # (R,) int64
    num_atoms: torch.Tensor  # (R,) int64
    species: torch.Tensor | None  # (A,)
    log_weight: torch.Tensor  # (R,) float64, log of the class's weight (its members' largest)


class _Pairs(NamedTuple):
    """Packed candidates: in frame ``frame[q]``, the row ``row[q]``'s form re-based by ``M[q]``."""

    frame: torch.Tensor  # (Q,) int64
    row: torch.Tensor  # (Q,) int64
    M: torch.Tensor  # (Q, 3, 3) int64


class _FrameCache:
    """The label side of :class:`_CandidateSoftmin` (:meth:`_CandidateSoftmin._label_frame`: the classes
    of a label's reduced forms and their weights), remembered per label lattice.

    A training loop shows the same labels every epoch, and this part depends on the lattice alone (its
    exact values and dtype), so it is computed once per distinct lattice. Least recently used entries
    leave first once the entries take more than ``max_bytes`` (tensors plus about 400 bytes each;
    ``max_bytes=0`` turns remembering off). Lookups and updates hold one lock (``nn.DataParallel``
    replicas share the loss); the frames are computed outside it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self):
        # Copied or pickled with the loss (copy.deepcopy, torch.save): the memory starts empty, the lock anew.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])

    def __call__(self, lattice: torch.Tensor, compute):
        """``compute(lattice)`` (packed rows ``(crystal, *per-row tensors)``) with rows of lattices seen
        before taken from memory; same result, same order."""
        B, device = lattice.shape[0], lattice.device
        if not self.max_bytes or not B or not has_values(lattice):
            return compute(lattice)
        values = lattice.to("cpu", torch.float64).contiguous().numpy()  # exact for every float dtype
        tag = str(lattice.dtype).encode()
        keys = [tag + values[b].tobytes() for b in range(B)]
        with self._lock:
            entries = [self._entries.get(key) for key in keys]
            for key, entry in zip(keys, entries):
                if entry is not None:
                    self._entries.move_to_end(key)
        missing = [b for b in range(B) if entries[b] is None]
        if missing:
            crystal, *parts = compute(lattice[missing])
            counts = torch.bincount(crystal, minlength=len(missing)).tolist()
            fresh = {}
            pieces = [p.cpu().numpy() for p in parts]
            bounds = np.cumsum([0] + counts)
            for i, b in enumerate(missing):
                entry = tuple(a[bounds[i]:bounds[i + 1]].copy() for a in pieces)
                entries[b] = entry
                fresh[keys[b]] = entry
            with self._lock:
                for key, entry in fresh.items():
                    if key not in self._entries:
                        self._entries[key] = entry
                        self._nbytes += sum(a.nbytes for a in entry) + len(key) + 400
                while self._nbytes > self.max_bytes and self._entries:
                    key, old = self._entries.popitem(last=False)
                    self._nbytes -= sum(a.nbytes for a in old) + len(key) + 400
        counts = torch.tensor([len(e[0]) for e in entries], device=device)
        crystal = torch.repeat_interleave(torch.arange(B, device=device), counts)
        # NumPy joins many small arrays with less overhead than torch.cat.
        return (crystal, *(torch.from_numpy(np.concatenate([e[i] for e in entries])).to(device)
                           for i in range(len(entries[0]))))


class _CandidateSoftmin(CrystalLoss):
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
        self._rows_cache = _FrameCache(self.cache_bytes)

    # -- the label's frame -------------------------------------------------------------------------

    def _label_frame(self, lattice: torch.Tensor):
        """``(crystal, transform, its inverse, relative, lattice, log_weight)`` of the rows of ``lattice (B, 3,
        3)`` (see :class:`_Rows`).

        The label's reduced forms (:func:`~soft_niggli.canonical.reduced_forms` within
        ``automorphism_rel_tol``, weighed by :meth:`~soft_niggli.canonical.ReducedForms.weights`),
        whatever basis it came in, grouped into classes that differ by a signed permutation ``S`` (``U S
        = U``: the same candidates; with ``proper``, ``det S = 1`` only), each weighted by its members'
        largest weight; classes of weight 0 (all members at the tolerance's edge) are left out.
        """
        forms = reduced_forms(lattice, rel_tol=self.automorphism_rel_tol)
        weight = forms.weights(self.automorphism_rel_tol)
        cls, first = _form_classes(forms.owner, forms.transform, self.proper)
        w = torch.zeros(first.shape[0], dtype=torch.float64, device=weight.device).scatter_reduce(
            0, cls, weight, "amax", include_self=False)
        keep = w > 0
        rep, w = first[keep], w[keep]
        # Within a crystal, the heaviest class first (the window search wants rows by increasing penalty).
        order = torch.from_numpy(np.lexsort((np.arange(rep.shape[0]), -w.cpu().numpy(), forms.owner[rep].cpu().numpy())))
        rep, w = rep[order.to(rep.device)], w[order.to(w.device)]
        T, owner = forms.transform[rep], forms.owner[rep]
        T_inv = integer_inverse(T)
        head = torch.full((lattice.shape[0],), owner.shape[0], dtype=torch.int64, device=owner.device).scatter_reduce(
            0, owner, torch.arange(owner.shape[0], device=owner.device), "amin")  # each crystal's first row
        relative = torch.from_numpy(T.cpu().numpy() @ T_inv.cpu().numpy()[head[owner].cpu().numpy()]).to(owner.device)
        return owner, T, T_inv, relative, forms.lattice[rep], w.log()

    def _label_rows(self, labels: CrystalBatch) -> _Rows:
        """:class:`_Rows` of the label batch: :meth:`_label_frame` (remembered per label lattice, see
        ``cache_bytes``) and the atoms in each row's basis."""
        crystal, T, T_inv, relative, lattice, log_weight = self._rows_cache(labels.lattice.detach(), self._label_frame)
        T_inv = T_inv.to(labels.dtype)
        atom, row_of_atom = repeat_atoms(labels.num_atoms, crystal)
        frac = (labels.frac.detach()[atom][:, None, :] @ T_inv[row_of_atom]).squeeze(1)
        species = None if labels.species is None else labels.species[atom]
        num = labels.num_atoms[crystal]
        return _Rows(crystal, T, relative, lattice.to(labels.dtype), frac, torch.cumsum(num, 0) - num, num, species,
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
        (``scale``: ‖L_p‖² + ‖L_ref‖²), at most τ of the distance. Wide enough that a tie broken by a small
        move stays inside it (ties split by far less than 1% of the terms), narrow enough not to keep the
        crowd of candidates that differ only by short vectors of a layered cell."""
        tau, floor = self._taper_parameters(lattice_weight, scale.dtype)
        return torch.clamp(0.01 * kth + floor * scale / 18, max=tau)

    def _taper_parameters(self, lattice_weight: float, dtype: torch.dtype) -> tuple[float, float]:
        """The taper's cap (τ in lattice-term units) and floor (relative to the cells' size)."""
        tau = self.tau / lattice_weight if lattice_weight > 0 else self.tau
        return tau, max(1e-6, 256 * torch.finfo(dtype).eps)  # the floor: above the exact terms' rounding

    def _penalty(self, rows: _Rows, lattice_weight: float) -> torch.Tensor:
        """``(R,)`` float64 each row's weight as a lattice term: ``-τ log w / lattice_weight`` (0 for a
        fully canonical class), what its candidates are ranked with against the other classes'."""
        tau, _ = self._taper_parameters(lattice_weight, torch.float64)
        return -tau * rows.log_weight

    def _pairs(self, frames, rows: _Rows, lattice_weight: float) -> _Pairs:
        """Every frame's window against the rows of its crystal, packed
        (:func:`~soft_niggli.losses.candidates.grouped_window_candidates`).

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
        scale = L_cmp.square().sum(dim=(1, 2)) + L_ref.square().sum(dim=(1, 2))
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
            single = ~_rows_in(rows.crystal[o1], basis1, rows.crystal[o2], basis2)
            picked = [(o1[single], X1[single]), (o2, M2)]
        frame = torch.cat([torch.full_like(o, i) for i, (o, _) in enumerate(picked)])
        return _Pairs(frame, torch.cat([o for o, _ in picked]), torch.cat([M for _, M in picked]))

    def _log_weights(self, lat: torch.Tensor, pairs: _Pairs, rows: _Rows, frames, lattice_weight: float) -> torch.Tensor:
        """``(Q,)`` float64 log of each candidate's weight: its row's (the forms' class) plus the taper's,
        ``(1 + cos πx) / 2`` with ``x = (e - t_k) / w`` in [0, 1] (``-inf`` at ``x = 1``), ``e`` the lattice
        term plus the row's :meth:`_penalty`, ``t_k`` the k-th smallest ``e`` of its (frame, crystal) and
        ``w`` :meth:`_taper_width` (of the cells' smallest size over the crystal's rows). The threshold
        comes from the exact terms, per frame: the sums that chose the window round differently in every
        basis (more than the exact terms do)."""
        B = frames[0][0].shape[0]
        crystal = rows.crystal[pairs.row]
        group = pairs.frame * B + crystal
        k = min(self.top_k, len(candidate_set(self.bound, self.proper, torch.int64, lat.device)))
        e = lat.double() + self._penalty(rows, lattice_weight)[pairs.row]
        kth = _kth_smallest(e, group, len(frames) * B, k)[group]
        L_cmp = torch.stack([f[0].detach() for f in frames])[pairs.frame, crystal]
        size = (L_cmp.square().sum(dim=(1, 2)) + rows.lattice[pairs.row].square().sum(dim=(1, 2))).double()
        size = torch.full((len(frames) * B,), math.inf, dtype=size.dtype, device=size.device).scatter_reduce(
            0, group, size, "amin")[group]
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

    def _coordinates(self, F_obj, obj_first, obj_species, obj, rows: _Rows, row, M, T_lat, kept) -> torch.Tensor:
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
            slot, owner = _slots(n)
            cmp = F_obj[obj_first[u_obj][owner] + slot]
            ref = rows.frac[rows.first[u_row][owner] + slot]
            return out.index_put((q,), periodic_loss_of_pairs(cmp, ref, n, unit, M_inv))
        slot, owner = _slots(counts)
        cmp = F_obj[obj_first[obj][owner] + slot]
        ref = (rows.frac[rows.first[row][owner] + slot][:, None, :] @ M_inv[owner]).squeeze(1)
        species_o = None if obj_species is None else obj_species[obj_first[obj][owner] + slot]
        species_r = None if rows.species is None else rows.species[rows.first[row][owner] + slot]
        if species_o is None or species_r is None:
            species_o = species_r = None
        crd = coordinate_term(self.coords, cmp, ref, owner, T_lat[q], species_o, species_r, self.blur)
        return out.index_put((q,), crd)

    # -- the softmin and its offset ----------------------------------------------------------------

    def _softmin(self, pred: CrystalBatch, L, F, scorable, labels: CrystalBatch, lattice_weight, rows: _Rows):
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
        pairs, crystal, T_lat, lat, log_w = (_Pairs(*(x[live] for x in pairs)), crystal[live], T_lat[live], lat[live],
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
        values = packed_softmin(d, crystal, B, self.tau, self.normalize and not self.zero_at_match)
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

    def _offset(self, d: torch.Tensor, pairs: _Pairs, crystal: torch.Tensor, T_lat, log_w, frames, rows: _Rows,
                labels: CrystalBatch, lattice_weight: float) -> torch.Tensor:
        """``(B,)`` float64, detached: what a perfect prediction would score, subtracted so that it scores 0.

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
            near = _group_min(d, crystal, B)
            fade = 0.5 * (1 + torch.cos(math.pi * ((near - _NEAR * self.tau) / (_NEAR * self.tau)).clamp(0, 1)))
            logit = log_w - d / (self.tau * _SELECTION_SHARPNESS)
            top = _group_max(logit, crystal, B)
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
            # shares add up, its offset is computed once. Compared on a grid (_same_crystals), atoms relative
            # to the first: a pair that falls on two sides of a grid line is only computed twice.
            Y = M.to(dtype) @ rows.lattice[pairs.row[chosen]]
            slot, j_of_atom = _slots(rows.num_atoms[pairs.row[chosen]])
            atom = rows.first[pairs.row[chosen]][j_of_atom] + slot
            F_Y = (rows.frac[atom][:, None, :] @ integer_inverse(M).to(dtype)[j_of_atom]).squeeze(1)
            unique, pi = _same_crystals(owner, Y, F_Y, slot, j_of_atom, pi, self.lattice_metric,
                                        None if rows.species is None else rows.species[atom], self.coords == "sinkhorn")
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
            lat = lattice_term(L_obj[pairs.frame[q], j_of], T_lat[q], self.lattice_metric)
            d_lat = lattice_weight * lat.double()
            kept = self._kept(d_lat, log_w[q], j_of, J, dtype)
            crd = self._coordinates(F_obj, obj_first, obj_species, pairs.frame[q] * J + j_of, rows, pairs.row[q],
                                    pairs.M[q], T_lat[q], kept)
            d_o = torch.where(kept, d_lat + self.coord_weight * crd.double() - self.tau * log_w[q],
                              torch.full_like(d_lat, math.inf))
            values = packed_softmin(d_o, j_of, J, self.tau)
            offset = torch.zeros(B, dtype=torch.float64, device=d.device).index_add(0, owner, pi * values)
            return offset.clamp(max=0) * fade

    def _tapers(self, pred: CrystalBatch, target: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(crystal (Q,), taper (Q,) float64)``: the window's taper weight of every candidate the
        prediction's windows hold (1 up to the k-th, 0 at the window's edge, between inside the band).
        Not part of the loss: what a test needs to know where the backward pass is the value's exact
        derivative (no candidate strictly inside the band, see the module docstring's "Gradients")."""
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


#: The offset's choice of candidate (:meth:`_CandidateSoftmin._offset`) is a softmax at this fraction of
#: τ: sharp enough that a perfect prediction scores 0 (another candidate at a distance d weighs
#: exp(-1000 d / τ)), continuous where two candidates are equally near.
_SELECTION_SHARPNESS = 1e-3


#: The offset is whole while the prediction's nearest candidate is within this many τ of it, and fades out
#: (a cosine) by twice that: there the loss is at least 50 τ, against an offset of at most τ log(ties).
_NEAR = 50.0


def _same_crystals(owner, Y, F_Y, slot, j_of_atom, pi, metric: str, species=None, unordered: bool = False):
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
    group = _group_keys(torch.cat([owner[:, None], lattice_key, atoms_key.flatten(1)], 1))
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


def _group_min(values: torch.Tensor, owner: torch.Tensor, B: int) -> torch.Tensor:
    return torch.full((B,), math.inf, dtype=values.dtype, device=values.device).scatter_reduce(0, owner, values, "amin")


def _group_max(values: torch.Tensor, owner: torch.Tensor, B: int) -> torch.Tensor:
    return torch.full((B,), -math.inf, dtype=values.dtype, device=values.device).scatter_reduce(0, owner, values, "amax")


def _slots(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot, owner)`` over ``sum(counts)`` items: the position of each within its group and the group."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    return atom_slots(counts, owner), owner


def _form_classes(owner: torch.Tensor, T: torch.Tensor, proper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cls (P,), first (C,))``: forms ``T`` (of crystals ``owner``, sorted) grouped by a left signed
    permutation (same rows up to sign and order; with ``proper`` also the same determinant), numbered in
    the order of their first member, whose index is ``first``.

    Compared relative to each crystal's first form, ``X = T T_first⁻¹``: the forms are ``X R`` with
    small ``X`` (entries of a few units), so each matrix becomes one exact integer key (its rows up to
    sign, sorted), and two stable sorts group them."""
    P, device = owner.shape[0], owner.device
    if not P:
        return owner.clone(), owner.clone()
    start = torch.ones(P, dtype=torch.bool, device=device)
    start[1:] = owner[1:] != owner[:-1]
    head = torch.cumsum(start.to(torch.int64), 0) - 1  # which crystal run each form is in
    firsts = start.nonzero().flatten()
    X = torch.from_numpy(T.cpu().numpy() @ integer_inverse(T[firsts]).cpu().numpy()[head.cpu().numpy()]).to(device)
    if int(X.abs().max()) >= 2**16:  # never for reduced forms; exact either way
        rows = _canonical_rows(X)
        r = [rows[:, i] for i in range(3)]
        for i, j in ((0, 1), (1, 2), (0, 1)):  # sort the three rows lexicographically
            swap = _lexicographically_less(r[j], r[i])[:, None]
            r[i], r[j] = torch.where(swap, r[j], r[i]), torch.where(swap, r[i], r[j])
        det = (_det3(X) > 0).to(torch.int64)[:, None] * int(proper)
        key = _group_keys(torch.cat([owner[:, None], *r, det], 1))
    else:
        rows = _canonical_rows(X) + 2**16
        codes = (rows[:, :, 0] * 2**17 + rows[:, :, 1]) * 2**17 + rows[:, :, 2]  # < 2**51
        codes = torch.sort(codes, dim=1).values
        key = torch.stack([codes[:, 0], codes[:, 1], codes[:, 2] * 2 + (_det3(X) > 0).to(torch.int64) * int(proper)], 1)
        key = _group_keys(torch.cat([owner[:, None], key], 1))
    first = torch.full((int(key.max()) + 1,), P, dtype=torch.int64, device=device).scatter_reduce(
        0, key, torch.arange(P, device=device), "amin")
    first, rank = torch.sort(first)
    relabel = torch.empty_like(rank)
    relabel[rank] = torch.arange(rank.shape[0], device=device)
    return relabel[key], first


def _canonical_rows(X: torch.Tensor) -> torch.Tensor:
    """``X (P, 3, 3)`` with each row's sign made positive at its first nonzero entry."""
    lead = torch.gather(X, 2, (X != 0).to(torch.int64).argmax(2, keepdim=True))
    return X * lead.sign()


def _group_keys(keys: torch.Tensor) -> torch.Tensor:
    """``(P,)`` group index of each row of ``keys (P, m)`` int64 (equal rows, equal index; exact).

    One sort of a 64-bit hash of the rows (``torch.unique(dim=0)`` and a stable sort per column cost far
    more), then the rows of each run of equal hashes are compared whole; a run that holds different rows
    (a hash collision) sends the whole call to the column-by-column sort."""
    P, device = keys.shape[0], keys.device
    if P < 2:
        return torch.zeros(P, dtype=torch.int64, device=device)
    values = keys.cpu().numpy()
    digest = (values * _row_hash(values.shape[1])).sum(1)  # int64 arithmetic wraps: a hash
    order = np.argsort(digest, kind="stable")
    ordered, hashes = values[order], digest[order]
    same_hash = hashes[1:] == hashes[:-1]
    same_row = (ordered[1:] == ordered[:-1]).all(1)
    if not np.array_equal(same_hash, same_row):
        return _group_keys_by_columns(keys)
    group = np.empty(P, dtype=np.int64)
    group[order] = np.concatenate([[0], np.cumsum(~same_row)])
    return torch.from_numpy(group).to(device)


def _group_keys_by_columns(keys: torch.Tensor) -> torch.Tensor:
    """:func:`_group_keys` by a stable sort per column (exact, slower)."""
    order = torch.arange(keys.shape[0], device=keys.device)
    for c in reversed(range(keys.shape[1])):
        order = order[torch.sort(keys[order, c], stable=True).indices]
    ordered = keys[order]
    new = torch.ones(keys.shape[0], dtype=torch.int64, device=keys.device)
    new[1:] = (ordered[1:] != ordered[:-1]).any(1).to(torch.int64)
    group = torch.empty_like(order)
    group[order] = torch.cumsum(new, 0) - 1
    return group


@functools.lru_cache(maxsize=16)
def _row_hash(m: int) -> np.ndarray:
    """Odd 64-bit multipliers (signed int64), one per column, of :func:`_group_keys`'s hash: fixed."""
    return np.random.default_rng(20260).integers(-2**63, 2**63 - 1, size=m, dtype=np.int64) | 1


def _lexicographically_less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, 0] < b[:, 0]) | ((a[:, 0] == b[:, 0]) & ((a[:, 1] < b[:, 1]) | ((a[:, 1] == b[:, 1]) & (a[:, 2] < b[:, 2]))))


def _det3(T: torch.Tensor) -> torch.Tensor:
    return (T[:, 0, 0] * (T[:, 1, 1] * T[:, 2, 2] - T[:, 1, 2] * T[:, 2, 1])
            - T[:, 0, 1] * (T[:, 1, 0] * T[:, 2, 2] - T[:, 1, 2] * T[:, 2, 0])
            + T[:, 0, 2] * (T[:, 1, 0] * T[:, 2, 1] - T[:, 1, 1] * T[:, 2, 0]))


def _kth_smallest(values: torch.Tensor, owner: torch.Tensor, B: int, k: int) -> torch.Tensor:
    """``(B,)`` the k-th smallest of packed ``values`` per ``owner`` (the largest where a group has fewer)."""
    if values.device.type == "cpu":  # one sort of (owner, value) pairs in NumPy: cheaper than two stable sorts
        order = torch.from_numpy(np.lexsort((values.numpy(), owner.numpy())))
    else:
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
    """Softmin over bounded sets of unimodular re-basings of the label's reduced forms (module docstring).

    ``d_Y = lattice_weight · d_lat + coord_weight · d_coord`` over the tapered window of candidates
    ``Y = M R`` (``R`` a reduced form of the label) nearest on ``d_lat``, with ``d_lat`` the mean squared
    entry difference of ``L_p`` and ``M R`` (``lattice_metric="cartesian"``, Å²) or of the metrics
    ``L_p L_pᵀ`` and ``M R Rᵀ Mᵀ`` scaled like :func:`~soft_niggli.losses.terms.lattice_term` (``"gram"``:
    rotations of prediction and label do not matter), and ``d_coord`` the periodic MSE of
    :func:`~soft_niggli.losses.periodic.periodic_coordinate_loss` (``coords="periodic"``, atoms matched by
    order, translations removed) or the Sinkhorn divergence of
    :func:`~soft_niggli.losses.sinkhorn.sinkhorn_coordinate_loss` (``coords="sinkhorn"``, atom order free).

    Invariances (tested on symmetric, near-face and real crystals, ``tests/losses/test_symmetric_invariance.py``,
    ``tests/losses/test_labels_near_faces.py``): to the label's basis, exactly (the candidates are built on the
    set of its reduced forms, the same for every basis, weighted by their distance from the Niggli
    conditions, and ties are kept); to translations and wraps of either structure; to rotations of the
    label with ``lattice_metric="gram"``; to atom order with ``coords="sinkhorn"`` (up to its
    translation rule, :mod:`soft_niggli.losses.sinkhorn`). As τ → 0 the value tends to the minimum over
    the candidates kept.

    ``zero_at_match=True`` (default) subtracts what the candidate nearest the prediction would score, so a
    perfect prediction scores 0 whatever the label's symmetry (module docstring). ``normalize=True`` adds
    ``τ log n`` (the log-mean-exp form, ``n`` the candidates kept) to the plain softmin, which then is
    never negative; with ``zero_at_match`` it cancels. ``terms`` reports the softmin-weighted lattice and
    coordinate parts; ``status`` is the reducer's status of the prediction for ``center="both"`` (zeros
    otherwise).

    Args (keyword-only, checked at construction):
        tau: finite temperature > 0, in the units of ``d`` (Å²). bound: 1 or 2. proper: det +1 only.
        normalize, zero_at_match: see above. lattice_metric: ``"cartesian"`` or ``"gram"``.
        lattice_weight, coord_weight: weights >= 0. coords: ``"periodic"`` or ``"sinkhorn"``.
        center: ``"label"`` or ``"both"``. top_k: distinct candidates per crystal kept at full weight
            before the taper (1..135408; default 8 with periodic coordinates, 2 with Sinkhorn).
        labels_canonical: accepted for the interface the losses share; the label's reduced forms are
            found from any basis, canonical or not, so it changes nothing here.
        blur: Sinkhorn blur in Å, in (0, 10) (``coords="sinkhorn"`` only).
        automorphism_rel_tol: the tolerance of the label's reduced forms (forms fade out between half
            of it and it), in [1e-12, 0.1) like every tolerance.
        cache_bytes: memory for the label side (its forms' classes and weights, and ``gram``'s theta
            series) remembered per label lattice (0 to 2**40 bytes; default 256 MiB, 0 turns it off).
            A training loop shows the same labels every epoch; a new label costs one reduction and the
            enumeration of its forms.
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 lattice_metric: str = "cartesian", lattice_weight: float = 1.0, coord_weight: float = 1.0,
                 coords: str = "periodic", center: str = "label", top_k: int | None = None, labels_canonical: bool = False,
                 blur: float = 0.1, zero_at_match: bool = True, automorphism_rel_tol: float = 1e-4,
                 cache_bytes: int = 256 * 2**20):
        super().__init__()
        self._common_options(tau=tau, bound=bound, proper=proper, normalize=normalize, lattice_metric=lattice_metric,
                             lattice_weight=lattice_weight, coord_weight=coord_weight, coords=coords, blur=blur,
                             center=center, top_k=top_k, labels_canonical=labels_canonical,
                             zero_at_match=zero_at_match, automorphism_rel_tol=automorphism_rel_tol,
                             cache_bytes=cache_bytes)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        value, lat, crd, status = self._softmin_terms(pred, L, F, included, target, self.lattice_weight)
        terms = {"softmin": value, "lattice": lat, "coords": crd}
        return self.assemble(terms, {"softmin": 1.0}, included, status)


@register_loss("gram")
class GramLoss(_CandidateSoftmin):
    """Losses on the metric ``G = L Lᵀ``: no rotation alignment anywhere.

    ``per_crystal = softmin_M(lattice_weight · d_G(M) + coord_weight · d_coord(M)) + volume_weight ·
    volume + theta_weight · theta`` where

    * ``d_G(M)``: ``‖G_p - M G_R Mᵀ‖² / 9`` over the squared size (Å²), the metric of the prediction
      against the metrics of the label's reduced forms ``R`` re-based: invariant to rotating either
      structure, and to the label's basis (as ``"softmin"``).
    * ``d_coord(M)``: the coordinate term in the candidate's basis (periodic MSE or Sinkhorn), which is
      what ties each candidate basis to the atoms; fractional coordinates ignore rotations.
    * ``volume``: :func:`~soft_niggli.losses.invariants.volume_term`, ``(V_p^{1/3} - V_t^{1/3})²`` (Å²): exactly
      invariant to every change of basis and rotation.
    * ``theta``: :func:`~soft_niggli.losses.invariants.theta_term`, squared difference of normalised lattice
      theta series at ``theta_scales`` (dimensionless), summed over a ball of lattice vectors with a smooth
      cutoff: exactly invariant to every change of basis and rotation, a smooth fingerprint of the
      lattice's shape; it fades out for a prediction whose volume vanishes (continuous at a zero cell).
      The label's volume and series come from its reduced form (accurate for a skewed label).

    ``terms``: ``"lattice"`` (softmin-weighted ``d_G``), ``"coords"``, ``"volume"``, ``"theta"`` and
    ``"softmin"``. Options as for ``"softmin"`` (``lattice_weight`` weighs ``d_G``), plus ``volume_weight``,
    ``theta_weight`` (each >= 0; a zero weight switches the term off) and ``theta_scales`` (finite
    floats > 0). A perfect prediction scores 0 (``zero_at_match``; volume and theta vanish there too).
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 lattice_weight: float = 1.0, coord_weight: float = 1.0, volume_weight: float = 1.0,
                 theta_weight: float = 1.0, theta_scales: tuple = (1.0, 2.0, 4.0), coords: str = "periodic",
                 center: str = "label", top_k: int | None = None, labels_canonical: bool = False, blur: float = 0.1,
                 zero_at_match: bool = True, automorphism_rel_tol: float = 1e-4, cache_bytes: int = 256 * 2**20):
        super().__init__()
        self._common_options(tau=tau, bound=bound, proper=proper, normalize=normalize, lattice_metric="gram",
                             lattice_weight=lattice_weight, coord_weight=coord_weight, coords=coords, blur=blur,
                             center=center, top_k=top_k, labels_canonical=labels_canonical,
                             zero_at_match=zero_at_match, automorphism_rel_tol=automorphism_rel_tol,
                             cache_bytes=cache_bytes)
        self.volume_weight = weight_option("volume_weight", volume_weight)
        self.theta_weight = weight_option("theta_weight", theta_weight)
        ok = isinstance(theta_scales, (tuple, list)) and len(theta_scales) > 0 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in theta_scales)
        if not ok:
            raise ValueError(f"theta_scales: expected a non-empty tuple of finite floats > 0, got {theta_scales!r}")
        self.theta_scales = tuple(float(x) for x in theta_scales)
        self._theta_cache = _FrameCache(self.cache_bytes)

    def _label_theta(self, lattice: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` the labels' theta series, remembered per label lattice like the forms (``cache_bytes``)."""
        def compute(L):
            return torch.arange(L.shape[0], device=L.device), theta_series(L, self.theta_scales)
        return self._theta_cache(lattice.detach(), compute)[1].to(lattice.dtype)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        rows = self._label_rows(target)
        value, lat, crd, status = self._softmin_terms(pred, L, F, included, target, self.lattice_weight, rows)
        # The label's volume and theta series from one of its reduced forms, computed from the reducer's
        # accurate cell: the label as given may be skewed, and its determinant cancel in low precision.
        first = torch.full((len(target),), rows.crystal.shape[0], dtype=torch.int64, device=L.device).scatter_reduce(
            0, rows.crystal, torch.arange(rows.crystal.shape[0], device=L.device), "amin")
        L_t = rows.lattice[first.clamp_max(max(rows.crystal.shape[0] - 1, 0))].detach() if len(target) else \
            target.lattice.detach()
        zero = torch.zeros_like(value)
        terms = {
            "softmin": value, "lattice": lat, "coords": crd,
            "volume": volume_term(L, L_t) if self.volume_weight else zero,
            "theta": theta_term(L, L_t, self.theta_scales, target_series=self._label_theta(L_t)) if self.theta_weight
            else zero,
        }
        weights = {"softmin": 1.0, "volume": self.volume_weight, "theta": self.theta_weight}
        return self.assemble(terms, weights, included, status)
