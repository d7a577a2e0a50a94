"""``"mse"``: the reference that ignores Type III and compares lattices as given.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; Cartesian ``X = F L``.
"""

from __future__ import annotations

import torch

from ..crystal import CrystalBatch
from .base import CrystalLoss
from .registry import register_loss
from .result import LossResult
from .terms import coordinate_term, lattice_term

__all__ = ["MSELoss"]


@register_loss("mse")
class MSELoss(CrystalLoss):
    """DiffCSP-style reference that ignores Type III: compares the lattices *as given*.

    ``per_crystal = lattice_weight · lattice_term(L_pred, L_target) + coord_weight ·
    coordinate_term(F_pred, F_target)``. It is invariant to translations and wraps of the coordinates,
    and with ``lattice_metric="gram"`` to rotations, but not to a change of basis of the label: that
    failure is what the other strategies exist to fix. ``status`` is all zeros (no reducer).

    Args:
        lattice_weight, coord_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` or ``"gram"`` (see :func:`~soft_niggli.losses.terms.lattice_term`).
        coords: ``"periodic"`` or ``"sinkhorn"`` (see :func:`~soft_niggli.losses.terms.coordinate_term`).
        blur: Sinkhorn blur, Å, in (0, 10).
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 coords: str = "periodic", blur: float = 0.1):
        super().__init__()
        self.set_term_options(lattice_weight=lattice_weight, coord_weight=coord_weight,
                              lattice_metric=lattice_metric, coords=coords, blur=blur)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        terms = {
            "lattice": lattice_term(L, target.lattice.detach(), self.lattice_metric),
            "coords": coordinate_term(self.coords, F, target.frac.detach(), pred.batch, target.lattice,
                                      pred.species, target.species, self.blur),
        }
        status = torch.zeros(len(pred), dtype=torch.int64, device=pred.device)
        return self.assemble(terms, {"lattice": self.lattice_weight, "coords": self.coord_weight}, included, status)
