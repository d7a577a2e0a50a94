"""``"proxy"``: the discrete Niggli proxy loss on the guarded reducer.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a unimodular ``N`` re-bases a
crystal as ``(N L, wrap(F N^{-1}))``.
"""

from __future__ import annotations

import torch

from ..canonical import canonicalize_labels, reduce_or_identity, reduced_forms
from ..crystal import CrystalBatch
from ..lattice import integer_inverse
from ..niggli import Status
from ..unimodular import LatticeAutomorphisms
from .base import CrystalLoss
from .options import choice_option, flag_option, rel_tol_option, weight_option
from .registry import register_loss
from .result import LossResult
from .terms import closest_automorphism, coordinate_term, form_penalty, lattice_term

__all__ = ["NiggliProxyLoss", "FALLBACKS", "FRAMES", "LABEL_FORMS"]

FALLBACKS = ("identity", "skip")
FRAMES = ("reduced", "prediction")
LABEL_FORMS = ("automorphisms", "reduced")


@register_loss("proxy")
class NiggliProxyLoss(CrystalLoss):
    """Discrete Niggli proxy loss on the guarded reducer, with the basis ambiguity resolved.

    Per crystal, with gradients through ``pred.lattice`` and ``pred.frac`` only:

    1. Canonicalise the label: ``L_n = N_lab L_lab``, ``F_n = wrap(F_lab N_lab^{-1})``
       (:func:`canonicalize_labels`; skipped with ``labels_canonical=True`` when the data pipeline
       already did it).
    2. Reduce the detached prediction with :func:`~soft_niggli.niggli.niggli_reduce`:
       ``N_pred L_pred`` is its Niggli basis; ``status`` reports the reducer's verdict.
    3. The Niggli cell is unique as a metric, not as a basis: every automorphism ``A`` of the reduced
       label (unimodular, ``A G_n Aᵀ = G_n``; ``-I`` always, up to 48 for cubic lattices; all lie in
       {-1, 0, 1}, found by :func:`lattice_automorphisms`) gives an equally canonical target
       ``(A L_n, F_n A^{-1})``, and two re-based copies of one label can reduce to bases that differ
       by one. The loss takes the automorphism whose target is closest to the prediction, measured by
       the full weighted loss (lattice *and* coordinate terms: with ``lattice_metric="gram"`` every
       automorphism ties on the lattice term and only the coordinates tell them apart). Since the
       minimum runs over the whole group, the loss is invariant to the label's basis.
    4. Compare, in the frame chosen by ``frame``:

       * ``"reduced"`` (default): ``lattice_term(N_pred L_pred, A L_n)`` and
         ``periodic_coordinate_loss(F_pred N_pred^{-1}, F_n A^{-1})``. The value does not depend on
         which basis the prediction is expressed in, so nothing rewards drifting into skewed bases.
       * ``"prediction"`` (as first published): the label is pulled into the prediction's basis,
         ``lattice_term(L_pred, N_pred^{-1} A L_n)`` and ``periodic_coordinate_loss(F_pred,
         F_n A^{-1} N_pred)``. Errors are then measured through ``N_pred^{-1}``, whose singular
         values multiply to 1: a skewed basis shrinks the cost of errors along some directions, a
         plausible cause of the drift the design notes observed. Kept for ablations.

       ``per_crystal = lattice_weight · lattice + coord_weight · coords + skew_weight · skew`` with
       ``skew = (‖L_pred‖²_F - ‖N_pred L_pred‖²_F) / 9 >= 0`` (Å²; 0 iff the prediction's basis is
       already as short as its Niggli basis): an optional push towards emitting reduced bases, which
       keeps ``N_pred`` (and the factor ``N_predᵀ`` it puts on the gradient in the reduced frame)
       small. Default 0, i.e. the plain proxy loss (``benchmarks/proxy_training.py`` measures the
       drift it prevents).

    The reduced frame's lattice *value* is the reducer's accurately computed ``N_pred L_pred``; its
    gradient is that of ``N_pred @ L_pred`` (straight-through, exact for a piecewise-constant
    ``N_pred``). ``N_pred`` jumps where the prediction crosses a boundary of the Niggli cone, and with
    it the target: the loss is discontinuous there. On real data this is common, because symmetric
    labels lie *on* the boundaries: a slightly noisy copy of a label can reduce to another Niggli form
    (fcc 60/60/60° to 90/120/120°, hexagonal 120° to 60°, an angle near 90° flipping across it), and
    these forms are not near-automorphisms of the label, so ``automorphism_rel_tol`` does not help
    (``benchmarks/continuity.py`` shows the jump across one boundary). ``label_forms="reduced"``
    removes it near the label: the targets are then all the label's reduced forms
    (:func:`~soft_niggli.canonical.reduced_forms` within ``automorphism_rel_tol``: its automorphisms
    and the other Niggli forms of a cell on a cone face), so a prediction that reduces to the other
    side of the face meets the label's form on that side; a form near the tolerance's edge counts with
    a penalty (``terms["fade"]``, :func:`~soft_niggli.losses.terms.form_penalty`) that grows without
    bound as it leaves the set, so the label's edge makes no jump either. Across boundaries away from
    the label, only a loss without the hard reduction (the softmin) is continuous.

    Fallback, for predictions that are finite but whose reduction is not ``OK`` (``NOT_CONVERGED``,
    ``DEGENERATE``, or a reduced cell overflowing):

    * ``"identity"``: use ``N_pred = I``, i.e. compare the prediction as emitted with the canonical
      label (automorphism still chosen, ``skew = 0``). Finite for every finite prediction, degenerate
      ones included.
    * ``"skip"``: zero weight; counted in ``result.skipped`` and marked in ``result.excluded``.

    Either way ``result.fallback`` marks these crystals. Non-finite predictions (status
    ``NONFINITE``) and absurdly large ones are excluded whatever the fallback (module docstring).

    Args (keyword-only, checked at construction):
        lattice_weight, coord_weight, skew_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` or ``"gram"`` (compare ``L Lᵀ``: rotations of prediction and
            label do not matter); see :func:`lattice_term`.
        fallback: ``"identity"`` or ``"skip"``.
        frame: ``"reduced"`` or ``"prediction"``.
        labels_canonical: ``True`` if targets are already Niggli-reduced (by
            :func:`canonicalize_labels`); the automorphism search is complete only for reduced labels.
        label_forms: ``"automorphisms"`` (default: the label's automorphisms) or ``"reduced"`` (all its
            reduced forms, see above).
        automorphism_rel_tol: relative tolerance of :func:`lattice_automorphisms` (and of the reduced
            forms), in [1e-12, 0.1) like every tolerance; keep it above ``rel_tol`` so near-ties the
            reducer may break either way are covered. Default 1e-3, as ``"softmin"``: about float32's
            raised tolerance of the reduced forms (1.2e-3); the forms fade between 5e-4 and 1e-3 from
            the Niggli conditions, beyond 10 times ``rel_tol`` from a face, so that there a label's
            rounding in another basis cannot move a form's weight and with it the loss. With
            ``label_forms="automorphisms"`` near-automorphisms within 1e-3 count as automorphisms.
        rel_tol: the reducer's relative tolerance, in :data:`~soft_niggli.niggli.REL_TOL_RANGE`.
        coords: ``"periodic"`` or ``"sinkhorn"`` (:func:`coordinate_term`; with Sinkhorn, atom order is
            free and the lattice term alone picks the automorphism). blur: Sinkhorn blur, Å.

    Example: a re-based, translated copy of the label scores zero, in any basis of the label.

    >>> label = CrystalBatch(4.0 * torch.eye(3)[None], torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.6, 0.6]]), [2])
    >>> copy = label.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]]))
    >>> copy = CrystalBatch(copy.lattice, copy.frac + 0.25, [2])
    >>> loss = NiggliProxyLoss()
    >>> loss(copy, label).loss.item() < 1e-10, loss(copy, label.apply_basis_change(-torch.eye(3))).loss.item() < 1e-10
    (True, True)

    Cost: one reduction of the predictions, the label automorphisms (:func:`lattice_automorphisms`) and
    a loss evaluation per (crystal, automorphism) pair, all without gradient; the backward pass sees
    only the chosen pair. Measured figures: ``benchmarks/results/loss_cost.md``.
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 fallback: str = "identity", frame: str = "reduced", labels_canonical: bool = False,
                 skew_weight: float = 0.0, label_forms: str = "automorphisms", automorphism_rel_tol: float = 1e-3,
                 rel_tol: float = 1e-5,
                 coords: str = "periodic", blur: float = 0.1):
        super().__init__()
        self.set_term_options(lattice_weight=lattice_weight, coord_weight=coord_weight,
                              lattice_metric=lattice_metric, coords=coords, blur=blur)
        self.skew_weight = weight_option("skew_weight", skew_weight)
        self.fallback = choice_option("fallback", fallback, FALLBACKS)
        self.frame = choice_option("frame", frame, FRAMES)
        self.labels_canonical = flag_option("labels_canonical", labels_canonical)
        self.label_forms = choice_option("label_forms", label_forms, LABEL_FORMS)
        self.automorphism_rel_tol = rel_tol_option(automorphism_rel_tol, "automorphism_rel_tol")
        self.rel_tol = rel_tol_option(rel_tol)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B, dtype, device = len(pred), pred.dtype, pred.device
        scorable = self.scorable(pred)
        L_p, F_p = self.sanitized(pred, target, scorable)
        labels = target if self.labels_canonical else canonicalize_labels(target, rel_tol=self.rel_tol).batch
        L_n, F_n = labels.lattice.detach(), labels.frac.detach()

        reduction = reduce_or_identity(pred.lattice.detach(), scorable, rel_tol=self.rel_tol)
        N, status, reduced_value = reduction.transform, reduction.status, reduction.lattice
        ok = (status == int(Status.OK)) & scorable
        fallback = scorable & ~ok
        included = ok | fallback if self.fallback == "identity" else ok

        eye = torch.eye(3, dtype=torch.int64, device=device)
        N_f, N_inv_f = N.to(dtype), integer_inverse(N).to(dtype)
        NL = N_f @ L_p
        # Straight-through: the reducer's accurate value, the gradient of N @ L_pred.
        reduced = torch.where(ok[:, None, None], reduced_value.to(dtype), NL.detach())
        reduced = reduced + (NL - NL.detach())
        if self.frame == "reduced":
            P_lat = reduced
            P_frac = (F_p[:, None, :] @ N_inv_f[pred.batch]).squeeze(1)
            left, right = eye.to(dtype).expand(B, 3, 3), eye.to(dtype).expand(B, 3, 3)
        else:
            P_lat, P_frac = L_p, F_p
            left, right = N_inv_f, N_f

        group = penalty = None  # closest_automorphism's default: the label's automorphisms
        fade = torch.zeros(B, dtype=torch.float64, device=device)
        if self.label_forms == "reduced":
            # Every reduced form, faded out by its distance from the Niggli conditions (form_penalty): a
            # form entering or leaving the set at the tolerance's edge moves the loss continuously.
            forms = reduced_forms(L_n, rel_tol=self.automorphism_rel_tol)
            weight = forms.weights(self.automorphism_rel_tol)
            live = weight > 0
            group = LatticeAutomorphisms(owner=forms.owner[live], matrices=forms.transform[live])
            penalty = form_penalty(weight[live], forms.lattice[live], self.lattice_weight, self.coord_weight,
                                   self.coords)
        A = closest_automorphism(P_lat.detach(), P_frac.detach(), labels, left, right, group=group,
                                 lattice_metric=self.lattice_metric, coords=self.coords,
                                 lattice_weight=self.lattice_weight, coord_weight=self.coord_weight, blur=self.blur,
                                 rel_tol=self.automorphism_rel_tol, species=pred.species,
                                 lattice_first=self.coords == "sinkhorn", penalty=penalty)
        if penalty is not None:
            chosen = (group.matrices == A[group.owner]).flatten(1).all(1)
            fade = fade.index_put((group.owner[chosen],), penalty[chosen])
        A_f, A_inv_f = A.to(dtype), integer_inverse(A).to(dtype)
        T_lat = left @ A_f @ L_n
        T_frac = (F_n[:, None, :] @ (A_inv_f @ right)[pred.batch]).squeeze(1)
        skew = ((L_p.square().sum(dim=(1, 2)) - reduced.square().sum(dim=(1, 2))) / 9).clamp_min(0)
        terms = {
            "lattice": lattice_term(P_lat, T_lat, self.lattice_metric),
            "coords": coordinate_term(self.coords, P_frac, T_frac, pred.batch, T_lat, pred.species, labels.species,
                                      self.blur),
            "skew": skew,
            "fade": fade.to(dtype),
        }
        weights = {"lattice": self.lattice_weight, "coords": self.coord_weight, "skew": self.skew_weight, "fade": 1.0}
        return self.assemble(terms, weights, included, status, fallback)
