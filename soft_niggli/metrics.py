"""Basis-invariant evaluation of predicted crystals against their targets.

Row convention: lattices are ``(..., 3, 3)`` with the lattice vectors a, b, c as *rows*; Cartesian
positions are ``X = F @ L``; a change of basis ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` (``M``
unimodular) describes the same crystal, and every metric here gives the same value for it.

Inputs and outputs: lattices may be torch tensors, NumPy arrays, (nested) lists of shape ``(..., 3, 3)``
(one cell, a batch or a stack) or :class:`CrystalBatch` objects (``(B, 3, 3)``). Per-crystal results of the
lattice metrics (:func:`spglib_niggli_g6`, :func:`lattice_error`, :func:`volume_error`) have the
lattices' leading shape ``(...)`` (``()`` for one cell); they are always torch tensors (float64, or bool), on the device of ``pred`` when
it is a tensor or a batch (else the CPU), never NumPy arrays. The computations themselves run on the host
(spglib, pymatgen), so tensors on the ``meta`` device, which hold no values, raise ``ValueError``. Wrong
Python types raise ``TypeError``, wrong values (shapes, ranges) ``ValueError``.

Metrics (per crystal, then summarised by :func:`evaluate`):

* :func:`lattice_error`: ``‖G6(niggli(L_pred)) - G6(niggli(L_target))‖ / ‖G6(niggli(L_target))‖``,
  the relative distance between the Niggli-reduced metrics (:func:`~soft_niggli.lattice.g6`), both
  reduced by **spglib** (``spglib.niggli_reduce(L, eps=spglib_eps)``), not by soft_niggli's own reducer,
  so that the score does not depend on the code under test. ``spglib_eps`` is spglib's own tolerance, an
  *absolute* one (in Å, unlike soft_niggli's relative ``rel_tol``). Invariant to rotations and changes of
  basis of either cell; 0 iff the lattices agree. (G6 of the Niggli cell jumps at a few boundaries of the
  Niggli cone, so two nearly equal lattices near such a boundary can score a little higher than their
  true distance.) **Failures**: where spglib returns ``None`` for the prediction, or a cell whose volume
  is not the input's (spglib's absolute tolerance lets it return cells that are not a change of basis),
  or the prediction is not finite, the crystal counts as a *failure* and is scored ``failure_value``
  (default 1.0: the error of predicting a collapsed, zero cell). Failures are counted separately
  (``lattice_failures``), never silently excluded, so a strategy cannot gain by emitting cells spglib
  cannot reduce.
* :func:`volume_error`: ``|V_pred - V_target| / V_target`` (non-finite predictions score ``failure_value``).
* :func:`match_structures`: match rate and RMSE as DiffCSP reports them, pymatgen's
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``: a crystal matches when
  ``get_rms_dist(pred, target)`` is not ``None``; RMSE is the mean of its first value (normalised by
  ``(V / n)^(1/3)``) over the matched crystals; match rate is over *all* crystals. Guards, each
  counted by reason in :class:`MatchResult` and each counting as *no match*:

  - ``"volume"``: the predicted volume is outside ``[target / volume_ratio, target · volume_ratio]``
    (default ratio 10) or not finite: such a cell cannot match at ``ltol=0.3`` anyway, and absurd
    cells are where pymatgen's own reduction can hang;
  - ``"degenerate"``: soft_niggli's guarded reducer finds the predicted cell rank-deficient. Otherwise
    the prediction is *re-based* to its Niggli basis before pymatgen sees it: the same crystal
    (a change of basis), but a short basis, which keeps pymatgen's LLL and distance code fast;
  - ``"invalid"``: DiffCSP's structural validity fails (an interatomic distance below 0.5 Å or a
    volume below 0.1 Å³); DiffCSP scores invalid predictions as unmatched. (DiffCSP's SMACT
    composition check is not applied: in CSP the composition is the target's.)
  - ``"error"``: pymatgen raised; ``"timeout"``: one call took longer than ``time_limit`` seconds
    (enforced with ``SIGALRM`` in the main thread of POSIX systems, not enforced elsewhere).

pymatgen is imported only by :func:`match_structures` (and :func:`evaluate` with ``match=True``).

>>> import torch
>>> from soft_niggli import CrystalBatch
>>> target = CrystalBatch(4.0 * torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 3, dtype=torch.float64),
...                       [1], [14])
>>> rebased = target.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]]))
>>> result = lattice_error(rebased, target)
>>> float(result.error[0]) < 1e-12, bool(result.failed[0])
(True, False)
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_float_tensor, check_real, require_values
from ._spglib import spglib_niggli_reduce
from .crystal import CrystalBatch
from .lattice import g6 as _g6
from .niggli import Status, niggli_reduce

__all__ = [
    "SpglibG6",
    "spglib_niggli_g6",
    "LatticeError",
    "lattice_error",
    "volume_error",
    "structure_valid",
    "MATCH_REASONS",
    "MatchResult",
    "match_structures",
    "evaluate",
]


def _lattices(x, name: str) -> tuple[torch.Tensor, torch.Size]:
    """Lattices ``(..., 3, 3)`` as ``(float64 CPU tensor (B, 3, 3) of the flattened cells, leading shape (...))``."""
    if isinstance(x, CrystalBatch):
        x = x.lattice
    if isinstance(x, (list, tuple)):
        # Lists of numbers in float64 (torch.as_tensor would round them to float32 first).
        with contextlib.suppress(ValueError, TypeError):
            array = np.asarray(x)
            if array.dtype.kind in "iuf":
                x = array.astype(np.float64)
    if isinstance(x, (torch.Tensor, np.ndarray, list, tuple)):
        t = as_float_tensor(x, name)
    else:
        raise TypeError(f"{name}: expected lattices (a tensor, array or list of shape (..., 3, 3)) or a "
                        f"CrystalBatch, got {type(x).__name__}")
    if t.dim() < 2 or tuple(t.shape[-2:]) != (3, 3):
        raise ValueError(f"{name}: expected lattices of shape (..., 3, 3) (or a CrystalBatch), got {tuple(t.shape)}")
    require_values(t, f"{name}: the metrics (spglib and pymatgen run on the host, on values)")
    return t.detach().to("cpu", torch.float64).reshape(-1, 3, 3), t.shape[:-2]


def _device_of(x) -> torch.device:
    """Where results go: the device of ``x`` when it is a tensor or a batch, else the CPU."""
    if isinstance(x, CrystalBatch):
        return x.device
    if isinstance(x, torch.Tensor):
        return x.device
    return torch.device("cpu")


def _check_spglib_eps(spglib_eps) -> float:
    value = check_real(spglib_eps, "spglib_eps", "a positive float (spglib's absolute tolerance)")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"spglib_eps: expected a positive finite float (spglib's absolute tolerance), got {spglib_eps!r}")
    return value


def _check_failure_value(failure_value) -> float:
    return check_real(failure_value, "failure_value", "a float")


@dataclass(frozen=True)
class SpglibG6:
    """Result of :func:`spglib_niggli_g6`.

    Attributes:
        g6: ``(..., 6)`` float64, G6 vectors of the spglib-Niggli-reduced cells (NaN where not ``ok``).
        ok: ``(...)`` bool, whether spglib reduced the cell (see :func:`spglib_niggli_g6`).
    """

    g6: torch.Tensor
    ok: torch.Tensor


def spglib_niggli_g6(lattices, spglib_eps: float = 1e-5) -> SpglibG6:
    """G6 vectors of the spglib-Niggli-reduced cells of ``lattices (..., 3, 3)``, as :class:`SpglibG6`
    ``(g6 (..., 6), ok (...))``.

    ``spglib_eps`` is spglib's absolute tolerance (``spglib.niggli_reduce(L, eps=spglib_eps)``). ``ok`` is
    False (and ``g6`` NaN) where the input is not finite, spglib returns ``None``, or the returned cell's
    volume differs from the input's by more than 1e-6 relative (then it is not a change of basis of the
    input). Tensors on the device of ``lattices`` (CPU for arrays and lists).
    """
    device = _device_of(lattices)
    L, lead = _lattices(lattices, "lattices")
    eps = _check_spglib_eps(spglib_eps)
    g6, ok = _spglib_niggli_g6(L, eps)
    return SpglibG6(g6=g6.reshape(*lead, 6).to(device), ok=ok.reshape(lead).to(device))


def _spglib_niggli_g6(L: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spglib_niggli_g6` of checked float64 CPU lattices ``(B, 3, 3)``: ``(g6 (B, 6), ok (B,))``."""
    cells = L.numpy()
    finite = np.isfinite(cells).all(axis=(1, 2))
    reduced = np.full_like(cells, np.nan)
    ok = np.zeros(len(cells), dtype=bool)
    spglib_result = spglib_niggli_reduce(cells[finite], eps=eps)
    reduced[finite], ok[finite] = spglib_result.lattice, spglib_result.ok
    # spglib's absolute tolerance lets it return a cell of another volume: not a change of basis.
    with np.errstate(invalid="ignore"):
        v_in, v_out = np.abs(np.linalg.det(cells)), np.abs(np.linalg.det(reduced))
        ok &= np.isfinite(v_out) & (v_in > 0) & (np.abs(v_out - v_in) <= 1e-6 * v_in)
    reduced[~ok] = np.nan
    return _g6(torch.from_numpy(reduced)), torch.from_numpy(ok)


@dataclass(frozen=True)
class LatticeError:
    """Result of :func:`lattice_error`.

    Attributes:
        error: ``(...)`` float64, the relative G6 distance per crystal (``failure_value`` where failed).
        failed: ``(...)`` bool, where spglib could not reduce the prediction (or it was not finite).
    """

    error: torch.Tensor
    failed: torch.Tensor


def lattice_error(pred, target, *, spglib_eps: float = 1e-5, failure_value: float = 1.0) -> LatticeError:
    """Basis-invariant lattice error per crystal, as :class:`LatticeError` ``(error (...), failed (...))``.

    ``error = ‖g6_pred - g6_target‖ / ‖g6_target‖`` on spglib-Niggli-reduced cells (module docstring),
    ``failure_value`` where the prediction's reduction failed. ``pred`` and ``target`` are ``(..., 3, 3)``
    lattices of the same shape (tensors, arrays, lists or :class:`CrystalBatch`); ``spglib_eps`` is
    spglib's absolute tolerance.

    Raises:
        ValueError: shapes differ; a target that spglib cannot reduce (a data error; the message lists
            indices of the flattened cells).
    """
    device = _device_of(pred)
    (P, lead), (T, lead_t) = _lattices(pred, "pred"), _lattices(target, "target")
    if lead != lead_t:
        raise ValueError(f"pred: expected the target's shape {(*lead_t, 3, 3)}, got {(*lead, 3, 3)}")
    eps = _check_spglib_eps(spglib_eps)
    failure_value = _check_failure_value(failure_value)
    g6_p, ok_p = _spglib_niggli_g6(P, eps)
    g6_t, ok_t = _spglib_niggli_g6(T, eps)
    if not bool(ok_t.all()):
        bad = (~ok_t).nonzero().flatten()[:8].tolist()
        raise ValueError(f"target: spglib could not Niggli-reduce targets {bad}")
    err = torch.linalg.vector_norm(g6_p - g6_t, dim=1) / torch.linalg.vector_norm(g6_t, dim=1)
    err = torch.where(ok_p, err, torch.full_like(err, failure_value))
    return LatticeError(error=err.reshape(lead).to(device), failed=(~ok_p).reshape(lead).to(device))


def volume_error(pred, target, *, failure_value: float = 1.0) -> torch.Tensor:
    """``|V_pred - V_target| / V_target`` per crystal of ``pred`` and ``target (..., 3, 3)`` (the same
    shape), float64 ``(...)``; ``failure_value`` for non-finite predictions."""
    device = _device_of(pred)
    (P, lead), (T, lead_t) = _lattices(pred, "pred"), _lattices(target, "target")
    if lead != lead_t:
        raise ValueError(f"pred: expected the target's shape {(*lead_t, 3, 3)}, got {(*lead, 3, 3)}")
    failure_value = _check_failure_value(failure_value)
    finite = torch.isfinite(P).all(dim=-1).all(dim=-1)
    v_p = torch.linalg.det(torch.where(finite[:, None, None], P, torch.zeros_like(P))).abs()
    v_t = torch.linalg.det(T).abs()
    out = torch.where(finite, (v_p - v_t).abs() / v_t, torch.full_like(v_t, failure_value))
    return out.reshape(lead).to(device)


def structure_valid(structure, cutoff: float = 0.5) -> bool:
    """DiffCSP's structural validity: every interatomic distance >= ``cutoff`` Å and volume >= 0.1 Å³."""
    cutoff = check_real(cutoff, "cutoff", "a distance in Å")
    if structure.volume < 0.1:
        return False
    if len(structure) < 2:
        return True
    d = np.asarray(structure.distance_matrix, dtype=np.float64)
    d = d + np.eye(len(d)) * (cutoff + 10.0)
    return bool(d.min() >= cutoff)


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise :class:`_Timeout` after ``seconds`` of wall time (POSIX main thread only; else no limit)."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def handler(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Reasons a crystal gets in :class:`MatchResult` (the keys of :meth:`MatchResult.counts`).
MATCH_REASONS = ("match", "no_match", "volume", "degenerate", "invalid", "error", "timeout")


@dataclass(frozen=True)
class MatchResult:
    """Per-crystal outcome of :func:`match_structures`.

    Attributes:
        matched: ``(B,)`` bool tensor.
        rms: ``(B,)`` float64 tensor, ``get_rms_dist(...)[0]`` where matched, NaN elsewhere.
        reason: ``B`` strings, one of :data:`MATCH_REASONS` per crystal: ``"match"``, ``"no_match"``,
            ``"volume"``, ``"degenerate"``, ``"invalid"``, ``"error"`` or ``"timeout"``.
    """

    matched: torch.Tensor
    rms: torch.Tensor
    reason: tuple[str, ...] = ()

    @property
    def match_rate(self) -> float:
        return float(self.matched.double().mean()) if len(self.matched) else math.nan

    @property
    def rmse(self) -> float:
        """Mean RMS distance over matched crystals (NaN when none matched)."""
        return float(self.rms[self.matched].mean()) if bool(self.matched.any()) else math.nan

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in MATCH_REASONS}
        for r in self.reason:
            out[r] = out.get(r, 0) + 1
        return out


def match_structures(pred: CrystalBatch, target: CrystalBatch, *, stol: float = 0.5, angle_tol: float = 10.0,
                     ltol: float = 0.3, volume_ratio: float = 10.0, time_limit: float | None = 10.0,
                     check_validity: bool = True) -> MatchResult:
    """DiffCSP-style structure matching of each predicted crystal with its target (module docstring).

    ``pred`` and ``target`` are :class:`CrystalBatch` with the same atoms per crystal; ``target`` has
    species (the prediction is given the target's). Never raises on bad predicted values: every problem
    is a per-crystal ``reason``. Result tensors are on ``pred``'s device.

    Raises:
        TypeError: ``pred`` or ``target`` not a :class:`CrystalBatch`.
        ValueError: different crystal or atom counts; a target without species; on the meta device.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if not isinstance(pred, CrystalBatch) or not isinstance(target, CrystalBatch):
        raise TypeError(f"pred, target: expected CrystalBatch, got {type(pred).__name__}, {type(target).__name__}")
    for name, x in (("pred", pred), ("target", target)):
        require_values(x.lattice, f"{name}: match_structures (pymatgen runs on the host, on values)")
    if len(pred) != len(target) or not torch.equal(pred.num_atoms.cpu(), target.num_atoms.cpu()):
        raise ValueError("pred: expected the target's number of crystals and atoms per crystal")
    if target.species is None:
        raise ValueError("target: expected species (atomic numbers), got None")
    volume_ratio = check_real(volume_ratio, "volume_ratio", "a float >= 1")
    if not volume_ratio >= 1:
        raise ValueError(f"volume_ratio: expected a float >= 1, got {volume_ratio!r}")
    if time_limit is not None:
        check_real(time_limit, "time_limit", "None or a number of seconds")
    device = pred.device
    pred = CrystalBatch(pred.lattice.detach().cpu().double(), pred.frac.detach().cpu().double(),
                        pred.num_atoms.cpu(), target.species.cpu())
    target = target.to(device="cpu", dtype=torch.float64)
    B = len(pred)
    matcher = StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)

    L_p = pred.lattice
    finite = torch.isfinite(L_p).flatten(1).all(1)
    atom_finite = torch.isfinite(pred.frac).all(1)
    bad_atoms = torch.zeros(B, dtype=torch.bool).index_fill_(0, pred.batch[~atom_finite], True)
    finite = finite & ~bad_atoms
    eye = torch.eye(3, dtype=torch.float64)
    v_p = torch.linalg.det(torch.where(finite[:, None, None], L_p, eye)).abs()
    v_t = torch.linalg.det(target.lattice).abs()
    in_range = finite & (v_p >= v_t / volume_ratio) & (v_p <= v_t * volume_ratio)

    # Re-base the prediction to its Niggli basis (the same crystal): pymatgen stays fast on it.
    safe_L = torch.where(finite[:, None, None], L_p, eye)
    safe_F = torch.where(finite[pred.batch][:, None], pred.frac, torch.zeros((), dtype=torch.float64))
    red = niggli_reduce(safe_L)
    usable = in_range & ((red.status == int(Status.OK)) | (red.status == int(Status.NOT_CONVERGED)))
    T = torch.where(usable[:, None, None], red.transform, torch.eye(3, dtype=torch.int64))
    rebased = CrystalBatch(safe_L, safe_F, pred.num_atoms, pred.species).apply_basis_change(T)

    matched = torch.zeros(B, dtype=torch.bool)
    rms = torch.full((B,), float("nan"), dtype=torch.float64)
    reason = []
    preds = rebased.to_structures(errors="none")
    targets = target.to_structures()
    for b, (p, t) in enumerate(zip(preds, targets)):
        if not bool(in_range[b]):
            reason.append("volume")
            continue
        if not bool(usable[b]):
            reason.append("degenerate")
            continue
        if p is None:
            reason.append("error")
            continue
        try:
            with warnings.catch_warnings(), _time_limit(time_limit):
                warnings.simplefilter("ignore")
                if check_validity and not structure_valid(p):
                    reason.append("invalid")
                    continue
                out = matcher.get_rms_dist(p, t)
        except _Timeout:
            reason.append("timeout")
            continue
        except Exception:  # noqa: BLE001 - pymatgen raises many types on odd cells; all are "no match"
            reason.append("error")
            continue
        if out is None:
            reason.append("no_match")
        else:
            matched[b], rms[b] = True, float(out[0])
            reason.append("match")
    return MatchResult(matched=matched.to(device), rms=rms.to(device), reason=tuple(reason))


def evaluate(pred: CrystalBatch, target: CrystalBatch, *, match: bool = True, spglib_eps: float = 1e-5,
             failure_value: float = 1.0, **match_options) -> dict[str, float]:
    """All metrics for a batch of predictions against their targets, as a flat dict of Python floats
    (a summary to log or serialise; the per-crystal tensors come from the functions above).

    Keys: ``n``; ``lattice_error`` (mean, failures scored ``failure_value``), ``lattice_error_median``,
    ``lattice_failures`` (count); ``volume_error`` (mean); with ``match=True`` also ``match_rate``,
    ``rmse`` (NaN if nothing matched) and the counts ``match_<reason>`` of :class:`MatchResult`.
    ``spglib_eps`` is spglib's absolute tolerance (:func:`lattice_error`). Extra keyword arguments go to
    :func:`match_structures`.
    """
    if not isinstance(match, bool):
        raise TypeError(f"match: expected a bool, got {type(match).__name__} {match!r}")
    lat = lattice_error(pred, target, spglib_eps=spglib_eps, failure_value=failure_value)
    err = lat.error.cpu().reshape(-1)
    n = len(err)
    out = {
        "n": float(n),
        "lattice_error": float(err.mean()) if n else math.nan,
        # (torch.median takes the lower of the two middle values; the quantile averages them, as usual.)
        "lattice_error_median": float(torch.quantile(err, 0.5)) if n else math.nan,
        "lattice_failures": float(lat.failed.sum()),
        "volume_error": float(volume_error(pred, target, failure_value=failure_value).mean()) if n else math.nan,
    }
    if match:
        res = match_structures(pred, target, **match_options)
        out["match_rate"] = res.match_rate
        out["rmse"] = res.rmse
        out.update({f"match_{k}": float(v) for k, v in res.counts().items()})
    return out
