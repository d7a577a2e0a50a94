"""Basis-invariant evaluation of predicted crystals against labels.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors a, b, c as *rows*; Cartesian
positions are ``X = F @ L``; a change of basis ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` (``M``
unimodular) describes the same crystal, and every metric here gives the same value for it.

Metrics (per crystal, then summarised by :func:`evaluate`):

* :func:`lattice_error`: ``‖G6(niggli(L_pred)) - G6(niggli(L_label))‖ / ‖G6(niggli(L_label))‖``,
  the relative distance between the Niggli-reduced metrics, both reduced by **spglib**
  (``spglib.niggli_reduce(L, eps)``), not by soft_niggli's own reducer, so that the score does not
  depend on the code under test. Invariant to rotations and changes of basis of either cell; 0 iff
  the lattices agree. (G6 of the Niggli cell jumps at a few boundaries of the Niggli cone, so two
  nearly equal lattices near such a boundary can score a little higher than their true distance.)
  **Failures**: where spglib returns ``None`` for the prediction, or a cell whose volume is not the
  input's (spglib's absolute ``eps`` lets it return cells that are not a change of basis), or the
  prediction is not finite, the crystal counts as a *failure* and is scored ``failure_value``
  (default 1.0: the error of predicting a collapsed, zero cell). Failures are counted separately
  (``lattice_failures``), never silently excluded, so a strategy cannot gain by emitting cells
  spglib cannot reduce.
* :func:`volume_error`: ``|V_pred - V_label| / V_label`` (non-finite predictions score ``failure_value``).
* :func:`match_structures`: match rate and RMSE as DiffCSP reports them, pymatgen's
  ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)``: a crystal matches when
  ``get_rms_dist(pred, label)`` is not ``None``; RMSE is the mean of its first value (normalised by
  ``(V / n)^(1/3)``) over the matched crystals; match rate is over *all* crystals. Guards, each
  counted by reason in :class:`MatchResult` and each counting as *no match*:

  - ``"volume"``: the predicted volume is outside ``[label / volume_ratio, label · volume_ratio]``
    (default ratio 10) or not finite: such a cell cannot match at ``ltol=0.3`` anyway, and absurd
    cells are where pymatgen's own reduction can hang;
  - ``"degenerate"``: soft_niggli's guarded reducer finds the predicted cell rank-deficient. Otherwise
    the prediction is *re-based* to its Niggli basis before pymatgen sees it: the same crystal
    (a change of basis), but a short basis, which keeps pymatgen's LLL and distance code fast;
  - ``"invalid"``: DiffCSP's structural validity fails (an interatomic distance below 0.5 Å or a
    volume below 0.1 Å³); DiffCSP scores invalid predictions as unmatched. (DiffCSP's SMACT
    composition check is not applied: in CSP the composition is the label's.)
  - ``"error"``: pymatgen raised; ``"timeout"``: one call took longer than ``time_limit`` seconds
    (enforced with ``SIGALRM`` in the main thread of POSIX systems, not enforced elsewhere).

pymatgen is imported only by :func:`match_structures` (and :func:`evaluate` with ``match=True``).

>>> import torch
>>> from soft_niggli import CrystalBatch
>>> label = CrystalBatch(4.0 * torch.eye(3, dtype=torch.float64)[None], torch.zeros(1, 3), [1], [14])
>>> rebased = label.apply_basis_change(torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]]))
>>> float(lattice_error(rebased.lattice, label.lattice)[0][0]) < 1e-12
True
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
import spglib
import torch

from .crystal import CrystalBatch
from .niggli import Status, niggli_reduce

__all__ = [
    "MATCHER_DEFAULTS",
    "spglib_niggli_g6",
    "lattice_error",
    "volume_error",
    "structure_valid",
    "MatchResult",
    "match_structures",
    "evaluate",
]

#: StructureMatcher tolerances used by DiffCSP (and CDVAE) for CSP match rate and RMSE.
MATCHER_DEFAULTS = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}


def _lattices(x, name: str) -> np.ndarray:
    if isinstance(x, CrystalBatch):
        x = x.lattice
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (3, 3):
        raise ValueError(f"{name}: expected lattices of shape (B, 3, 3) (or a CrystalBatch), got {x.shape}")
    return x


def _g6_of(L: np.ndarray) -> np.ndarray:
    G = L @ L.T
    return np.array([G[0, 0], G[1, 1], G[2, 2], 2 * G[1, 2], 2 * G[0, 2], 2 * G[0, 1]])


def spglib_niggli_g6(lattices, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """G6 vectors of the spglib-Niggli-reduced cells: ``(g6 (B, 6), ok (B,) bool)``.

    ``ok`` is False (and ``g6`` NaN) where the input is not finite, spglib returns ``None``, or the
    returned cell's volume differs from the input's by more than 1e-6 relative (then it is not a
    change of basis of the input).
    """
    L = _lattices(lattices, "lattices")
    g6 = np.full((len(L), 6), np.nan)
    ok = np.zeros(len(L), dtype=bool)
    for b, cell in enumerate(L):
        if not np.all(np.isfinite(cell)):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                reduced = spglib.niggli_reduce(np.ascontiguousarray(cell), eps=eps)
            except Exception:  # noqa: BLE001 - spglib's errors vary by version; any is a failure here
                reduced = None
        if reduced is None:
            continue
        reduced = np.asarray(reduced, dtype=np.float64)
        v_in, v_out = abs(np.linalg.det(cell)), abs(np.linalg.det(reduced))
        if not (np.isfinite(v_out) and v_in > 0 and abs(v_out - v_in) <= 1e-6 * v_in):
            continue
        g6[b], ok[b] = _g6_of(reduced), True
    return g6, ok


def lattice_error(pred, label, *, eps: float = 1e-5, failure_value: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Basis-invariant lattice error per crystal: ``(error (B,), failed (B,) bool)``.

    ``error = ‖g6_pred - g6_label‖ / ‖g6_label‖`` on spglib-Niggli-reduced cells (module docstring);
    ``failure_value`` where the prediction's reduction failed. ``pred`` and ``label`` are ``(B, 3, 3)``
    (tensors, arrays or :class:`CrystalBatch`). A label that spglib cannot reduce is a data error
    (``ValueError``).
    """
    P, T = _lattices(pred, "pred"), _lattices(label, "label")
    if P.shape != T.shape:
        raise ValueError(f"pred: expected the label's shape {T.shape}, got {P.shape}")
    g_p, ok_p = spglib_niggli_g6(P, eps)
    g_t, ok_t = spglib_niggli_g6(T, eps)
    if not ok_t.all():
        raise ValueError(f"label: spglib could not Niggli-reduce labels {np.flatnonzero(~ok_t)[:8].tolist()}")
    err = np.linalg.norm(g_p - g_t, axis=1) / np.linalg.norm(g_t, axis=1)
    err = np.where(ok_p, err, failure_value)
    return err, ~ok_p


def volume_error(pred, label, *, failure_value: float = 1.0) -> np.ndarray:
    """``|V_pred - V_label| / V_label`` per crystal, ``(B,)``; ``failure_value`` for non-finite predictions."""
    P, T = _lattices(pred, "pred"), _lattices(label, "label")
    if P.shape != T.shape:
        raise ValueError(f"pred: expected the label's shape {T.shape}, got {P.shape}")
    finite = np.isfinite(P).all(axis=(1, 2))
    v_p = np.abs(np.linalg.det(np.where(finite[:, None, None], P, 0.0)))
    v_t = np.abs(np.linalg.det(T))
    return np.where(finite, np.abs(v_p - v_t) / v_t, failure_value)


def structure_valid(structure, cutoff: float = 0.5) -> bool:
    """DiffCSP's structural validity: every interatomic distance >= ``cutoff`` Å and volume >= 0.1 Å³."""
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


@dataclass
class MatchResult:
    """Per-crystal outcome of :func:`match_structures`.

    Attributes:
        matched: ``(B,)`` bool.
        rms: ``(B,)`` float, ``get_rms_dist(...)[0]`` where matched, NaN elsewhere.
        reason: ``(B,)`` list of str: ``"match"``, ``"no_match"``, ``"volume"``, ``"degenerate"``,
            ``"invalid"``, ``"error"`` or ``"timeout"``.
    """

    matched: np.ndarray
    rms: np.ndarray
    reason: list[str] = field(default_factory=list)

    @property
    def match_rate(self) -> float:
        return float(self.matched.mean()) if len(self.matched) else math.nan

    @property
    def rmse(self) -> float:
        """Mean RMS distance over matched crystals (NaN when none matched)."""
        return float(np.nanmean(self.rms[self.matched])) if self.matched.any() else math.nan

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("match", "no_match", "volume", "degenerate", "invalid", "error", "timeout")}
        for r in self.reason:
            out[r] = out.get(r, 0) + 1
        return out


def _structures(batch: CrystalBatch, lattice: np.ndarray, frac: np.ndarray):
    from pymatgen.core import Lattice, Structure

    species = batch.species.cpu().numpy()
    ptr = torch.cat([batch.num_atoms.new_zeros(1), torch.cumsum(batch.num_atoms, 0)]).tolist()
    for b in range(len(batch)):
        try:
            yield Structure(Lattice(lattice[b]), species[ptr[b]:ptr[b + 1]].tolist(), frac[ptr[b]:ptr[b + 1]],
                            coords_are_cartesian=False)
        except Exception:  # noqa: BLE001 - a degenerate predicted cell; reported as "error"
            yield None


def match_structures(pred: CrystalBatch, label: CrystalBatch, *, stol: float = 0.5, angle_tol: float = 10.0,
                     ltol: float = 0.3, volume_ratio: float = 10.0, time_limit: float | None = 10.0,
                     check_validity: bool = True) -> MatchResult:
    """DiffCSP-style structure matching of each predicted crystal with its label (module docstring).

    ``pred`` and ``label`` are :class:`CrystalBatch` with species and the same atoms per crystal.
    Never raises on bad predicted values: every problem is a per-crystal ``reason``.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    if not isinstance(pred, CrystalBatch) or not isinstance(label, CrystalBatch):
        raise ValueError(f"pred, label: expected CrystalBatch, got {type(pred).__name__}, {type(label).__name__}")
    if len(pred) != len(label) or not torch.equal(pred.num_atoms.cpu(), label.num_atoms.cpu()):
        raise ValueError("pred: expected the label's number of crystals and atoms per crystal")
    if label.species is None:
        raise ValueError("label: expected species (atomic numbers), got None")
    pred = CrystalBatch(pred.lattice.detach().cpu().double(), pred.frac.detach().cpu().double(),
                        pred.num_atoms.cpu(), label.species.cpu())
    label = label.to(device="cpu", dtype=torch.float64)
    B = len(pred)
    matcher = StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)

    L_p = pred.lattice.numpy()
    finite = np.isfinite(L_p).all(axis=(1, 2))
    atom_finite = np.isfinite(pred.frac.numpy()).all(axis=1)
    bad_atoms = np.bincount(pred.batch.numpy()[~atom_finite], minlength=B) > 0
    finite = finite & ~bad_atoms
    v_p = np.abs(np.linalg.det(np.where(finite[:, None, None], L_p, 0.0)))
    v_t = np.abs(np.linalg.det(label.lattice.numpy()))
    in_range = finite & (v_p >= v_t / volume_ratio) & (v_p <= v_t * volume_ratio)

    # Re-base the prediction to its Niggli basis (the same crystal): pymatgen stays fast on it.
    safe_L = torch.where(torch.from_numpy(finite)[:, None, None], pred.lattice, torch.eye(3, dtype=torch.float64))
    safe_F = torch.where(torch.from_numpy(finite)[pred.batch][:, None], pred.frac, torch.zeros(()).double())
    red = niggli_reduce(safe_L)
    usable = in_range & np.isin(red.status.numpy(), [int(Status.OK), int(Status.NOT_CONVERGED)])
    T = torch.where(torch.from_numpy(usable)[:, None, None], red.transform, torch.eye(3, dtype=torch.int64))
    rebased = CrystalBatch(safe_L, safe_F, pred.num_atoms, pred.species).apply_basis_change(T)

    matched = np.zeros(B, dtype=bool)
    rms = np.full(B, np.nan)
    reason = []
    preds = _structures(rebased, rebased.lattice.numpy(), rebased.frac.numpy())
    labels = label.to_structures()
    for b, (p, t) in enumerate(zip(preds, labels)):
        if not in_range[b]:
            reason.append("volume")
            continue
        if not usable[b]:
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
    return MatchResult(matched=matched, rms=rms, reason=reason)


def evaluate(pred: CrystalBatch, label: CrystalBatch, *, match: bool = True, eps: float = 1e-5,
             failure_value: float = 1.0, **match_options) -> dict:
    """All metrics for a batch of predictions against their labels, as a flat dict of floats.

    Keys: ``n``; ``lattice_error`` (mean, failures scored ``failure_value``), ``lattice_error_median``,
    ``lattice_failures`` (count); ``volume_error`` (mean); with ``match=True`` also ``match_rate``,
    ``rmse`` (NaN if nothing matched) and the counts ``match_<reason>`` of :class:`MatchResult`.
    Extra keyword arguments go to :func:`match_structures`.
    """
    err, failed = lattice_error(pred, label, eps=eps, failure_value=failure_value)
    out = {
        "n": float(len(err)),
        "lattice_error": float(err.mean()) if len(err) else math.nan,
        "lattice_error_median": float(np.median(err)) if len(err) else math.nan,
        "lattice_failures": float(failed.sum()),
        "volume_error": float(volume_error(pred, label, failure_value=failure_value).mean()) if len(err) else math.nan,
    }
    if match:
        res = match_structures(pred, label, **match_options)
        out["match_rate"] = res.match_rate
        out["rmse"] = res.rmse
        out.update({f"match_{k}": float(v) for k, v in res.counts().items()})
    return out
