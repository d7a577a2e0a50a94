"""Windows of candidates: the few unimodular re-basings of a reference that a loss needs, those whose
lattice term against a prediction lies within a margin of the k-th nearest, found without scoring the
whole candidate set of :mod:`soft_niggli.losses.candidates`.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; a candidate ``M`` re-bases a
reference lattice as ``M @ L_ref``. :func:`window_candidates` takes one cell ``(3, 3)`` or any stack
``(..., 3, 3)`` (tensors, NumPy arrays, nested lists), prediction and reference of the same shape, and its
packed windows index the flattened cells ``reshape(-1, 3, 3)``.

:func:`window_candidates` finds them per crystal, :func:`grouped_window_candidates` per group of rows
that compete as one candidate set (the classes of a label's reduced forms), with the margin in closed
form (:class:`WindowMargin`). A candidate's rows are short vectors ``v`` of ``[-bound, bound]³``, and
its lattice term is a sum over its rows (Cartesian entries) or bounded below by one (the metric's
diagonal). On CPU tensors a compiled branch and bound over the rows (``soft_niggli/_kernels/window.c``)
enumerates exactly the candidates within reach, for any cell; elsewhere (GPU tensors, or no C
compiler at install) PyTorch combines the ``r`` best vectors per row, ``r³`` triples instead of K
matrices, with a bound that proves no other candidate is in the window (else that crystal is scored
in full by :func:`~soft_niggli.losses.candidates.candidate_lattice_terms`). Both return the same
window (tests/losses/test_continuous_terms.py checks each against scoring all K candidates).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .._checks import has_values
from ._candidate_terms import candidate_lattice_terms_unchecked, device_key, flat_pair
from .candidates import candidate_set

try:  # the compiled branch and bound of window_candidates (soft_niggli/_kernels/window.c); optional
    from .. import _loss_kernel as _kernel
except ImportError:  # not built (no C compiler at install time): the PyTorch stages below do the same
    _kernel = None

__all__ = ["window_candidates", "grouped_window_candidates", "WindowMargin"]


@functools.lru_cache(maxsize=8)
def _row_vectors(bound: int, device: str) -> torch.Tensor:
    """The nonzero vectors of ``[-bound, bound]³``, ``(n, 3)`` int64 (26 for bound 1, 124 for bound 2)."""
    r = torch.arange(-bound, bound + 1)
    V = torch.cartesian_prod(r, r, r)
    return V[(V != 0).any(1)].to(device)


# Short vectors combined per row, in stages (the crystals whose proof fails go on to the next):
# 6³ = 216 triples suffice for about half the crystals, 10³ for nearly all, against K = 6960
# matrices for bound 1. The metric needs 12: hexagonal and fcc cells have 12 vectors of one length,
# all of them automorphisms' rows.
_ROW_RANKS = {"cartesian": (6, 10), "gram": (6, 12)}


def window_candidates(L_pred, L_ref, k: int, margin, bound: int = 1,
                      proper: bool = False, metric: str = "cartesian") -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ``(owner (Q,), X (Q, 3, 3) int64)``: per crystal, every candidate ``X`` whose
    :func:`~soft_niggli.losses.terms.lattice_term` against ``L_pred`` is at most ``t_k + margin(t_k)``,
    ``t_k`` the k-th smallest over the whole candidate set (the set returned may hold a few more).

    ``margin(t_k, rows)``: the window's width ``(B',)`` >= 0 beyond ``t_k (B',)`` for the crystals
    ``rows`` (an index tensor, or None for all), non-decreasing in ``t_k``; it should include a
    rounding slack; a :class:`WindowMargin` (the closed form the softmin losses use) lets the compiled
    search do the work in one pass. Not differentiated. Candidates in the window whose terms tie in
    exact arithmetic are all returned (the proof has a relative slack of 1e-5).

    How: each row ``v`` of ``X`` is a nonzero short vector. With Cartesian entries the term is
    ``Σ_i ‖p_i - v_i R‖² / 9``, a sum of per-row costs; with the metric, ``‖G_p - X G_r Xᵀ‖²`` over
    the squared size is at least the diagonal's share ``Σ_i (G_p,ii - v_i G_r v_iᵀ)²`` over it. The
    ``r`` vectors of lowest cost per row are combined (``r³`` triples, the non-unimodular ones
    dropped), ``t_k`` is taken among them, and a bound on the per-row cost that any candidate in
    the window must meet proves that the (r+1)-th vectors, and all beyond, are out. Crystals where
    the proof fails (tiny or strongly skewed cells, or ``k`` beyond the triples) try more vectors,
    then are scored against all K candidates through
    :func:`~soft_niggli.losses.candidates.candidate_lattice_terms`. On CPU tensors the compiled kernel
    does the same search exactly, by branch and bound (:func:`_compiled_window`).

    Lattices ``(..., 3, 3)``: ``owner`` indexes the flattened cells ``L_pred.reshape(-1, 3, 3)`` (0 for one
    cell ``(3, 3)``), and ``margin`` sees ``t_k`` of the flattened cells.
    """
    P, R, _ = flat_pair(L_pred, L_ref, "L_pred", "L_ref")
    return _window_candidates(P, R, k, margin, bound, proper, metric)


def _window_candidates(L_pred: torch.Tensor, L_ref: torch.Tensor, k: int, margin, bound: int, proper: bool,
                       metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`window_candidates` of checked lattices ``(B, 3, 3)``."""
    with torch.no_grad():
        B, device = L_pred.shape[0], L_pred.device
        V = _row_vectors(bound, device_key(L_pred))
        if _kernel is not None and device.type == "cpu" and B and has_values(L_pred):
            return _compiled_window(L_pred, L_ref, k, margin, proper, metric, V)
        owners, matrices, full = [], [], []
        rows = torch.arange(B, device=device)
        ranks = [r for r in _ROW_RANKS[metric] if k <= r ** 3] if B and has_values(L_pred) else []
        costs = _RowCosts(L_pred, L_ref, metric, V, max(ranks)) if ranks else None
        for stage, r in enumerate(ranks):
            owner, X, failed, kth = _window_by_rows(costs if len(rows) == B else costs.subset(rows), k, margin, proper,
                                                    V, r)
            owners.append(rows[owner])
            matrices.append(X)
            if metric == "gram" and stage + 1 < len(ranks):
                # The metric's bound is weak far from a match (k-th term above 1% of the cells' mean
                # squared entry): more vectors would not prove those either; they go to the full scoring.
                size = (L_pred[rows].square().sum(dim=(1, 2)) + L_ref[rows].square().sum(dim=(1, 2))) / 9
                rows, hopeless = rows[failed & (kth <= 0.01 * size)], rows[failed & ~(kth <= 0.01 * size)]
                full.append(hopeless)
            else:
                rows = rows[failed]
            if not len(rows):
                break
        rows = torch.cat(full + [rows])
        if len(rows):
            score, a, b = candidate_lattice_terms_unchecked(L_pred[rows], L_ref[rows], bound, proper, metric)
            kth = a * torch.topk(score, min(k, score.shape[1]), dim=1, largest=False).values[:, -1] + b
            limit = kth + margin(kth, rows)
            sub, candidate = (score <= ((limit - b) / a)[:, None]).nonzero(as_tuple=True)
            owners.append(rows[sub])
            matrices.append(candidate_set(bound, proper, torch.int64, device)[candidate])
        if not owners:
            return torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, 3, 3, dtype=torch.int64, device=device)
        return torch.cat(owners), torch.cat(matrices)


def grouped_window_candidates(L_pred: torch.Tensor, L_ref: torch.Tensor, k: int, margin: WindowMargin,
                              penalty: torch.Tensor, start: torch.Tensor, relative: torch.Tensor, bound: int = 1,
                              proper: bool = False, metric: str = "cartesian") -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`window_candidates` for groups of rows that compete as one candidate set: packed ``(owner (Q,),
    X (Q, 3, 3) int64)``, ``owner`` a row.

    Rows ``start[g] .. start[g+1] - 1`` (``start (G + 1,)`` int64, rows in order of increasing
    ``penalty``) form group ``g``. Row ``r``'s candidate ``X`` is the basis ``X relative[r]`` of a
    common one (``relative (n, 3, 3)`` int64; several rows may reach one basis), ranked by ``e = term +
    penalty[r]`` (``penalty (n,)``, Å²). Per group, ``t_k`` is the k-th smallest ``e`` over distinct
    bases (each at its smallest ``e``), and every distinct basis with ``e <= t_k + margin_g(t_k)`` is
    returned once, from the row of its smallest ``e`` (the first such row); ``margin_g`` is the
    :class:`WindowMargin` with the smallest ``absolute`` and ``extra`` of the group's rows.

    On CPU tensors one compiled search per group (``soft_niggli/_kernels/window.c``, ``window_groups``): its
    later rows search only below the group's limit so far. Elsewhere :func:`window_candidates` per row,
    then the same choice in PyTorch (tests/losses/test_loss_kernel.py checks that both agree).
    """
    with torch.no_grad():
        n, device = L_pred.shape[0], L_pred.device
        G = start.shape[0] - 1
        group = torch.repeat_interleave(torch.arange(G, device=device), start[1:] - start[:-1], output_size=n)
        low = lambda x: torch.full((G,), math.inf, dtype=x.dtype, device=device).scatter_reduce(0, group, x, "amin")
        absolute_g, extra_g = low(margin.absolute.detach().to(torch.float64)), low(margin.extra.detach().to(torch.float64))
        compiled = (_kernel is not None and hasattr(_kernel, "window_groups") and device.type == "cpu" and n
                    and has_values(L_pred) and int(relative.abs().max()) * 3 * bound < 64)
        if compiled:
            V = _row_vectors(bound, device_key(L_pred))
            P = L_pred.detach().to(torch.float64).reshape(n, 9).contiguous().numpy()
            R = L_ref.detach().to(torch.float64).reshape(n, 9).contiguous().numpy()
            kth = torch.empty(G, dtype=torch.float64)
            args = (P, R, V.contiguous().numpy(), int(metric == "gram"), int(proper), k, float(margin.relative),
                    absolute_g[group].contiguous().numpy(), float(margin.cap), extra_g[group].contiguous().numpy(),
                    penalty.detach().to(torch.float64).contiguous().numpy(), start.to(torch.int64).contiguous().numpy(),
                    relative.to(torch.int64).reshape(n, 9).contiguous().numpy(), kth.numpy())
            capacity = 32 * max(n, 1)
            while True:
                owner = torch.empty(capacity, dtype=torch.int64)
                rows = torch.empty(capacity, 3, dtype=torch.int64)
                count = _kernel.window_groups(*args, owner.numpy(), rows.numpy())
                if count <= capacity:
                    return owner[:count], V[rows[:count]]
                capacity = count
        # Each row's window, wide enough for its group's (whose t_k is at most the row's k-th e), then the
        # group's choice.
        pen = penalty.detach().to(torch.float64)

        def row_margin(kth, rows=None):
            rows = torch.arange(n, device=device) if rows is None else rows
            e = kth.to(torch.float64) + pen[rows]
            wide = torch.clamp(margin.relative * e + absolute_g[group[rows]], max=margin.cap) + extra_g[group[rows]]
            return wide.to(kth.dtype)

        owner, X = _window_candidates(L_pred, L_ref, k, row_margin, bound, proper, metric)
        if not owner.numel():
            return owner, X
        from .terms import lattice_term  # the exact terms rank the rows' candidates
        term = lattice_term(L_pred[owner].double(), X.double() @ L_ref[owner].double(), metric)
        e = term + pen[owner]
        order = torch.sort(owner, stable=True).indices  # rows in order, each row's candidates as returned
        owner, X, e = owner[order], X[order], e[order]
        basis = X @ relative[owner]
        keys = torch.cat([group[owner, None], basis.flatten(1)], 1)
        first = _first_of_each(keys)
        owner, X, e = owner[first], X[first], e[first]
        g = group[owner]
        kth = _kth_per_group(e, g, G, k)
        limit = kth + torch.clamp(margin.relative * kth + absolute_g, max=margin.cap) + extra_g
        keep = e <= limit[g]
        return owner[keep], X[keep]


def _first_of_each(keys: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the first occurrence of each distinct row of ``keys (Q, m)`` int64."""
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    Q = keys.shape[0]
    first = torch.full((int(inverse.max()) + 1,), Q, dtype=torch.int64, device=keys.device).scatter_reduce(
        0, inverse, torch.arange(Q, device=keys.device), "amin")
    return torch.sort(first).values


def _kth_per_group(values: torch.Tensor, group: torch.Tensor, G: int, k: int) -> torch.Tensor:
    """``(G,)`` the k-th smallest of ``values`` per ``group`` (the largest where a group has fewer; +inf
    for an empty group)."""
    order = torch.sort(values, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    grouped = group[order]
    counts = torch.bincount(group, minlength=G)
    rank = torch.arange(order.shape[0], device=values.device) - (torch.cumsum(counts, 0) - counts)[grouped]
    pick = rank == torch.minimum(counts[grouped], torch.full_like(grouped, k)) - 1
    out = torch.full((G,), math.inf, dtype=values.dtype, device=values.device)
    return out.index_put((grouped[pick],), values[order][pick])


@dataclass(frozen=True)
class WindowMargin:
    """A window margin of the form ``min(relative · t_k + absolute, cap) + extra`` (Å², per crystal), for
    :func:`window_candidates`: callable like any margin, and known in closed form to the compiled
    search, which then finds ``t_k`` and the window in one pass instead of two.

    Attributes: ``relative`` and ``cap`` floats >= 0; ``absolute`` and ``extra`` tensors ``(B,)``.
    """

    relative: float
    absolute: torch.Tensor
    cap: float
    extra: torch.Tensor

    def __call__(self, kth: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        absolute = self.absolute if rows is None else self.absolute[rows]
        extra = self.extra if rows is None else self.extra[rows]
        return torch.clamp(self.relative * kth + absolute, max=self.cap) + extra


def _compiled_window(L_pred, L_ref, k, margin, proper, metric, V):
    """:func:`window_candidates` through the compiled branch and bound (``soft_niggli/_kernels/window.c``):
    exact for every cell (terms in float64), no stages and no scoring of the whole candidate set. With
    a :class:`WindowMargin`, one search finds each crystal's ``t_k`` and its window; with any other
    margin, one pass finds ``t_k`` and a second collects the window."""
    B = L_pred.shape[0]
    P = L_pred.detach().to(torch.float64).reshape(B, 9).contiguous().numpy()
    R = L_ref.detach().to(torch.float64).reshape(B, 9).contiguous().numpy()
    Vn, gram = V.contiguous().numpy(), int(metric == "gram")
    kth = torch.empty(B, dtype=torch.float64)
    if isinstance(margin, WindowMargin):
        absolute = margin.absolute.detach().to(torch.float64).reshape(B).contiguous().numpy()
        extra = margin.extra.detach().to(torch.float64).reshape(B).contiguous().numpy()

        def search(owner, rows):
            return _kernel.window_margin(P, R, Vn, gram, int(proper), k, float(margin.relative), absolute,
                                         float(margin.cap), extra, kth.numpy(), owner, rows)
    else:
        none = torch.empty(0, dtype=torch.int64)
        _kernel.window(P, R, Vn, gram, int(proper), k, kth.numpy(), kth.numpy(), none.numpy(),
                       none.reshape(0, 3).numpy())
        limit = (kth + margin(kth.to(L_pred.dtype), None).to(torch.float64)).numpy()

        def search(owner, rows):
            return _kernel.window(P, R, Vn, gram, int(proper), 0, limit, kth.numpy(), owner, rows)
    capacity = 64 * B
    while True:
        owner = torch.empty(capacity, dtype=torch.int64)
        rows = torch.empty(capacity, 3, dtype=torch.int64)
        count = search(owner.numpy(), rows.numpy())
        if count <= capacity:
            return owner[:count], V[rows[:count]]
        capacity = count


class _RowCosts:
    """Per crystal and row of a candidate, the cost of every short vector, computed once for all stages
    of :func:`window_candidates`; ``subset(rows)`` keeps some crystals."""

    def __init__(self, P, R, metric, V, r_max):
        # Both cells divided by a common power of two (exact), as in candidate_lattice_terms: no overflow.
        m = torch.maximum(P.abs().amax(dim=(1, 2)), R.abs().amax(dim=(1, 2)))
        m = torch.where(torch.isfinite(m) & (m > 0), m, torch.ones_like(m))
        exponent = torch.frexp(m)[1]
        P = P * torch.ldexp(torch.ones_like(m), -exponent)[:, None, None]
        R = R * torch.ldexp(torch.ones_like(m), -exponent)[:, None, None]
        self.unit = torch.ldexp(torch.ones_like(m), 2 * exponent) / 9  # scaled sums → Å²
        self.metric, self.rows = metric, None
        Vf = V.to(P.dtype)
        if metric == "cartesian":
            self.cost = (P[:, :, None, :] - (Vf @ R)[:, None]).square().sum(-1)  # (B, 3, n): ‖p_i - v R‖²
        else:
            self.Q = Vf @ (R @ R.transpose(1, 2)) @ Vf.T  # (B, n, n): v G_r wᵀ for every pair of short vectors
            self.Gp = P @ P.transpose(1, 2)
            self.size = P.square().sum(dim=(1, 2))
            self.cost = (torch.diagonal(self.Gp, dim1=1, dim2=2)[:, :, None]
                         - torch.diagonal(self.Q, dim1=1, dim2=2)[:, None, :]).square()
        self.low, self.top = torch.topk(self.cost, r_max + 1, dim=2, largest=False)  # ascending, (B, 3, r_max + 1)

    def subset(self, rows):
        out = object.__new__(_RowCosts)
        for name, value in vars(self).items():
            setattr(out, name, value[rows] if isinstance(value, torch.Tensor) else value)
        out.rows = rows
        return out


def _window_by_rows(costs: _RowCosts, k, margin, proper, V, r):
    """One stage of :func:`window_candidates`, combining the ``r`` best short vectors per row of the
    crystals in ``costs``: ``(owner, X, failed, t_k)``, owners numbered within ``costs``, ``t_k`` the k-th
    smallest term among the triples (at least the true one)."""
    B, n = costs.cost.shape[0], V.shape[0]
    top, low, unit = costs.top[..., :r], costs.low[..., :r], costs.unit  # (B, 3, r), ascending
    # det(v0, v1, v2) = v0 · (v1 × v2) of every triple, in one batched product (exact: small integers).
    vectors = V.to(low.dtype)[top]  # (B, 3, r, 3)
    cross = torch.linalg.cross(vectors[:, 1, :, None, :], vectors[:, 2, None, :, :]).reshape(B, r * r, 3)
    det = (vectors[:, 0] @ cross.transpose(1, 2)).reshape(B, r, r, r)
    invalid = (det != 1) if proper else (det.abs() != 1)
    if costs.metric == "cartesian":
        scaled = low * unit[:, None, None]
        term = scaled[:, 0, :, None, None] + scaled[:, 1, None, :, None] + scaled[:, 2, None, None, :]
    else:
        Q, Gp = costs.Q, costs.Gp

        def pair(i, j):  # (B, r, r): (v_i G_r v_jᵀ - G_p,ij)² for the top vectors of rows i and j
            q = Q.gather(1, top[:, i, :, None].expand(-1, -1, n)).gather(2, top[:, j, None, :].expand(-1, r, -1))
            return (q - Gp[:, i, j, None, None]).square()

        diag = low[:, 0, :, None, None] + low[:, 1, None, :, None] + low[:, 2, None, None, :]
        g = torch.diagonal(Q, dim1=1, dim2=2).gather(1, top.flatten(1)).reshape(B, 3, r)  # ‖v R‖²
        size = costs.size[:, None, None, None] + g[:, 0, :, None, None] + g[:, 1, None, :, None] + g[:, 2, None, None, :]
        off = pair(0, 1)[:, :, :, None] + pair(0, 2)[:, :, None, :] + pair(1, 2)[:, None, :, :]
        term = (diag + 2 * off) / size.clamp_min(torch.finfo(low.dtype).tiny) * unit[:, None, None, None]
    term = term.masked_fill_(invalid, math.inf).reshape(B, -1)
    kth = torch.topk(term, k, dim=1, largest=False).values[:, -1]
    limit = kth + margin(kth, costs.rows)
    # Proof that no other candidate is in the window: a bound per row that any candidate inside must
    # meet with the other rows at their best, not met by any vector outside the row's top r.
    allowed = limit / unit  # the window's limit in scaled sums
    if costs.metric == "cartesian":
        best, outside = low[..., 0], costs.low[..., r]  # Σ_i cost_i <= allowed; the (r+1)-th vectors
    else:
        # Σ_i e_i <= allowed · (‖P‖² + Σ_i ‖v_i R‖²): with f_i(v) = e_i(v) - allowed · ‖v R‖², the rows of a
        # candidate inside have Σ_i f_i(v_i) <= allowed · ‖P‖² (separable, unlike the metric itself).
        row_cost = costs.cost - allowed[:, None, None] * torch.diagonal(costs.Q, dim1=1, dim2=2)[:, None, :]
        row_cost = torch.where(torch.isfinite(row_cost), row_cost, torch.full_like(row_cost, -math.inf))
        best = row_cost.amin(2)
        outside = row_cost.scatter(2, top, math.inf).amin(2)  # (B, 3): the best vector not combined
        allowed = allowed * costs.size
    budget = allowed[:, None] - (best.sum(1, keepdim=True) - best)
    slack = 1e-5 * (allowed[:, None].abs() + best.abs().sum(1, keepdim=True))  # the sums' rounding
    complete = (outside > budget + slack).all(1) & torch.isfinite(limit)
    owner, flat = ((term <= limit[:, None]) & complete[:, None]).nonzero(as_tuple=True)
    rows_of = top[owner]  # (Q, 3, r)
    X = V[torch.stack([rows_of[:, 0].gather(1, (flat // (r * r))[:, None]), rows_of[:, 1].gather(1, (flat // r % r)[:, None]),
                       rows_of[:, 2].gather(1, (flat % r)[:, None])], 1).squeeze(2)]
    return owner, X, ~complete, kth
