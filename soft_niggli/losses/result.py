"""What every loss returns: :class:`LossResult`, one record per call on ``B`` crystals."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LossResult"]


@dataclass(frozen=True)
class LossResult:
    """What every :class:`CrystalLoss` returns for ``B`` crystals (frozen: a result is a record of one call).

    Attributes:
        loss: scalar tensor in the prediction's dtype, the mean of ``per_crystal`` over the crystals not
            excluded (0 if all are); what to call ``backward()`` on.
        per_crystal: ``(B,)`` the weighted sum of the terms; 0 for excluded crystals.
        terms: name → ``(B,)`` unweighted terms, at least ``"lattice"`` (Å²) and ``"coords"`` (fractional²
            with periodic coordinates, Å² with Sinkhorn); 0 for excluded crystals. The dict is the
            loss's own: read it, do not change it.
        status: ``(B,)`` int64 tensor of :class:`~soft_niggli.niggli.Status` values, the reducer's verdict
            on each prediction's lattice where the loss reduces it (``"proxy"``; ``"softmin"`` and
            ``"gram"`` with ``center="both"``), ``Status.OK`` (0) everywhere otherwise. A tensor, so it
            stays on the batch's device; ``Status`` is an ``IntEnum``, so it compares directly:
            ``result.status == Status.OK`` is a ``(B,)`` bool tensor, and
            ``Status(int(result.status[i]))`` names one crystal's.
        excluded: ``(B,)`` bool, crystals left out of ``loss`` (fallback ``"skip"``, or a prediction
            that cannot be scored).
        fallback: ``(B,)`` bool, crystals whose prediction was finite but whose reduction was not
            ``OK``, so the loss's fallback decided what happened to them.
    """

    loss: torch.Tensor
    per_crystal: torch.Tensor
    terms: dict[str, torch.Tensor]
    status: torch.Tensor
    excluded: torch.Tensor
    fallback: torch.Tensor

    @property
    def skipped(self) -> int:
        """Number of crystals left out of ``loss``."""
        return int(self.excluded.sum())

    def to(self, dtype: torch.dtype) -> "LossResult":
        """The floating values (``loss``, ``per_crystal``, ``terms``) cast to ``dtype`` (differentiably)."""
        return LossResult(loss=self.loss.to(dtype), per_crystal=self.per_crystal.to(dtype),
                          terms={k: v.to(dtype) for k, v in self.terms.items()}, status=self.status,
                          excluded=self.excluded, fallback=self.fallback)
