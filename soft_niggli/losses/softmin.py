"""The ``"softmin"`` loss over GL(3,Z), built by name like every loss; ``"gram"``
(:mod:`soft_niggli.losses.gram`) is the same softmin on the metric, plus basis-free invariants.

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases
the label as ``(M L, wrap(F M^{-1}))``.

Both losses compare the prediction with the label re-based by candidates ``M`` of a bounded set ``U``
(entries in ``[-bound, bound]``, det ±1; 6960 matrices for bound 1) around each of the label's reduced
forms, and combine the candidates with a softmin

    loss = -τ log Σ_Y w_Y exp(-d_Y / τ),   d_Y = w_lat · d_lat(Y) + w_coord · d_coord(Y),

which is smooth in the prediction and tends to ``min_Y d_Y`` as τ → 0. No reducer sits in the gradient
path: the prediction's own basis enters only through the distances. Cost is kept down four ways:
the candidates nearest on the lattice term are found without scoring all of ``U``
(:func:`~soft_niggli.losses.windows.grouped_window_candidates`, a branch and bound over the short
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
  A form's weight ``w`` (:meth:`~soft_niggli.canonical.ReducedForms.weights`) is 1 while it meets the
  conditions within half the tolerance and falls smoothly to 0 at the tolerance, where it leaves the
  set. Its class's candidates enter the softmin with a penalty ``p`` added to their distances (weight
  ``w_Y = exp(-p / τ)``), :func:`~soft_niggli.losses.terms.form_penalty`: ``(1 / w - 1)`` times the
  loss's own scale (``lattice_weight · ‖R‖² / 9`` plus a quarter of the coordinate term's), 0 at ``w =
  1`` and unbounded as ``w → 0``. Nothing jumps as a strained label moves a form across the edge, and
  exact symmetries and faces score as without weights. (``p = -τ log w`` would do that too, but grows
  so slowly that a class close to the edge can still hold the candidate nearest the prediction, and the
  loss then follows ``log w``'s steep slope there, amplifying the label's rounding.)
* **No hard top-k: a tapered window.** Per crystal, with ``t_k`` the ``top_k``-th smallest of the
  distinct candidates' lattice terms, each plus its class's penalty, every candidate up
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

The machinery both losses share is :class:`~soft_niggli.losses._candidate_softmin.CandidateSoftmin`.
"""

from __future__ import annotations

from .._moved import moved_names
from ..crystal import CrystalBatch
from ._candidate_softmin import CENTERS, CandidateSoftmin
from .registry import register_loss
from .result import LossResult

__all__ = ["SoftminLoss", "CENTERS"]

# Names that live in another module: importable from here too, each warning once where it lives.
__getattr__ = moved_names(__name__, {
    "GramLoss": "soft_niggli.losses.gram:GramLoss",
    "packed_softmin": "soft_niggli.losses._packed:packed_soft_minimum",
})


@register_loss("softmin")
class SoftminLoss(CandidateSoftmin):
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
            of it and it), in [1e-12, 0.1) like every tolerance. Default 1e-3, about what float32 labels
            get anyway (:func:`~soft_niggli.canonical.effective_rel_tol`: 1.2e-3): a label up to about
            5e-4 from a face of the Niggli cone (50 times the reducer's ``rel_tol``) has all its forms at
            full weight, so that its rounding in another basis cannot move their weights; a form inside
            the fade (5e-4 to 1e-3 from the conditions) still feels it, 10 times less than with a
            band 10 times narrower (``tests/losses/test_labels_near_faces.py``).
        cache_bytes: memory for the label side (its forms' classes and weights, and ``gram``'s theta
            series) remembered per label lattice (0 to 2**40 bytes; default 256 MiB, 0 turns it off).
            A training loop shows the same labels every epoch; a new label costs one reduction and the
            enumeration of its forms.
    """

    def __init__(self, *, tau: float = 0.1, bound: int = 1, proper: bool = False, normalize: bool = False,
                 lattice_metric: str = "cartesian", lattice_weight: float = 1.0, coord_weight: float = 1.0,
                 coords: str = "periodic", center: str = "label", top_k: int | None = None, labels_canonical: bool = False,
                 blur: float = 0.1, zero_at_match: bool = True, automorphism_rel_tol: float = 1e-3,
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
