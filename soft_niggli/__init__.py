"""soft_niggli: unit-cell-invariant losses for crystal structure prediction.

Row convention throughout: lattices are ``(..., 3, 3)`` tensors whose rows are the lattice vectors,
Cartesian positions are ``X = F @ L``, and a change of basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.
"""

from .canonical import CanonicalLabels, ReducedForms, canonicalize_labels, reduced_forms
from .crystal import CrystalBatch, atom_slots
from .flow import CoupledLabels, align_rotation, couple_reduced_forms
from .forms_cache import ReducedFormsCache
from .lattice import (
    apply_basis_change,
    g6,
    gram,
    integer_inverse,
    lattice_from_parameters,
    lattice_parameters,
    random_rotations,
    to_cartesian,
    to_fractional,
    volume,
    wrap,
)
from .losses import CrystalLoss, LossResult, available_losses, get_loss, register_loss
from .niggli import NiggliResult, Status, is_niggli_reduced, niggli_reduce
from .unimodular import (
    LatticeAutomorphisms,
    enumerate_unimodular,
    is_unimodular,
    lattice_automorphisms,
    random_unimodular,
    signed_permutations,
)

__version__ = "0.1.0"

__all__ = [
    "CrystalLoss",
    "LossResult",
    "available_losses",
    "CanonicalLabels",
    "canonicalize_labels",
    "ReducedForms",
    "reduced_forms",
    "get_loss",
    "register_loss",
    "CrystalBatch",
    "atom_slots",
    "CoupledLabels",
    "align_rotation",
    "couple_reduced_forms",
    "ReducedFormsCache",
    "NiggliResult",
    "Status",
    "is_niggli_reduced",
    "niggli_reduce",
    "apply_basis_change",
    "enumerate_unimodular",
    "g6",
    "gram",
    "integer_inverse",
    "is_unimodular",
    "LatticeAutomorphisms",
    "lattice_automorphisms",
    "lattice_from_parameters",
    "lattice_parameters",
    "random_rotations",
    "random_unimodular",
    "signed_permutations",
    "to_cartesian",
    "to_fractional",
    "volume",
    "wrap",
]
