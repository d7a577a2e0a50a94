"""Crystal losses behind one interface, one module per concept.

Row convention (as everywhere in soft_niggli): lattices ``(..., 3, 3)`` have the lattice vectors as
rows; Cartesian ``X = F @ L``; a change of basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

=====================  ==========================================================================
module                 what
=====================  ==========================================================================
``base``               :class:`CrystalLoss`, the base class: what every loss checks and offers
``result``             :class:`LossResult`, what every loss returns
``registry``           :func:`get_loss`, :func:`register_loss`, :func:`available_losses`, entry points
``options``            the option checks every loss uses (``weight_option``, ``choice_option``, ...)
``terms``              the lattice term, the coordinate term, the label's automorphic basis or
                       reduced form nearest the prediction
                       (:func:`~soft_niggli.losses.terms.closest_automorphism`), the penalty of a
                       reduced form near the tolerance's edge (``form_penalty``)
``periodic``           the periodic coordinate MSE with the best translation removed
``sinkhorn``           the permutation-invariant coordinate term (geomloss Sinkhorn divergence)
``invariants``         basis-free lattice invariants: volume and theta series (over a ball)
``candidates``         the bounded candidate set of unimodular matrices, the distances to all its
                       re-basings of a reference, their soft minimum
``windows``            the windows of candidates nearest a prediction (per row, and per group of
                       rows), found without scoring the whole set
``mse``                ``"mse"``: the reference that compares lattices as given
``nearest_form``       ``"reduced-forms"``: MSE against the nearest of the label's reduced forms
``proxy``              ``"proxy"``: the discrete Niggli proxy loss
``softmin``            ``"softmin"``: a softmin over the candidates around the label's reduced forms
``gram``               ``"gram"``: the same softmin on the metric, plus volume and theta series
=====================  ==========================================================================

The machinery ``softmin`` and ``gram`` share is in private modules (``_candidate_softmin``, the
label's forms ``_label_forms``, the offset of ``zero_at_match`` ``_match_offset``, the operations on
packed values ``_packed``).

Importing this package registers ``"mse"``, ``"reduced-forms"``, ``"proxy"``, ``"softmin"`` and ``"gram"``; losses of
other installed packages come through the ``soft_niggli.losses`` entry-point group (``registry``).
"""

from .base import CrystalLoss
from .gram import GramLoss
from .mse import MSELoss
from .nearest_form import NearestFormLoss
from .options import (
    blur_option,
    choice_option,
    flag_option,
    fraction_option,
    int_option,
    positive_option,
    rel_tol_option,
    weight_option,
)
from .proxy import NiggliProxyLoss
from .registry import ENTRY_POINT_GROUP, available_losses, get_loss, register_loss
from .result import LossResult
from .softmin import SoftminLoss

__all__ = [
    "ENTRY_POINT_GROUP",
    "CrystalLoss",
    "LossResult",
    "available_losses",
    "get_loss",
    "register_loss",
    "blur_option",
    "choice_option",
    "flag_option",
    "fraction_option",
    "int_option",
    "positive_option",
    "rel_tol_option",
    "weight_option",
    "MSELoss",
    "NearestFormLoss",
    "NiggliProxyLoss",
    "SoftminLoss",
    "GramLoss",
]
