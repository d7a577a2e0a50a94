"""A bounded, thread-safe memory of each label's reduced forms.

Row convention: lattices ``(..., 3, 3)`` have the lattice vectors as rows; a form is ``transform @ lattice``.
Like :func:`~soft_niggli.canonical.reduced_forms`, the cache takes one cell ``(3, 3)`` or any stack
``(..., 3, 3)`` (tensors, NumPy arrays, nested lists) and lists the forms over the flattened cells.

A training loop shows the same labels every epoch, and a label's reduced forms
(:func:`~soft_niggli.canonical.reduced_forms`) are a function of its lattice alone, so they are computed
once per distinct lattice and looked up afterwards. The ``"reduced-forms"`` loss and the generative
coupling (:func:`~soft_niggli.flow.couple_reduced_forms`) both use :class:`ReducedFormsCache`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import as_lattice, has_values
from ._reduced_forms import automorphic_forms_unchecked, reduced_forms_unchecked
from .canonical import ReducedForms, effective_rel_tol, reduced_forms
from .lattice import integer_inverse
from .niggli import Status

__all__ = ["CachedForms", "ReducedFormsCache"]

# Bytes charged per entry beyond its arrays and key: the tuple, the tensors' and arrays' headers.
_ENTRY_OVERHEAD = 400


@dataclass(frozen=True)
class _Candidates:
    """The forms of one label that the coupling (:func:`~soft_niggli.flow.couple_reduced_forms`) chooses
    among: the fully canonical ones (weight 1), all or the automorphic ones only, in the forms' order."""

    index: np.ndarray  # (k,) int64: positions among the label's forms
    group: np.ndarray  # (k,) int64: metric group, numbered 0, 1, ... in order of first appearance
    reps: np.ndarray  # (g, 3, 3) float64: each group's first form (forms of one metric are rotations of it)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.group.nbytes + self.reps.nbytes


@dataclass(frozen=True)
class _Entry:
    transform: torch.Tensor  # (k, 3, 3) int64, CPU
    inverse: torch.Tensor  # (k, 3, 3) int64, CPU: transform⁻¹
    automorphic: torch.Tensor  # (k,) bool: the form has the label's reference metric
    metric: torch.Tensor  # (k,) int64: which of the label's distinct metrics the form has, 0, 1, ...
    weight: torch.Tensor  # (k,) float64: ReducedForms.weights at the cache's rel_tol
    lattice: torch.Tensor  # (k, 3, 3) the label's dtype, CPU
    status: int
    nbytes: int
    count: int  # k, kept as a Python int: a lookup packs hundreds of entries per call
    groups: int  # number of distinct metrics, metric.max() + 1
    # What the coupling chooses among, for among="automorphisms" and "reduced-forms": derived once here, so
    # that a training step gathers only the chosen forms.
    candidates: tuple[_Candidates, _Candidates]
    # NumPy views of transform, inverse and lattice, for gathering single forms fast (lattices in half
    # precision, which NumPy lacks, as a float64 copy).
    views: tuple[np.ndarray, np.ndarray, np.ndarray]


def _candidates(owner: np.ndarray, keep: np.ndarray, metric: np.ndarray, lattice: torch.Tensor,
                starts: np.ndarray, n: int) -> list[_Candidates]:
    """Per label ``0 .. n-1``: its forms where ``keep``, numbered within the label (``starts``: each label's
    first form), with their metric groups. ``metric`` numbers the groups over the batch, each label's
    forms ``0 .. P-1`` sorted by label (as :func:`_metric_groups` and the reducer list them)."""
    index = np.flatnonzero(keep)
    kept_owner = owner[index]
    # Groups in order of first appearance: the forms are sorted by label, so that order is each label's.
    _, first, group = np.unique(metric[index], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    group = rank[group.reshape(-1)]
    first = first[order]  # (groups,) position in `index` of each group's first form, in rank order
    group_owner = kept_owner[first]
    groups_per_label = np.bincount(group_owner, minlength=n)
    group_start = np.cumsum(groups_per_label) - groups_per_label
    local_group = group - group_start[kept_owner]
    reps = lattice[torch.from_numpy(index[first])].double().numpy()
    forms_per_label = np.bincount(kept_owner, minlength=n)
    split_forms = np.cumsum(forms_per_label)[:-1]
    split_groups = np.cumsum(groups_per_label)[:-1]
    return [_Candidates(i.copy(), g.copy(), r.copy()) for i, g, r in zip(
        np.split(index - starts[kept_owner], split_forms), np.split(local_group, split_forms),
        np.split(reps, split_groups))]


def _entry(transform: np.ndarray, inverse: np.ndarray, automorphic: np.ndarray, metric: np.ndarray,
           weight: np.ndarray, lattice: torch.Tensor, status: int, candidates: tuple[_Candidates, _Candidates],
           key_bytes: int) -> _Entry:
    """An entry owning its memory: the arrays are a label's slices of the batch's, copied (a slice would
    keep the whole batch's memory alive after eviction; NumPy copies small arrays several times faster
    than torch)."""
    transform, inverse, automorphic, metric, weight = (
        torch.from_numpy(x.copy()) for x in (transform, inverse, automorphic, metric, weight))
    lattice = lattice.clone()
    native = lattice.dtype in (torch.float32, torch.float64)
    lattice_view = lattice.numpy() if native else lattice.double().numpy()
    copied = 0 if native else lattice_view.nbytes
    nbytes = (transform.nbytes + inverse.nbytes + automorphic.nbytes + metric.nbytes + weight.nbytes
              + lattice.nbytes + copied + sum(c.nbytes for c in candidates) + key_bytes + _ENTRY_OVERHEAD)
    return _Entry(transform, inverse, automorphic, metric, weight, lattice, status, nbytes, len(transform),
                  int(metric.max()) + 1 if len(metric) else 0, candidates,
                  (transform.numpy(), inverse.numpy(), lattice_view))


class _CouplingCandidates:
    """What :func:`~soft_niggli.flow.couple_reduced_forms` chooses among for a batch of ``B`` labels
    (``ReducedFormsCache._coupling_candidates``, package-internal), flattened over the labels: candidate
    ``q`` is a form of label ``owner[q]`` with metric group ``group[q]`` (numbered over the batch), whose
    first form is ``reps[group[q]]`` (forms of one metric are rotations of it). A label whose reduction
    is not ``OK`` has no candidates.

    Attributes:
        status: ``(B,)`` int64, each label's reduction :class:`~soft_niggli.niggli.Status`.
        owner: ``(P,)`` int64, the label of each candidate, in order.
        group: ``(P,)`` int64, the metric group of each candidate, numbered over the batch.
        reps: ``(G, 3, 3)`` float64, each group's first form.
        reps_owner: ``(G,)`` int64, the label of each group.
    """

    def __init__(self, entries: list[_Entry], among: int):
        per_label = [e.candidates[among] for e in entries]
        self._entries, self._per_label = entries, per_label
        B = len(entries)
        self.status = torch.tensor([e.status for e in entries], dtype=torch.int64)
        counts = torch.tensor([len(c.index) for c in per_label], dtype=torch.int64)
        n_groups = torch.tensor([len(c.reps) for c in per_label], dtype=torch.int64)
        self.owner = torch.repeat_interleave(torch.arange(B), counts)
        self._start = torch.cumsum(counts, 0) - counts
        self.group = torch.from_numpy(np.concatenate([c.group for c in per_label])) + torch.repeat_interleave(
            torch.cumsum(n_groups, 0) - n_groups, counts)
        self.reps = torch.from_numpy(np.concatenate([c.reps for c in per_label]))
        self.reps_owner = torch.repeat_interleave(torch.arange(B), n_groups)

    def transforms(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """``(len(positions), 3, 3)`` int64 transforms of the candidates at ``positions`` (into ``owner``);
        of every candidate where ``positions`` is None."""
        return self._gather(0, positions)

    def inverses(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`transforms`, their inverses (int64)."""
        return self._gather(1, positions)

    def lattices(self, positions: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`transforms`, the forms (the labels' dtype; float64 for half precision)."""
        return self._gather(2, positions)

    def _gather(self, view: int, positions: torch.Tensor | None) -> torch.Tensor:
        """Only the forms asked for are copied: on Perov-5 (48 forms per label) copying every candidate's
        was most of the coupling's cost."""
        entries, per_label = self._entries, self._per_label
        if positions is None:  # one copy per label
            return torch.from_numpy(np.concatenate([e.views[view][c.index] for e, c in zip(entries, per_label)]))
        rows = self.owner[positions].tolist()
        local = (positions - self._start[self.owner[positions]]).tolist()
        found = [entries[b].views[view][per_label[b].index[j]] for b, j in zip(rows, local)]
        return torch.from_numpy(np.array(found) if found else np.zeros((0, 3, 3), entries[0].views[view].dtype))


@dataclass(frozen=True)
class CachedForms:
    """What :meth:`ReducedFormsCache.lookup` returns: the forms and two things derived from them once.

    Attributes:
        forms: the :class:`~soft_niggli.canonical.ReducedForms` (``forms.batch_shape`` the lattices'
            leading shape; the other fields list the forms over the flattened cells).
        inverse: ``(P, 3, 3)`` int64, ``forms.transform⁻¹`` (re-basing fractional coordinates).
        automorphic: ``(P,)`` bool, the forms whose metric is the label's reference metric
            (:func:`~soft_niggli.canonical.automorphic_forms`).
        metric: ``(P,)`` int64, forms of one lattice with the same metric (the same entries on a grid of
            1e-9 of the largest squared length) share a number; numbers of different lattices differ.
        weight: ``(P,)`` float64, how fully each form is canonical
            (:meth:`~soft_niggli.canonical.ReducedForms.weights` at the cache's ``rel_tol``).
    """

    forms: ReducedForms
    inverse: torch.Tensor
    automorphic: torch.Tensor
    metric: torch.Tensor
    weight: torch.Tensor


class ReducedFormsCache:
    """:func:`~soft_niggli.canonical.reduced_forms` of ``(..., 3, 3)`` lattices, remembered per lattice.

    Keys are a lattice's exact values and dtype; the least recently used entries leave first once the
    entries take more than ``max_bytes``. Each entry is charged its tensors, the coupling's candidates
    derived from them, its key and about 400 bytes: with float64 labels a cubic label's 48 forms take
    about 13 KB, an MP-20 bi/ternary label's about 19 KB on average, so the default 256 MiB holds some
    14 000–20 000 labels. ``max_bytes=0`` turns remembering off. Safe to share
    between threads (``nn.DataParallel`` replicas, data-loader threads): lookups and updates hold one
    lock, and the forms are computed outside it.

    >>> cache = ReducedFormsCache(max_bytes=2**20)
    >>> cube = 4.0 * torch.eye(3, dtype=torch.float64)[None]
    >>> cache(cube).counts().tolist(), len(cache)
    ([48], 1)
    >>> cache(cube[0]).counts().tolist(), len(cache)  # one cell (3, 3): counts of shape ()
    (48, 1)
    """

    def __init__(self, max_bytes: int = 256 * 2**20, *, rel_tol: float = 1e-5):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes: expected an int >= 0, got {type(max_bytes).__name__} {max_bytes!r}")
        if max_bytes < 0:
            raise ValueError(f"max_bytes: expected an int >= 0, got {max_bytes!r}")
        reduced_forms(torch.zeros(0, 3, 3, dtype=torch.float64), rel_tol=rel_tol)  # checks rel_tol
        self.max_bytes = max_bytes
        self.rel_tol = rel_tol
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes charged for the entries held now (at most ``max_bytes``)."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def __call__(self, lattice) -> ReducedForms:
        """The reduced forms of ``lattice (..., 3, 3)`` (tensor, NumPy array or nested list), as
        :func:`~soft_niggli.canonical.reduced_forms` returns them, on ``lattice``'s device."""
        lattice = as_lattice(lattice, "lattice").detach()
        if not self.max_bytes:
            return reduced_forms(lattice, rel_tol=self.rel_tol)  # nothing to remember, nothing derived
        return self._shaped(self._lookup(lattice.reshape(-1, 3, 3)), lattice.shape[:-2]).forms

    def lookup(self, lattice) -> CachedForms:
        """:class:`CachedForms` of ``lattice (..., 3, 3)``: the forms, their inverse transforms and which are
        automorphic, on ``lattice``'s device, listed over the flattened cells."""
        lattice = as_lattice(lattice, "lattice").detach()
        return self._shaped(self._lookup(lattice.reshape(-1, 3, 3)), lattice.shape[:-2])

    @staticmethod
    def _shaped(found: CachedForms, batch_shape: torch.Size) -> CachedForms:
        """``found`` (of flattened cells) with its per-cell ``status`` of the lattices' leading shape."""
        if len(batch_shape) == 1:
            return found
        forms = found.forms
        forms = ReducedForms(forms.owner, forms.transform, forms.lattice, forms.status.reshape(batch_shape),
                             forms.rel_tol)
        return CachedForms(forms, found.inverse, found.automorphic, found.metric, found.weight)

    def _forms(self, lattice: torch.Tensor) -> ReducedForms:
        return ReducedForms(*reduced_forms_unchecked(lattice, effective_rel_tol(self.rel_tol, lattice.dtype)),
                            rel_tol=self.rel_tol)

    def _lookup(self, lattice: torch.Tensor) -> CachedForms:
        """:meth:`lookup` of validated, detached lattices ``(B, 3, 3)``."""
        B, device = lattice.shape[0], lattice.device
        if not self.max_bytes or not has_values(lattice) or not B:
            return self._derive(lattice, self._forms(lattice))
        entries = self._entries_of(lattice)
        counts = torch.tensor([e.count for e in entries], device=device)
        forms = ReducedForms(owner=torch.repeat_interleave(torch.arange(B, device=device), counts),
                             transform=torch.cat([e.transform for e in entries]).to(device),
                             lattice=torch.cat([e.lattice for e in entries]).to(device),
                             status=torch.tensor([e.status for e in entries], dtype=torch.int64, device=device),
                             rel_tol=self.rel_tol)
        groups = torch.tensor([e.groups for e in entries])
        offsets = torch.cumsum(groups, 0) - groups
        metric = torch.cat([e.metric for e in entries]) + torch.repeat_interleave(offsets, counts.cpu())
        return CachedForms(forms, torch.cat([e.inverse for e in entries]).to(device),
                           torch.cat([e.automorphic for e in entries]).to(device), metric.to(device),
                           torch.cat([e.weight for e in entries]).to(device))

    def _coupling_candidates(self, lattice: torch.Tensor, among: int) -> _CouplingCandidates:
        """:class:`_CouplingCandidates` of validated, detached lattices ``(B, 3, 3)`` with values (``B`` >= 1):
        per label, its fully canonical forms (weight 1: a form fading out of the band could enter or leave
        with the basis the label came in) that are automorphic (``among=0``) or all of them (``among=1``).
        Derived once per label, with its forms, and remembered with them while ``max_bytes`` allows."""
        return _CouplingCandidates(self._entries_of(lattice), among)

    def _entries_of(self, lattice: torch.Tensor) -> list[_Entry]:
        """One entry per cell of validated, detached lattices ``(B, 3, 3)`` (with values): remembered ones
        looked up, the others computed, and remembered while ``max_bytes`` allows."""
        B = lattice.shape[0]
        values = lattice.to("cpu", torch.float64).contiguous().numpy()  # exact for every float dtype
        tag = str(lattice.dtype).encode()
        keys = [tag + values[b].tobytes() for b in range(B)]
        entries: list[_Entry | None] = [None] * B
        if self.max_bytes:
            with self._lock:
                for b, key in enumerate(keys):
                    entry = self._entries.get(key)
                    if entry is not None:
                        self._entries.move_to_end(key)
                        entries[b] = entry
        missing = [b for b in range(B) if entries[b] is None]
        if not missing:
            return entries
        new = self._derive(lattice[missing].cpu(), self._forms(lattice[missing]))
        n = len(missing)
        counts = new.forms.counts(n).tolist()
        owner, metric = new.forms.owner.cpu().numpy(), new.metric.cpu().numpy()
        starts = np.cumsum(counts) - np.asarray(counts, dtype=np.int64)
        status = new.forms.status.cpu()
        canonical = ((new.weight.cpu() >= 1) & (status == int(Status.OK))[new.forms.owner.cpu()]).numpy()
        automorphic = new.automorphic.cpu().numpy()
        lattice_new = new.forms.lattice.cpu()
        candidates = zip(_candidates(owner, canonical & automorphic, metric, lattice_new, starts, n),
                         _candidates(owner, canonical, metric, lattice_new, starts, n))
        # Each label's metrics numbered from 0 (the batch numbers them label after label).
        first_metric = np.full(n, np.iinfo(np.int64).max)
        np.minimum.at(first_metric, owner, metric)
        local_metric = metric - first_metric[owner] if len(owner) else metric
        split = np.cumsum(counts)[:-1]
        fresh = {}
        for b, transform, inverse, autom, metric_b, weight, form, status_b, both in zip(
                missing, np.split(new.forms.transform.cpu().numpy(), split), np.split(new.inverse.cpu().numpy(), split),
                np.split(automorphic, split), np.split(local_metric, split), np.split(new.weight.cpu().numpy(), split),
                lattice_new.split(counts), status.tolist(), candidates):
            entries[b] = _entry(transform, inverse, autom, metric_b, weight, form, int(status_b), both, len(keys[b]))
            fresh[keys[b]] = entries[b]
        if self.max_bytes:
            with self._lock:
                for key, entry in fresh.items():
                    if key in self._entries:
                        continue
                    self._entries[key] = entry
                    self._nbytes += entry.nbytes
                while self._nbytes > self.max_bytes and self._entries:
                    _, old = self._entries.popitem(last=False)
                    self._nbytes -= old.nbytes
        return entries

    def _derive(self, lattice: torch.Tensor, forms: ReducedForms) -> CachedForms:
        return CachedForms(forms, integer_inverse(forms.transform),
                           automorphic_forms_unchecked(lattice, forms, self.rel_tol), _metric_groups(forms),
                           forms.weights(self.rel_tol))


def _metric_groups(forms: ReducedForms) -> torch.Tensor:
    """:attr:`CachedForms.metric`: forms grouped by owner and their metric's entries on a grid of 1e-9 of the
    owner's largest squared length (a grid boundary only splits one metric in two)."""
    owner = forms.owner.cpu()
    if not len(owner):
        return torch.zeros(0, dtype=torch.int64, device=forms.owner.device)
    F = forms.lattice.cpu().double()
    G = F @ F.transpose(-1, -2)
    scale = torch.diagonal(G, dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    i, j = torch.triu_indices(3, 3)
    keys = torch.round(G[:, i, j] / (scale[:, None] * 1e-9)).to(torch.int64)
    keys = torch.cat([owner[:, None], keys], dim=1)
    order = torch.from_numpy(np.lexsort([keys[:, c].numpy() for c in reversed(range(7))]))
    new = torch.ones(len(order), dtype=torch.bool)
    new[1:] = (keys[order][1:] != keys[order][:-1]).any(1)
    group = torch.empty_like(order)
    group[order] = torch.cumsum(new.to(torch.int64), 0) - 1
    return group.to(forms.owner.device)
