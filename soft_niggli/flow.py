"""Canonical targets for diffusion and flow-matching models: prior alignment and the reduced-form coupling.

Row convention: lattices are ``(..., 3, 3)`` with the lattice vectors as rows, Cartesian positions
``X = F @ L``; a change of basis is ``L' = M @ L``, ``F' = wrap(F @ M^{-1})``; a rotation is ``L' = L Qᵀ``.

Shapes: :func:`align_rotation` takes any stack ``(..., 3, 3)``. :func:`couple_reduced_forms` pairs
prior samples with the crystals of a :class:`~soft_niggli.crystal.CrystalBatch`, a flat batch, so its
prior is ``(B, 3, 3)``, one per label (or one cell ``(3, 3)`` for a batch of one label); a stack
``(..., 3, 3)`` is refused, as the batch refuses it.

A generative model cannot be indifferent to the basis the way a regression loss can (no probability
distribution over bases is invariant under GL(3,Z)), so it generates canonical (Niggli-reduced) cells and
trains on canonical labels. What is still free is *which* of a label's equally canonical bases each
noise sample is paired with, and how the noise is oriented:

* :func:`align_rotation` turns the prior lattice ``L_0`` by the orthogonal ``R`` nearest in Frobenius norm
  to the label (Kabsch), so the straight path ``L_t = (1 − t) L_0 + t L_1`` neither wastes length on a
  rotation the model cannot see nor passes through a singular lattice where the handedness differs.
* :func:`couple_reduced_forms` re-bases each label to the one of its reduced forms
  (:func:`~soft_niggli.canonical.reduced_forms`) nearest its prior sample. The target never leaves the
  Niggli cone (the model still generates canonical cells), but noise-to-data paths get shorter, as batch
  optimal transport over atoms does for coordinates. ``among="automorphisms"`` chooses only among the
  forms with the label's own metric (its point group in the reduced basis: 48 for a cube, 2 for a
  triclinic cell); ``among="reduced-forms"`` among all forms, including those with other metrics where
  the label sits on a face of the Niggli cone (right angles, equal lengths). Forms at the same distance
  (with the prior aligned, every automorphism of a symmetric cell) are drawn at random by default
  (``ties="random"``), which trained best in the benchmark (``python -m benchmarks.generative``).

>>> import torch
>>> from soft_niggli import CrystalBatch
>>> labels = CrystalBatch(4.0 * torch.eye(3)[None], torch.tensor([[0.1, 0.2, 0.3]]), [1])
>>> prior = torch.tensor([[[0.0, 3.9, 0.1], [-4.1, 0.0, 0.0], [0.0, 0.2, 4.0]]])
>>> coupled = couple_reduced_forms(prior, labels, align=False)  # unaligned, one form is nearest
>>> coupled.transform[0].tolist(), coupled.choices.tolist()
([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], [48])
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ._checks import (DEFAULT_REL_TOL, as_crystal_lattices, as_float_tensor, as_lattice, check_choice, check_rel_tol,
                      require_values)
from .crystal import CrystalBatch
from .forms_cache import ReducedFormsCache
from .lattice import wrap
from .niggli import Status

__all__ = ["AMONG", "TIES", "CoupledLabels", "align_rotation", "couple_reduced_forms"]

#: What :func:`couple_reduced_forms` chooses among.
AMONG = ("automorphisms", "reduced-forms")
#: How :func:`couple_reduced_forms` chooses among forms at the same lattice distance.
TIES = ("coordinates", "random")

# Forms whose distance to the prior is within this fraction of the squared norms of the cell tie (an
# automorphism of a symmetric cell is a rotation of it: after alignment every one is at the same distance).
_TIE = 1e-9


def align_rotation(prior_lattice, target_lattice) -> torch.Tensor:
    """``L_0 R``: the prior lattice turned by the orthogonal ``R`` that minimises ``‖L_0 R − L_1‖_F``.

    Kabsch (orthogonal Procrustes): with ``L_0ᵀ L_1 = U S Vᵀ``, ``R = U Vᵀ``. Its determinant has the sign
    of ``det(L_0ᵀ L_1)``, so ``L_0 R`` has the handedness of ``L_1`` and the straight path between them
    never crosses a singular lattice through a change of handedness. A singular ``L_0`` or ``L_1`` still
    gets a proper or improper ``R`` that attains the minimum.

    Args:
        prior_lattice, target_lattice: ``(..., 3, 3)`` floating tensors or arrays of the same shape.

    Returns:
        ``(..., 3, 3)`` the aligned prior, in the prior's dtype and on its device (no gradient is
        blocked: differentiable where the singular values of ``L_0ᵀ L_1`` are distinct).

    >>> L0 = torch.tensor([[0.0, 2.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    >>> align_rotation(L0, 2 * torch.eye(3)).round(decimals=6).tolist()
    [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]
    """
    L0 = as_lattice(prior_lattice, "prior_lattice")
    L1 = as_lattice(target_lattice, "target_lattice")
    if L1.shape != L0.shape:
        raise ValueError(f"target_lattice: expected the prior's shape {tuple(L0.shape)}, got {tuple(L1.shape)}")
    L1 = L1.to(L0)
    U, _, Vh = torch.linalg.svd(L0.transpose(-1, -2) @ L1)
    return L0 @ (U @ Vh)


def _aligned_distance(L0: torch.Tensor, L1: torch.Tensor) -> torch.Tensor:
    """``min over R ∈ O(3) of ‖L_0 R − L_1‖²_F = ‖L_0‖² + ‖L_1‖² − 2 ‖L_0ᵀ L_1‖_*`` (nuclear norm)."""
    product = L0.transpose(-1, -2) @ L1
    finite = torch.isfinite(product).flatten(-2).all(-1)
    nuclear = torch.linalg.svdvals(torch.where(finite[..., None, None], product, 0.0)).sum(-1)
    out = (L0.square().sum((-1, -2)) + L1.square().sum((-1, -2)) - 2 * nuclear).clamp_min(0)
    return torch.where(finite, out, float("nan"))


@dataclass(frozen=True)
class CoupledLabels:
    """The result of :func:`couple_reduced_forms`.

    Attributes:
        batch: the labels re-based to the chosen form (lattice from the reducer's accurate cell, fractional
            coordinates ``wrap(F T⁻¹)``), in the labels' dtype and on their device.
        transform: ``(B, 3, 3)`` int64 unimodular ``T`` with ``batch.lattice == T @ labels.lattice``; the
            identity for a label passed through.
        distance: ``(B,)`` float64 squared Frobenius distance from the prior sample to the chosen form
            (after the rotation alignment when ``align``).
        status: ``(B,)`` int64 :class:`~soft_niggli.niggli.Status` of the label's reduction; a label that is
            not ``OK`` is passed through unchanged.
        choices: ``(B,)`` int64 number of forms chosen among (1 for a label passed through).
    """

    batch: CrystalBatch
    transform: torch.Tensor
    distance: torch.Tensor
    status: torch.Tensor
    choices: torch.Tensor

    @property
    def ok(self) -> torch.Tensor:
        """``(B,)`` bool, labels whose reduction is ``OK`` (the others were passed through)."""
        return self.status == int(Status.OK)


_default_caches: dict[float, ReducedFormsCache] = {}
_default_lock = threading.Lock()


def _default_cache(rel_tol: float) -> ReducedFormsCache:
    with _default_lock:
        if rel_tol not in _default_caches:
            _default_caches[rel_tol] = ReducedFormsCache(64 * 2**20, rel_tol=rel_tol)
        return _default_caches[rel_tol]


def couple_reduced_forms(prior_lattice, labels: CrystalBatch, *, prior_frac=None, among: str = "automorphisms",
                         align: bool = True, ties: str = "random", generator: torch.Generator | None = None,
                         rel_tol: float = DEFAULT_REL_TOL, cache: ReducedFormsCache | None = None) -> CoupledLabels:
    """Each canonical label re-based to the one of its reduced forms nearest its prior sample.

    For label ``b`` with reduced forms ``T_p L_b`` (:func:`~soft_niggli.canonical.reduced_forms`), the
    chosen form minimises

        d_p = ‖L_0,b − T_p L_b‖²_F,   or with ``align``:   min over R ∈ O(3) of ‖L_0,b R − T_p L_b‖²_F,

    and the label becomes ``(T_p L_b, wrap(F_b T_p⁻¹))``. Forms within ``1e-9`` of the smallest distance,
    relative (``100 ε`` for float32 labels), tie. With ``ties="random"`` (default) one of them is drawn
    uniformly (from ``generator``): the label's symmetry-equivalent bases are then all seen in training,
    as data augmentation by its point group would show them. In the flow-matching benchmark on Perov-5,
    sampled with plain Euler steps, random ties beat independent pairing (at 4000 steps 0.63 against 0.50,
    ``"coordinates"`` 0.55, within noise; at 20 000 steps 0.62, ``"coordinates"`` 0.64, none 0.55), at a
    higher RMSE; sampled with anti-annealing at 20 000 steps, random ties lose the lead (0.51 against 0.52).
    The forms are drawn in their basis-independent order, so for float64 labels a
    generator in the same state draws the same form whichever basis the label came in (for float32
    labels, whose rounding can reorder them, one of the same tied forms; with ``among="reduced-forms"``
    these can include forms of a cell near a cone face whose metrics differ by less than float32 tells
    apart, within :func:`~soft_niggli.canonical.effective_rel_tol`). ``ties="coordinates"``
    (deterministic) breaks ties in turn by:

    1. the distance itself;
    2. with ``prior_frac``, the coordinates nearest the prior's, ``Σ_atoms ‖mi(F_b T_p⁻¹ − f_0)‖²`` with
       ``mi(d) = d − round(d)`` (within ``1e-9`` per atom); with ``align`` every automorphism of a
       symmetric cell ties on the distance, being a rotation of it, and only the coordinates tell them
       apart;
    3. with ``align``, the form nearest the prior without rotation;
    4. the first in the forms' basis-independent order.

    ``among="automorphisms"`` (default) keeps the forms whose metric ``G = L Lᵀ`` equals the label's
    Niggli metric within the tolerance (:func:`~soft_niggli.canonical.automorphic_forms`): the label's
    point group in its reduced basis. The metric is found among the forms, not taken from the basis the
    label came in, so that a label within the tolerance of a cone face (where forms with other metrics
    pass the conditions too) is coupled alike in every basis. ``among="reduced-forms"`` keeps every form,
    other metrics on cone faces included. Either way only the fully canonical forms count, those that
    meet the conditions within half the tolerance (weight 1 in
    :meth:`~soft_niggli.canonical.ReducedForms.weights`): a form at the tolerance's edge would enter or
    leave the choice with the basis the label came in.

    A canonical label is one of the forms, so ``distance`` is never larger than the label's own, except
    for a label within the tolerance of a face: its own form may fade (meet the conditions only between
    half the tolerance and the tolerance) or, with ``"automorphisms"``, not have the Niggli metric. The
    result does not depend on the basis the label came in (tested near faces at 0.1×, 1× and 10×
    ``rel_tol``), except within a hair of half the tolerance, where a form starts to fade, and, with
    ``"automorphisms"``, where two of the label's metrics differ by about the tolerance of "the same
    metric" (:func:`~soft_niggli.canonical.automorphic_forms`: for float32 labels, whose re-basing moves
    a metric by ~1e-5, metrics 1.2e-4 apart, about 12× ``rel_tol`` from a face). Forms are computed on
    the host, in float64, once per distinct label (``cache``); the outputs are on the labels' device and
    in their dtype.

    Args:
        prior_lattice: ``(B, 3, 3)`` prior lattices ``L_0`` (rows are lattice vectors), ``B = len(labels)``,
            one per label in the labels' order (tensor, NumPy array or nested list); one cell ``(3, 3)``
            where ``B = 1``. A stack ``(..., 3, 3)`` raises ``ValueError`` (a batch of labels is flat:
            reshape the prior to ``(B, 3, 3)`` in the labels' order).
        labels: a :class:`~soft_niggli.crystal.CrystalBatch` of canonical (Niggli-reduced) labels.
        prior_frac: optional ``(N, 3)`` prior fractional coordinates, one row per atom of ``labels``.
        among: ``"automorphisms"`` or ``"reduced-forms"``.
        align: compare after the rotation alignment (:func:`align_rotation`), as a model whose prior is
            aligned trains.
        ties: ``"coordinates"`` or ``"random"`` (see above).
        generator: the ``torch.Generator`` (CPU) that ``ties="random"`` draws from; torch's default if None.
        rel_tol: the reduced forms' tolerance (raised for float32 labels, see
            :func:`~soft_niggli.canonical.effective_rel_tol`).
        cache: a :class:`~soft_niggli.forms_cache.ReducedFormsCache` (its own ``rel_tol`` is used); by
            default one shared 64 MiB cache per ``rel_tol``. ``ReducedFormsCache(0)`` turns it off.

    Returns:
        :class:`CoupledLabels`.

    Raises:
        TypeError: ``labels`` not a CrystalBatch, ``among`` or ``ties`` not a string.
        ValueError: wrong shapes (the message names the expected and the given shape), an unknown ``among``,
            labels on the ``meta`` device (the forms are found from the lattices' values).
    """
    if not isinstance(labels, CrystalBatch):
        raise TypeError(f"labels: expected a CrystalBatch, got {type(labels).__name__}")
    check_choice(among, "among", AMONG)
    check_choice(ties, "ties", TIES)
    B, device, dtype = len(labels), labels.device, labels.dtype
    L0 = as_crystal_lattices(prior_lattice, "prior_lattice", batch_size=B)
    f0 = None
    if prior_frac is not None:
        f0 = as_float_tensor(prior_frac, "prior_frac")
        if tuple(f0.shape) != (labels.frac.shape[0], 3):
            raise ValueError(f"prior_frac: expected shape (N, 3) = ({labels.frac.shape[0]}, 3), got {tuple(f0.shape)}")
        f0 = f0.detach().to("cpu", torch.float64)
    if cache is None:
        cache = _default_cache(check_rel_tol(rel_tol))
    eye = torch.eye(3, dtype=torch.int64)
    if B == 0:
        return CoupledLabels(labels, eye.expand(0, 3, 3).to(device), torch.zeros(0, dtype=torch.float64, device=device),
                             torch.zeros(0, dtype=torch.int64, device=device),
                             torch.zeros(0, dtype=torch.int64, device=device))
    L1 = labels.lattice.detach()
    require_values(L1, "labels.lattice: the coupling (reduced forms found on the host)")
    # Each label's candidates (its fully canonical forms, automorphic or all) and one representative per
    # metric, derived once per label and kept in the cache; a step copies only the forms it chooses.
    found = cache._coupling_candidates(L1.reshape(B, 3, 3), AMONG.index(among))
    status, owner, group = found.status, found.owner, found.group
    prior = L0.detach().to("cpu", torch.float64)
    prior_norm = prior.square().sum((-1, -2))
    tie = max(_TIE, 100 * torch.finfo(dtype).eps)  # float32 labels break symmetries by their rounding
    form_norm = found.reps.square().sum((-1, -2))[group]  # forms of one metric have its norm
    everything = torch.arange(len(owner))
    if align:
        # Forms of one label with the same metric are rotations of each other (F' F'ᵀ = F Fᵀ gives F' = F Q),
        # so they are at the same distance after alignment: one SVD per metric.
        dist = _aligned_distance(prior[found.reps_owner], found.reps)[group]
    else:
        dist = (found.lattices().double() - prior[owner]).square().sum((-1, -2))
    scale = prior_norm[owner] + form_norm
    tied = _nearest(dist, owner, B, tie * scale, torch.ones_like(dist, dtype=torch.bool))
    if ties == "random":
        # One uniform key per candidate form; the smallest wins (a tie between keys has probability zero).
        key = torch.rand(len(owner), generator=generator, dtype=torch.float64)
        tied = _nearest(key, owner, B, torch.zeros(()), tied)
    elif f0 is not None:
        # Among tied forms, the coordinates nearest the prior's (minimum image on the torus).
        rank = torch.full_like(dist, float("inf"))
        rank[tied] = _coordinate_distance(labels, f0, owner[tied], found.inverses()[tied])
        tied = _nearest(rank, owner, B, tie * labels.num_atoms.cpu().double()[owner], tied)
    if align and ties == "coordinates":
        # Forms that are rotations of each other and place the atoms alike: the one nearest unturned.
        unturned = torch.full_like(dist, float("inf"))
        unturned[tied] = (found.lattices(everything[tied]).double() - prior[owner[tied]]).square().sum((-1, -2))
        tied = _nearest(unturned, owner, B, tie * scale, tied)
    n = len(owner)
    first = torch.full((B,), n, dtype=torch.int64).scatter_reduce(0, owner[tied], everything[tied], "amin")
    chosen = first < n
    pick = first[chosen]
    transform, back = eye.repeat(B, 1, 1), eye.repeat(B, 1, 1)
    transform[chosen], back[chosen] = found.transforms(pick), found.inverses(pick)
    lattice = L1.clone()
    lattice[chosen.to(device)] = found.lattices(pick).to(device, dtype)
    back = back.to(device, labels.frac.dtype)
    frac = wrap((labels.frac.detach().unsqueeze(-2) @ back[labels.batch]).squeeze(-2))
    # The distance of a label passed through is its own (computed only for those).
    distance = torch.empty(B, dtype=torch.float64)
    distance[chosen] = dist[pick]
    if not bool(chosen.all()):
        rest = ~chosen
        L1_rest = L1[rest.to(device)].to("cpu", torch.float64)
        distance[rest] = (_aligned_distance(prior[rest], L1_rest) if align
                          else (L1_rest - prior[rest]).square().sum((-1, -2)))
    choices = torch.bincount(owner, minlength=B).clamp_min(1)
    return CoupledLabels(batch=CrystalBatch._unchecked(lattice, frac, labels),
                         transform=transform.to(device), distance=distance.to(device),
                         status=status.to(device), choices=choices.to(device))


def _nearest(value: torch.Tensor, owner: torch.Tensor, B: int, tol: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """``(P,)`` bool: entries of ``among`` whose ``value`` is within ``tol`` of their crystal's smallest."""
    masked = torch.where(among, value, torch.full_like(value, float("inf")))
    best = torch.full((B,), float("inf"), dtype=value.dtype).scatter_reduce(0, owner, masked, "amin")
    return among & (masked <= best[owner] + tol)


def _coordinate_distance(labels: CrystalBatch, f0: torch.Tensor, owner: torch.Tensor, inverse: torch.Tensor
                         ) -> torch.Tensor:
    """``(Q,)`` ``Σ_atoms ‖mi(F T_q⁻¹ − f_0)‖²`` for candidate ``q`` of crystal ``owner[q]`` (``inverse``
    holds ``T_q⁻¹``)."""
    if not len(owner):
        return torch.zeros(0, dtype=torch.float64)
    # Padded per crystal (B, n_max, 3), zeros in the padding (which then adds nothing): one batched
    # product for every candidate and atom. In the labels' precision where it is lower than float64: the
    # ties between coordinates are then judged at 100 ε of that dtype (see the caller), far above its
    # rounding here, and half the bytes move (on Perov-5 the coupling's coordinate ties cost 1.9x the
    # random ones in float64).
    dtype = torch.float32 if labels.frac.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64
    frac = labels.frac.detach().to("cpu", dtype)
    batch, slot = labels.batch.cpu(), labels.atom_slots.cpu()
    n_max = int(labels.num_atoms.max())
    padded = torch.zeros(len(labels), n_max, 3, dtype=dtype)
    prior = torch.zeros_like(padded)
    padded[batch, slot] = frac
    prior[batch, slot] = f0.to(dtype)
    d = torch.baddbmm(prior.index_select(0, owner), padded.index_select(0, owner), inverse.to(dtype),
                      beta=-1)  # F T⁻¹ − f_0, (Q, n_max, 3)
    d.sub_(torch.round(d))
    return d.mul_(d).sum((1, 2)).to(torch.float64)
