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

from collections import OrderedDict

import torch

from .._checks import has_values
from ..canonical import ReducedForms, reduced_forms
from ..crystal import CrystalBatch
from ..lattice import integer_inverse
from ..unimodular import LatticeAutomorphisms
from .base import CrystalLoss, LossResult, int_option, register_loss, rel_tol_option
from .terms import closest_automorphism, coordinate_term, lattice_term

__all__ = ["NearestFormLoss"]


@register_loss("reduced-forms")
class NearestFormLoss(CrystalLoss):
    """``per_crystal = min over the label's reduced forms (X L_t, F_t X⁻¹) of lattice_weight ·
    lattice_term + coord_weight · coordinate_term`` (module docstring), the prediction as emitted.

    The form is chosen without gradient by the full weighted loss (lattice and coordinates: with
    ``lattice_metric="gram"`` the automorphic forms of a symmetric label tie on the lattice term and only
    the coordinates tell them apart; with Sinkhorn coordinates the lattice term alone chooses, among
    forms tied on it the coordinates decide). Invariant to the basis the label came in, exactly where
    the label is not within a hair of the tolerance's edge (:func:`~soft_niggli.canonical.reduced_forms`).
    ``status`` is all zeros (the prediction is never reduced); a label that does not reduce ``OK`` has
    one form, the reducer's output. ``terms["forms"]`` holds the number of forms each label has.

    Args (keyword-only, checked at construction):
        lattice_weight, coord_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` or ``"gram"``; coords: ``"periodic"`` or ``"sinkhorn"``;
            blur: Sinkhorn blur, Å, in (0, 10) (as every loss).
        rel_tol: the tolerance of the reduced forms (and of the reducer), in
            :data:`~soft_niggli.niggli.REL_TOL_RANGE`.
        cache_size: labels whose reduced forms are remembered (0 to 100 000 000; default 100 000, 0 turns
            it off). A training loop shows the same labels every epoch, and their forms are a function
            of the label's lattice alone (:func:`~soft_niggli.canonical.reduced_forms`), so they are
            computed once per distinct lattice (keyed by its exact values, least recently used first
            out); this takes the loss's cost on cubic labels (48 forms each) from about that of
            ``"proxy"`` to a few lookups.

    >>> label = CrystalBatch(4.0 * torch.eye(3)[None], torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]), [2])
    >>> rebased = label.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]]))
    >>> loss = NearestFormLoss()
    >>> float(loss(label, rebased).loss), float(loss(label, label).loss)  # the label in any basis
    (0.0, 0.0)
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 coords: str = "periodic", blur: float = 0.1, rel_tol: float = 1e-5, cache_size: int = 100_000):
        super().__init__()
        self.set_term_options(lattice_weight=lattice_weight, coord_weight=coord_weight,
                              lattice_metric=lattice_metric, coords=coords, blur=blur)
        self.rel_tol = rel_tol_option(rel_tol)
        self.cache_size = int_option("cache_size", cache_size, 0, 100_000_000)
        self._cache: OrderedDict[bytes, tuple] = OrderedDict()

    def _forms(self, lattice: torch.Tensor) -> ReducedForms:
        """:func:`~soft_niggli.canonical.reduced_forms` of ``lattice (B, 3, 3)``, through the cache."""
        lattice = lattice.detach()
        if not self.cache_size or not has_values(lattice) or not lattice.shape[0]:
            return reduced_forms(lattice, rel_tol=self.rel_tol)
        B, device = lattice.shape[0], lattice.device
        values = lattice.to("cpu", torch.float64).contiguous().numpy()  # exact for every float dtype (bfloat16 too)
        keys = [str(lattice.dtype).encode() + values[b].tobytes() for b in range(B)]
        missing = [b for b, key in enumerate(keys) if key not in self._cache]
        if missing:
            new = reduced_forms(lattice[missing], rel_tol=self.rel_tol)
            counts = new.counts(len(missing)).tolist()
            for b, transform, form, status in zip(missing, new.transform.to("cpu").split(counts),
                                                  new.lattice.to("cpu").split(counts), new.status.tolist()):
                self._cache[keys[b]] = (transform, form, status, len(transform))
        entries = []
        for key in keys:
            self._cache.move_to_end(key)
            entries.append(self._cache[key])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        transform, form, status, counts = zip(*entries)
        counts = torch.tensor(counts, device=device)
        return ReducedForms(owner=torch.repeat_interleave(torch.arange(B, device=device), counts),
                            transform=torch.cat(transform).to(device), lattice=torch.cat(form).to(device),
                            status=torch.tensor(status, dtype=torch.int64, device=device))

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B, dtype = len(pred), pred.dtype
        included = self.scorable(pred)
        L, F = self.sanitized(pred, target, included)
        forms = self._forms(target.lattice)
        X = closest_automorphism(
            L.detach(), F.detach(), target, None, None, lattice_metric=self.lattice_metric, coords=self.coords,
            lattice_weight=self.lattice_weight, coord_weight=self.coord_weight, blur=self.blur,
            rel_tol=self.rel_tol, species=pred.species,
            group=LatticeAutomorphisms(owner=forms.owner, matrices=forms.transform),
            lattice_first=self.coords == "sinkhorn")
        # The chosen form's lattice from the reducer's accurate cell (X L_t rounds for skewed labels).
        chosen = (forms.transform[:, None] == X[forms.owner].unsqueeze(1)).flatten(1).all(1)
        form_lattice = torch.zeros_like(target.lattice).index_put((forms.owner[chosen],), forms.lattice[chosen])
        T_frac = (target.frac.detach()[:, None, :] @ integer_inverse(X).to(dtype)[target.batch]).squeeze(1)
        terms = {
            "lattice": lattice_term(L, form_lattice.detach(), self.lattice_metric),
            "coords": coordinate_term(self.coords, F, T_frac, pred.batch, form_lattice, pred.species, target.species,
                                      self.blur),
            "forms": forms.counts(B).to(dtype),
        }
        status = torch.zeros(B, dtype=torch.int64, device=pred.device)
        return self.assemble(terms, {"lattice": self.lattice_weight, "coords": self.coord_weight}, included, status)
