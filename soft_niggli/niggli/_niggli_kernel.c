/*
 * Compiled core of soft_niggli's reducer: what the NumPy core (soft_niggli/niggli/_core.py) does for a
 * batch (normalize, `_iterate` with its tolerance levels, `reduction_round`, `niggli_conditions` with
 * `sign_rule`, `basis_and_metric` with its resolution tests, soft_niggli/_exact.py's error-free
 * product, then the final flatness and overflow checks), written once per cell instead of once per
 * array operation.
 *
 * It is a line-by-line port: the same comparisons, tolerances and order of floating-point operations,
 * so that it returns bit for bit the same lattices, transforms, statuses and iteration counts as the
 * NumPy core (tests/niggli/test_niggli_kernel.py checks this on hypothesis cells). The NumPy core stays the
 * reference and the fallback where this module was not built; the comments on *why* live there.
 *
 * Row convention: a cell is 9 doubles, row-major, rows are the lattice vectors a, b, c; the basis
 * after a round is T @ L with T an integer-valued 3x3 matrix of determinant +1.
 *
 * Build note: compiled with -ffp-contract=off so that a*b + c is never fused into an FMA (the NumPy
 * core rounds the product first).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Must match soft_niggli/niggli/_constants.py (exported as module attributes;
 * tests/niggli/test_niggli_kernel.py compares). */
#define PLAIN_PRODUCT_ERROR 0x1p-50
#define EXACT_PRODUCT_ERROR 0x1p-98
#define SPLIT 67108864.0 /* 2**26, as TWO26 below */
#define ACCURACY_MARGIN 16.0
#define CROSS_MARGIN 0.0625 /* 1/16 */
#define EPS 0x1p-53
#define MIN_SQUARED_LENGTH 0x1p-968
#define DEGENERATE_VOLUME_RATIO 1e-12
#define MAX_TRANSFORM_ENTRY 17592186044416.0 /* 2**44 */
#define PLAIN_PRODUCT_LIMIT 1024.0           /* 2**10 */
#define SWEEPS 2
#define LEVELS 3
#define LEVEL_FACTOR 8.0
#define LEVEL_MIN_SCALE 0.015625 /* LEVEL_FACTOR ** (1 - LEVELS) */
#define STALL_ROUNDS 8
enum { STATUS_OK = 0, STATUS_NOT_CONVERGED = 1, STATUS_DEGENERATE = 2, STATUS_NONFINITE = 3 };

/* np.rint: round half to even. The libm nearbyint call saves and restores the floating-point
 * environment on every call; adding and subtracting 2**52 rounds the same way (default rounding mode),
 * and values of 2**52 and beyond are already integers. */
#define TWO52 4503599627370496.0
static inline double round_half_even(double x) {
    if (!(fabs(x) < TWO52)) return x; /* integral, inf or NaN */
    return copysign((fabs(x) + TWO52) - TWO52, x);
}

/* np.maximum / np.minimum for the non-NaN values used here, without a libm call. */
static inline double max2(double x, double y) { return x > y ? x : y; }
static inline double min2(double x, double y) { return x < y ? x : y; }

/* ---- error-free product (soft_niggli/_exact.py) ---- */

#define SPLITTER 134217729.0 /* 2**27 + 1 */
#define TWO26 67108864.0     /* 2**26 */

static void exact_int_matmul(const double T[9], const double L[9], double out[9]) {
    double t_hi[9], t_lo[9], l_hi[9], l_lo[9];
    for (int m = 0; m < 9; m++) {
        t_hi[m] = floor(T[m] / TWO26) * TWO26;
        t_lo[m] = T[m] - t_hi[m];
        double c = L[m] * SPLITTER;
        l_hi[m] = c - (c - L[m]);
        l_lo[m] = L[m] - l_hi[m];
    }
    const double *tp[2] = {t_hi, t_lo}, *lp[2] = {l_hi, l_lo};
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < 3; k++) {
            /* The 12 exact partial products, in the NumPy core's order, sorted by decreasing
             * magnitude (stable insertion sort), then summed with Ogita-Rump-Oishi Sum2. */
            double terms[12];
            int m = 0;
            for (int p = 0; p < 2; p++)
                for (int q = 0; q < 2; q++)
                    for (int j = 0; j < 3; j++) terms[m++] = tp[p][3 * i + j] * lp[q][3 * j + k];
            for (int u = 1; u < 12; u++) {
                double v = terms[u];
                int w = u - 1;
                while (w >= 0 && fabs(terms[w]) < fabs(v)) {
                    terms[w + 1] = terms[w];
                    w--;
                }
                terms[w + 1] = v;
            }
            double s = terms[0], err = 0.0;
            for (int u = 1; u < 12; u++) {
                double t = terms[u], sum = s + t, bv = sum - s;
                err += (s - (sum - bv)) + (t - bv);
                s = sum;
            }
            out[3 * i + k] = s + err;
        }
    }
}

/* The plain product T @ L. Left to right from the first term (no 0.0 start, which would turn a -0.0
 * sum into +0.0), as _resolution.py's _matmul and _metric_of. */
static void plain_product(const double T[9], const double L[9], double out[9]) {
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++) {
            double s = T[3 * i] * L[k];
            for (int j = 1; j < 3; j++) s += T[3 * i + j] * L[3 * j + k];
            out[3 * i + k] = s;
        }
}

static void metric_of(const double B[9], double G[9]) {
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 3; k++) {
            double s = B[3 * i] * B[3 * k];
            for (int j = 1; j < 3; j++) s += B[3 * i + j] * B[3 * k + j];
            G[3 * i + k] = s;
        }
}

/* _resolution.py: _sizes, sum_j W_ij ell_j. */
static inline double size_of(double w0, double w1, double w2, const double ell[3]) {
    return w0 * ell[0] + w1 * ell[1] + w2 * ell[2];
}

static inline double split_size(double t) { /* _resolution.py: _split_sizes */
    double hi = floor(t / SPLIT) * SPLIT;
    return fabs(hi) + fabs(t - hi);
}

/* _resolution.py: basis_and_metric. The plain product where it is accurate enough (T entries up to
 * PLAIN_PRODUCT_LIMIT and every |b_i| >= k_plain r_i), else the error-free one, on whichever sign of each
 * row of T makes its partial products smaller, whose vectors must have |b_i| > k_exact s_i. Returns
 * whether every vector is resolved (false where NaN); *products_resolved whether the products of two are. */
static int basis_and_metric(const double T[9], const double L[9], const double ell[3], double t_max, double k_plain,
                            double k_exact, double B[9], double G[9], int *products_resolved) {
    plain_product(T, L, B);
    metric_of(B, G);
    int exact = t_max > PLAIN_PRODUCT_LIMIT;
    double error[3]; /* bound on each vector's error */
    for (int i = 0; i < 3; i++) {
        double r = size_of(fabs(T[3 * i]), fabs(T[3 * i + 1]), fabs(T[3 * i + 2]), ell);
        error[i] = PLAIN_PRODUCT_ERROR * r;
        double floor_i = k_plain * r;
        exact |= G[4 * i] < floor_i * floor_i;
    }
    double floors[3] = {0.0, 0.0, 0.0};
    if (exact) {
        double Ts[9], sign[3], s_used[3];
        for (int i = 0; i < 3; i++) {
            const double *t = T + 3 * i;
            double s_pos = size_of(split_size(t[0]), split_size(t[1]), split_size(t[2]), ell);
            double s_neg = size_of(split_size(-t[0]), split_size(-t[1]), split_size(-t[2]), ell);
            int flip = s_neg < s_pos;
            sign[i] = flip ? -1.0 : 1.0;
            s_used[i] = flip ? s_neg : s_pos;
            floors[i] = k_exact * s_used[i];
            for (int j = 0; j < 3; j++) Ts[3 * i + j] = t[j] * sign[i];
        }
        exact_int_matmul(Ts, L, B);
        for (int m = 0; m < 9; m++) B[m] *= sign[m / 3];
        metric_of(B, G);
        for (int i = 0; i < 3; i++) error[i] = EPS * sqrt(G[4 * i]) + EXACT_PRODUCT_ERROR * s_used[i];
    }
    int resolved = 1;
    double length[3];
    for (int i = 0; i < 3; i++) {
        resolved &= G[4 * i] > MIN_SQUARED_LENGTH;
        if (exact) resolved &= G[4 * i] > floors[i] * floors[i];
        length[i] = sqrt(G[4 * i]);
    }
    /* products of two vectors known to CROSS_MARGIN of the smaller squared length */
    static const int pairs[3][2] = {{0, 1}, {0, 2}, {1, 2}};
    *products_resolved = 1;
    for (int p = 0; p < 3; p++) {
        int i = pairs[p][0], j = pairs[p][1];
        double cross = (error[i] * length[j] + error[j] * length[i]) + PLAIN_PRODUCT_ERROR * (length[i] * length[j]);
        double smaller = G[4 * i] < G[4 * j] ? G[4 * i] : G[4 * j];
        *products_resolved &= cross <= CROSS_MARGIN * smaller;
    }
    return resolved;
}

/* ---- Niggli conditions (_conditions.py: niggli_conditions) ---- */

/* _conditions.py: _type2_blocked. O = (xi, eta, zeta), s their tolerances, P their bounds (B, A, A). */
static int type2_blocked(const double O[3], const double s[3], const double P[3], double e) {
    static const int partner[3] = {2, 2, 1};
    for (int i = 0; i < 3; i++) {
        double absO = fabs(O[i]);
        if (fabs(absO - P[i]) <= e * P[i] && absO > s[i] && fabs(O[partner[i]]) > s[partner[i]]) return 1;
    }
    return 0;
}

/* _conditions.py: sign_rule. */
static int sign_rule(const int pos[3], const int neg[3], int blocked) {
    return (pos[0] && pos[1] && pos[2]) || !(pos[0] || pos[1] || pos[2]) || (!(neg[0] || neg[1] || neg[2]) && blocked);
}

static int niggli_conditions(const double G[9], double e) {
    double A = G[0], B = G[4], C = G[8];
    double O[3] = {2 * G[5], 2 * G[2], 2 * G[1]}; /* xi, eta, zeta */
    double P[3] = {B, A, A};
    double Q[3] = {C, C, B}; /* D[[2, 2, 1]] */
    double e_p[3], s[3], absO[3];
    for (int i = 0; i < 3; i++) {
        e_p[i] = e * P[i];
        s[i] = e * sqrt(fabs(P[i] * Q[i]));
        absO[i] = fabs(O[i]);
    }
    double eAB = e * (A + B) / 2, eBC = e * (B + C) / 2;
    double S = A + B + ((O[0] + O[1]) + O[2]);
    if (!(A <= B + eAB && B <= C + eBC)) return 0;
    for (int i = 0; i < 3; i++)
        if (!(absO[i] <= P[i] + e_p[i])) return 0;
    int pos[3], neg[3];
    for (int i = 0; i < 3; i++) {
        pos[i] = O[i] > s[i];
        neg[i] = O[i] < -s[i];
    }
    if (!sign_rule(pos, neg, type2_blocked(O, s, P, e))) return 0;
    if (!(S >= -eAB)) return 0;
    if (fabs(A - B) <= eAB && !(absO[0] <= absO[1] + s[0])) return 0;
    if (fabs(B - C) <= eBC && !(absO[1] <= absO[2] + s[1])) return 0;
    double other[3] = {O[2], O[2], O[1]};
    double O100[3] = {O[1], O[0], O[0]};
    double s100[3] = {s[1], s[0], s[0]};
    double s221[3] = {s[2], s[2], s[1]};
    for (int i = 0; i < 3; i++) {
        if (fabs(O[i] - P[i]) <= e_p[i] && other[i] > 2 * O100[i] + s100[i]) return 0;
        if (fabs(O[i] + P[i]) <= e_p[i] && fabs(other[i]) > s221[i]) return 0;
    }
    if (fabs(S) <= eAB && !(2 * A + 2 * O[1] + O[2] <= eAB)) return 0;
    return 1;
}

/* ---- one reduction round (_round.py: reduction_round) ---- */

/* Per-vector state: its row of T, its squared length, the product of the other two vectors. */
typedef struct {
    double t[3];
    double len2;
    double other;
} Vec;

static void swap_vecs(Vec *r, int i, int j) {
    Vec tmp = r[i];
    r[i] = r[j];
    r[j] = tmp;
}

static int sort_vecs(Vec *r) {
    static const int pairs[3][2] = {{0, 1}, {1, 2}, {0, 1}};
    int parity = 0;
    for (int p = 0; p < 3; p++) {
        int i = pairs[p][0], j = pairs[p][1];
        if (r[i].len2 > r[j].len2) {
            swap_vecs(r, i, j);
            parity ^= 1;
        }
    }
    return parity;
}

static double sign_of(double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : x); }

/* Updates T in place; returns whether any move applied. */
static int reduction_round(double T[9], const double G[9], double e) {
    Vec r[3];
    for (int v = 0; v < 3; v++) {
        memcpy(r[v].t, T + 3 * v, 3 * sizeof(double));
        r[v].len2 = G[4 * v];
    }
    r[0].other = G[5];
    r[1].other = G[2];
    r[2].other = G[1];
    int changed = 0, parity = 0;

    for (int sweep = 0; sweep < SWEEPS; sweep++) {
        double f = 1 + e;
        double A = r[0].len2, B = r[1].len2, C = r[2].len2;
        if (A > B * f || A > C * f || B > C * f) {
            parity ^= sort_vecs(r);
            changed = 1;
        }
        Vec *a = &r[0], *b = &r[1], *c = &r[2];
        A = a->len2;
        B = b->len2;
        double g01 = c->other;
        int usable = A > 0;
        double mu = round_half_even(g01 / (usable ? A : 1.0));
        double new_B = B - mu * (2 * g01 - mu * A);
        if (usable && new_B < B * (1 - e)) {
            for (int k = 0; k < 3; k++) b->t[k] -= mu * a->t[k];
            a->other -= mu * b->other;
            c->other -= mu * A;
            b->len2 = new_B;
            changed = 1;
        }
        A = a->len2;
        B = b->len2;
        C = c->len2;
        double g12 = a->other, g02 = b->other;
        g01 = c->other;
        double det2 = A * B - g01 * g01;
        usable = usable && det2 > 0;
        double safe = usable ? det2 : 1.0;
        double x = round_half_even((B * g02 - g01 * g12) / safe);
        double y = round_half_even((A * g12 - g01 * g02) / safe);
        double new_C = C + x * (x * A + 2 * y * g01 - 2 * g02) + y * (y * B - 2 * g12);
        if (usable && new_C < C * (1 - e) && (x != 0 || y != 0)) {
            for (int k = 0; k < 3; k++) c->t[k] -= x * a->t[k] + y * b->t[k];
            b->other = g02 - x * A - y * g01;
            a->other = g12 - x * g01 - y * B;
            c->len2 = new_C;
            changed = 1;
        }
    }

    /* Krivy-Gruber steps 1-2 */
    double D[3], t[3], O[3];
#define LENGTHS_AND_TOLERANCES()                                                   \
    do {                                                                           \
        for (int v = 0; v < 3; v++) D[v] = r[v].len2;                              \
        t[0] = e * sqrt(fabs(D[1] * D[2]));                                        \
        t[1] = e * sqrt(fabs(D[0] * D[2]));                                        \
        t[2] = e * sqrt(fabs(D[0] * D[1]));                                        \
        for (int v = 0; v < 3; v++) O[v] = 2 * r[v].other;                         \
    } while (0)
    LENGTHS_AND_TOLERANCES();
    double A = D[0], B = D[1], C = D[2];
    double eAB = e * (A + B) / 2, eBC = e * (B + C) / 2;
    int unsorted = A > B + eAB || B > C + eBC;
    int step1 = !unsorted && fabs(A - B) <= eAB && fabs(O[0]) > fabs(O[1]) + t[0];
    int step2 = !unsorted && !step1 && fabs(B - C) <= eBC && fabs(O[1]) > fabs(O[2]) + t[1];
    if (unsorted || step1 || step2) {
        if (unsorted) parity ^= sort_vecs(r);
        if (step1) {
            swap_vecs(r, 0, 1);
            parity ^= 1;
        }
        if (step2) {
            swap_vecs(r, 1, 2);
            parity ^= 1;
        }
        LENGTHS_AND_TOLERANCES();
        A = D[0];
        B = D[1];
        C = D[2];
        eAB = e * (A + B) / 2;
        changed = 1;
    }
#undef LENGTHS_AND_TOLERANCES
    Vec *a = &r[0], *b = &r[1], *c = &r[2];

    /* steps 3-4 (_conditions.py: _type2_blocked, sign_rule) */
    int pos[3], neg[3], zero[3], any_zero = 0;
    for (int i = 0; i < 3; i++) {
        pos[i] = O[i] > t[i];
        neg[i] = O[i] < -t[i];
        zero[i] = !(pos[i] || neg[i]);
        any_zero |= zero[i];
    }
    double P_sign[3] = {B, A, A};
    int blocked = type2_blocked(O, t, P_sign, e);
    if (!sign_rule(pos, neg, blocked)) {
        int step3 = (!any_zero && neg[0] + neg[1] + neg[2] == 2) || (any_zero && blocked);
        int flipped[3], fix[3];
        for (int i = 0; i < 3; i++) flipped[i] = step3 ? neg[i] : pos[i];
        int odd = flipped[0] ^ flipped[1] ^ flipped[2];
        for (int i = 0; i < 3; i++) fix[i] = zero[i] && odd;
        fix[1] = fix[1] && !fix[0];
        fix[2] = fix[2] && !(fix[0] || fix[1]);
        double s[3];
        for (int i = 0; i < 3; i++) s[i] = 1.0 - 2.0 * (flipped[i] ^ fix[i]);
        for (int v = 0; v < 3; v++)
            for (int k = 0; k < 3; k++) r[v].t[k] *= s[v];
        double O0 = O[0] * (s[1] * s[2]), O1 = O[1] * (s[0] * s[2]), O2 = O[2] * (s[0] * s[1]);
        O[0] = O0;
        O[1] = O1;
        O[2] = O2;
        changed = 1;
    }

    /* steps 5-7 */
    double P[3] = {B, A, A};
    double other[3] = {O[2], O[2], O[1]};
    double O100[3] = {O[1], O[0], O[0]};
    double t100[3] = {t[1], t[0], t[0]};
    double t221[3] = {t[2], t[2], t[1]};
    int over[3], apply[3];
    for (int i = 0; i < 3; i++) {
        double e_p = e * P[i];
        over[i] = fabs(O[i]) > P[i] + e_p;
        apply[i] = over[i] || (fabs(O[i] - P[i]) <= e_p && other[i] - 2 * O100[i] > t100[i]) ||
                   (fabs(O[i] + P[i]) <= e_p && other[i] < -t221[i]);
    }
    if (over[0] || over[1] || over[2]) /* an entry beyond its bound goes first */
        for (int i = 0; i < 3; i++) apply[i] = apply[i] && over[i];
    apply[1] = apply[1] && !apply[0];
    apply[2] = apply[2] && !(apply[0] || apply[1]);
    int steps567 = apply[0] || apply[1] || apply[2];
    if (steps567) {
        double q[3];
        for (int i = 0; i < 3; i++)
            q[i] = apply[i] ? (over[i] ? round_half_even(O[i] / (2 * P[i])) : sign_of(O[i])) : 0.0;
        for (int k = 0; k < 3; k++) c->t[k] -= q[0] * b->t[k] + q[1] * a->t[k];
        for (int k = 0; k < 3; k++) b->t[k] -= q[2] * a->t[k];
        changed = 1;
    }

    /* step 8 */
    double S = ((O[0] + O[1]) + O[2]) + A + B;
    if (!steps567 && (S < -eAB || (fabs(S) <= eAB && 2 * (A + O[1]) + O[2] > eAB))) {
        for (int k = 0; k < 3; k++) c->t[k] += a->t[k] + b->t[k];
        changed = 1;
    }
    double sgn = parity ? -1.0 : 1.0;
    for (int v = 0; v < 3; v++)
        for (int k = 0; k < 3; k++) T[3 * v + k] = r[v].t[k] * sgn;
    return changed;
}

/* ---- the per-cell loop (_core.py: _iterate) ---- */

static void reduce_cell(const double L[9], const double ell[3], double e, int64_t max_iter, double T[9], double B[9],
                        int64_t *iters, int64_t *status) {
    static const double eye[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    memcpy(T, eye, sizeof eye);
    int changed = 1;
    double G[9];
    /* tolerance levels (_constants.py: LEVELS, LEVEL_FACTOR, STALL_ROUNDS; _resolution.py: accuracy_factors) */
    double e_k = e, best = INFINITY, e_min = e * LEVEL_MIN_SCALE;
    int level = 0;
    int64_t stall = 0;
    double k_plain = PLAIN_PRODUCT_ERROR * ACCURACY_MARGIN / e_min;
    double k_exact = EXACT_PRODUCT_ERROR * ACCURACY_MARGIN / e_min;
    for (int64_t it = 0;; it++) {
        double t_max = 0.0;
        for (int m = 0; m < 9; m++) t_max = max2(t_max, fabs(T[m]));
        int products_resolved;
        int resolved = basis_and_metric(T, L, ell, t_max, k_plain, k_exact, B, G, &products_resolved);
        /* An unresolved (or vanishing) vector or a runaway transform; NaN counts as bad. */
        int bad = !resolved || !(t_max <= MAX_TRANSFORM_ENTRY);
        /* the conditions at e, or, once gone on to finer levels, at any of them */
        int ok = 0;
        double e_check = e;
        for (int k = 0; k <= level && !ok; k++, e_check = e_check / LEVEL_FACTOR) ok = niggli_conditions(G, e_check);
        ok = ok && !bad;
        double total = (G[0] + G[4]) + G[8];
        if (total < best) {
            best = total;
            stall = 0;
        } else {
            stall++;
        }
        int stuck = !(ok || bad) && (!changed || stall >= STALL_ROUNDS);
        if ((ok || stuck) && !products_resolved) { /* a basis that passes or is stuck needs resolved products */
            bad = 1;
            ok = stuck = 0;
        }
        int finer = stuck && level < LEVELS - 1;
        if (finer) {
            level++;
            e_k = e_k / LEVEL_FACTOR;
            stall = 0;
            changed = 1;
        }
        if (ok || bad || !changed || (stuck && !finer)) {
            *iters = it;
            *status = bad ? STATUS_DEGENERATE : (ok ? STATUS_OK : STATUS_NOT_CONVERGED);
            break;
        }
        if (it == max_iter) {
            *iters = max_iter;
            *status = STATUS_NOT_CONVERGED;
            break;
        }
        changed = reduction_round(T, G, e_k);
    }
    if (*status == STATUS_DEGENERATE) { /* its last step is not trusted */
        memcpy(T, eye, sizeof eye);
        memcpy(B, L, 9 * sizeof(double));
    }
}

/* ---- one cell end to end (_core.py: reduce_cells) ---- */

/* 2**h for -1022 <= h <= 1023, from its bits. */
static inline double power_of_two(int h) {
    union {
        uint64_t bits;
        double value;
    } u = {(uint64_t)(h + 1023) << 52};
    return u.value;
}

/* x * 2**k, in two halves since 2**±1074 over/underflows (_resolution.py: times_power_of_two, which
 * halves with Python's floor division). A product by a power of two rounds as ldexp does (exact but
 * for subnormal results), without a libm call. */
static double times_power_of_two(double x, int k) {
    int half = k >= 0 ? k / 2 : -((1 - k) / 2);
    return x * power_of_two(half) * power_of_two(k - half);
}

static void reduce_item(const double X[9], double e, int64_t max_iter, double lattice[9], int64_t T_out[9],
                        int64_t *iters, int64_t *status) {
    static const double eye[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    double max_abs = 0.0;
    int finite = 1;
    for (int m = 0; m < 9; m++) {
        finite &= isfinite(X[m]) != 0;
        max_abs = max2(max_abs, fabs(X[m]));
    }
    *iters = 0;
    if (!finite || max_abs == 0) {
        *status = finite ? STATUS_DEGENERATE : STATUS_NONFINITE;
        memcpy(lattice, X, 9 * sizeof(double));
        for (int m = 0; m < 9; m++) T_out[m] = (int64_t)eye[m];
        return;
    }
    /* Scale by a power of two so that the largest entry is in [0.5, 1): exact, so c L reduces like L. */
    int exponent;
    frexp(max_abs, &exponent);
    double Xn[9], T[9], B[9];
    for (int m = 0; m < 9; m++) Xn[m] = times_power_of_two(X[m], -exponent);
    double ell[3];
    for (int i = 0; i < 3; i++) {
        double sq = 0.0;
        for (int j = 0; j < 3; j++) sq += Xn[3 * i + j] * Xn[3 * i + j];
        ell[i] = sqrt(sq);
    }
    reduce_cell(Xn, ell, e, max_iter, T, B, iters, status);

    /* A flat basis (volume relative to the product of lengths): DEGENERATE (only a converged basis is
     * short enough to judge). B is the basis the loop checked last, as _core.py recomputes it. */
    double lengths[3];
    for (int i = 0; i < 3; i++) {
        double sq = 0.0;
        for (int j = 0; j < 3; j++) sq += B[3 * i + j] * B[3 * i + j];
        lengths[i] = sqrt(sq);
    }
    const double *a = B, *b = B + 3, *c = B + 6;
    double volume = 0.0;
    for (int k = 0; k < 3; k++) volume += a[k] * (b[(k + 1) % 3] * c[(k + 2) % 3] - b[(k + 2) % 3] * c[(k + 1) % 3]);
    volume = fabs(volume);
    double rel_volume = volume / max2(lengths[0] * lengths[1] * lengths[2], DBL_MIN);
    int flat = !(rel_volume > DEGENERATE_VOLUME_RATIO);
    int judged = *status == STATUS_OK || (*status == STATUS_NOT_CONVERGED && *iters < max_iter);
    if (flat && judged) *status = STATUS_DEGENERATE;
    int give_back_input = *status == STATUS_DEGENERATE;
    if (!give_back_input) {
        for (int m = 0; m < 9; m++) {
            lattice[m] = times_power_of_two(B[m], exponent);
            /* A cell near the float64 limit may overflow once reduced: report, don't return inf. */
            if (!isfinite(lattice[m])) {
                *status = STATUS_NONFINITE;
                give_back_input = 1;
            }
        }
    }
    if (give_back_input) {
        memcpy(lattice, X, 9 * sizeof(double));
        memcpy(T, eye, sizeof eye);
    }
    for (int m = 0; m < 9; m++) T_out[m] = (int64_t)T[m];
}

/* reduce(X, lattice, T, iters, status, rel_tol, max_iter): X and lattice C-contiguous float64 buffers
 * of n * 9 items, T int64 of n * 9, iters and status int64 of n (sizes checked by the caller,
 * _kernel.py, and again here). */
static PyObject *reduce(PyObject *self, PyObject *args) {
    Py_buffer X, lattice, T, iters, status;
    double e;
    long long max_iter;
    if (!PyArg_ParseTuple(args, "y*w*w*w*w*dL", &X, &lattice, &T, &iters, &status, &e, &max_iter)) return NULL;
    Py_ssize_t n = status.len / (Py_ssize_t)sizeof(int64_t);
    PyObject *result = NULL;
    if (X.len != 9 * n * (Py_ssize_t)sizeof(double) || lattice.len != X.len || T.len != X.len ||
        iters.len != status.len) {
        PyErr_SetString(PyExc_ValueError, "reduce: buffer sizes do not match n cells");
    } else {
        const double *Xp = X.buf;
        double *lp = lattice.buf;
        int64_t *Tp = T.buf, *ip = iters.buf, *sp = status.buf;
        Py_BEGIN_ALLOW_THREADS;
        for (Py_ssize_t k = 0; k < n; k++) reduce_item(Xp + 9 * k, e, (int64_t)max_iter, lp + 9 * k, Tp + 9 * k, ip + k, sp + k);
        Py_END_ALLOW_THREADS;
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&X);
    PyBuffer_Release(&lattice);
    PyBuffer_Release(&T);
    PyBuffer_Release(&iters);
    PyBuffer_Release(&status);
    return result;
}

static PyMethodDef methods[] = {
    {"reduce", reduce, METH_VARARGS, "Niggli-reduce n cells, one by one (see soft_niggli/niggli/_core.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_niggli_kernel", NULL, -1, methods};

/* The constants of soft_niggli/niggli/_constants.py, exported so that the tests compare the two. */
static const char *const FLOAT_NAMES[] = {
    "PLAIN_PRODUCT_ERROR", "EXACT_PRODUCT_ERROR", "SPLIT", "CROSS_MARGIN", "EPS", "ACCURACY_MARGIN",
    "MIN_SQUARED_LENGTH", "DEGENERATE_VOLUME_RATIO", "MAX_TRANSFORM_ENTRY", "PLAIN_PRODUCT_LIMIT", "LEVEL_FACTOR"};
static const double FLOAT_VALUES[] = {
    PLAIN_PRODUCT_ERROR, EXACT_PRODUCT_ERROR, SPLIT, CROSS_MARGIN, EPS, ACCURACY_MARGIN,
    MIN_SQUARED_LENGTH, DEGENERATE_VOLUME_RATIO, MAX_TRANSFORM_ENTRY, PLAIN_PRODUCT_LIMIT, LEVEL_FACTOR};
static const char *const INT_NAMES[] = {"SWEEPS", "LEVELS", "STALL_ROUNDS"};
static const long INT_VALUES[] = {SWEEPS, LEVELS, STALL_ROUNDS};

PyMODINIT_FUNC PyInit__niggli_kernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    for (size_t i = 0; i < sizeof FLOAT_VALUES / sizeof FLOAT_VALUES[0]; i++) {
        if (PyModule_AddObject(m, FLOAT_NAMES[i], PyFloat_FromDouble(FLOAT_VALUES[i])) < 0) goto fail;
    }
    for (size_t i = 0; i < sizeof INT_VALUES / sizeof INT_VALUES[0]; i++) {
        if (PyModule_AddObject(m, INT_NAMES[i], PyLong_FromLong(INT_VALUES[i])) < 0) goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
