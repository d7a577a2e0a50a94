"""The bounded set of unimodular matrices that the softmin losses search, the distances of a prediction
to every re-basing of a reference by them, and the soft minimum over those distances.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases a
reference lattice as ``M @ L_ref`` and its metric as ``M G_ref Mᵀ``. The public functions take one cell
``(3, 3)`` or any stack ``(..., 3, 3)`` (tensors, NumPy arrays, nested lists), prediction and reference
of the same shape; a result per cell and candidate is ``(..., K)``.

For a prediction and a reference (the label, usually in its Niggli basis) the soft minimum over the
candidates ``U = {M}`` of a distance ``d_M``,

    soft_minimum_τ(d) = -τ log Σ_M exp(-d_M / τ)        (optionally + τ log |U|),

is smooth in the prediction, bounded below by ``min_M d_M - τ log |U|`` and tends to ``min_M d_M`` as
τ → 0. The distances are computed in inner-product form, so no ``(B, K, 3, 3)`` tensor is built:

    ||L_p - M L_r||² = ||L_p||² - 2 <M, L_p L_rᵀ> + <Mᵀ M, L_r L_rᵀ>

is two ``(B, 9) @ (9, K)`` products, and for metrics

    ||G_p - M G_r Mᵀ||² = ||G_p||² - 2 <M ⊗ M, G_p ⊗ G_r> + <(M ⊗ M)ᵀ(M ⊗ M), G_r ⊗ G_r>

uses the Kronecker square of each candidate, precomputed once per candidate set (cached per dtype and
device like the candidate set itself). :func:`candidate_lattice_terms`, which scores all K candidates
for the crystals where :func:`~soft_niggli.losses.windows.window_candidates` cannot prove its
shortcut, does the same in one product each: ``(B, 18) @ (18, K)``, and for metrics on the 6 distinct
entries of the symmetric matrices, ``(B, 72) @ (72, K)``.

The few candidates a loss needs, found without scoring all of them, are the windows of
:mod:`soft_niggli.losses.windows`.
"""

from __future__ import annotations

import functools
import math

import torch

from .._moved import moved_names
from ..unimodular import enumerate_unimodular
from ._candidate_terms import candidate_lattice_terms_unchecked, device_key, flat_pair, gram_of_candidates

__all__ = [
    "candidate_set",
    "candidate_lattice_terms",
    "lattice_distances",
    "lattice_distances_naive",
    "metric_distances",
    "metric_distances_naive",
    "soft_minimum",
]

# Names that live in another module: importable from here too, each warning once where it lives.
__getattr__ = moved_names(__name__, {
    "softmin": "soft_niggli.losses.candidates:soft_minimum",
    "window_candidates": "soft_niggli.losses.windows:window_candidates",
    "grouped_window_candidates": "soft_niggli.losses.windows:grouped_window_candidates",
    "WindowMargin": "soft_niggli.losses.windows:WindowMargin",
})


def candidate_set(bound: int = 1, proper: bool = False, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The candidate matrices ``(K, 3, 3)`` (entries in ``[-bound, bound]``, det ±1), cached per dtype/device."""
    return enumerate_unimodular(bound, proper=proper, dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _kron_of_candidates(bound: int, proper: bool, dtype: torch.dtype, device: str):
    """Flattened ``M ⊗ M`` as ``(81, K)`` and the quartic form ``(M⊗M)ᵀ(M⊗M)`` as ``(81, K)``."""
    U = candidate_set(bound, proper, dtype, device)
    kron = torch.einsum("kai,kbj->kabij", U, U).reshape(len(U), 9, 9)  # (M ⊗ M)[(a,b),(i,j)] = M_ai M_bj
    quartic = (kron.transpose(1, 2) @ kron).reshape(len(U), 81)
    return kron.reshape(len(U), 81).T.contiguous(), quartic.T.contiguous()


def lattice_distances(L_pred, L_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Mean squared entry difference ``||L_pred - M L_ref||² / 9`` for every candidate, ``(..., K)`` for
    lattices ``(..., 3, 3)``.

    Inner-product form (two small matrix products); differentiable in both lattices.
    """
    P, R, lead = flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    d = _lattice_distances(P, R, bound, proper)
    return d.reshape(*lead, d.shape[-1])


def _lattice_distances(L_pred: torch.Tensor, L_ref: torch.Tensor, bound: int, proper: bool) -> torch.Tensor:
    U = candidate_set(bound, proper, L_pred.dtype, L_pred.device)
    UtU = gram_of_candidates(bound, proper, L_pred.dtype, device_key(L_pred))
    B = L_pred.shape[0]
    cross = (L_pred @ L_ref.transpose(1, 2)).reshape(B, 9) @ U.reshape(-1, 9).T
    quad = (L_ref @ L_ref.transpose(1, 2)).reshape(B, 9) @ UtU
    sq = L_pred.pow(2).sum(dim=(1, 2))[:, None] - 2 * cross + quad
    return sq.clamp_min(0) / 9


def candidate_lattice_terms(L_pred, L_ref, bound: int = 1, proper: bool = False,
                            metric: str = "cartesian") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every candidate's :func:`~soft_niggli.losses.lattice_term` against ``L_pred``, as ``(score, a, b)``:
    ``lattice_term(L_pred, M L_ref) = a · score + b`` per cell (``score (..., K)``, ``a, b (...)``, ``a > 0``
    for lattices ``(..., 3, 3)``), so that ranking and thresholds need no pass over the whole table.

    For choosing candidates (not differentiated), in inner-product form: one ``(B, 18) @ (18, K)``
    product for Cartesian entries; for the metric, ``‖G_p - M G_r Mᵀ‖²`` on the 6 distinct entries of
    the symmetric matrices (``(B, 72) @ (72, K)``) over ``‖L_p‖² + ‖M L_r‖²`` (then ``b = 0``). Both cells
    are divided by a common power of two first, so nothing overflows. Candidates tied in exact
    arithmetic (automorphisms of a symmetric reference) come out within a few ulps of each other.
    """
    P, R, lead = flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    score, a, b = candidate_lattice_terms_unchecked(P, R, bound, proper, metric)
    return score.reshape(*lead, score.shape[-1]), a.reshape(lead), b.reshape(lead)


def lattice_distances_naive(L_pred, L_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Same as :func:`lattice_distances` through the explicit ``(B, K, 3, 3)`` tensor (reference, slow)."""
    L_pred, L_ref, lead = flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    U = candidate_set(bound, proper, L_pred.dtype, L_pred.device)
    targets = torch.einsum("kij,bjl->bkil", U, L_ref)
    d = (L_pred[:, None] - targets).pow(2).mean(dim=(2, 3))
    return d.reshape(*lead, d.shape[-1])


def metric_distances(G_pred, G_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Mean squared entry difference ``||G_pred - M G_ref Mᵀ||² / 9`` for every candidate, ``(..., K)`` for
    metrics ``(..., 3, 3)``.

    ``G = L Lᵀ`` is rotation-invariant, so this distance needs no alignment of prediction and label.
    """
    G_pred, G_ref, lead = flat_pair(G_pred, G_ref, "G_pred", "G_ref")
    kron, quartic = _kron_of_candidates(bound, proper, G_pred.dtype, device_key(G_pred))
    B = G_pred.shape[0]
    gp, gr = G_pred.reshape(B, 9), G_ref.reshape(B, 9)
    cross = (gp[:, :, None] * gr[:, None, :]).reshape(B, 81) @ kron
    quad = (gr[:, :, None] * gr[:, None, :]).reshape(B, 81) @ quartic
    sq = gp.pow(2).sum(1)[:, None] - 2 * cross + quad
    return (sq.clamp_min(0) / 9).reshape(*lead, sq.shape[-1])


def metric_distances_naive(G_pred, G_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Same as :func:`metric_distances` through the explicit ``(B, K, 3, 3)`` tensor (reference, slow)."""
    G_pred, G_ref, lead = flat_pair(G_pred, G_ref, "G_pred", "G_ref")
    U = candidate_set(bound, proper, G_pred.dtype, G_pred.device)
    targets = torch.einsum("kai,bij,kcj->bkac", U, G_ref, U)
    d = (G_pred[:, None] - targets).pow(2).mean(dim=(2, 3))
    return d.reshape(*lead, d.shape[-1])


def soft_minimum(d: torch.Tensor, tau: float, normalize: bool = False, dim: int = -1) -> torch.Tensor:
    """``-τ log Σ exp(-d / τ)`` along ``dim`` (``+ τ log K`` when ``normalize``), stable for any τ > 0.

    Entries of ``d`` that are ``+inf`` (pruned candidates) contribute nothing.
    """
    out = -tau * torch.logsumexp(-d / tau, dim=dim)
    if normalize:
        out = out + tau * math.log(d.shape[dim])
    return out
