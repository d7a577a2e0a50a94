"""Continuous losses over GL(3,Z): ``"softmin"`` and ``"gram"``, built by name like every loss.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))``.

Both losses compare the prediction with the label re-based by every candidate ``M`` of a bounded set
``U`` (entries in ``[-bound, bound]``, det ±1; 6960 matrices for bound 1), centred on the label's Niggli
basis, and combine the candidates with a softmin

    loss = -τ log Σ_{M ∈ U'} exp(-d_M / τ),   d_M = w_lat · d_lat(M) + w_coord · d_coord(M),

which is smooth in the prediction and tends to ``min_M d_M`` as τ → 0. No reducer sits in the gradient
path: the prediction's own basis enters only through the distances. Cost is kept down three ways:
the lattice distances of all candidates come from two small matrix products (inner-product form, see
:mod:`soft_niggli.softmin`), only the ``top_k`` candidates nearest on the lattice term get a
coordinate term (``U'``; the others would carry weight below ``exp(-(d_k - d_1) / τ)``), and the
candidate set and its derived tables are cached per dtype and device.

Centre (``center``): ``"label"`` (default) compares the prediction as emitted with ``M L_n`` (``L_n``
the label's Niggli basis), so the bounded set covers predictions emitted in a near-reduced basis and
the loss pulls others towards one; it has no reducer of the prediction anywhere and is continuous.
``"both"`` also compares the prediction's own Niggli form ``N_p L_p`` (``N_p`` from the guarded
reducer, detached) with ``M L_n`` and takes the softmin over both sets, so a bounded set suffices
however skewed the emitted basis is and nothing rewards drifting into skewed bases (design notes,
Carbon-24 pitfall). The price: where the prediction crosses a Niggli-cone boundary ``N_p`` jumps and
the second set's distances with it, a jump proportional to the residual error (zero at a perfect
match), and where the prediction is already reduced the two sets coincide, lowering the value by
``τ log 2``.
"""

from __future__ import annotations

import functools

import torch

from .crystal import CrystalBatch
from .invariants import theta_term, volume_term
from .lattice import integer_inverse
from .losses import (
    COORDINATE_TERMS,
    LATTICE_METRICS,
    CrystalLoss,
    LossResult,
    _assemble,
    _choice,
    _flag,
    _sanitized,
    _scorable,
    _weight,
    canonicalize_labels,
    coordinate_term,
    register_loss,
)
from .niggli import Status, niggli_reduce
from .softmin import candidate_set, lattice_distances, metric_distances, softmin

__all__ = ["SoftminLoss", "GramLoss", "CENTERS"]

CENTERS = ("label", "both")


@functools.lru_cache(maxsize=16)
def _candidate_inverses(bound: int, proper: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    return integer_inverse(candidate_set(bound, proper, torch.int64, device)).to(dtype)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a float > 0, got {value!r}")
    return float(value)


def _int_in(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")
    return value


class _CandidateSoftmin(CrystalLoss):
    """Shared machinery: frames, candidate distances, pruning, coordinate terms, softmin."""

    def _common_options(self, tau, bound, proper, normalize, lattice_metric, coords, center, top_k,
                        labels_canonical, coord_weight, blur):
        self.tau = _positive("tau", tau)
        self.bound = _int_in("bound", bound, 1, 2)
        self.proper = _flag("proper", proper)
        self.normalize = _flag("normalize", normalize)
        self.lattice_metric = _choice("lattice_metric", lattice_metric, LATTICE_METRICS)
        self.coords = _choice("coords", coords, COORDINATE_TERMS)
        self.center = _choice("center", center, CENTERS)
        # A Sinkhorn problem costs far more than a periodic MSE: give fewer candidates a coordinate term.
        self.top_k = (2 if coords == "sinkhorn" else 8) if top_k is None else _int_in("top_k", top_k, 1, 135408)
        self.labels_canonical = _flag("labels_canonical", labels_canonical)
        self.coord_weight = _weight("coord_weight", coord_weight)
        self.blur = _positive("blur", blur)
        # Optimal transport matches atoms itself: only compositions must agree, not atom order.
        self.atoms_matched_by_order = self.coords != "sinkhorn"

    def _frames(self, pred: CrystalBatch, L: torch.Tensor, F: torch.Tensor, scorable: torch.Tensor):
        """Prediction frames to compare: ``[(L, F)]``, plus its Niggli form for ``center="both"``."""
        B = len(pred)
        status = torch.zeros(B, dtype=torch.int64, device=pred.device)
        frames = [(L, F)]
        if self.center == "both":
            res = niggli_reduce(L.detach())
            status = res.status.to(pred.device)
            ok = (status == int(Status.OK)) & scorable
            eye = torch.eye(3, dtype=torch.int64, device=pred.device)
            N = torch.where(ok[:, None, None], res.transform.to(pred.device), eye)
            N_inv = integer_inverse(N).to(L.dtype)
            frames.append((N.to(L.dtype) @ L, (F[:, None, :] @ N_inv[pred.batch]).squeeze(1)))
        return frames, status

    def _lattice_candidates(self, L_cmp: torch.Tensor, L_ref: torch.Tensor) -> torch.Tensor:
        if self.lattice_metric == "cartesian":
            return lattice_distances(L_cmp, L_ref, self.bound, self.proper)
        # Same scaling as lattice_term(..., "gram"): the quartic metric difference over the squared size.
        norm = (L_cmp.square().sum(dim=(1, 2)) + L_ref.square().sum(dim=(1, 2))).clamp_min(1e-30)
        # The quartic difference overflows float64 for cells beyond ~1e77: compute it on the cells scaled
        # by a constant s (it is homogeneous of degree 4) and scale back by s⁴ / norm, as two finite factors.
        s2 = norm.detach()
        s = s2.sqrt()[:, None, None]
        G_cmp = (L_cmp / s) @ (L_cmp / s).transpose(1, 2)
        G_ref = (L_ref / s) @ (L_ref / s).transpose(1, 2)
        return metric_distances(G_cmp, G_ref, self.bound, self.proper) * (s2 * (s2 / norm))[:, None]

    def _coordinate_candidates(self, pred: CrystalBatch, F_cmp, labels: CrystalBatch, L_ref, choice) -> torch.Tensor:
        """``(B, k)`` coordinate term of the label moved by each chosen candidate ``M^{-1}``."""
        B, k = choice.shape
        F_ref = labels.frac.detach()
        U_inv = _candidate_inverses(self.bound, self.proper, F_cmp.dtype, str(F_cmp.device))
        Minv = U_inv[choice]  # (B, k, 3, 3)
        # Targets for every atom and candidate: (k, N, 3), then as k*B "crystals" in one call.
        T = torch.einsum("ni,nkij->knj", F_ref, Minv[pred.batch])
        batch_rep = (pred.batch[None, :] + B * torch.arange(k, device=pred.device)[:, None]).reshape(-1)
        P = F_cmp[None].expand(k, -1, -1).reshape(-1, 3)
        # Every (candidate, crystal) pair as one crystal of a k·B batch; Sinkhorn measures the cost in the
        # candidate's lattice M L_ref.
        U = candidate_set(self.bound, self.proper, F_cmp.dtype, F_cmp.device)
        lat = (U[choice] @ L_ref[:, None]).transpose(0, 1).reshape(k * B, 3, 3)

        def repeated(species):
            return None if species is None else species.repeat(k)

        species_ok = pred.species is not None and labels.species is not None
        values = coordinate_term(self.coords, P, T.reshape(-1, 3), batch_rep, lat,
                                 repeated(pred.species) if species_ok else None,
                                 repeated(labels.species) if species_ok else None, self.blur)
        return values.reshape(k, B).T

    def _softmin_terms(self, pred, L, F, scorable, labels, lattice_weight):
        """``(value, lattice, coords, status)``, each ``(B,)``: the softmin and its soft-assigned parts."""
        L_ref = labels.lattice.detach()
        frames, status = self._frames(pred, L, F, scorable)
        values, lats, coords = [], [], []
        for L_cmp, F_cmp in frames:
            d_lat = self._lattice_candidates(L_cmp, L_ref)
            k = min(self.top_k, d_lat.shape[1])
            choice = torch.topk(d_lat.detach(), k, dim=1, largest=False).indices
            lat = d_lat.gather(1, choice)
            crd = self._coordinate_candidates(pred, F_cmp, labels, L_ref, choice)
            values.append(lattice_weight * lat + self.coord_weight * crd)
            lats.append(lat)
            coords.append(crd)
        d, lat, crd = torch.cat(values, 1), torch.cat(lats, 1), torch.cat(coords, 1)
        value = softmin(d, self.tau, self.normalize)
        weight = torch.softmax(-d / self.tau, dim=1)  # the candidates' shares of the softmin
        return value, (weight * lat).sum(1), (weight * crd).sum(1), status


@register_loss("softmin")
class SoftminLoss(_CandidateSoftmin):
    """Softmin over a bounded set of unimodular re-basings of the label (see the module docstring).

    ``d_M = lattice_weight · d_lat + coord_weight · d_coord`` with ``d_lat`` the mean squared entry
    difference of ``L_p`` and ``M L_n`` (``lattice_metric="cartesian"``, Å²) or of the metrics
    ``L_p L_pᵀ`` and ``M G_n Mᵀ`` scaled like :func:`~soft_niggli.losses.lattice_term` (``"gram"``:
    rotations of prediction and label do not matter), and ``d_coord`` the periodic MSE of
    :func:`~soft_niggli.periodic.periodic_coordinate_loss` (``coords="periodic"``, atoms matched by
    order, translations removed) or the Sinkhorn divergence of
    :func:`~soft_niggli.transport.sinkhorn_coordinate_loss` (``coords="sinkhorn"``, atom order free).

    Invariances: to the label's basis exactly as far as the re-basing moves its Niggli form within
    ``U`` (always, up to the reducer's tolerance, since the label is reduced first); to translations
    and wraps of either structure; to rotations with ``lattice_metric="gram"``; to atom order with
    ``coords="sinkhorn"``. As τ → 0 the value tends to the minimum over the candidates kept.

    ``normalize=True`` adds ``τ log |U'|`` (the log-mean-exp form): the value is then never below
    ``min_M d_M`` (so never negative), at the price of an offset up to ``τ log |U'|`` at a perfect
    match; with ``False`` a perfect match scores about 0 (``-τ log`` of the number of exact matches).
    ``terms`` reports the softmin-weighted lattice and coordinate parts; ``status`` is the reducer's
    status of the prediction for ``center="both"`` (zeros otherwise).

    Args (keyword-only, checked at construction):
        tau: temperature > 0, in the units of ``d`` (Å²). bound: 1 or 2. proper: det +1 only.
        normalize: see above. lattice_metric: ``"cartesian"`` or ``"gram"``.
        lattice_weight, coord_weight: weights >= 0. coords: ``"periodic"`` or ``"sinkhorn"``.
        center: ``"label"`` or ``"both"``. top_k: candidates given a coordinate term (1..135408;
            default 8 with periodic coordinates, 2 with Sinkhorn).
        labels_canonical: targets already Niggli-reduced (:func:`canonicalize_labels`).
        blur: Sinkhorn blur in Å (``coords="sinkhorn"`` only).
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 lattice_metric: str = "cartesian", lattice_weight: float = 1.0, coord_weight: float = 1.0,
                 coords: str = "periodic", center: str = "label", top_k: int | None = None, labels_canonical: bool = False,
                 blur: float = 0.1):
        super().__init__()
        self._common_options(tau, bound, proper, normalize, lattice_metric, coords, center, top_k,
                             labels_canonical, coord_weight, blur)
        self.lattice_weight = _weight("lattice_weight", lattice_weight)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = _scorable(pred)
        L, F = _sanitized(pred, target, included)
        labels = target if self.labels_canonical else canonicalize_labels(target)[0]
        value, lat, crd, status = self._softmin_terms(pred, L, F, included, labels, self.lattice_weight)
        terms = {"softmin": value, "lattice": lat, "coords": crd}
        return _assemble(terms, {"softmin": 1.0}, included, status, torch.zeros_like(included))


@register_loss("gram")
class GramLoss(_CandidateSoftmin):
    """Losses on the metric ``G = L Lᵀ``: no rotation alignment anywhere.

    ``per_crystal = softmin_M(metric_weight · d_G(M) + coord_weight · d_coord(M)) + volume_weight ·
    volume + theta_weight · theta`` where

    * ``d_G(M)``: ``‖G_p - M G_n Mᵀ‖² / 9`` over the squared size (Å²), the metric of the prediction
      against the label's re-based metrics: invariant to rotating either structure; to the label's
      basis within the candidate set (as ``"softmin"``).
    * ``d_coord(M)``: the coordinate term in the candidate's basis (periodic MSE or Sinkhorn), which is
      what ties each candidate basis to the atoms; fractional coordinates ignore rotations.
    * ``volume``: :func:`~soft_niggli.invariants.volume_term`, ``(V_p^{1/3} - V_t^{1/3})²`` (Å²): exactly
      invariant to every change of basis and rotation.
    * ``theta``: :func:`~soft_niggli.invariants.theta_term`, squared difference of normalised lattice
      theta series at ``theta_scales`` (dimensionless): exactly invariant to every change of basis and
      rotation (up to a negligible truncation), a smooth fingerprint of the lattice's shape.

    ``terms``: ``"lattice"`` (softmin-weighted ``d_G``), ``"coords"``, ``"volume"``, ``"theta"`` and
    ``"softmin"``. Options as for ``"softmin"``, plus ``metric_weight``, ``volume_weight``,
    ``theta_weight`` (each >= 0; a zero weight switches the term off) and ``theta_scales``.
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 metric_weight: float = 1.0, coord_weight: float = 1.0, volume_weight: float = 1.0,
                 theta_weight: float = 1.0, theta_scales: tuple = (1.0, 2.0, 4.0), coords: str = "periodic",
                 center: str = "label", top_k: int | None = None, labels_canonical: bool = False, blur: float = 0.1):
        super().__init__()
        self._common_options(tau, bound, proper, normalize, "gram", coords, center, top_k, labels_canonical,
                             coord_weight, blur)
        self.metric_weight = _weight("metric_weight", metric_weight)
        self.volume_weight = _weight("volume_weight", volume_weight)
        self.theta_weight = _weight("theta_weight", theta_weight)
        scales = tuple(float(s) for s in theta_scales) if isinstance(theta_scales, (tuple, list)) else ()
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"theta_scales: expected a non-empty tuple of floats > 0, got {theta_scales!r}")
        self.theta_scales = scales

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = _scorable(pred)
        L, F = _sanitized(pred, target, included)
        labels = target if self.labels_canonical else canonicalize_labels(target)[0]
        value, lat, crd, status = self._softmin_terms(pred, L, F, included, labels, self.metric_weight)
        L_t = labels.lattice.detach()
        zero = torch.zeros_like(value)
        terms = {
            "softmin": value, "lattice": lat, "coords": crd,
            "volume": volume_term(L, L_t) if self.volume_weight else zero,
            "theta": theta_term(L, L_t, self.theta_scales) if self.theta_weight else zero,
        }
        weights = {"softmin": 1.0, "volume": self.volume_weight, "theta": self.theta_weight}
        return _assemble(terms, weights, included, status, torch.zeros_like(included))
