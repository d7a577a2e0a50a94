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

from .._checks import as_lattice
from .._moved import moved_names
from ..unimodular import enumerate_unimodular

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
def _gram_of_candidates(bound: int, proper: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    # <Mᵀ M, Y> for all M at once: the flattened Mᵀ M, (9, K).
    U = candidate_set(bound, proper, dtype, device)
    return (U.transpose(1, 2) @ U).reshape(-1, 9).T.contiguous()


@functools.lru_cache(maxsize=32)
def _kron_of_candidates(bound: int, proper: bool, dtype: torch.dtype, device: str):
    """Flattened ``M ⊗ M`` as ``(81, K)`` and the quartic form ``(M⊗M)ᵀ(M⊗M)`` as ``(81, K)``."""
    U = candidate_set(bound, proper, dtype, device)
    kron = torch.einsum("kai,kbj->kabij", U, U).reshape(len(U), 9, 9)  # (M ⊗ M)[(a,b),(i,j)] = M_ai M_bj
    quartic = (kron.transpose(1, 2) @ kron).reshape(len(U), 81)
    return kron.reshape(len(U), 81).T.contiguous(), quartic.T.contiguous()


def _device_key(t: torch.Tensor) -> str:
    return str(t.device)


def _flat_pair(pred, ref, pred_name: str, ref_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """Prediction and reference ``(..., 3, 3)`` of one shape as ``(pred (B, 3, 3), ref (B, 3, 3), (...))``."""
    P, R = as_lattice(pred, pred_name), as_lattice(ref, ref_name)
    if P.shape != R.shape:
        raise ValueError(f"{ref_name}: expected the shape of {pred_name} {tuple(P.shape)}, got {tuple(R.shape)}")
    return P.reshape(-1, 3, 3), R.reshape(-1, 3, 3), P.shape[:-2]


def lattice_distances(L_pred, L_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Mean squared entry difference ``||L_pred - M L_ref||² / 9`` for every candidate, ``(..., K)`` for
    lattices ``(..., 3, 3)``.

    Inner-product form (two small matrix products); differentiable in both lattices.
    """
    P, R, lead = _flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    d = _lattice_distances(P, R, bound, proper)
    return d.reshape(*lead, d.shape[-1])


def _lattice_distances(L_pred: torch.Tensor, L_ref: torch.Tensor, bound: int, proper: bool) -> torch.Tensor:
    U = candidate_set(bound, proper, L_pred.dtype, L_pred.device)
    UtU = _gram_of_candidates(bound, proper, L_pred.dtype, _device_key(L_pred))
    B = L_pred.shape[0]
    cross = (L_pred @ L_ref.transpose(1, 2)).reshape(B, 9) @ U.reshape(-1, 9).T
    quad = (L_ref @ L_ref.transpose(1, 2)).reshape(B, 9) @ UtU
    sq = L_pred.pow(2).sum(dim=(1, 2))[:, None] - 2 * cross + quad
    return sq.clamp_min(0) / 9


@functools.lru_cache(maxsize=32)
def _score_tables(bound: int, proper: bool, metric: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The fixed right-hand factor of :func:`candidate_lattice_terms`: ``(18, K)`` or ``(72, K)``."""
    if metric == "cartesian":
        U = candidate_set(bound, proper, dtype, device)
        return torch.cat([_gram_of_candidates(bound, proper, dtype, device), U.reshape(-1, 9).T]).contiguous()
    # On the 6 distinct entries of a symmetric matrix, G ↦ M G Mᵀ is a 6×6 matrix S(M); with weights w
    # (1 on the diagonal, 2 off it) ‖G_p - M G_r Mᵀ‖² = const - 2 (w∘g_p)ᵀ S g_r + g_rᵀ (Sᵀ W S) g_r:
    # 72 columns instead of the 162 of the full Kronecker form.
    U = candidate_set(bound, proper, torch.float64, device)
    S = torch.stack([_sym_entry(U, a, b, i, j) for a, b in _SYM for i, j in _SYM], 1).reshape(-1, 6, 6)
    W = torch.tensor([1.0, 1, 1, 2, 2, 2], dtype=torch.float64, device=U.device)
    quad = S.transpose(1, 2) @ (W[None, :, None] * S)
    return torch.cat([quad.reshape(-1, 36).T, -2 * S.reshape(-1, 36).T]).to(dtype).contiguous()


_SYM = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def _sym_entry(U: torch.Tensor, a: int, b: int, i: int, j: int) -> torch.Tensor:
    """``(K,)`` coefficient of ``G_ij`` (``i <= j``, both triangles) in ``(M G Mᵀ)_ab``."""
    if i == j:
        return U[:, a, i] * U[:, b, i]
    return U[:, a, i] * U[:, b, j] + U[:, a, j] * U[:, b, i]


def _sym6(G: torch.Tensor) -> torch.Tensor:
    return torch.stack([G[:, i, j] for i, j in _SYM], 1)


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
    P, R, lead = _flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    score, a, b = _candidate_lattice_terms(P, R, bound, proper, metric)
    return score.reshape(*lead, score.shape[-1]), a.reshape(lead), b.reshape(lead)


def _candidate_lattice_terms(L_pred: torch.Tensor, L_ref: torch.Tensor, bound: int, proper: bool,
                             metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`candidate_lattice_terms` of checked lattices ``(B, 3, 3)``."""
    with torch.no_grad():
        B = L_pred.shape[0]
        m = torch.maximum(L_pred.abs().amax(dim=(1, 2)), L_ref.abs().amax(dim=(1, 2)))
        m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
        exponent = torch.frexp(m)[1]
        down = torch.ldexp(torch.ones_like(m), -exponent)[:, None, None]
        up2 = torch.ldexp(torch.ones_like(m), 2 * exponent)
        P, R = L_pred * down, L_ref * down
        gr_full = R @ R.transpose(1, 2)
        pp = P.square().sum(dim=(1, 2))
        if metric == "cartesian":
            left = torch.cat([gr_full.reshape(B, 9), -2 * (P @ R.transpose(1, 2)).reshape(B, 9)], 1)
            score = left @ _score_tables(bound, proper, metric, L_pred.dtype, _device_key(L_pred))
            return score, up2 / 9, pp * up2 / 9
        # ‖M R‖² = <Mᵀ M, R Rᵀ> for every candidate, then the quartic difference over the squared size.
        norm = gr_full.reshape(B, 9) @ _gram_of_candidates(bound, proper, L_pred.dtype, _device_key(L_pred))
        norm.add_(pp[:, None]).clamp_(min=torch.finfo(L_pred.dtype).tiny)
        gp, gr = _sym6(P @ P.transpose(1, 2)), _sym6(gr_full)
        w = torch.tensor([1.0, 1, 1, 2, 2, 2], dtype=gp.dtype, device=gp.device)
        left = torch.cat([(gr[:, :, None] * gr[:, None, :]).reshape(B, 36),
                          ((w * gp)[:, :, None] * gr[:, None, :]).reshape(B, 36)], 1)
        score = left @ _score_tables(bound, proper, metric, L_pred.dtype, _device_key(L_pred))
        score.add_((w * gp.square()).sum(1, keepdim=True)).clamp_(min=0).div_(norm)
        return score, up2 / 9, torch.zeros_like(pp)


def lattice_distances_naive(L_pred, L_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Same as :func:`lattice_distances` through the explicit ``(B, K, 3, 3)`` tensor (reference, slow)."""
    L_pred, L_ref, lead = _flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    U = candidate_set(bound, proper, L_pred.dtype, L_pred.device)
    targets = torch.einsum("kij,bjl->bkil", U, L_ref)
    d = (L_pred[:, None] - targets).pow(2).mean(dim=(2, 3))
    return d.reshape(*lead, d.shape[-1])


def metric_distances(G_pred, G_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Mean squared entry difference ``||G_pred - M G_ref Mᵀ||² / 9`` for every candidate, ``(..., K)`` for
    metrics ``(..., 3, 3)``.

    ``G = L Lᵀ`` is rotation-invariant, so this distance needs no alignment of prediction and label.
    """
    G_pred, G_ref, lead = _flat_pair(G_pred, G_ref, "G_pred", "G_ref")
    kron, quartic = _kron_of_candidates(bound, proper, G_pred.dtype, _device_key(G_pred))
    B = G_pred.shape[0]
    gp, gr = G_pred.reshape(B, 9), G_ref.reshape(B, 9)
    cross = (gp[:, :, None] * gr[:, None, :]).reshape(B, 81) @ kron
    quad = (gr[:, :, None] * gr[:, None, :]).reshape(B, 81) @ quartic
    sq = gp.pow(2).sum(1)[:, None] - 2 * cross + quad
    return (sq.clamp_min(0) / 9).reshape(*lead, sq.shape[-1])


def metric_distances_naive(G_pred, G_ref, bound: int = 1, proper: bool = False) -> torch.Tensor:
    """Same as :func:`metric_distances` through the explicit ``(B, K, 3, 3)`` tensor (reference, slow)."""
    G_pred, G_ref, lead = _flat_pair(G_pred, G_ref, "G_pred", "G_ref")
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
