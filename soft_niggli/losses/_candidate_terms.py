"""Unchecked internals shared by :mod:`soft_niggli.losses.candidates` and :mod:`soft_niggli.losses.windows`
(private): the pairing of a prediction with its reference, the per-candidate tables cached per dtype and
device, and every candidate's lattice term on checked ``(B, 3, 3)`` cells.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases a
reference lattice as ``M @ L_ref`` and its metric as ``M G_ref Mᵀ``.
"""

from __future__ import annotations

import functools

import torch

from .._checks import as_lattice
from ..unimodular import enumerate_unimodular


def _candidate_matrices(bound: int, proper: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    """:func:`soft_niggli.losses.candidates.candidate_set`, cached per dtype/device."""
    return enumerate_unimodular(bound, proper=proper, dtype=dtype, device=device)


def device_key(t: torch.Tensor) -> str:
    """The device of ``t`` as a string, the key of the per-device caches."""
    return str(t.device)


def flat_pair(pred, ref, pred_name: str, ref_name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """Prediction and reference ``(..., 3, 3)`` of one shape as ``(pred (B, 3, 3), ref (B, 3, 3), (...))``."""
    P, R = as_lattice(pred, pred_name), as_lattice(ref, ref_name)
    if P.shape != R.shape:
        raise ValueError(f"{ref_name}: expected the shape of {pred_name} {tuple(P.shape)}, got {tuple(R.shape)}")
    return P.reshape(-1, 3, 3), R.reshape(-1, 3, 3), P.shape[:-2]


@functools.lru_cache(maxsize=32)
def gram_of_candidates(bound: int, proper: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    # <Mᵀ M, Y> for all M at once: the flattened Mᵀ M, (9, K).
    U = _candidate_matrices(bound, proper, dtype, device)
    return (U.transpose(1, 2) @ U).reshape(-1, 9).T.contiguous()


@functools.lru_cache(maxsize=32)
def _score_tables(bound: int, proper: bool, metric: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """The fixed right-hand factor of :func:`candidate_lattice_terms_unchecked`: ``(18, K)`` or ``(72, K)``."""
    if metric == "cartesian":
        U = _candidate_matrices(bound, proper, dtype, device)
        return torch.cat([gram_of_candidates(bound, proper, dtype, device), U.reshape(-1, 9).T]).contiguous()
    # On the 6 distinct entries of a symmetric matrix, G ↦ M G Mᵀ is a 6×6 matrix S(M); with weights w
    # (1 on the diagonal, 2 off it) ‖G_p - M G_r Mᵀ‖² = const - 2 (w∘g_p)ᵀ S g_r + g_rᵀ (Sᵀ W S) g_r:
    # 72 columns instead of the 162 of the full Kronecker form.
    U = _candidate_matrices(bound, proper, torch.float64, device)
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


def candidate_lattice_terms_unchecked(L_pred: torch.Tensor, L_ref: torch.Tensor, bound: int, proper: bool,
                                      metric: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~soft_niggli.losses.candidates.candidate_lattice_terms` of checked lattices ``(B, 3, 3)``."""
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
            score = left @ _score_tables(bound, proper, metric, L_pred.dtype, device_key(L_pred))
            return score, up2 / 9, pp * up2 / 9
        # ‖M R‖² = <Mᵀ M, R Rᵀ> for every candidate, then the quartic difference over the squared size.
        norm = gr_full.reshape(B, 9) @ gram_of_candidates(bound, proper, L_pred.dtype, device_key(L_pred))
        norm.add_(pp[:, None]).clamp_(min=torch.finfo(L_pred.dtype).tiny)
        gp, gr = _sym6(P @ P.transpose(1, 2)), _sym6(gr_full)
        w = torch.tensor([1.0, 1, 1, 2, 2, 2], dtype=gp.dtype, device=gp.device)
        left = torch.cat([(gr[:, :, None] * gr[:, None, :]).reshape(B, 36),
                          ((w * gp)[:, :, None] * gr[:, None, :]).reshape(B, 36)], 1)
        score = left @ _score_tables(bound, proper, metric, L_pred.dtype, device_key(L_pred))
        score.add_((w * gp.square()).sum(1, keepdim=True)).clamp_(min=0).div_(norm)
        return score, up2 / 9, torch.zeros_like(pp)
