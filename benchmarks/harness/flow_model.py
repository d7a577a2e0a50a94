"""A small CSPNet-style network for flow matching (:mod:`benchmarks.harness.flow_matching`), plain torch.

Row convention: lattices are ``(B, 3, 3)`` with the lattice vectors as rows, ``X = F @ L``; a change of
basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})`` with ``M`` unimodular; a rotation is ``L' = L Qᵀ``.

The network maps a noisy crystal ``(L_t, f_t)`` at time ``t`` with known species to a prediction of the
clean crystal ``(L̂_1, f̂_1)`` (x₁-prediction), as DiffCSP's CSPNet does for its noise:

* **nodes**: a species embedding plus an MLP of a sinusoidal embedding of ``t``;
* **edges**, fully connected within each crystal (every ordered pair ``(i, j)``, self-pairs included):
  both node states, the rotation-invariant Gram matrix ``G = L_t L_tᵀ`` divided by ``s² = (v̄ n)^{2/3}``
  (``v̄`` the training set's mean volume per atom, a fixed buffer; ``n`` the crystal's atom count, so
  ``s³`` is the expected cell volume: the scaled Gram keeps the absolute size, about 1 for a cell of the
  expected volume and its shape), its 6 independent entries, and Fourier features
  ``sin, cos(2πk (f_j − f_i))``, ``k = 1..K``, of the fractional differences;
* ``layers`` rounds of message passing: ``m_ij = φ_e(h_i, h_j, g, fourier_ij)``,
  ``h_i ← h_i + φ_h(LN(h_i), mean_j m_ij)``;
* **outputs**: ``L̂_1 = (I + A) L_t`` with ``A (B, 3, 3)`` from an MLP of the mean node state (and the
  time embedding) — a left action on the basis, so ``L_t → L_t Qᵀ`` (rotation or reflection) gives
  ``L̂_1 Qᵀ``; ``f̂_1 = wrap(f_t + Δf)`` with ``Δf`` from each node state.

Every input feature is invariant to rotations and reflections of ``L_t`` (``G``), to a common translation
of ``f_t`` (only differences ``f_j − f_i`` enter) and to the atom order (mean aggregation), so the lattice
output is O(3)-equivariant, the coordinate output translation- and permutation-equivariant (tested in
``tests/benchmarks/test_generative.py``). The network sees ``G``, which cannot tell a basis from its mirror image:
handedness is the prior's business (``--align-prior`` in :mod:`benchmarks.generative`). Crystals are
processed padded to the batch's largest crystal (``(B, N, N, ·)`` edge tensors), which is simple and
fast for the ≤ 24 atoms of perov_5, carbon_24 and mp_20.

The last layers of both heads start at zero: the untrained network returns ``(L_t, f_t)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from soft_niggli.lattice import wrap

__all__ = ["FlowNet", "sinusoidal_embedding"]

NUM_ELEMENTS = 100
_TRIU = (torch.tensor([0, 0, 0, 1, 1, 2]), torch.tensor([0, 1, 2, 1, 2, 2]))


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``(B,) → (B, dim)``: ``sin, cos(t · 1000 · ω_k)`` with ``ω_k`` log-spaced from 1 to 1e-4 (``dim`` even)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1e4) * torch.arange(half, dtype=t.dtype, device=t.device) / max(half - 1, 1))
    arg = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


def _mlp(a: int, hidden: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(a, hidden), nn.SiLU(), nn.Linear(hidden, b))


class _Layer(nn.Module):
    def __init__(self, hidden: int, edge_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        # The first edge layer split by input: W_i h_i + W_j h_j + W_g [g, fourier] (no (B,N,N,2h+F) concat).
        self.edge_i = nn.Linear(hidden, hidden)
        self.edge_j = nn.Linear(hidden, hidden, bias=False)
        self.edge_g = nn.Linear(edge_features, hidden, bias=False)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.node = _mlp(2 * hidden, hidden, hidden)

    def forward(self, h, edge_feat, pair_mask, counts):
        x = self.norm(h)
        m = self.edge_i(x)[:, :, None] + self.edge_j(x)[:, None, :] + self.edge_g(edge_feat)
        m = self.edge_out(m) * pair_mask[..., None]
        agg = m.sum(2) / counts[:, None, None]
        return h + self.node(torch.cat([x, agg], dim=-1))


class FlowNet(nn.Module):
    """``(L_t (B,3,3), f_t (N,3), t (B,), species (N,), num_atoms (B,)) → (L̂_1 (B,3,3), f̂_1 (N,3))``.

    Args:
        volume_per_atom: ``v̄`` (Å³), the training labels' mean volume per atom; scales the Gram features.
        hidden: width of node and edge states. layers: message-passing rounds. fourier: ``K``.
        time_dim: size of the sinusoidal time embedding.
    """

    def __init__(self, volume_per_atom: float, hidden: int = 96, layers: int = 3, fourier: int = 8,
                 time_dim: int = 32):
        super().__init__()
        if not volume_per_atom > 0:
            raise ValueError(f"volume_per_atom: expected a number > 0, got {volume_per_atom!r}")
        self.register_buffer("volume_per_atom", torch.tensor(float(volume_per_atom)))
        self.fourier, self.time_dim = int(fourier), int(time_dim)
        self.species_embedding = nn.Embedding(NUM_ELEMENTS + 1, hidden)
        self.time_mlp = _mlp(time_dim, hidden, hidden)
        edge_features = 6 + 6 * self.fourier
        self.layers = nn.ModuleList(_Layer(hidden, edge_features) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden)
        # No bias on the coordinate output: a common shift of all atoms is a translation, which every
        # loss ignores (its gradient is zero up to rounding, and Adam would turn rounding into steps).
        self.coord_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3, bias=False))
        self.lattice_head = _mlp(2 * hidden, hidden, 9)
        nn.init.zeros_(self.coord_head[-1].weight)
        nn.init.zeros_(self.lattice_head[-1].weight)
        nn.init.zeros_(self.lattice_head[-1].bias)

    def forward(self, lattice: torch.Tensor, frac: torch.Tensor, t: torch.Tensor, species: torch.Tensor,
                num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = lattice.shape[0]
        dtype, device = self.species_embedding.weight.dtype, lattice.device
        L = lattice.to(dtype)
        n = num_atoms.to(device)
        batch = torch.repeat_interleave(torch.arange(B, device=device), n)
        ptr = torch.cat([n.new_zeros(1), torch.cumsum(n, 0)])
        slot = torch.arange(frac.shape[0], device=device) - ptr[batch]
        N = int(n.max()) if B else 0
        mask = torch.zeros(B, N, dtype=torch.bool, device=device)
        mask[batch, slot] = True
        F = torch.zeros(B, N, 3, dtype=dtype, device=device)
        F[batch, slot] = frac.to(dtype)
        Z = torch.zeros(B, N, dtype=torch.int64, device=device)
        Z[batch, slot] = species.clamp(0, NUM_ELEMENTS)

        temb = self.time_mlp(sinusoidal_embedding(t.to(dtype), self.time_dim))  # (B, h)
        h = self.species_embedding(Z) + temb[:, None]
        scale2 = (self.volume_per_atom.to(dtype) * n.to(dtype).clamp_min(1)).pow(2.0 / 3.0)
        G = (L @ L.transpose(-1, -2)) / scale2[:, None, None]
        g = G[:, _TRIU[0], _TRIU[1]]  # (B, 6)
        d = F[:, None, :, :] - F[:, :, None, :]  # (B, N, N, 3): f_j - f_i at [i, j]
        k = torch.arange(1, self.fourier + 1, dtype=dtype, device=device)
        arg = 2 * math.pi * d[..., None] * k  # (B, N, N, 3, K)
        fourier = torch.cat([arg.sin(), arg.cos()], dim=-1).flatten(-2)  # (B, N, N, 6K)
        edge_feat = torch.cat([g[:, None, None].expand(B, N, N, 6), fourier], dim=-1)
        pair_mask = (mask[:, :, None] & mask[:, None, :]).to(dtype)
        counts = n.to(dtype).clamp_min(1)
        for layer in self.layers:
            h = layer(h, edge_feat, pair_mask, counts)
        h = self.final_norm(h)
        pooled = (h * mask[..., None].to(dtype)).sum(1) / counts[:, None]
        A = self.lattice_head(torch.cat([pooled, temb], dim=-1)).view(B, 3, 3)
        eye = torch.eye(3, dtype=dtype, device=device)
        L_pred = (eye + A) @ L
        dF = self.coord_head(h)[batch, slot]
        return L_pred.to(lattice.dtype), wrap(frac + dF.to(frac.dtype))
