"""``"reduced-forms"``: MSE against the nearest of the label's equally canonical reduced forms.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a unimodular ``X`` re-bases a
crystal as ``(X L, wrap(F X^{-1}))``.

The boundary-aware strategy for models trained on canonical (Niggli) labels, generative ones above
all. Away from the Niggli cone's boundary a lattice has two reduced forms, ``±R``, and the loss is the
plain MSE against the nearer (the label itself when the label is given in its Niggli basis and the
prediction is near it). On the boundary (right angles, equal lengths, symmetric cells) the lattice has
several forms that are all equally canonical (:func:`~soft_niggli.canonical.reduced_forms`), and which
one a reducer returns depends on rounding and on the basis the data came in; the loss takes the form
nearest the prediction, so it neither depends on that choice nor punishes a prediction for landing on
another side of the face. Unlike ``"softmin"`` over a bounded set of matrices it adds no freedom
beyond those forms: a prediction in a skewed basis is compared with the canonical forms, not pulled
towards a re-based one.
"""

from __future__ import annotations

import torch

from ..crystal import CrystalBatch
from ..forms_cache import ReducedFormsCache
from ..lattice import integer_inverse
from ..unimodular import LatticeAutomorphisms
from .base import CrystalLoss
from .options import int_option, rel_tol_option
from .registry import register_loss
from .result import LossResult
from .terms import closest_automorphism, coordinate_term, form_penalty, lattice_term

__all__ = ["NearestFormLoss"]


@register_loss("reduced-forms")
class NearestFormLoss(CrystalLoss):
    """``per_crystal = min over the label's reduced forms (X L_t, F_t X⁻¹) of lattice_weight ·
    lattice_term + coord_weight · coordinate_term`` (module docstring), the prediction as emitted.

    The form is chosen without gradient by the full weighted loss (lattice and coordinates: with
    ``lattice_metric="gram"`` the automorphic forms of a symmetric label tie on the lattice term and only
    the coordinates tell them apart; with Sinkhorn coordinates the lattice term alone chooses, among
    forms tied on it the coordinates decide). A form near the edge of the tolerance counts with a
    penalty, ``terms["fade"]`` (:func:`~soft_niggli.losses.terms.form_penalty` of its weight,
    :meth:`~soft_niggli.canonical.ReducedForms.weights`: 0 within half the tolerance of the Niggli
    conditions, growing without bound as the form leaves the set at the tolerance), so the minimum moves
    continuously where a form enters or leaves, and the loss is invariant to the basis the label came in
    there too. ``status`` is all zeros (the prediction is never reduced); a label that does not reduce
    ``OK`` has one form, the reducer's output. ``terms["forms"]`` holds the number of forms each label
    has (a count, not a loss term).

    Args (keyword-only, checked at construction):
        lattice_weight, coord_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` or ``"gram"``; coords: ``"periodic"`` or ``"sinkhorn"``;
            blur: Sinkhorn blur, Å, in (0, 10) (as every loss).
        rel_tol: the tolerance of the reduced forms (and of the reducer), in
            :data:`~soft_niggli.niggli.REL_TOL_RANGE`. Default 1e-3, the band of ``"softmin"``'s
            ``automorphism_rel_tol``: forms fade between 5e-4 and 1e-3 from the Niggli conditions, beyond
            10 times the reducer's 1e-5 from a face, so that there a label's rounding in another basis
            cannot move their weights and with them the loss.
        cache_bytes: memory for the labels' reduced forms (0 to 2**40 bytes; default 256 MiB, 0 turns
            it off): a :class:`~soft_niggli.forms_cache.ReducedFormsCache`, thread-safe, so that the
            forms of a label seen before are a lookup (a cubic label has 48).

    >>> label = CrystalBatch(4.0 * torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), [2])
    >>> rebased = label.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]]))
    >>> loss = NearestFormLoss()
    >>> float(loss(label, rebased).loss), float(loss(label, label).loss)  # the label in any basis
    (0.0, 0.0)
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 coords: str = "periodic", blur: float = 0.1, rel_tol: float = 1e-3, cache_bytes: int = 256 * 2**20):
        super().__init__()
        self.set_term_options(lattice_weight=lattice_weight, coord_weight=coord_weight,
                              lattice_metric=lattice_metric, coords=coords, blur=blur)
        self.rel_tol = rel_tol_option(rel_tol)
        self.cache_bytes = int_option("cache_bytes", cache_bytes, 0, 2**40)
        self._cache = ReducedFormsCache(self.cache_bytes, rel_tol=self.rel_tol)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B, dtype = len(pred), pred.dtype
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        forms = self._cache(target.lattice)
        weight = forms.weights(self.rel_tol)
        live = weight > 0  # a form of weight 0 (at the tolerance's edge) is not a candidate at all
        penalty = form_penalty(weight[live], forms.lattice[live], self.lattice_weight, self.coord_weight, self.coords)
        X = closest_automorphism(
            L.detach(), F.detach(), target, None, None, lattice_metric=self.lattice_metric, coords=self.coords,
            lattice_weight=self.lattice_weight, coord_weight=self.coord_weight, blur=self.blur,
            rel_tol=self.rel_tol, species=pred.species,
            group=LatticeAutomorphisms(owner=forms.owner[live], matrices=forms.transform[live]),
            lattice_first=self.coords == "sinkhorn", penalty=penalty)
        # The chosen form's lattice from the reducer's accurate cell (X L_t rounds for skewed labels).
        chosen = live & (forms.transform == X[forms.owner]).flatten(1).all(1)
        form_lattice = torch.zeros_like(target.lattice).index_put((forms.owner[chosen],), forms.lattice[chosen])
        fade = torch.zeros(B, dtype=torch.float64, device=pred.device).index_put(
            (forms.owner[chosen],), form_penalty(weight[chosen], forms.lattice[chosen], self.lattice_weight,
                                                 self.coord_weight, self.coords))
        T_frac = (target.frac.detach()[:, None, :] @ integer_inverse(X).to(dtype)[target.batch]).squeeze(1)
        terms = {
            "lattice": lattice_term(L, form_lattice.detach(), self.lattice_metric),
            "coords": coordinate_term(self.coords, F, T_frac, pred.batch, form_lattice, pred.species, target.species,
                                      self.blur),
            "forms": forms.counts(B).to(dtype),
            "fade": fade.to(dtype),
        }
        status = torch.zeros(B, dtype=torch.int64, device=pred.device)
        return self.assemble(terms, {"lattice": self.lattice_weight, "coords": self.coord_weight, "fade": 1.0}, included,
                             status)
