"""The loss interface: :class:`CrystalLoss`, the base class of every loss, and what it checks.

Row convention (as everywhere in soft_niggli): a lattice is ``(..., 3, 3)`` with the lattice vectors
a, b, c as *rows*; Cartesian positions are ``X = F @ L``; a change of basis by a unimodular ``M`` is
``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Every loss is an ``nn.Module`` built by name and called the same way on the same batches::

    loss_fn = get_loss("proxy", lattice_metric="gram")
    result = loss_fn(pred, target)       # pred, target: CrystalBatch with equal atom counts
    result.loss.backward()               # scalar; result.per_crystal, .terms, .status: (B,)

Losses are built by name through the registry (:mod:`soft_niggli.losses.registry`), return a
:class:`~soft_niggli.losses.result.LossResult`, and check their options with the functions of
:mod:`soft_niggli.losses.options`.

Rules every loss follows (enforced here, in :meth:`CrystalLoss.forward` and the helpers it offers
subclasses):

* Units: lattice terms are in Å² (the lattice's unit squared), coordinate terms are dimensionless
  (fractional coordinates squared, at most 1/4) with ``coords="periodic"``, Å² with Sinkhorn.
* Predictions that cannot be scored (a NaN or inf in the crystal's lattice or coordinates, or a
  lattice entry beyond ``sqrt(finfo.max) / 4096``, about 3e150 in float64 and 4e15 in float32, where
  squares would overflow) are *excluded*: zero weight, zero ``per_crystal`` and terms, a zero (never
  NaN) gradient, counted in :attr:`LossResult.skipped`; ``loss`` is the mean over the remaining
  crystals (0 when none remain). Targets must be finite and within the same bound (``ValueError``
  otherwise): a bad label is a data bug, not a per-item event of training.
* Half precision: float16 and bfloat16 predictions are scored in float32 (float16's largest value,
  65504, cannot hold the squared terms of a real cell) and the result is returned in the prediction's
  dtype; gradients flow back to the half-precision tensors.
* Species: losses matching atoms by order (``coords="periodic"``) require equal species where both
  batches carry them and otherwise ignore them; with ``coords="sinkhorn"`` species are part of the
  cost, so pred and target must both carry them or both not (``ValueError`` otherwise).
* Options are validated at construction by the ``*_option`` functions of
  :mod:`soft_niggli.losses.options`, so one option has the same bounds in every loss (e.g. ``blur``
  in (0, 10) Å).
"""

from __future__ import annotations

import abc
import importlib
import inspect
import math
from typing import ClassVar

import torch
from torch import nn

from .._checks import has_values
from ..crystal import CrystalBatch
from .options import COORDINATE_TERMS, LATTICE_METRICS, blur_option, choice_option, weight_option
from .result import LossResult

__all__ = ["CrystalLoss", "max_magnitude"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


class CrystalLoss(nn.Module, abc.ABC):
    """Base of every strategy: ``loss_fn(pred, target) -> LossResult``.

    ``pred`` and ``target`` are :class:`~soft_niggli.crystal.CrystalBatch` with the same number of
    crystals, the same atom count per crystal (atoms matched by order) and, where both have species,
    the same species. The target is cast to the prediction's dtype and never differentiated.

    Subclasses implement :meth:`compute` and take their options as keyword-only ``__init__`` arguments,
    validated there with the ``*_option`` functions of :mod:`soft_niggli.losses.options`. Inside
    :meth:`compute` they use :meth:`scorable` (which predictions can be scored), :meth:`sanitized` (the
    prediction with the others replaced, so their gradient is 0, not NaN) and :meth:`assemble` (the
    :class:`LossResult`).
    """

    name: ClassVar[str] = ""

    #: Whether atoms of prediction and target are matched by their order (so species must agree atom
    #: by atom); losses that match atoms themselves (optimal transport) only need equal compositions.
    atoms_matched_by_order: bool = True

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of the options ``get_loss`` accepts for this loss (keyword-only ``__init__`` args)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.option_names() if hasattr(self, k))

    def forward(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        if isinstance(pred, CrystalBatch) and pred.dtype in _HALF_DTYPES:
            return self.forward(pred.to(dtype=torch.float32), target).to(pred.dtype)
        target = _check_pair(pred, target, self.atoms_matched_by_order)
        return self.compute(pred, target)

    @abc.abstractmethod
    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        """The loss on an already checked pair (target in pred's dtype, finite)."""

    def set_term_options(self, *, lattice_weight, coord_weight, lattice_metric: str, coords: str, blur) -> None:
        """Check and store the options of the lattice and coordinate terms, the same in every loss.

        Sets ``lattice_weight``, ``coord_weight`` (weights >= 0), ``lattice_metric`` (one of
        :data:`LATTICE_METRICS`), ``coords`` (one of :data:`COORDINATE_TERMS`), ``blur`` (Sinkhorn blur,
        Å) and :attr:`atoms_matched_by_order` (False with Sinkhorn, which matches atoms itself).
        """
        self.lattice_weight = weight_option("lattice_weight", lattice_weight)
        self.coord_weight = weight_option("coord_weight", coord_weight)
        self.lattice_metric = choice_option("lattice_metric", lattice_metric, LATTICE_METRICS)
        self.coords = choice_option("coords", coords, COORDINATE_TERMS)
        self.blur = blur_option(blur)
        self.atoms_matched_by_order = self.coords != "sinkhorn"

    # -- helpers for compute() ---------------------------------------------------------------------

    @staticmethod
    def scorable(pred: CrystalBatch) -> torch.Tensor:
        """``(B,)`` bool: the crystal's lattice and coordinates are finite and not absurdly large."""
        L = pred.lattice.detach()
        ok = torch.isfinite(L).flatten(1).all(1) & (L.abs().flatten(1).amax(1) <= max_magnitude(L.dtype))
        # Count non-finite atoms per crystal (no data-dependent indexing: this runs on the meta device too).
        bad_atoms = (~torch.isfinite(pred.frac.detach()).all(1)).to(torch.int64)
        return ok & (torch.zeros(ok.shape[0], dtype=torch.int64, device=ok.device).index_add(0, pred.batch, bad_atoms) == 0)

    @staticmethod
    def sanitized(pred: CrystalBatch, target: CrystalBatch, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(L, F)``: the prediction's values with the crystals not in ``keep`` replaced by the target's.

        Replacing *before* computing (rather than masking the result) is what keeps the gradient of an
        excluded NaN prediction at 0: ``where`` after a NaN would give ``0 * NaN = NaN`` in backward.
        """
        L = torch.where(keep[:, None, None], pred.lattice, target.lattice.detach())
        F = torch.where(keep[pred.batch][:, None], pred.frac, target.frac.detach())
        return L, F

    @staticmethod
    def assemble(terms: dict[str, torch.Tensor], weights: dict[str, float], included: torch.Tensor,
                 status: torch.Tensor, fallback: torch.Tensor | None = None) -> LossResult:
        """The :class:`LossResult` of ``(B,)`` terms: zeroed outside ``included``, weighted by ``weights``
        (a subset of the terms' names), averaged over the included crystals. ``fallback`` defaults to
        none."""
        zero = torch.zeros((), dtype=next(iter(terms.values())).dtype, device=included.device)
        terms = {k: torch.where(included, v, zero) for k, v in terms.items()}
        per_crystal = sum(weights[k] * terms[k] for k in weights)
        loss = per_crystal.sum() / included.sum().clamp_min(1).to(per_crystal.dtype)
        if fallback is None:
            fallback = torch.zeros_like(included)
        return LossResult(loss=loss, per_crystal=per_crystal, terms=terms, status=status, excluded=~included,
                          fallback=fallback)


def max_magnitude(dtype: torch.dtype) -> float:
    """Largest lattice entry a loss scores in ``dtype``: squares of differences of entries up to this
    stay far below the dtype's overflow threshold."""
    return math.sqrt(torch.finfo(dtype).max) / 4096.0


def _same_compositions(pred: CrystalBatch, target: CrystalBatch) -> bool:
    # Sort species within each crystal (crystal index as the major key) and compare.
    key_p = pred.batch * 1024 + pred.species
    key_t = target.batch * 1024 + target.species
    return torch.equal(torch.sort(key_p).values, torch.sort(key_t).values)


def _check_pair(pred, target, by_order: bool = True) -> CrystalBatch:
    for label, batch in (("pred", pred), ("target", target)):
        if not isinstance(batch, CrystalBatch):
            raise TypeError(f"{label}: expected a CrystalBatch, got {type(batch).__name__}")
    if len(pred) != len(target):
        raise ValueError(f"target: expected {len(pred)} crystals (as in pred), got {len(target)}")
    if pred.device != target.device:
        raise ValueError(f"target: expected device {pred.device} (pred's), got {target.device}")
    if not by_order and (pred.species is None) != (target.species is None):
        raise ValueError("target: with coords='sinkhorn' species are part of the cost, so pred and target must "
                         f"both carry species or both not; got species on "
                         f"{'pred' if pred.species is not None else 'target'} only")
    if target.dtype != pred.dtype:
        target = target.to(dtype=pred.dtype)
    if not has_values(pred.lattice):
        return target  # meta tensors: shapes only, no values to check
    if not torch.equal(pred.num_atoms, target.num_atoms):
        bad = (pred.num_atoms != target.num_atoms).nonzero().flatten()[:8].tolist()
        raise ValueError(f"target: expected the same number of atoms per crystal as pred, got differences at "
                         f"crystals {bad}: pred {pred.num_atoms[bad].tolist()}, target {target.num_atoms[bad].tolist()}")
    if pred.species is not None and target.species is not None:
        if by_order and not torch.equal(pred.species, target.species):
            raise ValueError("target: expected the same species as pred, atom by atom (atoms are matched by order), "
                             "got different species")
        if not by_order and not _same_compositions(pred, target):
            raise ValueError("target: expected the same composition as pred in every crystal, got different ones")
    if not (bool(torch.isfinite(target.lattice).all()) and bool(torch.isfinite(target.frac).all())):
        bad_lat = ~torch.isfinite(target.lattice).flatten(1).all(1)
        bad_lat[target.batch[~torch.isfinite(target.frac).all(1)]] = True
        raise ValueError(f"target: expected finite lattices and coordinates, got non-finite values in crystals "
                         f"{bad_lat.nonzero().flatten()[:8].tolist()}")
    huge = target.lattice.abs().flatten(1).amax(1) > max_magnitude(target.dtype)
    if bool(huge.any()):
        raise ValueError(f"target: expected lattice entries of magnitude at most {max_magnitude(target.dtype):.3g} "
                         f"in {target.dtype} (larger squares overflow), got larger ones in crystals "
                         f"{huge.nonzero().flatten()[:8].tolist()}")
    return target


# The result type, the option checks and the registry live in their own modules; every name of theirs
# that code importing this module may ask for is importable from here as well. The registry is looked
# up when asked for, since it imports this module.
_ELSEWHERE = {
    **dict.fromkeys(["LossResult"], "result"),
    **dict.fromkeys(["LATTICE_METRICS", "COORDINATE_TERMS", "weight_option", "choice_option", "flag_option",
                     "fraction_option", "positive_option", "int_option", "blur_option", "rel_tol_option"], "options"),
    **dict.fromkeys(["ENTRY_POINT_GROUP", "register_loss", "get_loss", "available_losses"], "registry"),
}


def __getattr__(name: str):
    module = _ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)
