"""How well float64 knows a basis: the cell's exact scaling, the basis ``T @ L`` and its metric with
error bounds, and the flatness test.

Row convention: a cell ``L`` has the lattice vectors as rows, and the basis after a round is
``T @ L`` with ``T`` integer-valued. Arrays are component-major: ``X (3, 3, n)`` holds entry
``X[i, j]`` of every item as one contiguous vector over the batch.
"""

from __future__ import annotations

import numpy as np

from .._exact import exact_int_matmul
from ._constants import (ACCURACY_MARGIN, CROSS_MARGIN, EPS, EXACT_PRODUCT_ERROR, LEVEL_FACTOR, LEVELS,
                         MIN_SQUARED_LENGTH, PLAIN_PRODUCT_ERROR, PLAIN_PRODUCT_LIMIT, SPLIT)


def eye(n: int) -> np.ndarray:
    """The identity of every item, ``(3, 3, n)``."""
    out = np.zeros((3, 3, n))
    out[0, 0] = out[1, 1] = out[2, 2] = 1.0
    return out


def times_power_of_two(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``x * 2**exponent`` per item (last axis), exactly; in two halves since 2**±1074 over/underflows."""
    half = exponent // 2
    return np.ldexp(np.ldexp(x, half), exponent - half)


# The two products below sum their three terms left to right, as the compiled core does. (np.einsum does
# not promise an order: with a single item it sums in another one, which breaks bit-identity.)
def _matmul(T: np.ndarray, L: np.ndarray) -> np.ndarray:
    return (T[:, 0, None] * L[0] + T[:, 1, None] * L[1]) + T[:, 2, None] * L[2]


def _metric_of(B: np.ndarray) -> np.ndarray:
    return (B[:, None, 0] * B[None, :, 0] + B[:, None, 1] * B[None, :, 1]) + B[:, None, 2] * B[None, :, 2]


def _sizes(W: np.ndarray, ell: np.ndarray) -> np.ndarray:
    """``Σ_j W_ij ℓ_j`` per vector ``(3, n)``, with ``ℓ (3, n)`` the lengths of the cell's rows."""
    return W[:, 0] * ell[0] + W[:, 1] * ell[1] + W[:, 2] * ell[2]


def basis_and_metric(T: np.ndarray, L: np.ndarray, ell: np.ndarray, t_max: np.ndarray, k_plain: float,
                     k_exact: float):
    """``(B, G, resolved, products_resolved)``: the basis ``B = T @ L`` per item for integer-valued float64
    ``T``, its metric, whether every vector of it is resolved, and whether the products of two of them are
    (known to ``CROSS_MARGIN`` of the smaller squared length; only a basis that passes the Niggli
    conditions, or that the reduction is stuck on, needs that: the rounds make progress without it).

    The plain float product is used where it is accurate enough: ``T`` entries up to
    ``PLAIN_PRODUCT_LIMIT`` and every ``‖b_i‖ >= k_plain r_i``; elsewhere the error-free product, whose
    vectors are resolved where ``‖b_i‖ > k_exact s_i`` (``k_plain, k_exact`` from :func:`accuracy_factors`;
    ``r_i`` and ``s_i`` as defined with PLAIN_PRODUCT_ERROR, ``s_i`` for the sign of the row of ``T`` the
    error-free product runs on). Every vector must also have ``‖b_i‖² > MIN_SQUARED_LENGTH``. NaN counts
    as unresolved.
    """
    B = _matmul(T, L)
    G = _metric_of(B)
    r = _sizes(np.abs(T), ell)
    error = PLAIN_PRODUCT_ERROR * r  # bound on each vector's error
    floor = k_plain * r
    exact = (t_max > PLAIN_PRODUCT_LIMIT) | (G[[0, 1, 2], [0, 1, 2]] < floor * floor).any(axis=0)
    if exact.any():
        Te, ell_e = T.compress(exact, axis=2), ell.compress(exact, axis=1)
        # b_i = Σ_j T_ij L_j = Σ_j (−T_ij)(−L_j): the error-free product runs on whichever sign of the row
        # of T makes its partial products smaller (the split gives a negative entry 2**27 more).
        s_pos, s_neg = _sizes(_split_sizes(Te), ell_e), _sizes(_split_sizes(-Te), ell_e)
        flip = s_neg < s_pos
        sign = np.where(flip, -1.0, 1.0)[:, None]
        Be = exact_int_matmul(Te * sign, L.compress(exact, axis=2)) * sign
        B[..., exact] = Be
        G[..., exact] = _metric_of(Be)
        s_used = np.where(flip, s_neg, s_pos)
        floor = k_exact * s_used
        length_e = np.sqrt(G[[0, 1, 2], [0, 1, 2]].compress(exact, axis=1))
        error[:, exact] = EPS * length_e + EXACT_PRODUCT_ERROR * s_used
    D = G[[0, 1, 2], [0, 1, 2]]
    resolved = (D > MIN_SQUARED_LENGTH).all(axis=0)
    if exact.any():
        resolved[exact] &= (D.compress(exact, axis=1) > floor * floor).all(axis=0)
    # The products of two vectors must be known to a sixteenth of the smaller squared length, which the
    # bounds |ξ| <= B, |η| <= A, |ζ| <= A compare them with.
    length = np.sqrt(D)
    products_resolved = np.ones(D.shape[1], dtype=bool)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        cross = (error[i] * length[j] + error[j] * length[i]) + PLAIN_PRODUCT_ERROR * (length[i] * length[j])
        products_resolved &= cross <= CROSS_MARGIN * np.where(D[i] < D[j], D[i], D[j])
    return B, G, resolved, products_resolved


def _split_sizes(T: np.ndarray) -> np.ndarray:
    """``|hi| + |lo|`` of the error-free product's split of each entry, ``hi = 2**26 floor(T / 2**26)``."""
    hi = np.floor(T / SPLIT) * SPLIT
    return np.abs(hi) + np.abs(T - hi)


def accuracy_factors(rel_tol: float) -> tuple[float, float]:
    """``(k_plain, k_exact)`` of :func:`basis_and_metric` for the finest tolerance level (rel_tol /
    LEVEL_FACTOR ** (LEVELS - 1)): the basis vectors are known to a sixteenth of it."""
    e_min = rel_tol * LEVEL_FACTOR ** (1 - LEVELS)
    return PLAIN_PRODUCT_ERROR * ACCURACY_MARGIN / e_min, EXACT_PRODUCT_ERROR * ACCURACY_MARGIN / e_min


def relative_volume(B: np.ndarray) -> np.ndarray:
    """``|det B| / (‖a‖ ‖b‖ ‖c‖)`` per item (0 for a zero vector)."""
    lengths = np.sqrt((B * B).sum(axis=1))
    a, b, c = B
    volume = np.abs((a * (b[[1, 2, 0]] * c[[2, 0, 1]] - b[[2, 0, 1]] * c[[1, 2, 0]])).sum(axis=0))
    return volume / np.maximum(lengths.prod(axis=0), np.finfo(np.float64).tiny)


def normalized(X: np.ndarray):
    """Non-finite items replaced by the identity, then each item scaled by a power of two so that its
    largest entry is in [0.5, 1) (exact, so ``c L`` reduces like ``L``). Returns ``(Xn, exponent,
    nonfinite, zero)``."""
    nonfinite = ~np.isfinite(X).all(axis=(0, 1))
    max_abs = np.abs(X).max(axis=(0, 1))
    zero = (max_abs == 0) & ~nonfinite
    replace = nonfinite | zero
    X = np.where(replace, np.eye(3)[..., None], X)
    _, exponent = np.frexp(np.where(replace, 1.0, max_abs))
    return times_power_of_two(X, -exponent), exponent, nonfinite, zero
