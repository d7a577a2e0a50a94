"""Operations on packed values: the items of every group (the candidates of every crystal of a batch)
in one flat tensor, numbered by an ``owner`` index, with no padding.

The building blocks of the softmin losses' machinery (:mod:`soft_niggli.losses._candidate_softmin`):
per-group minima, maxima, k-th smallest values and soft minimum, each item's position in its group,
and exact grouping of equal integer rows.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..crystal import atom_slots


def packed_soft_minimum(d: torch.Tensor, owner: torch.Tensor, B: int, tau: float,
                        normalize: bool = False) -> torch.Tensor:
    """``(B,)`` soft minimum ``-τ log Σ exp(-d/τ)`` of packed values ``d (Q,)`` grouped by ``owner (Q,)``.

    Shifted by each group's minimum before exponentiating, so it is finite for any finite ``d`` and
    any τ > 0 (``-d/τ`` alone overflows for a tiny τ); groups with no entry score 0.
    """
    low = torch.full((B,), math.inf, dtype=d.dtype, device=d.device).scatter_reduce(0, owner, d.detach(), "amin")
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
    total = torch.zeros(B, dtype=d.dtype, device=d.device).index_add(0, owner, torch.exp(-(d - low[owner]) / tau))
    count = torch.bincount(owner, minlength=B)
    value = low - tau * torch.log(total.clamp_min(torch.finfo(d.dtype).tiny))
    if normalize:
        value = value + tau * torch.log(count.clamp_min(1).to(d.dtype))
    return torch.where(count > 0, value, torch.zeros_like(value))


def kth_smallest(values: torch.Tensor, owner: torch.Tensor, B: int, k: int) -> torch.Tensor:
    """``(B,)`` the k-th smallest of packed ``values`` per ``owner`` (the largest where a group has fewer)."""
    if values.device.type == "cpu":  # one sort of (owner, value) pairs in NumPy: cheaper than two stable sorts
        order = torch.from_numpy(np.lexsort((values.numpy(), owner.numpy())))
    else:
        order = torch.sort(values).indices
        order = order[torch.sort(owner[order], stable=True).indices]
    grouped = owner[order]
    counts = torch.bincount(owner, minlength=B)
    position = atom_slots(counts, grouped)  # rank within the group
    pick = position == torch.minimum(counts[grouped], torch.full_like(grouped, k)) - 1
    out = torch.zeros(B, dtype=values.dtype, device=values.device)
    return out.index_put((grouped[pick],), values[order][pick])


def group_min(values: torch.Tensor, owner: torch.Tensor, B: int) -> torch.Tensor:
    """``(B,)`` the smallest of packed ``values`` per ``owner`` (+inf for an empty group)."""
    return torch.full((B,), math.inf, dtype=values.dtype, device=values.device).scatter_reduce(0, owner, values, "amin")


def group_max(values: torch.Tensor, owner: torch.Tensor, B: int) -> torch.Tensor:
    """``(B,)`` the largest of packed ``values`` per ``owner`` (-inf for an empty group)."""
    return torch.full((B,), -math.inf, dtype=values.dtype, device=values.device).scatter_reduce(0, owner, values, "amax")


def group_slots(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot, owner)`` over ``sum(counts)`` items: the position of each within its group and the group."""
    owner = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    return atom_slots(counts, owner), owner


def group_keys(keys: torch.Tensor) -> torch.Tensor:
    """``(P,)`` group index of each row of ``keys (P, m)`` int64 (equal rows, equal index; exact).

    One sort of a 64-bit hash of the rows (``torch.unique(dim=0)`` and a stable sort per column cost far
    more), then the rows of each run of equal hashes are compared whole; a run that holds different rows
    (a hash collision) sends the whole call to the column-by-column sort."""
    P, device = keys.shape[0], keys.device
    if P < 2:
        return torch.zeros(P, dtype=torch.int64, device=device)
    values = keys.cpu().numpy()
    digest = (values * _row_hash(values.shape[1])).sum(1)  # int64 arithmetic wraps: a hash
    order = np.argsort(digest, kind="stable")
    ordered, hashes = values[order], digest[order]
    same_hash = hashes[1:] == hashes[:-1]
    same_row = (ordered[1:] == ordered[:-1]).all(1)
    if not np.array_equal(same_hash, same_row):
        return _group_keys_by_columns(keys)
    group = np.empty(P, dtype=np.int64)
    group[order] = np.concatenate([[0], np.cumsum(~same_row)])
    return torch.from_numpy(group).to(device)


def _group_keys_by_columns(keys: torch.Tensor) -> torch.Tensor:
    """:func:`group_keys` by a stable sort per column (exact, slower)."""
    order = torch.arange(keys.shape[0], device=keys.device)
    for c in reversed(range(keys.shape[1])):
        order = order[torch.sort(keys[order, c], stable=True).indices]
    ordered = keys[order]
    new = torch.ones(keys.shape[0], dtype=torch.int64, device=keys.device)
    new[1:] = (ordered[1:] != ordered[:-1]).any(1).to(torch.int64)
    group = torch.empty_like(order)
    group[order] = torch.cumsum(new, 0) - 1
    return group


@functools.lru_cache(maxsize=16)
def _row_hash(m: int) -> np.ndarray:
    """Odd 64-bit multipliers (signed int64), one per column, of :func:`group_keys`'s hash: fixed."""
    return np.random.default_rng(20260).integers(-2**63, 2**63 - 1, size=m, dtype=np.int64) | 1
