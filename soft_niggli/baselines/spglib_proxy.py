"""The Niggli proxy loss exactly as first published, on spglib, for comparison: ``"proxy-spglib"``.

Row convention: lattices are ``(..., 3, 3)`` with the lattice vectors as rows (spglib-python uses rows
too); a change of basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``.

What it does, crystal by crystal in a Python loop (as the original training code did):

1. ``spglib.niggli_reduce(L_pred.detach(), spglib_eps)``. spglib returns no transform, so it is recovered
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

Registration: the distribution declares ``proxy-spglib = soft_niggli.baselines.spglib_proxy:SpglibProxyLoss``
in the ``soft_niggli.losses`` entry-point group, so :func:`soft_niggli.get_loss` imports this module
on the first request for that name. ``soft_niggli.baselines`` does not import it, so that the loss is
loaded only when asked for by name, as a plugin's would be.
"""

from __future__ import annotations

import numpy as np
import torch

from soft_niggli._spglib import spglib_niggli_reduce
from soft_niggli.crystal import CrystalBatch
from soft_niggli.lattice import integer_inverse
from soft_niggli.losses import CrystalLoss, LossResult, choice_option, flag_option, positive_option, weight_option
from soft_niggli.losses.periodic import periodic_coordinate_loss
from soft_niggli.losses.options import LATTICE_METRICS
from soft_niggli.losses.terms import lattice_term

__all__ = ["SpglibProxyError", "SpglibProxyLoss", "spglib_reduce_with_transform"]


class SpglibProxyError(RuntimeError):
    """spglib could not reduce a cell, or its result is not a change of basis of the input."""


def spglib_reduce_with_transform(lattice, spglib_eps: float = 1e-5, *, what: str = "cell") -> tuple[np.ndarray, np.ndarray]:
    """``(L_red, N)`` with ``L_red = spglib.niggli_reduce(lattice, spglib_eps)`` and ``N = round(L_red inv(lattice))``.

    ``lattice`` is a ``(..., 3, 3)`` array-like (rows are lattice vectors; one cell ``(3, 3)`` or a stack),
    read in float64; ``L_red`` float64 and ``N`` int64 have its shape. Raises :class:`SpglibProxyError`
    when spglib returns ``None`` for a cell, a cell is singular, or its ``N`` is not integral (within
    1e-3) with determinant ±1 (the message names the cell's index in the stack).
    """
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    if lattice.ndim < 2 or lattice.shape[-2:] != (3, 3):
        raise ValueError(f"lattice: expected shape (..., 3, 3), got {lattice.shape}")
    if lattice.ndim == 2:
        return _reduce_one(lattice, spglib_eps, what)
    lead = lattice.shape[:-2]
    reduced, N = np.empty(lattice.shape), np.empty(lattice.shape, dtype=np.int64)
    for i, cell in enumerate(lattice.reshape(-1, 3, 3)):
        index = np.unravel_index(i, lead)
        reduced[index], N[index] = _reduce_one(cell, spglib_eps, f"{what} {tuple(int(j) for j in index)}")
    return reduced, N


def _reduce_one(lattice: np.ndarray, spglib_eps: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`spglib_reduce_with_transform` of one float64 cell ``(3, 3)``."""
    result = spglib_niggli_reduce(lattice, eps=spglib_eps)
    if not result.ok:
        raise SpglibProxyError(f"spglib.niggli_reduce failed (returned None or raised) for {what} {lattice.tolist()}")
    reduced = result.lattice
    try:
        raw = reduced @ np.linalg.inv(lattice)
    except np.linalg.LinAlgError as err:
        raise SpglibProxyError(f"cannot recover the transform of {what} {lattice.tolist()}: {err}") from err
    N = np.round(raw)
    if not np.all(np.isfinite(raw)) or np.abs(raw - N).max() > 1e-3 or round(abs(np.linalg.det(N))) != 1:
        raise SpglibProxyError(f"spglib's reduced cell is not a unimodular change of basis of {what} "
                               f"{lattice.tolist()}: L_red @ inv(L) = {raw.tolist()}")
    return reduced, N.astype(np.int64)


class SpglibProxyLoss(CrystalLoss):
    """The published proxy loss on spglib (see the module docstring); raises on a failed reduction.

    Registered as ``"proxy-spglib"`` through the ``soft_niggli.losses`` entry point of this
    distribution (``pyproject.toml``), the way any package adds a loss.

    Args (keyword-only):
        lattice_weight, coord_weight: finite weights >= 0.
        lattice_metric: ``"cartesian"`` (as published) or ``"gram"``.
        labels_canonical: ``True`` if the targets are already Niggli-reduced.
        spglib_eps: spglib's absolute tolerance, a finite number > 0.
    """

    def __init__(self, *, lattice_weight: float = 1.0, coord_weight: float = 1.0, lattice_metric: str = "cartesian",
                 labels_canonical: bool = False, spglib_eps: float = 1e-5):
        super().__init__()
        self.lattice_weight = weight_option("lattice_weight", lattice_weight)
        self.coord_weight = weight_option("coord_weight", coord_weight)
        self.lattice_metric = choice_option("lattice_metric", lattice_metric, LATTICE_METRICS)
        self.labels_canonical = flag_option("labels_canonical", labels_canonical)
        self.spglib_eps = positive_option("spglib_eps", spglib_eps)

    def compute(self, pred: CrystalBatch, target: CrystalBatch) -> LossResult:
        B, device = len(pred), pred.device
        labels_np = target.lattice.detach().cpu().double().numpy()
        pred_np = pred.lattice.detach().cpu().double().numpy()
        N_lab, N_pred = [], []
        for b in range(B):
            N_pred.append(spglib_reduce_with_transform(pred_np[b], self.spglib_eps, what=f"prediction {b}")[1])
            if not self.labels_canonical:
                N_lab.append(spglib_reduce_with_transform(labels_np[b], self.spglib_eps, what=f"label {b}")[1])
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
        return self.assemble(terms, {"lattice": self.lattice_weight, "coords": self.coord_weight}, included, status)
