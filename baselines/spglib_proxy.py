"""The Niggli proxy loss exactly as first published, on spglib, for comparison: ``"proxy-spglib"``.

Row convention: lattices are ``(3, 3)`` with the lattice vectors as rows (spglib-python uses rows
too); a change of basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

What it does, crystal by crystal in a Python loop (as the original training code did):

1. ``spglib.niggli_reduce(L_pred.detach(), eps)``. spglib returns no transform, so it is recovered
   by rounding ``N_pred = L_red @ inv(L_pred)`` (``numpy.linalg.inv``, float64). A NaN prediction
   comes back from spglib as NaN and fails this check.
2. Labels are reduced the same way (unless ``labels_canonical=True``).
3. The label is pulled into the prediction's basis, ``L' = N_pred^{-1} L_n``,
   ``F' = wrap(F_n N_pred)``, and the loss is ``lattice_weight · MSE(L_pred, L') + coord_weight ·
   periodic_MSE(F_pred, F')`` with the library's periodic coordinate term (so that only the
   reduction and the frame differ from ``"proxy"``). No automorphism is chosen: whichever of the
   equally reduced bases spglib returns is the target.

It raises :class:`SpglibProxyError` when spglib returns ``None``, when ``inv`` fails (a singular
cell), or when the recovered transform is not an integer matrix of determinant ±1 (spglib's absolute
tolerance lets it return a cell that is not a change of basis of the input). That exception is what
stopped the original training at the first pathological prediction of an untrained model; this
baseline keeps it on purpose. ``status`` is all zeros: there is no per-item verdict, only success or
an exception.

Registration: importing this module registers the name ``"proxy-spglib"``, and
:func:`soft_niggli.losses.get_loss` imports it on the first request for that name, so
``get_loss("proxy-spglib")`` works wherever the ``baselines`` package is importable. It is not
imported by ``baselines/__init__.py``, which must stay free of torch (see :mod:`baselines.reducers`).
"""

from __future__ import annotations

import warnings

import numpy as np
import spglib
import torch

from soft_niggli.crystal import CrystalBatch
from soft_niggli.lattice import integer_inverse
# The option checks and result assembly are the loss interface's own (private) helpers, shared so
# that this baseline validates and reports exactly like the library's losses.
from soft_niggli.losses import (
    LATTICE_METRICS,
    CrystalLoss,
    LossResult,
    _assemble,
    _choice,
    _flag,
    _weight,
    lattice_term,
    register_loss,
)
from soft_niggli.periodic import periodic_coordinate_loss

__all__ = ["SpglibProxyError", "SpglibProxyLoss", "spglib_reduce_with_transform"]


_SPGLIB_ERRORS = tuple(e for e in (getattr(getattr(spglib, "error", None), "SpglibError", None),) if e is not None)


class SpglibProxyError(RuntimeError):
    """spglib could not reduce a cell, or its result is not a change of basis of the input."""


def spglib_reduce_with_transform(lattice: np.ndarray, eps: float = 1e-5, *, what: str = "cell") -> tuple[np.ndarray, np.ndarray]:
    """``(L_red, N)`` with ``L_red = spglib.niggli_reduce(lattice, eps)`` and ``N = round(L_red inv(lattice))``.

    ``lattice`` is a float64 ``(3, 3)`` array (rows are lattice vectors). Raises
    :class:`SpglibProxyError` when spglib returns ``None``, the input is singular, or ``N`` is not
    integral (within 1e-3) with determinant ±1.
    """
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    try:
        with warnings.catch_warnings():
            # spglib 2.7+ warns that its None-on-failure API is deprecated; both behaviours are handled.
            warnings.simplefilter("ignore", DeprecationWarning)
            reduced = spglib.niggli_reduce(lattice, eps=eps)
    except _SPGLIB_ERRORS as err:  # spglib >= 3 (or OLD_ERROR_HANDLING off) raises instead of returning None
        raise SpglibProxyError(f"spglib.niggli_reduce failed for {what} {lattice.tolist()}: {err}") from err
    if reduced is None:
        raise SpglibProxyError(f"spglib.niggli_reduce returned None for {what} {lattice.tolist()}")
    try:
        raw = np.asarray(reduced) @ np.linalg.inv(lattice)
    except np.linalg.LinAlgError as err:
        raise SpglibProxyError(f"cannot recover the transform of {what} {lattice.tolist()}: {err}") from err
    N = np.round(raw)
    if not np.all(np.isfinite(raw)) or np.abs(raw - N).max() > 1e-3 or round(abs(np.linalg.det(N))) != 1:
        raise SpglibProxyError(f"spglib's reduced cell is not a unimodular change of basis of {what} "
                               f"{lattice.tolist()}: L_red @ inv(L) = {raw.tolist()}")
    return np.asarray(reduced), N.astype(np.int64)


@register_loss("proxy-spglib")
class SpglibProxyLoss(CrystalLoss):
    """The published proxy loss on spglib (see the module docstring); raises on a failed reduction.

    Args (keyword-only):
        lattice_weight, coord_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` (as published) or ``"gram"``.
        labels_canonical: ``True`` if the targets are already Niggli-reduced.
        eps: spglib's (absolute) tolerance, > 0.
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 labels_canonical: bool = False, eps: float = 1e-5):
        super().__init__()
        self.lattice_weight = _weight("lattice_weight", lattice_weight)
        self.coord_weight = _weight("coord_weight", coord_weight)
        self.lattice_metric = _choice("lattice_metric", lattice_metric, LATTICE_METRICS)
        self.labels_canonical = _flag("labels_canonical", labels_canonical)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps: expected a number > 0, got {eps!r}")
        self.eps = float(eps)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B, dtype, device = len(pred), pred.dtype, pred.device
        labels_np = target.lattice.detach().cpu().double().numpy()
        pred_np = pred.lattice.detach().cpu().double().numpy()
        N_lab, N_pred = [], []
        for b in range(B):
            N_pred.append(spglib_reduce_with_transform(pred_np[b], self.eps, what=f"prediction {b}")[1])
            if not self.labels_canonical:
                N_lab.append(spglib_reduce_with_transform(labels_np[b], self.eps, what=f"label {b}")[1])
        if self.labels_canonical:
            labels = target
        else:
            labels = target.apply_basis_change(torch.as_tensor(np.stack(N_lab) if B else np.zeros((0, 3, 3), np.int64),
                                                               device=device))
        N = torch.as_tensor(np.stack(N_pred) if B else np.zeros((0, 3, 3), np.int64), device=device)
        # M = N_pred^{-1} takes the canonical label into the prediction's basis: L' = M L_n, F' = F_n M^{-1}.
        pulled = CrystalBatch(labels.lattice.detach(), labels.frac.detach(), labels.num_atoms, labels.species)
        pulled = pulled.apply_basis_change(integer_inverse(N))
        terms = {
            "lattice": lattice_term(pred.lattice, pulled.lattice, self.lattice_metric),
            "coords": periodic_coordinate_loss(pred.frac, pulled.frac, pred.batch, B),
        }
        status = torch.zeros(B, dtype=torch.int64, device=device)
        included = torch.ones(B, dtype=torch.bool, device=device)
        return _assemble(terms, {"lattice": self.lattice_weight, "coords": self.coord_weight}, included, status,
                         torch.zeros_like(included))
