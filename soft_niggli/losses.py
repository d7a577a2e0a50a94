"""Crystal losses behind one interface, chosen by name, and the discrete Niggli proxy loss.

Row convention (as everywhere in soft_niggli): a lattice is ``(..., 3, 3)`` with the lattice vectors
a, b, c as *rows*; Cartesian positions are ``X = F @ L``; a change of basis by a unimodular ``M`` is
``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

Every loss is an ``nn.Module`` built by name and called the same way on the same batches::

    loss_fn = get_loss("proxy", lattice_metric="gram")
    result = loss_fn(pred, target)       # pred, target: CrystalBatch with equal atom counts
    result.loss.backward()               # scalar; result.per_crystal, .terms, .status: (B,)

Names are checked when the loss is built (unknown name or option: ``ValueError`` listing the valid
ones), never at the first call. :func:`register_loss` adds a strategy; the baseline
``"proxy-spglib"`` (the loss as first published, in ``baselines/spglib_proxy.py``) is registered
lazily: :func:`get_loss` imports ``baselines.spglib_proxy`` the first time that name is asked for,
so ``get_loss("proxy-spglib")`` works wherever the ``baselines`` package is importable (a checkout or
an install of this repository); importing ``baselines.spglib_proxy`` yourself registers it too.

Units: lattice terms are in Å² (the lattice's unit squared), coordinate terms are dimensionless
(fractional coordinates squared, at most 1/4).

Predictions that cannot be scored (a NaN or inf in the crystal's lattice or coordinates, or a lattice
entry beyond ``sqrt(finfo.max) / 4096``, about 3e150 in float64 and 4e15 in float32, where squares
would overflow) are *excluded*: they get zero weight, zero ``per_crystal`` and terms, a zero (never
NaN) gradient, and are counted in :attr:`LossResult.skipped`; ``loss`` is the mean over the remaining
crystals (0 when none remain). Targets must be finite and within the same magnitude bound
(``ValueError`` otherwise): a bad label is a data bug, not a per-item event of training.

Half precision: float16 and bfloat16 predictions are scored in float32 (their range cannot hold the
squared terms of a real cell: float16's largest value is 65504) and the result is returned in the
prediction's dtype; gradients flow back to the half-precision tensors.

Species: losses matching atoms by order (``coords="periodic"``) require equal species where both
batches carry them and otherwise ignore them; with ``coords="sinkhorn"`` species are part of the cost,
so pred and target must both carry them or both not (``ValueError`` otherwise), in every loss.
"""

from __future__ import annotations

import abc
import functools
import importlib
import importlib.util
import inspect
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from .crystal import CrystalBatch
from .lattice import integer_inverse
from .niggli import Status, _check_rel_tol, niggli_reduce
from .periodic import periodic_coordinate_loss
from .transport import sinkhorn_coordinate_loss_flat

__all__ = [
    "LossResult",
    "CrystalLoss",
    "register_loss",
    "get_loss",
    "available_losses",
    "canonicalize_labels",
    "lattice_automorphisms",
    "closest_automorphism",
    "reduce_or_identity",
    "tie_tolerance",
    "lattice_term",
    "MSELoss",
    "NiggliProxyLoss",
    "LATTICE_METRICS",
    "COORDINATE_TERMS",
    "coordinate_term",
    "FALLBACKS",
    "FRAMES",
]

LATTICE_METRICS = ("cartesian", "gram")
_HALF_DTYPES = (torch.float16, torch.bfloat16)
COORDINATE_TERMS = ("periodic", "sinkhorn")
FALLBACKS = ("identity", "skip")
FRAMES = ("reduced", "prediction")


# ----------------------------------------------------------------------------------------- result


@dataclass
class LossResult:
    """What every :class:`CrystalLoss` returns for ``B`` crystals.

    Attributes:
        loss: scalar, mean of ``per_crystal`` over the crystals not excluded (0 if all are).
        per_crystal: ``(B,)`` weighted sum of the terms; 0 for excluded crystals.
        terms: name → ``(B,)`` unweighted terms, at least ``"lattice"`` (Å²) and ``"coords"``
            (fractional², at most 1/4); 0 for excluded crystals.
        status: ``(B,)`` int64 :class:`~soft_niggli.niggli.Status` of the prediction's lattice from
            the reducer, where the loss uses one; zeros (``OK``) otherwise.
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
# Losses that live outside the library and are imported the first time their name is asked for.
_LAZY_LOSSES: dict[str, str] = {"proxy-spglib": "baselines.spglib_proxy"}


def register_loss(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`CrystalLoss` subclass buildable as ``get_loss(name, ...)``.

    Its options are the keyword-only arguments of its ``__init__``. Registering a different class under
    a taken name raises ``ValueError``; re-registering the same class (a module reload) replaces it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, CrystalLoss)):
            raise ValueError(f"register_loss({name!r}): expected a CrystalLoss subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"loss name {name!r}: already registered to "
                             f"{existing.__module__}.{existing.__qualname__}, got {cls.__module__}.{cls.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _importable(module: str) -> bool:
    # find_spec on the top-level package does not import it (a dotted name would import the parent).
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def available_losses() -> tuple[str, ...]:
    """Sorted names accepted by :func:`get_loss` (registered ones, plus lazily registered baselines
    whose package can be imported here)."""
    lazy = {name for name, module in _LAZY_LOSSES.items() if _importable(module)}
    return tuple(sorted(set(_REGISTRY) | lazy))


def get_loss(name: str, **options) -> "CrystalLoss":
    """Build the loss registered as ``name`` with keyword ``options``.

    >>> get_loss("proxy", lattice_metric="gram", fallback="skip")  # doctest: +ELLIPSIS
    NiggliProxyLoss(...)

    Raises:
        ValueError: for an unknown name (listing the valid names), an unknown option (listing the
            valid options), or an invalid option value (naming what was expected).
    """
    if not isinstance(name, str):
        raise ValueError(f"name: expected a str, one of {available_losses()}, got {type(name).__name__}")
    if name not in _REGISTRY and name in _LAZY_LOSSES:
        module = _LAZY_LOSSES[name]
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"loss {name!r} is defined in {module}, which could not be imported ({err}); "
                             f"available here: {', '.join(sorted(_REGISTRY))}") from err
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


def _weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected True or False, got {value!r}")
    return value


def _tolerance(name: str, value, high: float = 0.1) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < high:
        raise ValueError(f"{name}: expected a float in (0, {high}), got {value!r}")
    return float(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite float > 0, got {value!r}")
    return float(value)


def _blur(value) -> float:
    """Sinkhorn blur in Å: the same bounds in every loss (beyond 10 Å the cost says nothing of atoms)."""
    return _tolerance("blur", value, high=10.0)


# ------------------------------------------------------------------------------------- base class


class CrystalLoss(nn.Module, abc.ABC):
    """Base of every strategy: ``loss_fn(pred, target) -> LossResult``.

    ``pred`` and ``target`` are :class:`~soft_niggli.crystal.CrystalBatch` with the same number of
    crystals, the same atom count per crystal (atoms matched by order) and, where both have species,
    the same species. The target is cast to the prediction's dtype and never differentiated.
    Subclasses implement :meth:`compute` and take their options as keyword-only ``__init__`` arguments,
    validated there (bad values raise ``ValueError`` at construction).
    """

    name: ClassVar[str] = ""

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of the options ``get_loss`` accepts for this loss (keyword-only ``__init__`` args)."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in self.option_names() if hasattr(self, k))

    #: Whether atoms of prediction and target are matched by their order (so species must agree atom
    #: by atom); losses that match atoms themselves (optimal transport) only need equal compositions.
    atoms_matched_by_order: bool = True

    def forward(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        if isinstance(pred, CrystalBatch) and pred.dtype in _HALF_DTYPES:
            return self.forward(pred.to(dtype=torch.float32), target).to(pred.dtype)
        target = _check_pair(pred, target, self.atoms_matched_by_order)
        return self.compute(pred, target)

    @abc.abstractmethod
    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        """The loss on an already checked pair (target in pred's dtype, finite)."""


def _same_compositions(pred: CrystalBatch, target: CrystalBatch) -> bool:
    # Sort species within each crystal (crystal index as the major key) and compare.
    key_p = pred.batch * 1024 + pred.species
    key_t = target.batch * 1024 + target.species
    return torch.equal(torch.sort(key_p).values, torch.sort(key_t).values)


def _check_pair(pred, target, by_order: bool = True) -> CrystalBatch:
    for label, batch in (("pred", pred), ("target", target)):
        if not isinstance(batch, CrystalBatch):
            raise ValueError(f"{label}: expected a CrystalBatch, got {type(batch).__name__}")
    if len(pred) != len(target):
        raise ValueError(f"target: expected {len(pred)} crystals (as in pred), got {len(target)}")
    if pred.device != target.device:
        raise ValueError(f"target: expected device {pred.device} (pred's), got {target.device}")
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
    if not by_order and (pred.species is None) != (target.species is None):
        raise ValueError("target: with coords='sinkhorn' species are part of the cost, so pred and target must "
                         f"both carry species or both not; got species on "
                         f"{'pred' if pred.species is not None else 'target'} only")
    if target.dtype != pred.dtype:
        target = target.to(dtype=pred.dtype)
    if not (bool(torch.isfinite(target.lattice).all()) and bool(torch.isfinite(target.frac).all())):
        bad_lat = ~torch.isfinite(target.lattice).flatten(1).all(1)
        bad_lat[target.batch[~torch.isfinite(target.frac).all(1)]] = True
        raise ValueError(f"target: expected finite lattices and coordinates, got non-finite values in crystals "
                         f"{bad_lat.nonzero().flatten()[:8].tolist()}")
    huge = target.lattice.abs().flatten(1).amax(1) > _max_magnitude(target.dtype)
    if bool(huge.any()):
        raise ValueError(f"target: expected lattice entries of magnitude at most {_max_magnitude(target.dtype):.3g} "
                         f"in {target.dtype} (larger squares overflow), got larger ones in crystals "
                         f"{huge.nonzero().flatten()[:8].tolist()}")
    return target


def _max_magnitude(dtype: torch.dtype) -> float:
    # Squares of differences of entries up to this stay far below the dtype's overflow threshold.
    return math.sqrt(torch.finfo(dtype).max) / 4096.0


def _scorable(pred: CrystalBatch) -> torch.Tensor:
    """``(B,)`` bool: the crystal's lattice and coordinates are finite and not absurdly large."""
    L = pred.lattice.detach()
    ok = torch.isfinite(L).flatten(1).all(1) & (L.abs().flatten(1).amax(1) <= _max_magnitude(L.dtype))
    bad_atoms = ~torch.isfinite(pred.frac.detach()).all(1)
    if bool(bad_atoms.any()):
        ok = ok & (torch.bincount(pred.batch[bad_atoms], minlength=len(pred)) == 0)
    return ok


def _sanitized(pred: CrystalBatch, target: CrystalBatch, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction values with the crystals not in ``keep`` replaced by the target's.

    Replacing *before* computing (rather than masking the result) is what keeps the gradient of an
    excluded NaN prediction at 0: ``where`` after a NaN would give ``0 * NaN = NaN`` in backward.
    """
    L = torch.where(keep[:, None, None], pred.lattice, target.lattice.detach())
    F = torch.where(keep[pred.batch][:, None], pred.frac, target.frac.detach())
    return L, F


def _assemble(terms: dict[str, torch.Tensor], weights: dict[str, float], included: torch.Tensor,
              status: torch.Tensor, fallback: torch.Tensor) -> LossResult:
    zero = torch.zeros((), dtype=next(iter(terms.values())).dtype, device=included.device)
    terms = {k: torch.where(included, v, zero) for k, v in terms.items()}
    per_crystal = sum(weights[k] * terms[k] for k in weights)
    loss = per_crystal.sum() / included.sum().clamp_min(1).to(per_crystal.dtype)
    return LossResult(loss=loss, per_crystal=per_crystal, terms=terms, status=status, excluded=~included,
                      fallback=fallback)


# ------------------------------------------------------------------------------------ lattice term


def lattice_term(pred_lattice: torch.Tensor, target_lattice: torch.Tensor, metric: str = "cartesian") -> torch.Tensor:
    """Lattice error ``(...)`` in Å² between ``(..., 3, 3)`` lattices (rows are lattice vectors).

    ``"cartesian"``: ``mean_ij (L_p - L_t)_ij²``, the plain MSE (depends on orientation).
    ``"gram"``: ``mean_ij (G_p - G_t)_ij² / (‖L_p‖²_F + ‖L_t‖²_F)`` with ``G = L Lᵀ``: invariant to
    rotating either lattice, zero iff the metrics agree. Dividing the quartic ``‖ΔG‖²`` by the squared
    scale brings it back to Å², the same order as the Cartesian term near a match (for ``L = aI``,
    ``δL = εI`` it is ``2ε²/9`` against ``ε²/3``), and lets it be computed without overflow: both
    lattices are scaled by a common power of two (exact, detached) before squaring.
    """
    _choice("metric", metric, LATTICE_METRICS)
    if metric == "cartesian":
        return (pred_lattice - target_lattice).square().mean(dim=(-1, -2))
    m = torch.maximum(pred_lattice.detach().abs().amax(dim=(-1, -2)), target_lattice.detach().abs().amax(dim=(-1, -2)))
    m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
    _, exponent = torch.frexp(m)
    exponent = exponent.clamp(-1000, 1000)  # 2**±1000 is a normal float64; beyond it values underflow anyway
    down = torch.ldexp(torch.ones_like(m), -exponent)[..., None, None]
    up = torch.ldexp(torch.ones_like(m), exponent)
    P, T = pred_lattice * down, target_lattice * down
    dG = P @ P.transpose(-1, -2) - T @ T.transpose(-1, -2)
    norm = P.square().sum(dim=(-1, -2)) + T.square().sum(dim=(-1, -2))
    # After the scaling norm is at least 1/4 unless both cells are zero; 1 there keeps the gradient 0
    # (a clamp at a tiny floor would give 0 · 1/tiny² = NaN in backward).
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return dG.square().mean(dim=(-1, -2)) / norm * up * up


def coordinate_term(kind: str, frac_pred: torch.Tensor, frac_target: torch.Tensor, batch: torch.Tensor,
                    lattice: torch.Tensor, species_pred=None, species_target=None, blur: float = 0.1) -> torch.Tensor:
    """The coordinate term every strategy uses, ``(B,)``, with ``B = lattice.shape[0]``.

    ``"periodic"``: :func:`~soft_niggli.periodic.periodic_coordinate_loss`, atoms matched by order,
    fractional² (at most 1/4). ``"sinkhorn"``:
    :func:`~soft_niggli.transport.sinkhorn_coordinate_loss_flat` in ``lattice`` (detached), atom order
    free, species-aware, Å². Both ignore translations and wraps.
    """
    _choice("coords", kind, COORDINATE_TERMS)
    if kind == "periodic":
        return periodic_coordinate_loss(frac_pred, frac_target, batch, lattice.shape[0])
    return sinkhorn_coordinate_loss_flat(frac_pred, frac_target, batch, lattice.detach(), species_pred,
                                         species_target, blur=blur, scaling=0.5)


# ----------------------------------------------------------------------------------- plain "mse"


@register_loss("mse")
class MSELoss(CrystalLoss):
    """DiffCSP-style reference that ignores Type III: compares the lattices *as given*.

    ``per_crystal = lattice_weight · lattice_term(L_pred, L_target) + coord_weight ·
    periodic_coordinate_loss(F_pred, F_target)``. It is invariant to translations and wraps of the
    coordinates, and with ``lattice_metric="gram"`` to rotations, but not to a change of basis of the
    label: that failure is what the other strategies exist to fix. ``status`` is all zeros (no reducer).

    Args:
        lattice_weight, coord_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` or ``"gram"`` (see :func:`lattice_term`).
        coords: ``"periodic"`` or ``"sinkhorn"`` (see :func:`coordinate_term`); blur: Sinkhorn blur, Å.
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 coords: str = "periodic", blur: float = 0.1):
        super().__init__()
        self.lattice_weight = _weight("lattice_weight", lattice_weight)
        self.coord_weight = _weight("coord_weight", coord_weight)
        self.lattice_metric = _choice("lattice_metric", lattice_metric, LATTICE_METRICS)
        self.coords = _choice("coords", coords, COORDINATE_TERMS)
        self.blur = _blur(blur)
        self.atoms_matched_by_order = self.coords != "sinkhorn"

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B = len(pred)
        included = _scorable(pred)
        L, F = _sanitized(pred, target, included)
        terms = {
            "lattice": lattice_term(L, target.lattice.detach(), self.lattice_metric),
            "coords": coordinate_term(self.coords, F, target.frac.detach(), pred.batch, target.lattice,
                                      pred.species, target.species, self.blur),
        }
        status = torch.zeros(B, dtype=torch.int64, device=pred.device)
        return _assemble(terms, {"lattice": self.lattice_weight, "coords": self.coord_weight}, included, status,
                         torch.zeros_like(included))


# -------------------------------------------------------------------------- labels, automorphisms


def canonicalize_labels(batch: CrystalBatch, *, rel_tol: float = 1e-5) -> tuple[CrystalBatch, torch.Tensor]:
    """Niggli-reduce every crystal of a label batch once (for the data pipeline).

    Returns ``(reduced, status)``: the same crystals in their Niggli basis ``L_n = N L``,
    ``F_n = wrap(F N^{-1})`` (``N`` from the guarded :func:`~soft_niggli.niggli.niggli_reduce`), and
    the reducer's ``(B,)`` int64 status. Crystals whose status is not ``OK`` keep the basis the
    reducer returned (the input for ``DEGENERATE``/``NONFINITE``, the best basis found for
    ``NOT_CONVERGED``). Lattice values come from the reducer (accurate even for very skewed inputs);
    if the input carries gradients they flow through ``N @ L``.

    >>> import torch
    >>> labels = CrystalBatch(torch.tensor([[[4.0, 0, 0], [4, 4, 0], [0, 0, 5]]]), torch.zeros(1, 3), [1])
    >>> canonicalize_labels(labels)[0].lattice[0].tolist()
    [[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]]
    """
    if not isinstance(batch, CrystalBatch):
        raise ValueError(f"batch: expected a CrystalBatch, got {type(batch).__name__}")
    res = niggli_reduce(batch.lattice.detach(), rel_tol=rel_tol)
    moved = batch.apply_basis_change(res.transform)
    lattice = res.lattice.to(batch.dtype) + (moved.lattice - moved.lattice.detach())
    return CrystalBatch(lattice, moved.frac, batch.num_atoms, batch.species), res.status


def reduce_or_identity(lattice: torch.Tensor, usable: torch.Tensor, *, rel_tol: float = 1e-5,
                       with_lattice: bool = False):
    """Reduce detached ``(B, 3, 3)`` lattices; the identity where the reducer is not ``OK`` or the
    crystal is not ``usable``.

    Returns ``(N (B, 3, 3) int64, status (B,) int64)`` (and the reducer's lattice when
    ``with_lattice``), all on ``lattice``'s device: what every loss that looks at the prediction's
    Niggli basis needs, written once.
    """
    res = niggli_reduce(lattice.detach(), rel_tol=rel_tol)
    device = lattice.device
    status = res.status.to(device)
    ok = (status == int(Status.OK)) & usable
    eye = torch.eye(3, dtype=torch.int64, device=device)
    N = torch.where(ok[:, None, None], res.transform.to(device), eye)
    if with_lattice:
        return N, status, res.lattice.to(device)
    return N, status


@functools.lru_cache(maxsize=None)
def _short_vectors() -> torch.Tensor:
    """The 26 nonzero vectors of {-1, 0, 1}³, ``(26, 3)`` int64, the identity's rows among them."""
    return torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                         if (i, j, k) != (0, 0, 0)], dtype=torch.int64)


def lattice_automorphisms(lattice: torch.Tensor, rel_tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Unimodular ``A`` with entries in {-1, 0, 1} and ``A G Aᵀ = G`` (``G = L Lᵀ``), for each lattice.

    For a Niggli- (indeed Buerger-) reduced basis these are *all* automorphisms of the lattice (its
    point group expressed in that basis: 2 for triclinic, up to 48 for cubic); for other bases only
    those in {-1, 0, 1} are found. Equality is relative: ``|(A G Aᵀ - G)_ij| <= rel_tol ·
    sqrt(G_ii G_jj)`` (lengths and cosines to ``rel_tol``), so near-automorphisms of pseudo-symmetric
    cells count too, which keeps a loss built on them stable where the reducer's own tolerance lets
    it pick either of two nearly equal bases. Non-finite or flat cells (relative volume below 1e-6)
    get the identity only.

    Args:
        lattice: ``(B, 3, 3)``, rows are lattice vectors; not differentiated.
        rel_tol: relative tolerance in (0, 0.1).

    Returns:
        ``(owner, A)``: ``owner (P,)`` int64 crystal index of each automorphism, sorted, each crystal's
        identity first; ``A (P, 3, 3)`` int64, every one with determinant ±1.

    >>> L = torch.diag(torch.tensor([3.0, 3.0, 5.0], dtype=torch.float64))[None]  # tetragonal
    >>> lattice_automorphisms(L)[0].numel()
    16

    How: row ``i`` of ``A`` is one of the 26 vectors ``v`` of {-1,0,1}³ with ``v G vᵀ = G_ii``. With
    all inner products ``Q = V G Vᵀ (B, 26, 26)`` at hand, rows are chosen one at a time, each pair of
    rows checked against ``G``'s off-diagonal as soon as both exist; only a handful of partial
    matrices survive each stage, so this costs a few small boolean tensors instead of testing all
    6960 bound-1 unimodular matrices per lattice.
    """
    if not isinstance(lattice, torch.Tensor) or lattice.dim() != 3 or tuple(lattice.shape[1:]) != (3, 3):
        raise ValueError(f"lattice: expected a tensor of shape (B, 3, 3), got "
                         f"{tuple(lattice.shape) if isinstance(lattice, torch.Tensor) else type(lattice).__name__}")
    rel_tol = _tolerance("rel_tol", rel_tol)
    device = lattice.device
    vectors = _short_vectors().to(device)
    L = lattice.detach().to(torch.float64)
    B = L.shape[0]
    eye = torch.eye(3, dtype=torch.int64, device=device)
    finite = torch.isfinite(L).flatten(1).all(1)
    L = torch.where(finite[:, None, None], L, eye.to(L.dtype))
    # Scale-free: divide by the largest row length so the tolerance is purely relative.
    L = L / torch.linalg.vector_norm(L, dim=-1).amax(-1).clamp_min(1e-300)[:, None, None]
    G = L @ L.transpose(-1, -2)
    diag = torch.diagonal(G, dim1=-2, dim2=-1)  # (B, 3)
    rel_volume = torch.linalg.det(L).abs() / diag.clamp_min(0).sqrt().prod(-1).clamp_min(1e-300)
    usable = finite & (rel_volume > 1e-6)

    V = vectors.to(G.dtype)
    Q = V @ G @ V.T  # (B, 26, 26): all inner products v·G·w
    qdiag = torch.diagonal(Q, dim1=-2, dim2=-1)  # (B, 26)
    length_ok = (qdiag[:, :, None] - diag[:, None, :]).abs() <= rel_tol * diag[:, None, :]  # (B, 26, 3)
    length_ok &= usable[:, None, None]
    cos_tol = rel_tol * (diag[:, :, None] * diag[:, None, :]).clamp_min(0).sqrt()  # (B, 3, 3)

    owner, r0 = length_ok[:, :, 0].nonzero(as_tuple=True)
    picked = [r0]
    for i in (1, 2):
        ok = length_ok[owner, :, i]  # (P, 26): candidates for row i
        for j, rj in enumerate(picked):
            ok = ok & ((Q[owner, rj, :] - G[owner, j, i, None]).abs() <= cos_tol[owner, j, i, None])
        parent, ri = ok.nonzero(as_tuple=True)
        owner = owner[parent]
        picked = [r[parent] for r in picked] + [ri]
    A = torch.stack([vectors[r] for r in picked], dim=1)  # (P, 3, 3)
    # A G Aᵀ = G with G positive definite forces det A = ±1; the check guards rel_tol's slack.
    det = torch.linalg.det(A.to(torch.float64)).round()
    A, owner = A[det.abs() == 1], owner[det.abs() == 1]
    # Identities first (also for cells that are not usable, which found nothing else).
    is_identity = (A == eye).flatten(1).all(1)
    A = torch.cat([eye.expand(B, 3, 3), A[~is_identity]])
    owner = torch.cat([torch.arange(B, device=device), owner[~is_identity]])
    order = torch.sort(owner, stable=True).indices
    return owner[order], A[order]


# ------------------------------------------------------------------------------ the "proxy" loss


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
       small. Default 0, i.e. the plain proxy loss. In ``benchmarks/results/proxy_training.md`` an MLP
       trained with the default drifted to bases whose reducing transform has entries around 30, while
       ``skew_weight=0.1`` kept them reduced and ended at a lower loss (one seed, 300 steps).

    The reduced frame's lattice *value* is the reducer's accurately computed ``N_pred L_pred``; its
    gradient is that of ``N_pred @ L_pred`` (straight-through, exact for a piecewise-constant
    ``N_pred``). ``N_pred`` jumps where the prediction crosses a boundary of the Niggli cone, and with
    it the target: the loss is discontinuous there. On real data this is common, because symmetric
    labels lie *on* the boundaries: with 0.01 Å of Gaussian noise on the canonical lattices of 256
    MP-20 validation crystals, 38% score a Cartesian lattice term above 1 Å² (18% with ``"gram"``),
    their noisy copy reducing to another Niggli form (fcc 60/60/60° to 90/120/120°, hexagonal 120° to
    60°, a 90.07° angle flipping across 90°). Raising ``automorphism_rel_tol`` to 0.05 only brings that to
    36%: these forms are not near-automorphisms of the label. Only a loss without the hard reduction
    (the softmin) removes it.

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
        automorphism_rel_tol: relative tolerance of :func:`lattice_automorphisms`, in (0, 0.1); keep it
            above ``rel_tol`` so near-ties the reducer may break either way are covered.
        rel_tol: the reducer's relative tolerance, in :data:`~soft_niggli.niggli.REL_TOL_RANGE`.
        coords: ``"periodic"`` or ``"sinkhorn"`` (:func:`coordinate_term`; with Sinkhorn, atom order is
            free and the lattice term alone picks the automorphism). blur: Sinkhorn blur, Å.

    Example: a re-based, translated copy of the label scores zero, in any basis of the label.

    >>> label = CrystalBatch(4.0 * torch.eye(3)[None], torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.6, 0.6]]), [2])
    >>> copy = label.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]]))
    >>> copy = CrystalBatch(copy.lattice, copy.frac + 0.25, [2])
    >>> loss = get_loss("proxy")
    >>> loss(copy, label).loss.item() < 1e-10, loss(copy, label.apply_basis_change(-torch.eye(3))).loss.item() < 1e-10
    (True, True)

    Cost, measured on 256 MP-20 crystals in float64 on one thread of a 2-core CPU: about 15 ms per call
    with ``labels_canonical=True`` (0.1 ms of it reducing the prediction, 3 ms finding the 5120
    automorphisms, average 20 per crystal, the rest scoring every (crystal, automorphism) pair), about
    16 ms when the labels are reduced in the call too; the backward pass sees only the chosen pair.
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 fallback: str = "identity", frame: str = "reduced", labels_canonical: bool = False,
                 skew_weight: float = 0.0, automorphism_rel_tol: float = 1e-4, rel_tol: float = 1e-5,
                 coords: str = "periodic", blur: float = 0.1):
        super().__init__()
        self.coords = _choice("coords", coords, COORDINATE_TERMS)
        self.blur = _blur(blur)
        self.atoms_matched_by_order = self.coords != "sinkhorn"
        self.lattice_weight = _weight("lattice_weight", lattice_weight)
        self.coord_weight = _weight("coord_weight", coord_weight)
        self.skew_weight = _weight("skew_weight", skew_weight)
        self.lattice_metric = _choice("lattice_metric", lattice_metric, LATTICE_METRICS)
        self.fallback = _choice("fallback", fallback, FALLBACKS)
        self.frame = _choice("frame", frame, FRAMES)
        self.labels_canonical = _flag("labels_canonical", labels_canonical)
        self.automorphism_rel_tol = _tolerance("automorphism_rel_tol", automorphism_rel_tol)
        self.rel_tol = _check_rel_tol(rel_tol)  # the reducer's own range, checked now rather than at the call

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B, dtype, device = len(pred), pred.dtype, pred.device
        scorable = _scorable(pred)
        L_p, F_p = _sanitized(pred, target, scorable)
        labels = target if self.labels_canonical else canonicalize_labels(target, rel_tol=self.rel_tol)[0]
        L_n, F_n = labels.lattice.detach(), labels.frac.detach()

        N, status, reduced_value = reduce_or_identity(pred.lattice.detach(), scorable, rel_tol=self.rel_tol,
                                                      with_lattice=True)
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

        A = closest_automorphism(P_lat.detach(), P_frac.detach(), labels, left, right,
                                 lattice_metric=self.lattice_metric, coords=self.coords,
                                 lattice_weight=self.lattice_weight, coord_weight=self.coord_weight, blur=self.blur,
                                 rel_tol=self.automorphism_rel_tol, species=pred.species,
                                 lattice_first=self.coords == "sinkhorn")
        A_f, A_inv_f = A.to(dtype), integer_inverse(A).to(dtype)
        T_lat = left @ A_f @ L_n
        T_frac = (F_n[:, None, :] @ (A_inv_f @ right)[pred.batch]).squeeze(1)
        skew = ((L_p.square().sum(dim=(1, 2)) - reduced.square().sum(dim=(1, 2))) / 9).clamp_min(0)
        terms = {
            "lattice": lattice_term(P_lat, T_lat, self.lattice_metric),
            "coords": coordinate_term(self.coords, P_frac, T_frac, pred.batch, T_lat, pred.species, labels.species,
                                      self.blur),
            "skew": skew,
        }
        weights = {"lattice": self.lattice_weight, "coords": self.coord_weight, "skew": self.skew_weight}
        return _assemble(terms, weights, included, status, fallback)


def tie_tolerance(scale: torch.Tensor) -> torch.Tensor:
    """Absolute slack ``(...)`` within which two candidate distances of size ``scale`` count as tied.

    Distances of automorphic candidates of a symmetric crystal are equal in exact arithmetic but come
    out of different floating-point sums; 1024 ulps of the scale of the summands covers that, and
    counting a near-tie as a tie only ever keeps a candidate more.
    """
    return 64 * torch.finfo(scale.dtype).eps * scale


def closest_automorphism(P_lat: torch.Tensor, P_frac: torch.Tensor, labels: CrystalBatch, left: torch.Tensor,
                         right: torch.Tensor, *, lattice_metric: str, coords: str, lattice_weight: float,
                         coord_weight: float, blur: float, rel_tol: float, species=None, with_group: bool = False,
                         group=None, lattice_first: bool = False):
    """``(B, 3, 3)`` int64: per crystal, the automorphism ``A`` of the reduced label whose target
    ``(left A L_n, F_n A^{-1} right)`` is closest to the prediction ``(P_lat, P_frac)``.

    Every automorphism of a Niggli-reduced label gives an equally canonical target (the group is the
    same set whichever basis the label came in), so choosing by distance to the prediction makes what
    follows independent of the label's input basis. "Closest" is measured by the full weighted loss,
    ``lattice_weight · lattice_term + coord_weight · coordinate_term``, over every (crystal,
    automorphism) pair, or (``lattice_first=True``, which the proxy loss uses with Sinkhorn coordinates,
    where one optimal-transport problem per pair would dominate the cost) over the pairs tied, within
    :func:`tie_tolerance`, with the nearest on the lattice term (with ``lattice_metric="gram"``, every
    exact automorphism); the coordinates then decide among those. The narrowing is cheaper but makes
    the choice jump when a tiny change of the label breaks a tie on the lattice term. Ties left after that are exact
    symmetries of the whole crystal, whose targets are the same crystal, so which one wins changes no
    value. Evaluated without gradient; ``labels`` is the reduced label batch (``L_n``, ``F_n``).
    With ``with_group=True`` also returns the whole group as :func:`lattice_automorphisms` does,
    ``(chosen, owner, group)``. ``group``: the ``(owner, A)`` to choose from, if already known (each
    crystal's identity first).
    """
    L_n, F_n = labels.lattice.detach(), labels.frac.detach()
    B, device = L_n.shape[0], L_n.device
    owner, A = lattice_automorphisms(L_n, rel_tol) if group is None else group
    if owner.numel() == B:  # only identities: nothing to choose
        return (A, owner, A) if with_group else A
    with torch.no_grad():
        P = owner.numel()
        A_f, A_inv_f = A.to(P_lat.dtype), integer_inverse(A).to(P_lat.dtype)
        T_lat = left[owner] @ A_f @ L_n[owner]
        lat = lattice_term(P_lat[owner], T_lat, lattice_metric)
        keep = torch.ones(P, dtype=torch.bool, device=device)
        if lattice_first:
            best_lat = torch.full((B,), math.inf, dtype=lat.dtype, device=device).scatter_reduce(0, owner, lat, "amin")
            scale = (P_lat.square().sum(dim=(1, 2)) + L_n.square().sum(dim=(1, 2))) / 9
            keep = lat <= best_lat[owner] + tie_tolerance(scale)[owner]
        pairs = keep.nonzero().flatten()
        # Expand atoms pair by pair: pair p repeats the atoms of crystal owner[p].
        sub = owner[pairs]
        counts = labels.num_atoms[sub]
        pair_of_atom = torch.repeat_interleave(torch.arange(pairs.numel(), device=device), counts)
        first = torch.cumsum(counts, 0) - counts
        ptr = torch.cumsum(labels.num_atoms, 0) - labels.num_atoms
        atom = ptr[sub][pair_of_atom] + torch.arange(pair_of_atom.numel(), device=device) - first[pair_of_atom]
        T_frac = (F_n[atom][:, None, :] @ (A_inv_f[pairs] @ right[sub])[pair_of_atom]).squeeze(1)
        species_p = None if species is None else species[atom]
        species_t = None if labels.species is None else labels.species[atom]
        crd = coordinate_term(coords, P_frac[atom], T_frac, pair_of_atom, T_lat[pairs], species_p, species_t, blur)
        total = torch.full((P,), math.inf, dtype=lat.dtype, device=device)
        total[pairs] = lattice_weight * lat[pairs] + coord_weight * crd
        best = torch.full((B,), math.inf, dtype=total.dtype, device=device).scatter_reduce(0, owner, total, "amin")
        # First pair attaining the minimum (the automorphisms are listed in a fixed order per crystal).
        candidate = torch.where(total <= best[owner], torch.arange(P, device=device), P)
        chosen = torch.full((B,), P, dtype=torch.int64, device=device).scatter_reduce(0, owner, candidate, "amin")
    return (A[chosen], owner, A) if with_group else A[chosen]
