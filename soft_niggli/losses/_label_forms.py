"""The label side of the softmin losses: the classes of a label's reduced forms with their weights
(:func:`weighted_form_classes`), and the memory that keeps them per label lattice (:class:`FrameCache`).

Row convention: lattices ``(B, 3, 3)`` have the lattice vectors as rows; a form is ``T @ L`` with
``T`` an integer unimodular matrix.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import numpy as np
import torch

from .._checks import has_values
from ..canonical import reduced_forms
from ..lattice import integer_inverse
from ._packed import group_keys


class Rows(NamedTuple):
    """The label's frame: one row per (crystal, class of its reduced forms), the class's first form
    standing for it (every member gives the same candidate set: they differ by a signed permutation)."""

    crystal: torch.Tensor  # (R,) int64, crystals in order
    transform: torch.Tensor  # (R, 3, 3) int64, the form is transform @ the label's lattice
    relative: torch.Tensor  # (R, 3, 3) int64, transform @ (the crystal's first row's transform)⁻¹
    lattice: torch.Tensor  # (R, 3, 3) the form (from the reducer's accurate cell), detached
    frac: torch.Tensor  # (A, 3) its atoms, row by row (num_atoms[r] atoms from first[r])
    first: torch.Tensor  # (R,) int64
    num_atoms: torch.Tensor  # (R,) int64
    species: torch.Tensor | None  # (A,)
    log_weight: torch.Tensor  # (R,) float64, log of the class's weight in the softmin (0 if fully canonical)



class FrameCache:
    """The label side of :class:`~soft_niggli.losses._candidate_softmin.CandidateSoftmin`
    (:func:`weighted_form_classes`: the classes of a label's reduced forms and their weights), remembered
    per label lattice.

    A training loop shows the same labels every epoch, and this part depends on the lattice alone (its
    exact values and dtype), so it is computed once per distinct lattice. Least recently used entries
    leave first once the entries take more than ``max_bytes`` (tensors plus about 400 bytes each;
    ``max_bytes=0`` turns remembering off). Lookups and updates hold one lock (``nn.DataParallel``
    replicas share the loss); the frames are computed outside it.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self):
        # Copied or pickled with the loss (copy.deepcopy, torch.save): the memory starts empty, the lock anew.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["max_bytes"])

    def __call__(self, lattice: torch.Tensor, compute, tag: bytes = b""):
        """``compute(lattice)`` (packed rows ``(crystal, *per-row tensors)``) with rows of lattices seen
        before taken from memory; same result, same order. ``tag``: what else ``compute`` depends on
        (entries of another tag are not reused)."""
        B, device = lattice.shape[0], lattice.device
        if not self.max_bytes or not B or not has_values(lattice):
            return compute(lattice)
        values = lattice.to("cpu", torch.float64).contiguous().numpy()  # exact for every float dtype
        tag = str(lattice.dtype).encode() + b"|" + tag + b"|"
        keys = [tag + values[b].tobytes() for b in range(B)]
        with self._lock:
            entries = [self._entries.get(key) for key in keys]
            for key, entry in zip(keys, entries):
                if entry is not None:
                    self._entries.move_to_end(key)
        missing = [b for b in range(B) if entries[b] is None]
        if missing:
            crystal, *parts = compute(lattice[missing])
            counts = torch.bincount(crystal, minlength=len(missing)).tolist()
            fresh = {}
            pieces = [p.cpu().numpy() for p in parts]
            bounds = np.cumsum([0] + counts)
            for i, b in enumerate(missing):
                entry = tuple(a[bounds[i]:bounds[i + 1]].copy() for a in pieces)
                entries[b] = entry
                fresh[keys[b]] = entry
            with self._lock:
                for key, entry in fresh.items():
                    if key not in self._entries:
                        self._entries[key] = entry
                        self._nbytes += sum(a.nbytes for a in entry) + len(key) + 400
                while self._nbytes > self.max_bytes and self._entries:
                    key, old = self._entries.popitem(last=False)
                    self._nbytes -= sum(a.nbytes for a in old) + len(key) + 400
        counts = torch.tensor([len(e[0]) for e in entries], device=device)
        crystal = torch.repeat_interleave(torch.arange(B, device=device), counts)
        # NumPy joins many small arrays with less overhead than torch.cat.
        return (crystal, *(torch.from_numpy(np.concatenate([e[i] for e in entries])).to(device)
                           for i in range(len(entries[0]))))


def weighted_form_classes(lattice: torch.Tensor, rel_tol: float, proper: bool, log_weight_of=None):
    """``(crystal, transform, its inverse, relative, lattice, log_weight)`` of the rows of ``lattice (B, 3,
    3)`` (see :class:`Rows`).

    The label's reduced forms (:func:`~soft_niggli.canonical.reduced_forms` within
    ``rel_tol``, weighed by :meth:`~soft_niggli.canonical.ReducedForms.weights`),
    whatever basis it came in, grouped into classes that differ by a signed permutation ``S`` (``U S
    = U``: the same candidates; with ``proper``, ``det S = 1`` only), each weighted by its members'
    largest weight ``w``; classes of weight 0 (all members at the tolerance's edge, or a
    ``log_weight`` of ``-inf``) are left out.
    ``log_weight`` is ``log_weight_of(w (C,), form (C, 3, 3))``, a non-increasing function of ``w``
    that is 0 at ``w = 1`` (``log w`` by default); within a crystal the rows come by decreasing
    ``log_weight``.
    """
    forms = reduced_forms(lattice, rel_tol=rel_tol)
    weight = forms.weights(rel_tol)
    cls, first = form_classes(forms.owner, forms.transform, proper)
    w = torch.zeros(first.shape[0], dtype=torch.float64, device=weight.device).scatter_reduce(
        0, cls, weight, "amax", include_self=False)
    keep = w > 0
    rep, w = first[keep], w[keep]
    log_w = w.log() if log_weight_of is None else log_weight_of(w, forms.lattice[rep]).double()
    keep = log_w > -torch.inf  # a weight too small to hold in float64 counts as 0
    rep, log_w = rep[keep], log_w[keep]
    # Within a crystal, the heaviest class first (the window search wants rows by increasing penalty).
    order = torch.from_numpy(np.lexsort((np.arange(rep.shape[0]), -log_w.cpu().numpy(),
                                         forms.owner[rep].cpu().numpy())))
    rep, log_w = rep[order.to(rep.device)], log_w[order.to(log_w.device)]
    T, owner = forms.transform[rep], forms.owner[rep]
    T_inv = integer_inverse(T)
    head = torch.full((lattice.shape[0],), owner.shape[0], dtype=torch.int64, device=owner.device).scatter_reduce(
        0, owner, torch.arange(owner.shape[0], device=owner.device), "amin")  # each crystal's first row
    relative = torch.from_numpy(T.cpu().numpy() @ T_inv.cpu().numpy()[head[owner].cpu().numpy()]).to(owner.device)
    return owner, T, T_inv, relative, forms.lattice[rep], log_w


def form_classes(owner: torch.Tensor, T: torch.Tensor, proper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cls (P,), first (C,))``: forms ``T`` (of crystals ``owner``, sorted) grouped by a left signed
    permutation (same rows up to sign and order; with ``proper`` also the same determinant), numbered in
    the order of their first member, whose index is ``first``.

    Compared relative to each crystal's first form, ``X = T T_first⁻¹``: the forms are ``X R`` with
    small ``X`` (entries of a few units), so each matrix becomes one exact integer key (its rows up to
    sign, sorted), and two stable sorts group them."""
    P, device = owner.shape[0], owner.device
    if not P:
        return owner.clone(), owner.clone()
    start = torch.ones(P, dtype=torch.bool, device=device)
    start[1:] = owner[1:] != owner[:-1]
    head = torch.cumsum(start.to(torch.int64), 0) - 1  # which crystal run each form is in
    firsts = start.nonzero().flatten()
    X = torch.from_numpy(T.cpu().numpy() @ integer_inverse(T[firsts]).cpu().numpy()[head.cpu().numpy()]).to(device)
    if int(X.abs().max()) >= 2**16:  # never for reduced forms; exact either way
        rows = _canonical_rows(X)
        r = [rows[:, i] for i in range(3)]
        for i, j in ((0, 1), (1, 2), (0, 1)):  # sort the three rows lexicographically
            swap = _lexicographically_less(r[j], r[i])[:, None]
            r[i], r[j] = torch.where(swap, r[j], r[i]), torch.where(swap, r[i], r[j])
        det = (_det3(X) > 0).to(torch.int64)[:, None] * int(proper)
        key = group_keys(torch.cat([owner[:, None], *r, det], 1))
    else:
        rows = _canonical_rows(X) + 2**16
        codes = (rows[:, :, 0] * 2**17 + rows[:, :, 1]) * 2**17 + rows[:, :, 2]  # < 2**51
        codes = torch.sort(codes, dim=1).values
        key = torch.stack([codes[:, 0], codes[:, 1], codes[:, 2] * 2 + (_det3(X) > 0).to(torch.int64) * int(proper)], 1)
        key = group_keys(torch.cat([owner[:, None], key], 1))
    first = torch.full((int(key.max()) + 1,), P, dtype=torch.int64, device=device).scatter_reduce(
        0, key, torch.arange(P, device=device), "amin")
    first, rank = torch.sort(first)
    relabel = torch.empty_like(rank)
    relabel[rank] = torch.arange(rank.shape[0], device=device)
    return relabel[key], first


def _canonical_rows(X: torch.Tensor) -> torch.Tensor:
    """``X (P, 3, 3)`` with each row's sign made positive at its first nonzero entry."""
    lead = torch.gather(X, 2, (X != 0).to(torch.int64).argmax(2, keepdim=True))
    return X * lead.sign()


def _lexicographically_less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, 0] < b[:, 0]) | ((a[:, 0] == b[:, 0]) & ((a[:, 1] < b[:, 1]) | ((a[:, 1] == b[:, 1]) & (a[:, 2] < b[:, 2]))))


def _det3(T: torch.Tensor) -> torch.Tensor:
    return (T[:, 0, 0] * (T[:, 1, 1] * T[:, 2, 2] - T[:, 1, 2] * T[:, 2, 1])
            - T[:, 0, 1] * (T[:, 1, 0] * T[:, 2, 2] - T[:, 1, 2] * T[:, 2, 0])
            + T[:, 0, 2] * (T[:, 1, 0] * T[:, 2, 1] - T[:, 1, 1] * T[:, 2, 0]))
