"""The group GL(3,Z): enumeration of bounded sets, signed permutations, random elements, membership,
and the automorphisms of a lattice (the elements that map it to itself).

Row convention: a unimodular ``M (..., 3, 3)`` acts on a lattice whose rows are the lattice vectors
as ``L' = M @ L`` (and on fractional coordinates as ``F' = wrap(F @ M^{-1})``).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import DEFAULT_REL_TOL, as_lattice, check_rel_tol, has_values
from .lattice import adjugate_and_determinant

try:  # the compiled loop of lattice_automorphisms (soft_niggli/_kernels/automorphisms.c); optional
    from . import _lattice_kernel as _kernel
except ImportError:  # not built (no C compiler at install time): the PyTorch code does the same
    _kernel = None

__all__ = ["enumerate_unimodular", "signed_permutations", "random_unimodular", "is_unimodular", "LatticeAutomorphisms",
           "lattice_automorphisms"]


def _det3(M: np.ndarray) -> np.ndarray:
    return (
        M[..., 0, 0] * (M[..., 1, 1] * M[..., 2, 2] - M[..., 1, 2] * M[..., 2, 1])
        - M[..., 0, 1] * (M[..., 1, 0] * M[..., 2, 2] - M[..., 1, 2] * M[..., 2, 0])
        + M[..., 0, 2] * (M[..., 1, 0] * M[..., 2, 1] - M[..., 1, 1] * M[..., 2, 0])
    )


@functools.lru_cache(maxsize=None)
def _enumerate_numpy(bound: int, proper: bool) -> np.ndarray:
    values = np.arange(-bound, bound + 1, dtype=np.int64)
    # Build rows first, then keep the 3-row combinations with det ±1; rows of a unimodular matrix
    # are nonzero, which prunes the (2b+1)^9 product a little before the determinant test.
    rows = np.array(list(itertools.product(values, repeat=3)), dtype=np.int64)
    rows = rows[np.abs(rows).sum(1) > 0]
    n = len(rows)
    idx = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), -1).reshape(-1, 2)
    out = []
    for k in range(n):  # chunk over the third row to bound memory for bound=2 (124^3 ~ 1.9M)
        M = np.concatenate([rows[idx[:, 0]], rows[idx[:, 1]], np.broadcast_to(rows[k], (len(idx), 3))], axis=1)
        M = M.reshape(-1, 3, 3)
        d = _det3(M)
        keep = d == 1 if proper else np.abs(d) == 1
        out.append(M[keep])
    mats = np.concatenate(out, 0)
    # Put the identity first so that index 0 always means "no change of basis".
    eye = np.eye(3, dtype=np.int64)
    is_eye = (mats == eye).all(axis=(1, 2))
    mats = np.concatenate([mats[is_eye], mats[~is_eye]], 0)
    mats.setflags(write=False)
    return mats


@functools.lru_cache(maxsize=64)
def _enumerate_cached(bound: int, proper: bool, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.from_numpy(_enumerate_numpy(bound, proper).copy()).to(dtype=dtype, device=device)


def enumerate_unimodular(bound: int = 1, proper: bool = False, dtype: torch.dtype = torch.int64,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """All integer 3×3 matrices with entries in ``[-bound, bound]`` and ``det = ±1`` (``+1`` if ``proper``).

    Returns ``(K, 3, 3)`` with the identity first; K = 6960 for bound 1 (3480 proper) and 135408 for
    bound 2. Results are cached per ``(bound, proper, dtype, device)``: do not modify them in place.

    >>> enumerate_unimodular(1).shape
    torch.Size([6960, 3, 3])
    """
    if not isinstance(bound, int) or bound < 1 or bound > 3:
        raise ValueError(f"bound: expected an int in 1..3, got {bound!r}")
    device = str(torch.device(device)) if device is not None else "cpu"
    return _enumerate_cached(bound, bool(proper), dtype, device)


@functools.lru_cache(maxsize=None)
def _signed_permutations_numpy() -> np.ndarray:
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            M = np.zeros((3, 3), dtype=np.int64)
            for i, j in enumerate(perm):
                M[i, j] = signs[i]
            mats.append(M)
    return np.stack(mats)


def signed_permutations(dtype: torch.dtype = torch.int64, device: torch.device | str | None = None) -> torch.Tensor:
    """The 48 signed permutation matrices (the cube's point group, including improper ones), ``(48, 3, 3)``."""
    return torch.from_numpy(_signed_permutations_numpy().copy()).to(dtype=dtype, device=device)


def random_unimodular(shape=(), *, max_entry: int = 2, num_operations: int = 12,
                      generator: torch.Generator | None = None, proper: bool = False,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Random unimodular matrices ``(*shape, 3, 3)`` (int64) with all entries in ``[-max_entry, max_entry]``.

    Built as a product of ``num_operations`` elementary row operations (add ±1 times one row to
    another), each rejected where it would push an entry past ``max_entry``, then a random signed
    permutation (det −1 allowed unless ``proper``). Every such product is unimodular by construction.
    """
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if max_entry < 1:
        raise ValueError(f"max_entry: expected an int >= 1, got {max_entry!r}")
    n = int(np.prod(shape)) if shape else 1
    dev = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    gen_dev = generator.device if generator is not None else torch.device("cpu")

    def randint(high, size):
        return torch.randint(0, high, size, generator=generator, device=gen_dev).to(dev)

    M = torch.eye(3, dtype=torch.int64, device=dev).repeat(n, 1, 1)
    ar = torch.arange(n, device=dev)
    for _ in range(num_operations):
        i = randint(3, (n,))
        j = (i + 1 + randint(2, (n,))) % 3  # j != i
        k = randint(2, (n,)) * 2 - 1  # ±1
        candidate = M.clone()
        candidate[ar, i] = M[ar, i] + k[:, None] * M[ar, j]
        ok = candidate.abs().amax(dim=(1, 2)) <= max_entry
        M = torch.where(ok[:, None, None], candidate, M)
    P = signed_permutations(device=dev)
    if proper:
        P = P[torch.linalg.det(P.double()) > 0]
    M = P[randint(len(P), (n,))] @ M
    return M.reshape(*shape, 3, 3)


def is_unimodular(M: torch.Tensor, *, atol: float = 1e-6) -> torch.Tensor:
    """Boolean ``(...)``: entries integral (within ``atol`` for float input) and ``det = ±1``."""
    if not isinstance(M, torch.Tensor):
        M = torch.as_tensor(M)
    if M.dim() < 2 or tuple(M.shape[-2:]) != (3, 3):
        raise ValueError(f"M: expected shape (..., 3, 3), got {tuple(M.shape)}")
    if M.is_floating_point():
        finite = torch.isfinite(M).all(dim=(-1, -2))
        R = torch.round(torch.nan_to_num(M))
        integral = finite & ((M - R).abs() <= atol).all(dim=(-1, -2)) & (R.abs() < 2**52).all(dim=(-1, -2))
        Mi = torch.where(integral[..., None, None], R, torch.zeros_like(R)).to(torch.int64)
    else:
        integral = torch.ones(M.shape[:-2], dtype=torch.bool, device=M.device)
        Mi = M.to(torch.int64)
    det = adjugate_and_determinant(Mi)[1]
    return integral & (det.abs() == 1)


@functools.lru_cache(maxsize=None)
def _short_vectors() -> torch.Tensor:
    """The 26 nonzero vectors of {-1, 0, 1}³, ``(26, 3)`` int64, the identity's rows among them."""
    return torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)
                         if (i, j, k) != (0, 0, 0)], dtype=torch.int64)


@dataclass(frozen=True)
class LatticeAutomorphisms:
    """The automorphisms of a batch of lattices, packed: crystal ``owner[p]`` has ``matrices[p]``.

    Attributes:
        owner: ``(P,)`` int64 crystal index of each automorphism, sorted, each crystal's identity first.
        matrices: ``(P, 3, 3)`` int64, every one with determinant ±1.
    """

    owner: torch.Tensor
    matrices: torch.Tensor

    def counts(self, num_lattices: int) -> torch.Tensor:
        """``(B,)`` number of automorphisms of each lattice (``-I`` and ``I`` included)."""
        return torch.bincount(self.owner, minlength=num_lattices)


def lattice_automorphisms(lattice, *, rel_tol: float = DEFAULT_REL_TOL) -> LatticeAutomorphisms:
    """Unimodular ``A`` with entries in {-1, 0, 1} and ``A G Aᵀ = G`` (``G = L Lᵀ``), for each lattice.

    For a Niggli- (indeed Buerger-) reduced basis these are *all* automorphisms of the lattice (its
    point group expressed in that basis: 2 for triclinic, up to 48 for cubic); for other bases only
    those in {-1, 0, 1} are found. Equality is relative: ``|(A G Aᵀ - G)_ij| <= rel_tol ·
    sqrt(G_ii G_jj)`` (lengths and cosines to ``rel_tol``), so near-automorphisms of pseudo-symmetric
    cells count too, which keeps a loss built on them stable where the reducer's own tolerance lets
    it pick either of two nearly equal bases. Non-finite or flat cells (relative volume below 1e-6)
    get the identity only.

    Args:
        lattice: ``(..., 3, 3)`` tensor, array or nested list, rows are lattice vectors; not
            differentiated. Leading dimensions are flattened: ``owner`` indexes ``lattice.reshape(-1, 3, 3)``.
        rel_tol: relative tolerance, keyword-only, in :data:`~soft_niggli.niggli.REL_TOL_RANGE`.

    Returns:
        :class:`LatticeAutomorphisms` ``(owner, matrices)``.

    >>> L = torch.diag(torch.tensor([3.0, 3.0, 5.0], dtype=torch.float64))[None]  # tetragonal
    >>> lattice_automorphisms(L).counts(1).tolist()
    [16]

    How: row ``i`` of ``A`` is one of the 26 vectors ``v`` of {-1,0,1}³ with ``v G vᵀ = G_ii``. With
    all inner products ``Q = V G Vᵀ (B, 26, 26)`` at hand, rows are chosen one at a time, each pair of
    rows checked against ``G``'s off-diagonal as soon as both exist; only a handful of partial
    matrices survive each stage, so this costs a few small boolean tensors instead of testing all
    6960 bound-1 unimodular matrices per lattice. On CPU tensors a compiled loop does the same tests,
    cell by cell, and returns the same matrices in the same order (``soft_niggli/_kernels/automorphisms.c``).
    """
    lattice = as_lattice(lattice).reshape(-1, 3, 3)
    rel_tol = check_rel_tol(rel_tol)
    device = lattice.device
    if has_values(lattice) and lattice.shape[0]:
        # Automorphisms do not depend on the scale: divide by the largest entry first, so that squared
        # lengths neither overflow (entries above about 1e154) nor underflow.
        big = lattice.detach().to(torch.float64).abs().flatten(1).amax(1)
        big = torch.where(torch.isfinite(big) & (big > 0), big, torch.ones_like(big))
        lattice = lattice.detach().to(torch.float64) / big[:, None, None]
    if _kernel is not None and device.type == "cpu" and has_values(lattice):
        return _compiled_automorphisms(lattice, rel_tol)
    vectors = _short_vectors().to(device)
    L = lattice.detach().to(torch.float64)
    B = L.shape[0]
    eye = torch.eye(3, dtype=torch.int64, device=device)
    finite = torch.isfinite(L).flatten(1).all(1)
    L = torch.where(finite[:, None, None], L, eye.to(L.dtype))
    # Scale-free: divide by the largest row length so the tolerance is purely relative.
    L = L / torch.linalg.vector_norm(L, dim=-1).amax(-1).clamp_min(1e-300)[:, None, None]
    G = L @ L.transpose(-1, -2)
    diag = torch.diagonal(G, dim1=-2, dim2=-1)  # (B, 3)
    rel_volume = torch.linalg.det(L).abs() / diag.clamp_min(0).sqrt().prod(-1).clamp_min(1e-300)
    usable = finite & (rel_volume > 1e-6)

    V = vectors.to(G.dtype)
    Q = V @ G @ V.T  # (B, 26, 26): all inner products v·G·w
    qdiag = torch.diagonal(Q, dim1=-2, dim2=-1)  # (B, 26)
    length_ok = (qdiag[:, :, None] - diag[:, None, :]).abs() <= rel_tol * diag[:, None, :]  # (B, 26, 3)
    length_ok &= usable[:, None, None]
    cos_tol = rel_tol * (diag[:, :, None] * diag[:, None, :]).clamp_min(0).sqrt()  # (B, 3, 3)

    owner, r0 = length_ok[:, :, 0].nonzero(as_tuple=True)
    picked = [r0]
    for i in (1, 2):
        ok = length_ok[owner, :, i]  # (P, 26): candidates for row i
        for j, rj in enumerate(picked):
            ok = ok & ((Q[owner, rj, :] - G[owner, j, i, None]).abs() <= cos_tol[owner, j, i, None])
        parent, ri = ok.nonzero(as_tuple=True)
        owner = owner[parent]
        picked = [r[parent] for r in picked] + [ri]
    A = torch.stack([vectors[r] for r in picked], dim=1)  # (P, 3, 3)
    # A G Aᵀ = G with G positive definite forces det A = ±1; the check guards rel_tol's slack.
    det = torch.linalg.det(A.to(torch.float64)).round()
    A, owner = A[det.abs() == 1], owner[det.abs() == 1]
    # Identities first (also for cells that are not usable, which found nothing else).
    is_identity = (A == eye).flatten(1).all(1)
    A = torch.cat([eye.expand(B, 3, 3), A[~is_identity]])
    owner = torch.cat([torch.arange(B, device=device), owner[~is_identity]])
    order = torch.sort(owner, stable=True).indices
    return LatticeAutomorphisms(owner=owner[order], matrices=A[order])


def _compiled_automorphisms(lattice: torch.Tensor, rel_tol: float) -> LatticeAutomorphisms:
    """:func:`lattice_automorphisms` through the compiled loop (``soft_niggli/_kernels/automorphisms.c``): the same
    tests, cell by cell, in the same order (each identity first, then by the rows' places in the
    26 short vectors)."""
    B = lattice.shape[0]
    cells = lattice.detach().to(torch.float64).reshape(B, 9).contiguous().numpy()
    vectors = _short_vectors().contiguous().numpy()
    capacity = 48 * B
    while True:
        owner = torch.empty(capacity, dtype=torch.int64)
        matrices = torch.empty(capacity, 3, 3, dtype=torch.int64)
        count = _kernel.automorphisms(cells, vectors, float(rel_tol), owner.numpy(), matrices.numpy())
        if count <= capacity:
            return LatticeAutomorphisms(owner=owner[:count], matrices=matrices[:count])
        capacity = count
