"""The ``"gram"`` loss: the softmin of :mod:`soft_niggli.losses.softmin` on the metric ``G = L Lᵀ``, plus
two terms that no change of basis or rotation moves (the volume and the lattice's theta series).

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))`` and its metric as ``M G Mᵀ``.
"""

from __future__ import annotations

import math

import torch

from ..crystal import CrystalBatch
from ._candidate_softmin import CandidateSoftmin
from ._label_forms import FrameCache
from .invariants import theta_series, theta_term, volume_term
from .options import weight_option
from .registry import register_loss
from .result import LossResult

__all__ = ["GramLoss"]


@register_loss("gram")
class GramLoss(CandidateSoftmin):
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
                 zero_at_match: bool = True, automorphism_rel_tol: float = 1e-3, cache_bytes: int = 256 * 2**20):
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
        self._theta_cache = FrameCache(self.cache_bytes)

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
