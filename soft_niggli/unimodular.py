"""The group GL(3,Z): enumeration of bounded sets, signed permutations, random elements, membership.

Row convention: a unimodular ``M (..., 3, 3)`` acts on a lattice whose rows are the lattice vectors
as ``L' = M @ L`` (and on fractional coordinates as ``F' = wrap(F @ M^{-1})``).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

__all__ = ["enumerate_unimodular", "signed_permutations", "random_unimodular", "is_unimodular"]


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


def random_unimodular(shape=(), max_entry: int = 2, num_operations: int = 12,
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


def is_unimodular(M: torch.Tensor, atol: float = 1e-6) -> torch.Tensor:
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
    c = Mi
    det = (
        c[..., 0, 0] * (c[..., 1, 1] * c[..., 2, 2] - c[..., 1, 2] * c[..., 2, 1])
        - c[..., 0, 1] * (c[..., 1, 0] * c[..., 2, 2] - c[..., 1, 2] * c[..., 2, 0])
        + c[..., 0, 2] * (c[..., 1, 0] * c[..., 2, 1] - c[..., 1, 1] * c[..., 2, 0])
    )
    return integral & (det.abs() == 1)
