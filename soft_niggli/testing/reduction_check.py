"""Independent checker: is ``L_out`` a Niggli-reduced basis of the lattice spanned by ``L_in``?

It runs none of soft_niggli's code (NumPy and the standard library only): it is the
referee for every reducer that the tests and benchmarks compare, soft_niggli's
included, and it checks a reducer of your own the same way::

    from soft_niggli.testing.reduction_check import classify
    assert classify(L_in, my_reduce(L_in)) == "reduced"

Conventions
-----------
A lattice is a (3, 3) float64 array whose ROWS are the lattice vectors a, b, c;
``L_out = T @ L_in`` with T integer, det T = +-1, when both span one lattice.
G6 = (A, B, C, xi, eta, zeta) with A = a.a, B = b.b, C = c.c, xi = 2 b.c,
eta = 2 a.c, zeta = 2 a.b.

API
---
``classify(L_in, L_out, rel_tol=1e-5) -> "reduced" | "wrong"``
    ``L_out`` None counts as "wrong"; callers that want "flagged"/"hung" for
    None / error / timeout results map those themselves before calling.
``check_details(L_in, L_out, rel_tol=1e-5, ...) -> dict``
    Every individual check (see the keys documented there).

A cell counts as "reduced" iff ALL of
(a) ``finite``: L_out (and L_in) are finite.
(b) ``same_lattice``: T = L_out @ inv(L_in), computed EXACTLY with
    ``fractions.Fraction`` (float64 entries are exact binary rationals), is
    within 1e-3 of an integer matrix whose determinant is +-1; and
    ``volume_kept``: | |det L_out| - |det L_in| | / |det L_in|, also exact,
    is <= 1e-6.
(c) ``niggli_ok``: the Niggli conditions (Krivy & Gruber 1976; Grosse-Kunstleve,
    Sauter & Adams 2004, Acta Cryst. A60, 1-6) hold on G6(L_out), computed in
    float64, with RELATIVE (scale-free) tolerances -- see "Tolerances".
      main:     A <= B <= C;  |xi| <= B, |eta| <= A, |zeta| <= A;
                type I  (xi, eta, zeta all > 0) or
                type II (all <= 0, and xi + eta + zeta + A + B >= 0)
      special:  A = B  => |xi| <= |eta|;         B = C  => |eta| <= |zeta|
                type I:  xi = B  => zeta <= 2 eta;  eta = A => zeta <= 2 xi;
                         zeta = A => eta <= 2 xi
                type II: xi = -B => zeta = 0;  eta = -A => zeta = 0;
                         zeta = -A => eta = 0;
                         xi + eta + zeta + A + B = 0 => 2A + 2 eta + zeta <= 0
(d) ``buerger_ok``: no change of basis M with entries in {-1, 0, 1} and
    det M = +-1 (6960 matrices, generated with itertools and cached) lowers the
    sum of squared lengths: min_M trace(M G M^T) >= trace(G) * (1 - 1e-6).

Tolerances (our choice; documented because the Niggli definition has none)
--------------------------------------------------------------------------
All tolerances are relative to the quantities being compared, never absolute
and never a single global scale, so that a cell with lengths 1e-4, 1, 1e4 is
judged as strictly as a 4 Angstrom cube (a global tol such as
rel_tol * (A + B + C) / 3 would make every condition on the short vector
vacuous for such a cell).  With r = rel_tol:
* inequalities ``x <= y`` (main conditions, the type-II sum, 2A+2eta+zeta<=0)
  pass if ``x <= y + r * s`` with s the largest magnitude among the terms
  compared, e.g. |eta| <= A passes if |eta| <= A + r * max(|eta|, A);
* boundary tests ``x = y`` (A = B, xi = B, xi+eta+zeta+A+B = 0, ...) hold if
  ``|x - y| <= r * s`` with s as above;
* zero / sign tests and the special conditions that compare off-diagonal terms
  with each other use each term's natural scale, i.e. angular resolution:
  xi counts as 0 if |xi| <= r * 2|b||c| (likewise eta: 2|a||c|, zeta: 2|a||b|),
  and e.g. |xi| <= |eta| passes if |xi| <= |eta| + r * max(2|b||c|, 2|a||c|).
  A sign triple that is ambiguous within this resolution may be read as type I
  or type II; the cell passes if either reading satisfies all its conditions.
The special conditions only pick one of several equivalent boundary cells, so
this leniency never accepts a cell that is not reduced up to ~r.

Floating-point error in G6(L_out) is ~1e-16 |u||v| per entry, far below these
tolerances unless the cell's length ratios exceed ~1e10.

Cost per call: exact Fractions for (b) and one einsum over the 6960 matrices for (d).
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache

import numpy as np

__all__ = ["classify", "check_details", "unimodular_ternary_matrices", "g6"]

INTEGRAL_ATOL = 1e-3   # (b): entries of T must be this close to integers
VOLUME_RTOL = 1e-6     # (b): allowed exact relative volume change
TRACE_RTOL = 1e-6      # (d): allowed relative decrease of trace(M G M^T)


@lru_cache(maxsize=1)
def unimodular_ternary_matrices() -> np.ndarray:
    """All 3x3 matrices with entries in {-1, 0, 1} and det = +-1, shape (6960, 3, 3), float64."""
    vals = (-1, 0, 1)
    out = []
    for e in itertools.product(vals, repeat=9):
        d = (e[0] * (e[4] * e[8] - e[5] * e[7]) - e[1] * (e[3] * e[8] - e[5] * e[6])
             + e[2] * (e[3] * e[7] - e[4] * e[6]))
        if d == 1 or d == -1:
            out.append(e)
    M = np.array(out, dtype=np.float64).reshape(-1, 3, 3)
    M.setflags(write=False)
    return M


def g6(L: np.ndarray) -> np.ndarray:
    """G6 = (A, B, C, xi, eta, zeta) of a lattice with rows a, b, c."""
    L = np.asarray(L, dtype=np.float64)
    G = L @ L.T
    return np.array([G[0, 0], G[1, 1], G[2, 2], 2 * G[1, 2], 2 * G[0, 2], 2 * G[0, 1]])


# ---------------------------------------------------------------------------
# (b) exact lattice identity
# ---------------------------------------------------------------------------

def _frac_matrix(L) -> list[list[Fraction]]:
    return [[Fraction(float(x)) for x in row] for row in L]


def _frac_det(A) -> Fraction:
    return (A[0][0] * (A[1][1] * A[2][2] - A[1][2] * A[2][1])
            - A[0][1] * (A[1][0] * A[2][2] - A[1][2] * A[2][0])
            + A[0][2] * (A[1][0] * A[2][1] - A[1][1] * A[2][0]))


def _frac_adjugate(A):
    adj = [[Fraction(0)] * 3 for _ in range(3)]
    for i in range(3):
        for j in range(3):
            r = [k for k in range(3) if k != j]
            c = [k for k in range(3) if k != i]
            m = A[r[0]][c[0]] * A[r[1]][c[1]] - A[r[0]][c[1]] * A[r[1]][c[0]]
            adj[i][j] = m if (i + j) % 2 == 0 else -m
    return adj


def _lattice_identity(L_in: np.ndarray, L_out: np.ndarray) -> dict:
    """Exact T = L_out @ inv(L_in), its distance to integers, det, and the exact volume change."""
    A = _frac_matrix(L_in)
    B = _frac_matrix(L_out)
    det_in = _frac_det(A)
    det_out = _frac_det(B)
    if det_in == 0:
        return dict(transform=None, integral_error=float("inf"), det_T=None,
                    rel_volume_diff=float("inf"))
    adj = _frac_adjugate(A)
    T = [[sum(B[i][k] * adj[k][j] for k in range(3)) / det_in for j in range(3)] for i in range(3)]
    R = [[round(t) for t in row] for row in T]
    err = max(float(abs(T[i][j] - R[i][j])) for i in range(3) for j in range(3))
    d = (R[0][0] * (R[1][1] * R[2][2] - R[1][2] * R[2][1])
         - R[0][1] * (R[1][0] * R[2][2] - R[1][2] * R[2][0])
         + R[0][2] * (R[1][0] * R[2][1] - R[1][1] * R[2][0]))
    rel_vol = float(abs(abs(det_out) - abs(det_in)) / abs(det_in))
    big = any(abs(x) > 2**62 for row in R for x in row)
    return dict(transform=None if big else np.array(R, dtype=np.int64), integral_error=err,
                det_T=int(d), rel_volume_diff=rel_vol)


# ---------------------------------------------------------------------------
# (c) Niggli conditions with relative tolerances
# ---------------------------------------------------------------------------

def _niggli_conditions(g: np.ndarray, r: float) -> tuple[bool, str | None, dict]:
    A, B, C, xi, eta, zeta = (float(x) for x in g)
    # natural (angular-resolution) scales of the off-diagonal terms: 2|u||v|
    n_xi = 2.0 * np.sqrt(max(B, 0.0) * max(C, 0.0))
    n_eta = 2.0 * np.sqrt(max(A, 0.0) * max(C, 0.0))
    n_zeta = 2.0 * np.sqrt(max(A, 0.0) * max(B, 0.0))

    def le(x, y, *extra):  # x <= y, relative to the magnitudes compared
        return x <= y + r * max(abs(x), abs(y), *extra)

    def eq(x, y, *extra):
        return abs(x - y) <= r * max(abs(x), abs(y), *extra)

    def zero(v, nat):
        return abs(v) <= r * nat

    S = xi + eta + zeta + A + B
    s_sum = max(A, B, abs(xi), abs(eta), abs(zeta))

    c = {}
    c["A<=B"] = le(A, B)
    c["B<=C"] = le(B, C)
    c["|xi|<=B"] = le(abs(xi), B)
    c["|eta|<=A"] = le(abs(eta), A)
    c["|zeta|<=A"] = le(abs(zeta), A)
    c["A=B => |xi|<=|eta|"] = (not eq(A, B)) or le(abs(xi), abs(eta), n_xi, n_eta)
    c["B=C => |eta|<=|zeta|"] = (not eq(B, C)) or le(abs(eta), abs(zeta), n_eta, n_zeta)
    common = all(c.values())

    # type I: all positive (terms within angular resolution of 0 may count as positive)
    t1 = {}
    t1["I: xi,eta,zeta > 0"] = (xi > -r * n_xi) and (eta > -r * n_eta) and (zeta > -r * n_zeta)
    t1["I: xi=B => zeta<=2eta"] = (not eq(xi, B)) or le(zeta, 2 * eta, n_zeta, 2 * n_eta)
    t1["I: eta=A => zeta<=2xi"] = (not eq(eta, A)) or le(zeta, 2 * xi, n_zeta, 2 * n_xi)
    t1["I: zeta=A => eta<=2xi"] = (not eq(zeta, A)) or le(eta, 2 * xi, n_eta, 2 * n_xi)
    # type II: all non-positive (again up to angular resolution)
    t2 = {}
    t2["II: xi,eta,zeta <= 0"] = (xi <= r * n_xi) and (eta <= r * n_eta) and (zeta <= r * n_zeta)
    t2["II: xi+eta+zeta+A+B>=0"] = S >= -r * s_sum
    t2["II: xi=-B => zeta=0"] = (not eq(xi, -B)) or zero(zeta, n_zeta)
    t2["II: eta=-A => zeta=0"] = (not eq(eta, -A)) or zero(zeta, n_zeta)
    t2["II: zeta=-A => eta=0"] = (not eq(zeta, -A)) or zero(eta, n_eta)
    t2["II: sum=0 => 2A+2eta+zeta<=0"] = (abs(S) > r * s_sum) or le(2 * A + 2 * eta + zeta, 0.0,
                                                                      2 * A, 2 * abs(eta), abs(zeta))

    ok1, ok2 = all(t1.values()), all(t2.values())
    c.update(t1)
    c.update(t2)
    kind = "I" if ok1 else ("II" if ok2 else None)
    return bool(common and (ok1 or ok2)), kind, c


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def check_details(L_in, L_out, rel_tol: float = 1e-5, *, integral_atol: float = INTEGRAL_ATOL,
                  volume_rtol: float = VOLUME_RTOL, trace_rtol: float = TRACE_RTOL) -> dict:
    """Run every check on ``L_out`` as a reduction of ``L_in`` (rows = lattice vectors).

    Returned keys:
      reduced (bool: a & b & c & d), failures (list of failed check names),
      finite (a), transform (int64 3x3 nearest integer T or None), integral_error
      (max |T - round T|), det_T (int or None), same_lattice, rel_volume_diff
      (exact, float), volume_kept (b), g6 (tuple), niggli_type ("I", "II" or
      None), conditions (dict name -> bool), niggli_ok (c), trace_ratio
      (min_M trace(M G M^T) / trace G), buerger_ok (d), and the informational
      successive_minima_ok: for every M the sorted squared lengths of M @ L_out
      are >= the sorted squared lengths of L_out (scale-free necessary
      condition for a Buerger cell; not part of "reduced").
    """
    L_in = np.asarray(L_in, dtype=np.float64)
    if L_in.shape != (3, 3):
        raise ValueError(f"L_in must have shape (3, 3); received {L_in.shape}")
    d: dict = dict(reduced=False, failures=[], finite=False, transform=None, integral_error=float("inf"),
                   det_T=None, same_lattice=False, rel_volume_diff=float("inf"), volume_kept=False,
                   g6=None, niggli_type=None, conditions={}, niggli_ok=False, trace_ratio=float("nan"),
                   buerger_ok=False, successive_minima_ok=False)
    if L_out is None:
        d["failures"] = ["none"]
        return d
    L_out = np.asarray(L_out, dtype=np.float64)
    if L_out.shape != (3, 3):
        raise ValueError(f"L_out must have shape (3, 3) or be None; received {L_out.shape}")

    # (a)
    d["finite"] = bool(np.all(np.isfinite(L_out)) and np.all(np.isfinite(L_in)))
    if not d["finite"]:
        d["failures"] = ["finite"]
        return d

    # (b)
    ident = _lattice_identity(L_in, L_out)
    d.update(ident)
    d["same_lattice"] = bool(ident["integral_error"] <= integral_atol and ident["det_T"] in (1, -1))
    d["volume_kept"] = bool(ident["rel_volume_diff"] <= volume_rtol)

    # (c)
    g = g6(L_out)
    d["g6"] = tuple(float(x) for x in g)
    ok, kind, conds = _niggli_conditions(g, rel_tol)
    d["niggli_ok"], d["niggli_type"], d["conditions"] = ok, kind, conds

    # (d)
    M = unimodular_ternary_matrices()
    G = L_out @ L_out.T
    MG = M @ G                                   # (6960, 3, 3)
    lens = np.einsum("mij,mij->mi", MG, M)       # squared lengths of the rows of M @ L_out
    tr = float(np.trace(G))
    mins = float(lens.sum(axis=1).min())
    d["trace_ratio"] = mins / tr if tr > 0 else float("nan")
    d["buerger_ok"] = bool(tr > 0 and mins >= tr * (1.0 - trace_rtol))
    base = np.sort(np.diag(G))
    d["successive_minima_ok"] = bool(np.all(np.sort(lens, axis=1) >= base * (1.0 - trace_rtol)))

    checks = {"same_lattice": d["same_lattice"], "volume_kept": d["volume_kept"],
              "niggli_ok": d["niggli_ok"], "buerger_ok": d["buerger_ok"]}
    d["failures"] = [k for k, v in checks.items() if not v]
    d["reduced"] = not d["failures"]
    return d


def classify(L_in, L_out, rel_tol: float = 1e-5) -> str:
    """"reduced" if ``L_out`` passes checks (a)-(d) for input ``L_in``, else "wrong" (None -> "wrong")."""
    return "reduced" if check_details(L_in, L_out, rel_tol)["reduced"] else "wrong"
