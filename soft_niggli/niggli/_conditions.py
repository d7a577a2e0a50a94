"""The Niggli conditions with relative tolerances, on metrics ``G (3, 3, n)`` (component-major).

G6 = A, B, C, ξ, η, ζ of a basis a, b, c (rows): A = a·a, B = b·b, C = c·c, ξ = 2 b·c, η = 2 a·c,
ζ = 2 a·b. Lengths are compared relatively, signs of ξ, η, ζ through cosines.
"""

from __future__ import annotations

import numpy as np


def _type2_blocked(O: np.ndarray, s: np.ndarray, P: np.ndarray, e: float) -> np.ndarray:
    """Whether no sign change makes the basis type II: one of ξ, η, ζ is clearly non-zero and at its bound
    (|ξ| = B, |η| = A or |ζ| = A), and its partner (ζ, ζ, η) is clearly non-zero, so that type II, where it
    would be −B or −A, fails the special condition (ξ = −B ⇒ ζ = 0, ...)."""
    absO = np.abs(O)
    return ((np.abs(absO - P) <= e * P) & (absO > s) & (np.abs(O[[2, 2, 1]]) > s[[2, 2, 1]])).any(axis=0)


def type2_blocked_where_needed(O, s, P, e, pos, zero) -> np.ndarray:
    """:func:`_type2_blocked`, computed only if some item needs it (mixed signs with a zero); False elsewhere
    (where it does not change :func:`sign_rule` nor the choice of step 3)."""
    if (pos.any(axis=0) & ~pos.all(axis=0) & zero.any(axis=0)).any():
        return _type2_blocked(O, s, P, e)
    return np.zeros(O.shape[1:], dtype=bool)


def sign_rule(pos: np.ndarray, neg: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """The sign condition with tolerances, from the clearly positive and clearly negative entries of
    (ξ, η, ζ): type I (all clearly positive), type II (none clearly positive), or, where type II is
    blocked (:func:`_type2_blocked`), type I within tolerance (none clearly negative).

    The last case is what the exact conditions give when the entries within the tolerance of zero are
    taken as small positive numbers, the only choice left there; without it no basis of such a cell
    (a hexagonal cell whose angles are off by about rel_tol, say) satisfies the conditions, and the
    reduction would cycle between two bases that fail them."""
    return pos.all(axis=0) | ~pos.any(axis=0) | (~neg.any(axis=0) & blocked)


def niggli_conditions(G: np.ndarray, e: float) -> np.ndarray:
    """Whether each metric ``G (3, 3, n)`` satisfies the Niggli conditions with relative tolerance ``e``."""
    D = G[[0, 1, 2], [0, 1, 2]]  # A, B, C
    O = 2 * G[[1, 0, 0], [2, 2, 1]]  # ξ, η, ζ
    A, B, C = D
    P = D[[1, 0, 0]]  # the bounds of |ξ|, |η|, |ζ|: B, A, A
    e_p = e * P
    s = e * np.sqrt(np.abs(P * D[[2, 2, 1]]))  # cosine tolerances of ξ, η, ζ: e √(BC), e √(AC), e √(AB)
    eAB, eBC = e * (A + B) / 2, e * (B + C) / 2
    absO = np.abs(O)
    S = A + B + O.sum(axis=0)
    ok = (A <= B + eAB) & (B <= C + eBC) & (absO <= P + e_p).all(axis=0)
    pos, neg = O > s, O < -s
    ok &= sign_rule(pos, neg, type2_blocked_where_needed(O, s, P, e, pos, ~(pos | neg)))
    ok &= S >= -eAB
    # Special conditions on the boundaries of the Niggli cone.
    ok &= ~(np.abs(A - B) <= eAB) | (absO[0] <= absO[1] + s[0])  # A = B ⇒ |ξ| ≤ |η|
    ok &= ~(np.abs(B - C) <= eBC) | (absO[1] <= absO[2] + s[1])  # B = C ⇒ |η| ≤ |ζ|
    other = O[[2, 2, 1]]
    # ξ = B ⇒ ζ ≤ 2η; η = A ⇒ ζ ≤ 2ξ; ζ = A ⇒ η ≤ 2ξ
    ok &= ~((np.abs(O - P) <= e_p) & (other > 2 * O[[1, 0, 0]] + s[[1, 0, 0]])).any(axis=0)
    # ξ = −B ⇒ ζ = 0; η = −A ⇒ ζ = 0; ζ = −A ⇒ η = 0
    ok &= ~((np.abs(O + P) <= e_p) & (np.abs(other) > s[[2, 2, 1]])).any(axis=0)
    ok &= ~(np.abs(S) <= eAB) | (2 * A + 2 * O[1] + O[2] <= eAB)  # S = 0 ⇒ 2A + 2η + ζ ≤ 0
    return ok
