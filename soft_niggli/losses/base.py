"""The loss interface: :class:`LossResult`, :class:`CrystalLoss`, the registry and option checks.

Row convention (as everywhere in soft_niggli): a lattice is ``(..., 3, 3)`` with the lattice vectors
a, b, c as *rows*; Cartesian positions are ``X = F @ L``; a change of basis by a unimodular ``M`` is
``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Every loss is an ``nn.Module`` built by name and called the same way on the same batches::

    loss_fn = get_loss("proxy", lattice_metric="gram")
    result = loss_fn(pred, target)       # pred, target: CrystalBatch with equal atom counts
    result.loss.backward()               # scalar; result.per_crystal, .terms, .status: (B,)

Names are checked when the loss is built (unknown name or option: ``ValueError`` listing the valid
ones), never at the first call. Losses come from two places: classes decorated with
:func:`register_loss` (the library's own), and the entry-point group ``soft_niggli.losses`` of any
installed distribution (name = loss name, value = ``"module:Class"``, a :class:`CrystalLoss`
subclass), loaded the first time :func:`get_loss` asks for that name. The baseline ``"proxy-spglib"``
(``soft_niggli.baselines.spglib_proxy``) is registered that way, so other packages can add
strategies exactly as it does.

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
* Options are validated at construction by the ``*_option`` functions below, so one option has the
  same bounds in every loss (e.g. ``blur`` in (0, 10) Å).
"""

from __future__ import annotations

import abc
import importlib.metadata
import inspect
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from .._checks import check_rel_tol, has_values
from ..crystal import CrystalBatch

__all__ = [
    "ENTRY_POINT_GROUP",
    "LATTICE_METRICS",
    "COORDINATE_TERMS",
    "LossResult",
    "CrystalLoss",
    "register_loss",
    "get_loss",
    "available_losses",
    "weight_option",
    "choice_option",
    "flag_option",
    "fraction_option",
    "positive_option",
    "int_option",
    "blur_option",
    "rel_tol_option",
    "max_magnitude",
]

#: Entry-point group through which installed packages add losses (name = loss name, value = class).
ENTRY_POINT_GROUP = "soft_niggli.losses"
#: Choices of the two terms every loss has (:mod:`soft_niggli.losses.terms`).
LATTICE_METRICS = ("cartesian", "gram")
COORDINATE_TERMS = ("periodic", "sinkhorn")
_HALF_DTYPES = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------- result


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


# --------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type["CrystalLoss"]] = {}


def register_loss(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`CrystalLoss` subclass buildable as ``get_loss(name, ...)``.

    Its options are the keyword-only arguments of its ``__init__``. Registering a different class under
    a taken name raises ``ValueError``; re-registering the same class (a module reload) replaces it.
    Packages outside the library can use this or, without importing anything at start-up, the
    entry-point group :data:`ENTRY_POINT_GROUP`.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty str, got {name!r}")

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, CrystalLoss)):
            raise TypeError(f"register_loss({name!r}): expected a CrystalLoss subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"loss name {name!r}: already registered to "
                             f"{existing.__module__}.{existing.__qualname__}, got {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Losses declared by installed distributions, by name (read each time: installs can change)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_losses() -> tuple[str, ...]:
    """Sorted names accepted by :func:`get_loss`: registered losses and those declared in the
    :data:`ENTRY_POINT_GROUP` entry points of installed packages (not imported until asked for)."""
    return tuple(sorted(set(_REGISTRY) | set(_entry_points())))


def _load_entry_point(name: str) -> None:
    entry_point = _entry_points().get(name)
    if entry_point is None:
        return
    try:
        cls = entry_point.load()
    except ImportError as err:
        raise ValueError(f"loss {name!r} is declared by the entry point {entry_point.value!r}, which could not be "
                         f"imported ({err}); built-in losses: {', '.join(sorted(_REGISTRY))}") from err
    if _REGISTRY.get(name) is not cls:
        register_loss(name)(cls)


def get_loss(name: str, **options) -> "CrystalLoss":
    """Build the loss registered as ``name`` with keyword ``options``.

    >>> get_loss("proxy", lattice_metric="gram", fallback="skip")  # doctest: +ELLIPSIS
    NiggliProxyLoss(...)

    Raises:
        TypeError: ``name`` is not a str.
        ValueError: for an unknown name (listing the valid names), an unknown option (listing the
            valid options), or an invalid option value (naming what was expected).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, one of {available_losses()}, got {type(name).__name__}")
    if name not in _REGISTRY:
        _load_entry_point(name)
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(available_losses())}")
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"loss {name!r}: unknown option(s) {', '.join(unknown)}; "
                         f"valid options: {', '.join(valid) if valid else 'none'}")
    return cls(**options)


# ------------------------------------------------------------------------------ option validation
# One checker per kind of option, used by every loss (and open to losses outside the library), so
# the same option has the same bounds and message everywhere. Wrong Python type: TypeError; a value
# out of range: ValueError.


def _number(name: str, value, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected {expected}, got {type(value).__name__} {value!r}")
    return float(value)


def weight_option(name: str, value) -> float:
    """A term's weight: a finite number >= 0 (0 switches the term off)."""
    value = _number(name, value, "a finite number >= 0")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return value


def positive_option(name: str, value) -> float:
    """A finite number > 0 (a temperature, a scale)."""
    value = _number(name, value, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return value


def fraction_option(name: str, value, high: float = 0.1) -> float:
    """A relative tolerance: a number in (0, ``high``)."""
    value = _number(name, value, f"a number in (0, {high})")
    if not 0 < value < high:
        raise ValueError(f"{name}: expected a number in (0, {high}), got {value!r}")
    return value


def blur_option(value) -> float:
    """Sinkhorn blur in Å, in (0, 10) in every loss (beyond 10 Å the cost says nothing of atoms)."""
    return fraction_option("blur", value, high=10.0)


def rel_tol_option(value, name: str = "rel_tol") -> float:
    """A relative tolerance (``rel_tol``, ``automorphism_rel_tol``): in
    :data:`~soft_niggli.niggli.REL_TOL_RANGE`, lower end included, the range and the message of every
    function of the library that takes one, so that an option accepted here never fails at the first
    call."""
    return check_rel_tol(value, name)


def int_option(name: str, value, low: int, high: int) -> int:
    """An int in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int in [{low}, {high}], got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}], got {value!r}")
    return value


def choice_option(name: str, value, choices: tuple[str, ...]) -> str:
    """One of the strings ``choices``."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def flag_option(name: str, value) -> bool:
    """True or False (not 0/1: a number here is more likely a misplaced argument)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return value


# ------------------------------------------------------------------------------------- base class


class CrystalLoss(nn.Module, abc.ABC):
    """Base of every strategy: ``loss_fn(pred, target) -> LossResult``.

    ``pred`` and ``target`` are :class:`~soft_niggli.crystal.CrystalBatch` with the same number of
    crystals, the same atom count per crystal (atoms matched by order) and, where both have species,
    the same species. The target is cast to the prediction's dtype and never differentiated.

    Subclasses implement :meth:`compute` and take their options as keyword-only ``__init__`` arguments,
    validated there with the ``*_option`` functions of this module. Inside :meth:`compute` they use
    :meth:`scorable` (which predictions can be scored), :meth:`sanitized` (the prediction with the
    others replaced, so their gradient is 0, not NaN) and :meth:`assemble` (the :class:`LossResult`).
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
