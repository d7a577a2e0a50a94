"""Accurate products of integer matrices with float64 matrices (private helper of the reducer).

A skewed cell ``L_in = M L`` with ``|M|`` ~ 1e6 reduces back through ``T = M^{-1}``, whose entries are
just as large; the plain float product ``T @ L_in`` then loses ``log10(|T| |L_in| / |T L_in|)`` digits
to cancellation. Splitting both factors into halves makes every partial product exact in float64,
and an error-free compensated sum (Ogita–Rump–Oishi ``Sum2``) gives the result to about one rounding.

Layout: matrices are component-major NumPy arrays ``(3, 3, n)`` (entry ``[i, j]`` of every item is
the contiguous vector ``X[i, j]``), as in the reducer's core.
"""

from __future__ import annotations

import numpy as np

_SPLITTER = 134217729.0  # 2**27 + 1 (Veltkamp/Dekker split of a float64 into two 26-bit halves)
_TWO26 = 67108864.0  # 2**26


def _split_float(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = x * _SPLITTER
    hi = c - (c - x)
    return hi, x - hi


def _split_int(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # t holds integers |t| < 2**53 as float64: hi is a multiple of 2**26, lo in [0, 2**26).
    hi = np.floor(t / _TWO26) * _TWO26
    return hi, t - hi


def exact_int_matmul(T: np.ndarray, L: np.ndarray) -> np.ndarray:
    """``T @ L`` per item for float64 ``T (3, 3, n)`` holding integers (|entries| < 2**52) and ``L (3, 3, n)``.

    The 12 partial products per entry are exact; their sum is compensated, so the result is accurate
    to a few units in the last place even when the terms cancel by many orders of magnitude.
    """
    t_hi, t_lo = _split_int(T)
    l_hi, l_lo = _split_float(L)
    # (i, j, 1, n) * (1, j, k, n) -> (i, j, k, n): the j-th summand of entry (i, k), exactly.
    terms = [tp[:, :, None, :] * lp[None, :, :, :] for tp in (t_hi, t_lo) for lp in (l_hi, l_lo)]
    stacked = np.concatenate(terms, axis=1)  # (i, 12, k, n)
    # Sum the largest terms first: the compensated sum is exact for the leading cancellations.
    order = np.argsort(-np.abs(stacked), axis=1, kind="stable")
    stacked = np.take_along_axis(stacked, order, axis=1)
    s = stacked[:, 0].copy()
    err = np.zeros_like(s)
    for m in range(1, stacked.shape[1]):
        t = stacked[:, m]
        new = s + t
        bv = new - s
        err += (s - (new - bv)) + (t - bv)
        s = new
    return s + err
