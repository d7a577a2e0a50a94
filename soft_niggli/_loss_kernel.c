/*
 * Compiled loops of the continuous losses, written once per pair or per cell instead of once per array
 * operation (on a CPU the PyTorch versions spend most of their time in the overhead of many small
 * operations). Each part is the counterpart of a PyTorch (or NumPy) function that stays the reference and
 * the fallback where this module was not built (or the tensors are on a GPU):
 *
 *   periodic_pairs, periodic_pairs_grad   soft_niggli/losses/periodic.py, `periodic_loss_of_pairs`
 *   window, window_margin                  soft_niggli/losses/candidates.py, `window_candidates`
 *   window_groups                          soft_niggli/losses/candidates.py, `grouped_window_candidates`
 *   automorphisms                          soft_niggli/unimodular.py, `lattice_automorphisms`
 *   reduced_forms                          soft_niggli/canonical.py, `reduced_forms`
 *   ball_vectors                           soft_niggli/losses/invariants.py, `theta_series`
 *
 * tests/losses/test_loss_kernel.py compares each with its counterpart. Buffers come from NumPy views of
 * contiguous CPU tensors; every size and index is checked here (a mismatch is a ValueError).
 *
 * ---- the periodic term of many pairs ----
 *
 * For pair q (crystal b = crystal[q], its n atoms at rows start[b] .. start[b] + n - 1 of the flat
 * fractional coordinates) the differences are d_i = pred_i - target_i X_q (X_q a 3x3 matrix, rows are
 * lattice vectors as everywhere in soft_niggli). Per axis, the values x_i = d_i - d_0 wrapped to
 * [0, 1) are sorted round the circle, the best arc is chosen from prefix sums (the cut c minimising
 * 2 P_c + c - (S + c)^2 / n, P_c the sum of the c smallest, first minimum), the values below the cut
 * are unwrapped by +1, and the residuals r_i = x_i - mean are computed directly (no cancellation of
 * large sums). The term is sum r^2 / (3 n); its gradient with respect to pred_i is 2 r_i / (3 n), and
 * with respect to target_i minus that times X_q^T (the residuals sum to zero, so d_0's share cancels).
 *
 * Same arithmetic as the PyTorch code in periodic.py, in double precision throughout (the PyTorch
 * code computes float32 input in float32).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Ascending sort of n values: insertion sort for the small crystals of CSP data, qsort beyond. */
static void sort_values(double *v, int64_t n) {
    if (n > 48) {
        qsort(v, (size_t)n, sizeof(double), compare_doubles);
        return;
    }
    for (int64_t i = 1; i < n; i++) {
        double x = v[i];
        int64_t j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

/* One pair: residuals r (n * 3, row-major like the atoms) and the term. `x` and `sorted` are scratch of n. */
static double pair_term(const double *pred, const double *target, int64_t n, const double *X, double *r,
                        double *x, double *sorted) {
    if (n == 0) return 0.0;
    double d0[3], total = 0.0;
    for (int a = 0; a < 3; a++)
        d0[a] = pred[a] - (target[0] * X[a] + target[1] * X[3 + a] + target[2] * X[6 + a]);
    for (int a = 0; a < 3; a++) {
        for (int64_t i = 0; i < n; i++) {
            const double *t = target + 3 * i;
            double d = pred[3 * i + a] - (t[0] * X[a] + t[1] * X[3 + a] + t[2] * X[6 + a]);
            double v = d - d0[a];
            v -= floor(v);
            x[i] = v;
            sorted[i] = v;
        }
        sort_values(sorted, n);
        double S = 0.0;
        for (int64_t i = 0; i < n; i++) S += sorted[i];
        double best = INFINITY, prefix = 0.0, cut = sorted[0];
        for (int64_t c = 0; c < n; c++) {
            double key = 2.0 * prefix + (double)c - (S + (double)c) * (S + (double)c) / (double)n;
            if (key < best) {
                best = key;
                cut = sorted[c];
            }
            prefix += sorted[c];
        }
        double mean = 0.0;
        for (int64_t i = 0; i < n; i++) {
            if (x[i] < cut) x[i] += 1.0;
            mean += x[i];
        }
        mean /= (double)n;
        for (int64_t i = 0; i < n; i++) {
            double res = x[i] - mean;
            r[3 * i + a] = res;
            total += res * res;
        }
    }
    return total / (3.0 * (double)n);
}

#define RELEASE_ALL(bufs, count)                                 \
    for (int i_ = 0; i_ < (count); i_++) PyBuffer_Release(&(bufs)[i_])

/* Whether the pairs' indices fit: crystal c's atoms at rows start[c] .. start[c] + counts[c] - 1 of N,
 * pair q's residuals at rows rstart[q] .. of R, crystal[q] in [0, B). Sets *n_max to the largest count. */
static int pairs_fit(const int64_t *start, const int64_t *counts, Py_ssize_t B, Py_ssize_t N, const int64_t *crystal,
                     const int64_t *rstart, Py_ssize_t Q, Py_ssize_t R, int64_t *n_max) {
    *n_max = 0;
    for (Py_ssize_t k = 0; k < B; k++) {
        if (!(counts[k] >= 0 && start[k] >= 0 && start[k] + counts[k] <= N)) return 0;
        if (counts[k] > *n_max) *n_max = counts[k];
    }
    for (Py_ssize_t q = 0; q < Q; q++)
        if (!(crystal[q] >= 0 && crystal[q] < B && rstart[q] >= 0 && rstart[q] + counts[crystal[q]] <= R)) return 0;
    return 1;
}

/* periodic_pairs(pred, target, start, counts, crystal, X, resid_start, loss, resid):
 * pred, target float64 (N, 3); start, counts int64 (B,); crystal int64 (Q,); X float64 (Q, 9);
 * resid_start int64 (Q,) (each pair's first row in resid); outputs loss float64 (Q,), resid float64
 * (sum of the pairs' atom counts, 3). Contiguous buffers; indices are checked here. */
static PyObject *periodic_pairs(PyObject *self, PyObject *args) {
    Py_buffer b[9];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6], &b[7], &b[8]))
        return NULL;
    const double *pred = b[0].buf, *target = b[1].buf, *X = b[5].buf;
    const int64_t *start = b[2].buf, *counts = b[3].buf, *crystal = b[4].buf, *rstart = b[6].buf;
    double *loss = b[7].buf, *resid = b[8].buf;
    Py_ssize_t N = b[0].len / (Py_ssize_t)(3 * sizeof(double)), B = b[3].len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t Q = b[4].len / (Py_ssize_t)sizeof(int64_t), R = b[8].len / (Py_ssize_t)(3 * sizeof(double));
    int64_t n_max = 0;
    int ok = b[1].len == b[0].len && b[2].len == b[3].len && b[5].len == Q * 9 * (Py_ssize_t)sizeof(double) &&
             b[6].len == b[4].len && b[7].len == Q * (Py_ssize_t)sizeof(double) &&
             pairs_fit(start, counts, B, N, crystal, rstart, Q, R, &n_max);
    if (!ok) {
        RELEASE_ALL(b, 9);
        PyErr_SetString(PyExc_ValueError, "periodic_pairs: buffer sizes or indices do not match");
        return NULL;
    }
    double *scratch = malloc((size_t)(2 * (n_max > 0 ? n_max : 1)) * sizeof(double));
    if (scratch == NULL) {
        RELEASE_ALL(b, 9);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t q = 0; q < Q; q++) {
        int64_t c = crystal[q];
        loss[q] = pair_term(pred + 3 * start[c], target + 3 * start[c], counts[c], X + 9 * q, resid + 3 * rstart[q],
                            scratch, scratch + n_max);
    }
    Py_END_ALLOW_THREADS;
    free(scratch);
    RELEASE_ALL(b, 9);
    Py_RETURN_NONE;
}

/* periodic_pairs_grad(resid, resid_start, start, counts, crystal, X, grad_loss, grad_pred, grad_target):
 * accumulates into grad_pred (N, 3) the gradient 2 r_i g_q / (3 n) of every pair, and into grad_target
 * (N, 3; an empty buffer to skip it) minus that times X_q^T. Same layouts as periodic_pairs. */
static PyObject *periodic_pairs_grad(PyObject *self, PyObject *args) {
    Py_buffer b[9];
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*w*", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &b[6], &b[7], &b[8]))
        return NULL;
    const double *resid = b[0].buf, *X = b[5].buf, *g = b[6].buf;
    const int64_t *rstart = b[1].buf, *start = b[2].buf, *counts = b[3].buf, *crystal = b[4].buf;
    double *gp = b[7].buf, *gt = b[8].len ? b[8].buf : NULL;
    Py_ssize_t R = b[0].len / (Py_ssize_t)(3 * sizeof(double)), N = b[7].len / (Py_ssize_t)(3 * sizeof(double));
    Py_ssize_t B = b[3].len / (Py_ssize_t)sizeof(int64_t), Q = b[4].len / (Py_ssize_t)sizeof(int64_t);
    int64_t n_max;
    int ok = b[1].len == b[4].len && b[2].len == b[3].len && b[5].len == Q * 9 * (Py_ssize_t)sizeof(double) &&
             b[6].len == Q * (Py_ssize_t)sizeof(double) && (b[8].len == 0 || b[8].len == b[7].len) &&
             pairs_fit(start, counts, B, N, crystal, rstart, Q, R, &n_max);
    if (!ok) {
        RELEASE_ALL(b, 9);
        PyErr_SetString(PyExc_ValueError, "periodic_pairs_grad: buffer sizes or indices do not match");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t q = 0; q < Q; q++) {
        int64_t c = crystal[q], n = counts[c];
        if (n == 0) continue;
        double scale = 2.0 * g[q] / (3.0 * (double)n);
        const double *r = resid + 3 * rstart[q], *Xq = X + 9 * q;
        double *p = gp + 3 * start[c];
        for (int64_t i = 0; i < n; i++) {
            double u0 = scale * r[3 * i], u1 = scale * r[3 * i + 1], u2 = scale * r[3 * i + 2];
            p[3 * i] += u0;
            p[3 * i + 1] += u1;
            p[3 * i + 2] += u2;
            if (gt != NULL) {
                double *t = gt + 3 * start[c] + 3 * i;
                for (int j = 0; j < 3; j++) t[j] -= u0 * Xq[3 * j] + u1 * Xq[3 * j + 1] + u2 * Xq[3 * j + 2];
            }
        }
    }
    Py_END_ALLOW_THREADS;
    RELEASE_ALL(b, 9);
    Py_RETURN_NONE;
}

/* ---- the candidate window (soft_niggli/losses/candidates.py, `window_candidates`) ----
 *
 * A candidate X has rows v_0, v_1, v_2 among the n nonzero short vectors V (entries in [-bound, bound])
 * and |det X| = 1 (det X = 1 when `proper`). Its lattice term against a prediction P and reference R
 * (3x3, rows are lattice vectors; both divided by a common power of two first, so nothing overflows,
 * with `unit` converting back) is
 *   Cartesian: unit * sum_i c_i(v_i),  c_i(v) = |p_i - v R|^2                          (separable);
 *   metric:    unit * sum_ab (Gp_ab - v_a Gr v_b^T)^2 / (|P|^2 + sum_a v_a Gr v_a^T).
 * Both are enumerated by branch and bound over the rows, each row's vectors sorted by a lower bound of
 * its share: for the metric, a candidate with term <= unit * A has
 *   sum_a f_a(v_a) + 2 sum_{a<b} (Gp_ab - v_a Gr v_b^T)^2 <= A |P|^2,
 *   f_a(v) = (Gp_aa - v Gr v^T)^2 - A v Gr v^T,
 * so partial sums (with the other rows at their smallest f) prune whole branches. Every candidate
 * within the threshold is reached, so the results are exact (to the double-precision rounding of the
 * terms), for any cell however skewed: there is no fallback to scoring all candidates. */

typedef struct {
    int metric, proper;
    int64_t n;
    const int64_t *V;  /* n x 3 */
    double unit, size; /* size: |P|^2 (metric) */
    double gscale;     /* 36 trace(Gr) (metric): at least sum_a v_a Gr v_a^T of any candidate, bound 1 or 2 */
    double Gp[9];
    double *cost;      /* 3 x n: c_a (Cartesian) or f_a (metric) */
    double *Q;         /* n x n: v Gr w^T (metric) */
    int64_t *order;    /* 3 x n: each row's vectors by increasing cost */
    /* With a margin (merged search): the window's limit for a k-th term t is
     * t + min(rel t + abs, cap) + extra (Å^2; window_limit converts to scaled units). */
    int merged;
    double rel, abs, cap, extra;
    /* Grouped search (window_groups): the row's penalty (A^2) added to its terms when they are ranked
     * against the other rows of its group; the margin is that of the penalised term. 0 otherwise. */
    double pen;
} Window;

static double window_limit(const Window *w, double t) {
    double x = t * w->unit;
    return (x + fmin(w->rel * (x + w->pen) + w->abs, w->cap) + w->extra) / w->unit;
}

static int64_t det3(const int64_t *a, const int64_t *b, const int64_t *c) {
    return a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0]);
}

/* Scales the cells and fills the per-vector tables; returns 0 for a cell with non-finite entries. */
static int window_setup(Window *w, const double *P_in, const double *R_in) {
    double m = 0.0, P[9], R[9];
    for (int i = 0; i < 9; i++) {
        if (!isfinite(P_in[i]) || !isfinite(R_in[i])) return 0;
        m = fmax(m, fmax(fabs(P_in[i]), fabs(R_in[i])));
    }
    int e = 0;
    if (m > 0) frexp(m, &e);
    for (int i = 0; i < 9; i++) {
        P[i] = ldexp(P_in[i], -e);
        R[i] = ldexp(R_in[i], -e);
    }
    w->unit = ldexp(1.0, 2 * e) / 9.0;
    const int64_t n = w->n, *V = w->V;
    if (w->metric == 0) {
        for (int64_t j = 0; j < n; j++) {
            double vR[3];
            for (int c = 0; c < 3; c++) vR[c] = V[3 * j] * R[c] + V[3 * j + 1] * R[3 + c] + V[3 * j + 2] * R[6 + c];
            for (int a = 0; a < 3; a++) {
                double s = 0.0;
                for (int c = 0; c < 3; c++) s += (P[3 * a + c] - vR[c]) * (P[3 * a + c] - vR[c]);
                w->cost[a * n + j] = s;
            }
        }
        return 1;
    }
    double Gr[9];
    w->size = 0.0;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
            double gp = 0.0, gr = 0.0;
            for (int c = 0; c < 3; c++) {
                gp += P[3 * a + c] * P[3 * b + c];
                gr += R[3 * a + c] * R[3 * b + c];
            }
            w->Gp[3 * a + b] = gp;
            Gr[3 * a + b] = gr;
        }
    for (int a = 0; a < 3; a++) w->size += w->Gp[4 * a];
    w->gscale = 36.0 * (Gr[0] + Gr[4] + Gr[8]);
    for (int64_t j = 0; j < n; j++) {
        double vG[3];
        for (int c = 0; c < 3; c++) vG[c] = V[3 * j] * Gr[c] + V[3 * j + 1] * Gr[3 + c] + V[3 * j + 2] * Gr[6 + c];
        for (int64_t l = 0; l < n; l++) w->Q[j * n + l] = vG[0] * V[3 * l] + vG[1] * V[3 * l + 1] + vG[2] * V[3 * l + 2];
    }
    return 1;
}

/* Metric: the right-hand side A |P|^2 of the bound a candidate within A meets, with a rounding slack.
 * The slack is relative to A times the largest denominator |P|^2 + sum_a v_a Gr v_a^T a candidate can
 * have, not to A |P|^2 alone: for a prediction of all zeros (or below 1e-160 of the reference, whose
 * squares underflow) A |P|^2 is 0, and a relative slack would leave rounding to prune every candidate. */
static double metric_budget(const Window *w, double A) {
    return A * w->size * (1 + 1e-12) + 1e-12 * A * w->gscale;
}

/* Metric: the row bounds f_a for threshold A (in scaled units). */
static void window_metric_costs(Window *w, double A) {
    const int64_t n = w->n;
    for (int64_t j = 0; j < n; j++) {
        double g = w->Q[j * n + j];
        for (int a = 0; a < 3; a++) {
            double d = w->Gp[4 * a] - g;
            w->cost[a * n + j] = d * d - A * g;
        }
    }
}

static void window_sort_rows(Window *w) {
    const int64_t n = w->n;
    for (int a = 0; a < 3; a++) {
        int64_t *o = w->order + a * n;
        const double *c = w->cost + a * n;
        for (int64_t j = 0; j < n; j++) {
            int64_t x = o[j] = j, i = j - 1;
            while (i >= 0 && c[o[i]] > c[x]) {
                o[i + 1] = o[i];
                i--;
            }
            o[i + 1] = x;
        }
    }
}

/* The exact term (scaled units, before `unit`) of the metric candidate with rows j0, j1, j2. */
static double window_metric_term(const Window *w, const int64_t j[3]) {
    const int64_t n = w->n;
    double num = 0.0, den = w->size;
    for (int a = 0; a < 3; a++) {
        den += w->Q[j[a] * n + j[a]];
        for (int b = 0; b < 3; b++) {
            double d = w->Gp[3 * a + b] - w->Q[j[a] * n + j[b]];
            num += d * d;
        }
    }
    return num / fmax(den, DBL_MIN);
}

/* Max-heap of the k smallest terms seen. */
typedef struct {
    double *v;
    int64_t size, k;
} Heap;

static void heap_offer(Heap *h, double x) {
    if (h->size < h->k) {
        int64_t i = h->size++;
        while (i > 0 && h->v[(i - 1) / 2] < x) {
            h->v[i] = h->v[(i - 1) / 2];
            i = (i - 1) / 2;
        }
        h->v[i] = x;
        return;
    }
    if (!(x < h->v[0])) return;
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= h->k) break;
        if (c + 1 < h->k && h->v[c + 1] > h->v[c]) c++;
        if (!(h->v[c] > x)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    h->v[i] = x;
}

/* A candidate reached by a search: offered to the heap (finding t_k) or collected (count < capacity). */
typedef struct {
    double term;
    int64_t j[3];
} Item;

typedef struct {
    Heap *heap;
    int64_t owner, *out_owner, *out_rows, capacity, count;
    Item *items; /* merged search: everything reached within the current limit, filtered at the end */
    int64_t n_items, items_capacity;
    int failed;  /* out of memory */
    int to_items; /* a collection (no heap) appends to items instead of the output (window_groups) */
} Sink;

static void sink_append(Sink *s, double term, int64_t j0, int64_t j1, int64_t j2) {
    if (s->n_items == s->items_capacity) {
        int64_t grown = s->items_capacity ? 2 * s->items_capacity : 256;
        Item *more = realloc(s->items, (size_t)grown * sizeof(Item));
        if (more == NULL) {
            s->failed = 1;
            return;
        }
        s->items = more;
        s->items_capacity = grown;
    }
    s->items[s->n_items++] = (Item){term, {j0, j1, j2}};
}

static void sink_take(Sink *s, double term, int64_t j0, int64_t j1, int64_t j2) {
    if (s->heap) {
        heap_offer(s->heap, term);
        if (s->items_capacity < 0) return; /* not merged: the k-th term only */
        sink_append(s, term, j0, j1, j2);
        return;
    }
    if (s->to_items) {
        sink_append(s, term, j0, j1, j2);
        return;
    }
    if (s->count < s->capacity) {
        s->out_owner[s->count] = s->owner;
        s->out_rows[3 * s->count] = j0;
        s->out_rows[3 * s->count + 1] = j1;
        s->out_rows[3 * s->count + 2] = j2;
    }
    s->count++;
}

static int unimodular_rows(const Window *w, const int64_t cross[3], int64_t j2) {
    const int64_t *v2 = w->V + 3 * j2;
    int64_t det = cross[0] * v2[0] + cross[1] * v2[1] + cross[2] * v2[2];
    return w->proper ? det == 1 : (det == 1 || det == -1);
}

/* Cartesian entries: every candidate with sum_a c_a <= the threshold (scaled units): `fixed`, or for
 * finding t_k the heap's k-th term once it holds k. Each row sorted by c_a, so each level stops at
 * the first vector over the budget. */
static void cartesian_search(const Window *w, double fixed, Sink *sink) {
    const int64_t n = w->n, *V = w->V;
    const int64_t *o0 = w->order, *o1 = w->order + n, *o2 = w->order + 2 * n;
    const double *c0 = w->cost, *c1 = w->cost + n, *c2 = w->cost + 2 * n;
    const double min1 = c1[o1[0]], min2 = c2[o2[0]];
    Heap *heap = sink->heap;
#define LIMIT() (heap && heap->size == heap->k ? fmin(w->merged ? window_limit(w, heap->v[0]) : heap->v[0], fixed) : fixed)
#define THRESHOLD() (LIMIT() * (1 + 1e-12))
    for (int64_t i0 = 0; i0 < n; i0++) {
        int64_t j0 = o0[i0];
        double s0 = c0[j0];
        if (s0 + min1 + min2 > THRESHOLD()) break;
        for (int64_t i1 = 0; i1 < n; i1++) {
            int64_t j1 = o1[i1];
            double s1 = s0 + c1[j1];
            if (s1 + min2 > THRESHOLD()) break;
            const int64_t *v0 = V + 3 * j0, *v1 = V + 3 * j1;
            int64_t cross[3] = {v0[1] * v1[2] - v0[2] * v1[1], v0[2] * v1[0] - v0[0] * v1[2], v0[0] * v1[1] - v0[1] * v1[0]};
            for (int64_t i2 = 0; i2 < n; i2++) {
                int64_t j2 = o2[i2];
                double s2 = s1 + c2[j2];
                if (s2 > THRESHOLD()) break;
                if (s2 <= LIMIT() && unimodular_rows(w, cross, j2)) sink_take(sink, s2, j0, j1, j2);
            }
        }
    }
#undef THRESHOLD
#undef LIMIT
}

/* Metric: every candidate with term <= A (scaled units), the f_a made with that A. A candidate inside
 * has sum_a f_a(v_a) + 2 sum_{a<b} (Gp_ab - Q_ab)^2 <= A |P|^2 =: budget; each level stops at the
 * first vector whose f alone breaks it, the pair (0, 1) is checked before the third row, and the third
 * row only visits the vectors that pass with each of the first two alone (bit masks, made when first
 * needed: `mask` holds 2 n rows of `words` words, `made` 2 n flags). */
static void metric_search(const Window *w, double A, Sink *sink, uint64_t *mask, char *made, int64_t words) {
    const int64_t n = w->n, *V = w->V, *o0 = w->order, *o1 = w->order + n, *o2 = w->order + 2 * n;
    const double *c0 = w->cost, *c1 = w->cost + n, *c2 = w->cost + 2 * n, *Q = w->Q, *G = w->Gp;
    const double min0 = c0[o0[0]], min1 = c1[o1[0]], min2 = c2[o2[0]];
    const double budget = metric_budget(w, A);
    const Heap *heap = sink->heap;
    memset(made, 0, (size_t)(2 * n));
    for (int64_t i0 = 0; i0 < n; i0++) {
        int64_t j0 = o0[i0];
        double s0 = c0[j0];
        if (s0 + min1 + min2 > budget) break;
        for (int64_t i1 = 0; i1 < n; i1++) {
            int64_t j1 = o1[i1];
            double s1 = s0 + c1[j1];
            if (s1 + min2 > budget) break;
            double d01 = G[1] - Q[j0 * n + j1], p01 = 2 * d01 * d01;
            if (s1 + p01 + min2 > budget) continue;
            if (heap && heap->size == heap->k) {
                /* Finding t_k: once the heap holds k, only terms below its largest, A' <= A, matter.
                 * The rows' bounds at A' are f_a + (A - A') g_a (the orders stay those made at A). */
                double At = w->merged ? fmin(window_limit(w, heap->v[0]), A) : heap->v[0];
                if (s1 + (A - At) * (Q[j0 * n + j0] + Q[j1 * n + j1]) + p01 + min2 > metric_budget(w, At)) continue;
            }
            const int64_t *v0 = V + 3 * j0, *v1 = V + 3 * j1;
            int64_t cross[3] = {v0[1] * v1[2] - v0[2] * v1[1], v0[2] * v1[0] - v0[0] * v1[2], v0[0] * v1[1] - v0[1] * v1[0]};
            if (!cross[0] && !cross[1] && !cross[2]) continue; /* parallel rows: det 0 */
            /* The third rows allowed with row 0 = j0 (mask j0) and with row 1 = j1 (mask n + j1). */
            const int64_t pick[2] = {j0, n + j1};
            for (int m = 0; m < 2; m++) {
                int64_t at = pick[m];
                if (made[at]) continue;
                made[at] = 1;
                uint64_t *bits = mask + at * words;
                memset(bits, 0, (size_t)words * sizeof(uint64_t));
                int64_t j = m ? j1 : j0;
                double g = m ? G[5] : G[2], room = budget - (m ? min0 + c1[j1] : c0[j0] + min1);
                for (int64_t l = 0; l < n; l++) {
                    double d = g - Q[j * n + l];
                    if (c2[l] + 2 * d * d <= room) bits[l >> 6] |= (uint64_t)1 << (l & 63);
                }
            }
            const uint64_t *b0 = mask + j0 * words, *b1 = mask + (n + j1) * words;
            for (int64_t word = 0; word < words; word++) {
                uint64_t bits = b0[word] & b1[word];
                while (bits) {
                    int64_t j2 = 64 * word + __builtin_ctzll(bits);
                    bits &= bits - 1;
                    if (s1 + p01 + c2[j2] > budget || !unimodular_rows(w, cross, j2)) continue;
                    int64_t j[3] = {j0, j1, j2};
                    double term = window_metric_term(w, j);
                    if (term <= A && (!w->merged || !heap || heap->size < heap->k || term <= window_limit(w, heap->v[0])))
                        sink_take(sink, term, j0, j1, j2);
                }
            }
        }
    }
}

/* The k-th term of one crystal (scaled units) into the heap: every candidate for Cartesian entries;
 * for the metric an upper bound first, then searches below growing thresholds. In merged mode the
 * sink also gathers the candidates reached within the limit of the heap's k-th term. Returns the
 * threshold of the last search (everything within it, up to that limit, was reached), or -1 when
 * nothing was gathered (the metric's first bound enumerated every candidate). */
static double window_kth(Window *w, int64_t k, Sink *sink, uint64_t *mask, char *made, int64_t words, double cap) {
    const int64_t n = w->n;
    Heap *heap = sink->heap;
    heap->size = 0;
    sink->n_items = 0;
    if (!w->metric) {
        window_sort_rows(w);
        cartesian_search(w, cap, sink);
        return cap;
    }
    /* An upper bound of t_k first: the k-th term among the candidates whose rows are each among the 4
     * best by the diagonal alone (f_a with A = 0), taking one of each pair ±v (which tie on the
     * diagonal: 4 directions, not 2); failing k of them, among the r best, r doubled (with all n,
     * every candidate was scored: done). */
    window_metric_costs(w, 0.0);
    window_sort_rows(w);
    int64_t top[3][4], m = 0;
    for (int a = 0; a < 3; a++) {
        int t = 0;
        for (int64_t i = 0; i < n && t < 4; i++) {
            const int64_t *v = w->V + 3 * w->order[a * n + i];
            int parallel = 0;
            for (int u = 0; u < t; u++) {
                const int64_t *x = w->V + 3 * top[a][u];
                parallel |= v[0] == -x[0] && v[1] == -x[1] && v[2] == -x[2];
            }
            if (!parallel) top[a][t++] = w->order[a * n + i];
        }
        m = a == 0 || t < m ? t : m;
    }
    for (int64_t i0 = 0; i0 < m; i0++)
        for (int64_t i1 = 0; i1 < m; i1++)
            for (int64_t i2 = 0; i2 < m; i2++) {
                int64_t j[3] = {top[0][i0], top[1][i1], top[2][i2]};
                int64_t det = det3(w->V + 3 * j[0], w->V + 3 * j[1], w->V + 3 * j[2]);
                if (w->proper ? det != 1 : (det != 1 && det != -1)) continue;
                heap_offer(heap, window_metric_term(w, j));
            }
    m = 0;
    for (int64_t r = 8; heap->size < k && m < n; r *= 2) {
        m = r < n ? r : n;
        heap->size = 0;
        for (int64_t i0 = 0; i0 < m; i0++)
            for (int64_t i1 = 0; i1 < m; i1++)
                for (int64_t i2 = 0; i2 < m; i2++) {
                    int64_t j[3] = {w->order[i0], w->order[n + i1], w->order[2 * n + i2]};
                    int64_t det = det3(w->V + 3 * j[0], w->V + 3 * j[1], w->V + 3 * j[2]);
                    if (w->proper ? det != 1 : (det != 1 && det != -1)) continue;
                    heap_offer(heap, window_metric_term(w, j));
                }
    }
    if (m == n) return -1.0;
    /* Then t_k exactly, by searches below growing thresholds A: one that finds k candidates has found
     * the k smallest. Far from a match the upper bound can be loose by orders of magnitude, and a
     * search costs more the larger A is: start below it. */
    double bound = fmin(heap->v[0], cap), A = bound / 8;
    for (;; A *= 2) {
        A = fmin(A, bound);
        heap->size = 0;
        sink->n_items = 0;
        window_metric_costs(w, A);
        window_sort_rows(w);
        metric_search(w, A, sink, mask, made, words);
        if (heap->size >= k || A >= bound) break;
    }
    return A;
}

/* Every candidate within A (scaled units) straight into the output. */
static void window_collect(Window *w, double A, Sink *sink, uint64_t *mask, char *made, int64_t words) {
    if (!(A >= 0)) return; /* NaN: nothing */
    Heap *heap = sink->heap;
    sink->heap = NULL;
    if (w->metric) {
        window_metric_costs(w, A);
        window_sort_rows(w);
        metric_search(w, A, sink, mask, made, words);
    } else {
        window_sort_rows(w);
        cartesian_search(w, A, sink);
    }
    sink->heap = heap;
}

/* window(P, R, V, metric, proper, k, limit, kth, owner, rows) -> count
 * P, R float64 (B, 9); V int64 (n, 3); metric 0 (Cartesian) or 1 (metric); proper 0/1.
 * With k > 0: writes to kth (float64, B) each crystal's k-th smallest term over all candidates (the
 * largest if fewer; NaN for a non-finite cell) and returns 0. With k == 0: collects every candidate
 * whose term is <= limit[b] (float64, B) into owner (int64, capacity) and rows (int64, capacity x 3,
 * indices into V), and returns how many there are (call again with more capacity if above it).
 *
 * window_margin(P, R, V, metric, proper, k, rel, abs, cap, extra, kth, owner, rows) -> count does both
 * in one search where the margin is min(rel t_k + abs[b], cap) + extra[b] (abs, extra float64 (B,)):
 * every candidate with term <= t_k + margin, t_k into kth. */
static PyObject *window_run(PyObject *args, int merged) {
    Py_buffer b[8];
    int metric, proper, nb = merged ? 8 : 7;
    long long k;
    double rel = 0, cap = 0;
    int parsed = merged ? PyArg_ParseTuple(args, "y*y*y*iiLdy*dy*w*w*w*", &b[0], &b[1], &b[2], &metric, &proper, &k,
                                           &rel, &b[3], &cap, &b[7], &b[4], &b[5], &b[6])
                        : PyArg_ParseTuple(args, "y*y*y*iiLy*w*w*w*", &b[0], &b[1], &b[2], &metric, &proper, &k, &b[3],
                                           &b[4], &b[5], &b[6]);
    if (!parsed) return NULL;
    Py_ssize_t B = b[0].len / (Py_ssize_t)(9 * sizeof(double)), n = b[2].len / (Py_ssize_t)(3 * sizeof(int64_t));
    Py_ssize_t capacity = b[5].len / (Py_ssize_t)sizeof(int64_t);
    int ok = b[1].len == b[0].len && b[3].len == B * (Py_ssize_t)sizeof(double) && b[4].len == b[3].len &&
             b[6].len == 3 * b[5].len && n > 0 && k >= 0 && (metric == 0 || metric == 1) &&
             (!merged || (k > 0 && b[7].len == b[3].len));
    if (!ok) {
        RELEASE_ALL(b, nb);
        PyErr_SetString(PyExc_ValueError, "window: buffer sizes or options do not match");
        return NULL;
    }
    const double *P = b[0].buf, *R = b[1].buf, *limit = b[3].buf, *extra = merged ? b[7].buf : NULL;
    double *kth = b[4].buf;
    int64_t words = (n + 63) / 64;
    Window w = {metric, proper, n, b[2].buf, 0, 0, 0, {0}, NULL, NULL, NULL, merged, rel, 0, cap, 0, 0};
    w.cost = malloc((size_t)(3 * n) * sizeof(double));
    w.order = malloc((size_t)(3 * n) * sizeof(int64_t));
    w.Q = metric ? malloc((size_t)(n * n) * sizeof(double)) : NULL;
    uint64_t *mask = metric ? malloc((size_t)(2 * n * words) * sizeof(uint64_t)) : NULL;
    char *made = metric ? malloc((size_t)(2 * n)) : NULL;
    Heap heap = {k > 0 ? malloc((size_t)k * sizeof(double)) : NULL, 0, k};
    Sink sink = {k > 0 ? &heap : NULL, 0, b[5].buf, b[6].buf, capacity, 0, NULL, 0, merged ? 0 : -1, 0, 0};
    if (!w.cost || !w.order || (metric && (!w.Q || !mask || !made)) || (k > 0 && !heap.v)) {
        free(w.cost), free(w.order), free(w.Q), free(mask), free(made), free(heap.v);
        RELEASE_ALL(b, nb);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t c = 0; c < B && !sink.failed; c++) {
        sink.owner = c;
        if (!window_setup(&w, P + 9 * c, R + 9 * c)) {
            if (k > 0) kth[c] = NAN;
            continue;
        }
        if (k == 0) {
            window_collect(&w, limit[c] / w.unit, &sink, mask, made, words);
            continue;
        }
        w.abs = merged ? limit[c] : 0;
        w.extra = merged ? extra[c] : 0;
        double reached = window_kth(&w, k, &sink, mask, made, words, INFINITY);
        double t = heap.size ? heap.v[0] : INFINITY;
        kth[c] = t * w.unit;
        if (!merged) continue;
        double L = window_limit(&w, t);
        if (reached >= L) { /* everything within L was gathered: keep those inside */
            for (int64_t i = 0; i < sink.n_items; i++) {
                const Item *it = sink.items + i;
                if (!(it->term <= L)) continue;
                if (sink.count < capacity) {
                    sink.out_owner[sink.count] = c;
                    for (int a = 0; a < 3; a++) sink.out_rows[3 * sink.count + a] = it->j[a];
                }
                sink.count++;
            }
        } else {
            window_collect(&w, L, &sink, mask, made, words);
        }
    }
    Py_END_ALLOW_THREADS;
    int failed = sink.failed;
    free(w.cost), free(w.order), free(w.Q), free(mask), free(made), free(heap.v), free(sink.items);
    RELEASE_ALL(b, nb);
    if (failed) return PyErr_NoMemory();
    return PyLong_FromLongLong((long long)sink.count);
}

/* window_groups(P, R, V, metric, proper, k, rel, abs, cap, extra, pen, start, X, kth, owner, rows) -> count
 *
 * The window of groups of rows: rows start[g] .. start[g+1] - 1 (P, R float64 (n_rows, 9) as in window;
 * abs, extra, pen float64 (n_rows,); X int64 (n_rows, 9)) compete as one candidate set. Each row's
 * candidate with rows (v_0, v_1, v_2) is the basis M X_r (M the matrix of those rows, X_r the row's
 * basis relative to a common one, entries such that 3 bound |X_r| < 64), ranked by e = term + pen_r
 * (A^2). Per group: t_k is the k-th smallest e over *distinct* bases (a basis reached from several rows
 * counts once, at its smallest e: the rows come in order of increasing pen); every distinct basis with
 * e <= t_k + min(rel (t_k) + abs_g, cap) + extra_g is returned once (owner: its row; rows: indices into
 * V), abs_g and extra_g the smallest of the group's rows; t_k (A^2, the largest e where a group has
 * fewer than k) goes to kth (float64, n_groups). Returns the count (call again with more capacity if
 * above it).
 *
 * Complete because a row needs no candidate beyond its own k-th term plus the group's margin (the
 * group's t_k is at most any row's k-th e), nor beyond the group's current limit once k distinct bases
 * are known; later rows of a group search below that limit, which the first rows make tight. */

typedef struct {
    double e;
    int64_t row, j[3];
    uint64_t key;
} GroupItem;

static uint64_t basis_key(const int64_t *V, const int64_t j[3], const int64_t *X) {
    uint64_t key = 0;
    for (int a = 0; a < 3; a++) {
        const int64_t *v = V + 3 * j[a];
        for (int b = 0; b < 3; b++) {
            int64_t entry = v[0] * X[b] + v[1] * X[3 + b] + v[2] * X[6 + b];
            key |= (uint64_t)(entry + 64) << (7 * (3 * a + b));
        }
    }
    return key;
}

/* Open addressing set of nonzero keys; returns 1 if `key` was new (and inserts it), 0 if present, -1 on
 * failure to grow. */
typedef struct {
    uint64_t *slots;
    int64_t size, used;
} KeySet;

static int keyset_insert(KeySet *set, uint64_t key) {
    if (2 * (set->used + 1) > set->size) {
        int64_t grown = set->size ? 2 * set->size : 1024;
        uint64_t *slots = calloc((size_t)grown, sizeof(uint64_t));
        if (slots == NULL) return -1;
        for (int64_t i = 0; i < set->size; i++) {
            uint64_t x = set->slots[i];
            if (!x) continue;
            int64_t h = (int64_t)((x * 0x9E3779B97F4A7C15ull) >> 17) & (grown - 1);
            while (slots[h]) h = (h + 1) & (grown - 1);
            slots[h] = x;
        }
        free(set->slots);
        set->slots = slots;
        set->size = grown;
    }
    int64_t h = (int64_t)((key * 0x9E3779B97F4A7C15ull) >> 17) & (set->size - 1);
    while (set->slots[h]) {
        if (set->slots[h] == key) return 0;
        h = (h + 1) & (set->size - 1);
    }
    set->slots[h] = key;
    set->used++;
    return 1;
}

static PyObject *window_groups(PyObject *self, PyObject *args) {
    Py_buffer b[11];
    int metric, proper;
    long long k;
    double rel, cap;
    if (!PyArg_ParseTuple(args, "y*y*y*iiLdy*dy*y*y*y*w*w*w*", &b[0], &b[1], &b[2], &metric, &proper, &k, &rel, &b[3],
                          &cap, &b[4], &b[5], &b[6], &b[7], &b[8], &b[9], &b[10]))
        return NULL;
    Py_ssize_t n_rows = b[0].len / (Py_ssize_t)(9 * sizeof(double)), n = b[2].len / (Py_ssize_t)(3 * sizeof(int64_t));
    Py_ssize_t G = b[6].len / (Py_ssize_t)sizeof(int64_t) - 1, capacity = b[9].len / (Py_ssize_t)sizeof(int64_t);
    const int64_t *start = b[6].buf;
    int ok = b[1].len == b[0].len && b[3].len == n_rows * (Py_ssize_t)sizeof(double) && b[4].len == b[3].len &&
             b[5].len == b[3].len && b[7].len == n_rows * 9 * (Py_ssize_t)sizeof(int64_t) && G >= 0 &&
             b[8].len == G * (Py_ssize_t)sizeof(double) && b[10].len == 3 * b[9].len && n > 0 && k > 0 &&
             (metric == 0 || metric == 1);
    for (Py_ssize_t g = 0; ok && g < G; g++) ok = start[g] >= 0 && start[g] <= start[g + 1] && start[g + 1] <= n_rows;
    if (ok && G >= 0) ok = start[0] == 0 || G == 0;
    if (!ok) {
        RELEASE_ALL(b, 11);
        PyErr_SetString(PyExc_ValueError, "window_groups: buffer sizes or options do not match");
        return NULL;
    }
    const double *P = b[0].buf, *R = b[1].buf, *absv = b[3].buf, *extrav = b[4].buf, *pen = b[5].buf;
    const int64_t *V = b[2].buf, *X = b[7].buf;
    double *kth = b[8].buf;
    int64_t *out_owner = b[9].buf, *out_rows = b[10].buf, count = 0;
    int64_t words = (n + 63) / 64;
    Window w = {metric, proper, n, V, 0, 0, 0, {0}, NULL, NULL, NULL, 1, rel, 0, cap, 0, 0};
    w.cost = malloc((size_t)(3 * n) * sizeof(double));
    w.order = malloc((size_t)(3 * n) * sizeof(int64_t));
    w.Q = metric ? malloc((size_t)(n * n) * sizeof(double)) : NULL;
    uint64_t *mask = metric ? malloc((size_t)(2 * n * words) * sizeof(uint64_t)) : NULL;
    char *made = metric ? malloc((size_t)(2 * n)) : NULL;
    Heap heap = {malloc((size_t)k * sizeof(double)), 0, k}, gheap = {malloc((size_t)k * sizeof(double)), 0, k};
    Sink sink = {&heap, 0, NULL, NULL, 0, 0, NULL, 0, 0, 0, 0};
    GroupItem *items = NULL;
    int64_t n_items = 0, items_capacity = 0;
    KeySet set = {NULL, 0, 0};
    int failed = !w.cost || !w.order || (metric && (!w.Q || !mask || !made)) || !heap.v || !gheap.v;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t g = 0; g < G && !failed; g++) {
        double abs_g = INFINITY, extra_g = INFINITY;
        for (int64_t r = start[g]; r < start[g + 1]; r++) {
            abs_g = fmin(abs_g, absv[r]);
            extra_g = fmin(extra_g, extrav[r]);
        }
        gheap.size = 0;
        n_items = 0;
        if (set.slots) memset(set.slots, 0, (size_t)set.size * sizeof(uint64_t));
        set.used = 0;
        for (int64_t r = start[g]; r < start[g + 1] && !failed; r++) {
            if (!window_setup(&w, P + 9 * r, R + 9 * r)) continue;
            w.abs = abs_g;
            w.extra = extra_g;
            w.pen = pen[r];
            /* The group's limit so far (A^2), as a threshold on this row's terms (scaled units). */
            double limit_g = INFINITY;
            if (gheap.size == k) {
                double t = gheap.v[0];
                limit_g = t + fmin(rel * t + abs_g, cap) + extra_g;
            }
            double L = (limit_g - pen[r]) / w.unit;
            if (!(L >= 0)) continue;
            sink.heap = &heap;
            sink.to_items = 0;
            sink.n_items = 0;
            double reached = -1.0;
            if (gheap.size < k) { /* no group limit yet: this row's own k-th term bounds what it needs */
                reached = window_kth(&w, k, &sink, mask, made, words, INFINITY);
                if (heap.size == k) L = window_limit(&w, heap.v[0]);
            }
            if (!(reached >= L)) { /* not everything within L was gathered: collect it (once the group has a
                                    * limit, that is all a row does) */
                sink.n_items = 0;
                sink.heap = NULL;
                sink.to_items = 1;
                window_collect(&w, L, &sink, mask, made, words);
                sink.heap = &heap;
            }
            failed |= sink.failed;
            for (int64_t i = 0; i < sink.n_items && !failed; i++) {
                const Item *it = sink.items + i;
                if (!(it->term <= L)) continue;
                uint64_t key = basis_key(V, it->j, X + 9 * r);
                int fresh = keyset_insert(&set, key);
                if (fresh < 0) failed = 1;
                if (fresh <= 0) continue;
                double e = it->term * w.unit + pen[r];
                if (n_items == items_capacity) {
                    int64_t grown = items_capacity ? 2 * items_capacity : 256;
                    GroupItem *more = realloc(items, (size_t)grown * sizeof(GroupItem));
                    if (more == NULL) {
                        failed = 1;
                        break;
                    }
                    items = more;
                    items_capacity = grown;
                }
                items[n_items++] = (GroupItem){e, r, {it->j[0], it->j[1], it->j[2]}, key};
                heap_offer(&gheap, e);
            }
        }
        double t = gheap.size ? gheap.v[0] : INFINITY;
        kth[g] = t;
        double limit = t + fmin(rel * t + abs_g, cap) + extra_g;
        for (int64_t i = 0; i < n_items; i++) {
            if (!(items[i].e <= limit)) continue;
            if (count < capacity) {
                out_owner[count] = items[i].row;
                for (int a = 0; a < 3; a++) out_rows[3 * count + a] = items[i].j[a];
            }
            count++;
        }
    }
    Py_END_ALLOW_THREADS;
    free(w.cost), free(w.order), free(w.Q), free(mask), free(made), free(heap.v), free(gheap.v), free(sink.items);
    free(items), free(set.slots);
    RELEASE_ALL(b, 11);
    if (failed) return PyErr_NoMemory();
    return PyLong_FromLongLong((long long)count);
}

static PyObject *window(PyObject *self, PyObject *args) { return window_run(args, 0); }

static PyObject *window_margin(PyObject *self, PyObject *args) { return window_run(args, 1); }

/* ---- lattice automorphisms (soft_niggli/unimodular.py, `lattice_automorphisms`) ----
 *
 * automorphisms(L, V, rel_tol, owner, matrices) -> count: for each cell (float64, B x 9, rows are
 * lattice vectors) the matrices A with rows among the 26 vectors V of {-1,0,1}^3, |det A| = 1 and
 * A G A^T = G to the relative tolerance (|(A G A^T - G)_ij| <= rel_tol sqrt(G_ii G_jj)), G = L L^T of
 * the cell divided by its longest row. Written in the order of the PyTorch code: per cell the identity
 * first, then the others by their rows' indices in V (lexicographic). Non-finite or flat cells
 * (|det| below 1e-6 of the product of the row lengths) get the identity only. owner (int64, capacity)
 * and matrices (int64, capacity x 9) receive them while count < capacity; the total is returned. */
static PyObject *automorphisms(PyObject *self, PyObject *args) {
    Py_buffer b[4];
    double rel_tol;
    if (!PyArg_ParseTuple(args, "y*y*dw*w*", &b[0], &b[1], &rel_tol, &b[2], &b[3])) return NULL;
    Py_ssize_t B = b[0].len / (Py_ssize_t)(9 * sizeof(double)), capacity = b[2].len / (Py_ssize_t)sizeof(int64_t);
    if (b[0].len != B * 9 * (Py_ssize_t)sizeof(double) || b[1].len != 26 * 3 * (Py_ssize_t)sizeof(int64_t) ||
        b[3].len != 9 * b[2].len) {
        RELEASE_ALL(b, 4);
        PyErr_SetString(PyExc_ValueError, "automorphisms: buffer sizes do not match");
        return NULL;
    }
    const double *cells = b[0].buf;
    const int64_t *V = b[1].buf;
    int64_t *owner = b[2].buf, *matrices = b[3].buf, count = 0;
    static const int64_t eye[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t c = 0; c < B; c++) {
        const double *X = cells + 9 * c;
        if (count < capacity) {
            owner[count] = c;
            memcpy(matrices + 9 * count, eye, sizeof eye);
        }
        count++;
        int finite = 1;
        for (int i = 0; i < 9; i++) finite &= isfinite(X[i]) != 0;
        if (!finite) continue;
        double L[9], longest = 0.0;
        for (int i = 0; i < 3; i++)
            longest = fmax(longest, sqrt(X[3 * i] * X[3 * i] + X[3 * i + 1] * X[3 * i + 1] + X[3 * i + 2] * X[3 * i + 2]));
        longest = fmax(longest, 1e-300);
        for (int i = 0; i < 9; i++) L[i] = X[i] / longest;
        double G[9];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) G[3 * i + j] = L[3 * i] * L[3 * j] + L[3 * i + 1] * L[3 * j + 1] + L[3 * i + 2] * L[3 * j + 2];
        double det = L[0] * (L[4] * L[8] - L[5] * L[7]) - L[1] * (L[3] * L[8] - L[5] * L[6]) + L[2] * (L[3] * L[7] - L[4] * L[6]);
        double norms = fmax(sqrt(fmax(G[0], 0)) * sqrt(fmax(G[4], 0)) * sqrt(fmax(G[8], 0)), 1e-300);
        if (!(fabs(det) / norms > 1e-6)) continue;
        double Q[26][26], VG[26][3];
        for (int v = 0; v < 26; v++)
            for (int k = 0; k < 3; k++) VG[v][k] = V[3 * v] * G[k] + V[3 * v + 1] * G[3 + k] + V[3 * v + 2] * G[6 + k];
        for (int v = 0; v < 26; v++)
            for (int w = 0; w < 26; w++) Q[v][w] = VG[v][0] * V[3 * w] + VG[v][1] * V[3 * w + 1] + VG[v][2] * V[3 * w + 2];
        int ok[3][26];
        for (int i = 0; i < 3; i++)
            for (int v = 0; v < 26; v++) ok[i][v] = fabs(Q[v][v] - G[4 * i]) <= rel_tol * G[4 * i];
        double t01 = rel_tol * sqrt(fmax(G[0] * G[4], 0)), t02 = rel_tol * sqrt(fmax(G[0] * G[8], 0));
        double t12 = rel_tol * sqrt(fmax(G[4] * G[8], 0));
        for (int r0 = 0; r0 < 26; r0++) {
            if (!ok[0][r0]) continue;
            for (int r1 = 0; r1 < 26; r1++) {
                if (!ok[1][r1] || !(fabs(Q[r0][r1] - G[1]) <= t01)) continue;
                for (int r2 = 0; r2 < 26; r2++) {
                    if (!ok[2][r2] || !(fabs(Q[r0][r2] - G[2]) <= t02) || !(fabs(Q[r1][r2] - G[5]) <= t12)) continue;
                    const int64_t *v0 = V + 3 * r0, *v1 = V + 3 * r1, *v2 = V + 3 * r2;
                    int64_t d = det3(v0, v1, v2);
                    if (d != 1 && d != -1) continue;
                    if (v0[0] == 1 && !v0[1] && !v0[2] && !v1[0] && v1[1] == 1 && !v1[2] && !v2[0] && !v2[1] && v2[2] == 1)
                        continue; /* the identity, already first */
                    if (count < capacity) {
                        owner[count] = c;
                        memcpy(matrices + 9 * count, v0, 3 * sizeof(int64_t));
                        memcpy(matrices + 9 * count + 3, v1, 3 * sizeof(int64_t));
                        memcpy(matrices + 9 * count + 6, v2, 3 * sizeof(int64_t));
                    }
                    count++;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS;
    RELEASE_ALL(b, 4);
    return PyLong_FromLongLong((long long)count);
}

/* ---- reduced forms (soft_niggli/canonical.py, `reduced_forms`) ----
 *
 * reduced_forms(R, V, rel_tol, owner, rows) -> count: for each reduced cell R (float64, B x 9, rows are
 * lattice vectors, scaled so that its longest row is about 1), every X with rows among the 26 vectors V
 * of {-1,0,1}^3, |det X| = 1, whose basis X R satisfies the main Niggli conditions within rel_tol
 * (niggli_violation <= rel_tol). Candidates are built as the PyTorch code builds them: rows whose
 * squared length matches the cell's (A <= B <= C) within 8 rel_tol, pairwise products |2 b_i.b_j| at
 * most the shorter squared length (1 + 8 rel_tol), the three products all >= or all <= 0 within
 * 8 rel_tol of the cosines; then the exact test on the basis X R, whose metric is formed by explicit
 * sums in the order of canonical.py's `_metric_of` (so both agree bit for bit). owner (int64, capacity)
 * and rows (int64, capacity x 3, indices into V) receive the forms while count < capacity, cell by
 * cell, rows in lexicographic order of their indices; the total is returned. */

/* The largest relative violation of the main Niggli conditions by the metric G (0 or below: met), in
 * the order of operations of canonical.py's `_violation`. */
static double niggli_violation(const double G[9]) {
    double A = G[0], B = G[4], C = G[8], xi = 2.0 * G[5], eta = 2.0 * G[2], zeta = 2.0 * G[1];
    double v = (A - B) / ((A + B) / 2.0);
    v = fmax(v, (B - C) / ((B + C) / 2.0));
    v = fmax(v, (fabs(xi) - B) / B);
    v = fmax(v, (fabs(eta) - A) / A);
    v = fmax(v, (fabs(zeta) - A) / A);
    double sBC = sqrt(B * C), sAC = sqrt(A * C), sAB = sqrt(A * B);
    double neg = fmax(fmax(-xi / sBC, -eta / sAC), -zeta / sAB);
    double pos = fmax(fmax(xi / sBC, eta / sAC), zeta / sAB);
    v = fmax(v, fmin(neg, pos));
    v = fmax(v, -((((A + B) + xi) + eta) + zeta) / ((A + B) / 2.0));
    return v;
}

static PyObject *reduced_forms(PyObject *self, PyObject *args) {
    Py_buffer b[4];
    double rel_tol;
    if (!PyArg_ParseTuple(args, "y*y*dw*w*", &b[0], &b[1], &rel_tol, &b[2], &b[3])) return NULL;
    Py_ssize_t B = b[0].len / (Py_ssize_t)(9 * sizeof(double)), capacity = b[2].len / (Py_ssize_t)sizeof(int64_t);
    if (b[0].len != B * 9 * (Py_ssize_t)sizeof(double) || b[1].len != 26 * 3 * (Py_ssize_t)sizeof(int64_t) ||
        b[3].len != 3 * b[2].len) {
        RELEASE_ALL(b, 4);
        PyErr_SetString(PyExc_ValueError, "reduced_forms: buffer sizes do not match");
        return NULL;
    }
    const double *cells = b[0].buf;
    const int64_t *V = b[1].buf;
    int64_t *owner = b[2].buf, *rows = b[3].buf, count = 0;
    const double slack = 8.0 * rel_tol;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t c = 0; c < B; c++) {
        const double *R = cells + 9 * c;
        int finite = 1;
        for (int i = 0; i < 9; i++) finite &= isfinite(R[i]) != 0;
        if (!finite) continue;
        double G[9], len[3], Q[26][26], VG[26][3];
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++) G[3 * i + j] = R[3 * i] * R[3 * j] + R[3 * i + 1] * R[3 * j + 1] + R[3 * i + 2] * R[3 * j + 2];
        for (int i = 0; i < 3; i++) len[i] = G[4 * i];
        for (int v = 0; v < 26; v++)
            for (int k = 0; k < 3; k++) VG[v][k] = V[3 * v] * G[k] + V[3 * v + 1] * G[3 + k] + V[3 * v + 2] * G[6 + k];
        for (int v = 0; v < 26; v++)
            for (int w = 0; w < 26; w++) Q[v][w] = VG[v][0] * V[3 * w] + VG[v][1] * V[3 * w + 1] + VG[v][2] * V[3 * w + 2];
        /* Each row's vectors of the right length (a handful: 2 for a generic cell, 6 for a cube). */
        int list[3][26], size[3] = {0, 0, 0};
        for (int i = 0; i < 3; i++)
            for (int v = 0; v < 26; v++)
                if (fabs(Q[v][v] - len[i]) <= slack * len[i]) list[i][size[i]++] = v;
        double b01 = fmin(len[0], len[1]) * (1 + slack), b02 = fmin(len[0], len[2]) * (1 + slack);
        double b12 = fmin(len[1], len[2]) * (1 + slack);
        double c12 = slack * sqrt(len[1] * len[2]), c02 = slack * sqrt(len[0] * len[2]), c01 = slack * sqrt(len[0] * len[1]);
        for (int i0 = 0; i0 < size[0]; i0++) {
            int r0 = list[0][i0];
            for (int i1 = 0; i1 < size[1]; i1++) {
                int r1 = list[1][i1];
                if (!(fabs(2 * Q[r0][r1]) <= b01)) continue;
                for (int i2 = 0; i2 < size[2]; i2++) {
                    int r2 = list[2][i2];
                    if (!(fabs(2 * Q[r0][r2]) <= b02) || !(fabs(2 * Q[r1][r2]) <= b12)) continue;
                    double p12 = Q[r1][r2], p02 = Q[r0][r2], p01 = Q[r0][r1];
                    int signs = (p12 >= -c12 && p02 >= -c02 && p01 >= -c01) || (p12 <= c12 && p02 <= c02 && p01 <= c01);
                    if (!signs) continue;
                    const int64_t *x[3] = {V + 3 * r0, V + 3 * r1, V + 3 * r2};
                    int64_t d = det3(x[0], x[1], x[2]);
                    if (d != 1 && d != -1) continue;
                    double Y[9], H[9];
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++)
                            Y[3 * i + j] = ((double)x[i][0] * R[j] + (double)x[i][1] * R[3 + j]) + (double)x[i][2] * R[6 + j];
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++)
                            H[3 * i + j] = (Y[3 * i] * Y[3 * j] + Y[3 * i + 1] * Y[3 * j + 1]) + Y[3 * i + 2] * Y[3 * j + 2];
                    if (!(niggli_violation(H) <= rel_tol)) continue;
                    if (count < capacity) {
                        owner[count] = c;
                        rows[3 * count] = r0;
                        rows[3 * count + 1] = r1;
                        rows[3 * count + 2] = r2;
                    }
                    count++;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS;
    RELEASE_ALL(b, 4);
    return PyLong_FromLongLong((long long)count);
}

/* ---- lattice vectors in a ball (soft_niggli/losses/invariants.py, `theta_series`) ----
 *
 * ball_vectors(G, radius2, cap, owner, n) -> count: for each metric G (float64, B x 9, symmetric positive
 * definite, in the units of the ball), every integer vector x != 0 with x G x^T <= radius2, one of each
 * pair +-x (the last nonzero coordinate positive), by Fincke-Pohst enumeration over the decomposition
 * x G x^T = a11 (x1 + a12 x2 + a13 x3)^2 + a22 (x2 + a23 x3)^2 + a33 x3^2 (last coordinate outermost);
 * the exact test decides points the bounds' rounding lets in. owner (int64, capacity) and n (int64,
 * capacity x 3) receive them while count < capacity; the total is returned. A cell whose enumeration
 * visits more than `cap` candidate points (a nearly flat metric, whose ball holds a long line of points)
 * stops there: its list is then truncated, never endless. Non-finite or non-positive metrics give none. */
static PyObject *ball_vectors(PyObject *self, PyObject *args) {
    Py_buffer b[3];
    double radius2;
    long long cap;
    if (!PyArg_ParseTuple(args, "y*dLw*w*", &b[0], &radius2, &cap, &b[1], &b[2])) return NULL;
    Py_ssize_t B = b[0].len / (Py_ssize_t)(9 * sizeof(double)), capacity = b[1].len / (Py_ssize_t)sizeof(int64_t);
    if (b[0].len != B * 9 * (Py_ssize_t)sizeof(double) || b[2].len != 3 * b[1].len || !(radius2 >= 0) || cap < 0) {
        RELEASE_ALL(b, 3);
        PyErr_SetString(PyExc_ValueError, "ball_vectors: buffer sizes or options do not match");
        return NULL;
    }
    const double *metrics = b[0].buf;
    int64_t *owner = b[1].buf, *out = b[2].buf, count = 0;
    const double slack = 1e-9 * radius2 + 1e-300;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t c = 0; c < B; c++) {
        const double *G = metrics + 9 * c;
        int finite = 1;
        for (int i = 0; i < 9; i++) finite &= isfinite(G[i]) != 0;
        if (!finite || !(G[0] > 0)) continue;
        double a11 = G[0], a12 = G[1] / G[0], a13 = G[2] / G[0];
        double a22 = G[4] - G[1] * G[1] / G[0];
        if (!(a22 > 0)) continue;
        double a23 = (G[5] - G[1] * G[2] / G[0]) / a22;
        double a33 = G[8] - G[2] * G[2] / G[0] - a22 * a23 * a23;
        if (!(a33 > 0)) continue;
        long long visited = 0;
        double m3 = floor(sqrt((radius2 + slack) / a33));
        for (double x3 = 0; x3 <= m3 && visited <= cap; x3++) {
            double rest3 = radius2 + slack - a33 * x3 * x3;
            if (rest3 < 0) break;
            double half2 = sqrt(rest3 / a22), centre2 = -a23 * x3;
            double lo2 = ceil(centre2 - half2), hi2 = floor(centre2 + half2);
            if (x3 == 0) lo2 = fmax(lo2, 0);
            for (double x2 = lo2; x2 <= hi2 && visited <= cap; x2++) {
                double u = x2 + a23 * x3, rest2 = rest3 - a22 * u * u;
                if (rest2 < 0) continue;
                double half1 = sqrt(rest2 / a11), centre1 = -(a12 * x2 + a13 * x3);
                double lo1 = ceil(centre1 - half1), hi1 = floor(centre1 + half1);
                if (x3 == 0 && x2 == 0) lo1 = fmax(lo1, 1);
                for (double x1 = lo1; x1 <= hi1; x1++) {
                    visited++;
                    double x[3] = {x1, x2, x3}, q = 0.0;
                    for (int i = 0; i < 3; i++)
                        for (int j = 0; j < 3; j++) q += x[i] * G[3 * i + j] * x[j];
                    if (!(q <= radius2)) continue;
                    if (count < capacity) {
                        owner[count] = c;
                        out[3 * count] = (int64_t)x1;
                        out[3 * count + 1] = (int64_t)x2;
                        out[3 * count + 2] = (int64_t)x3;
                    }
                    count++;
                }
            }
        }
    }
    Py_END_ALLOW_THREADS;
    RELEASE_ALL(b, 3);
    return PyLong_FromLongLong((long long)count);
}

static PyMethodDef methods[] = {
    {"periodic_pairs", periodic_pairs, METH_VARARGS,
     "Periodic coordinate term and residuals of many (crystal, re-basing) pairs (see soft_niggli/losses/periodic.py)."},
    {"periodic_pairs_grad", periodic_pairs_grad, METH_VARARGS, "Gradient of periodic_pairs from its residuals."},
    {"ball_vectors", ball_vectors, METH_VARARGS,
     "Integer vectors of a metric within a ball, one of each +- pair (see soft_niggli/losses/invariants.py)."},
    {"reduced_forms", reduced_forms, METH_VARARGS,
     "Reduced forms of reduced cells: bases from {-1, 0, 1} meeting the Niggli conditions (see soft_niggli/canonical.py)."},
    {"automorphisms", automorphisms, METH_VARARGS, "Lattice automorphisms with entries in {-1, 0, 1} (see soft_niggli/unimodular.py)."},
    {"window_margin", window_margin, METH_VARARGS, "The window within a margin of the k-th term, in one search (see window)."},
    {"window_groups", window_groups, METH_VARARGS,
     "The window of groups of rows ranked together, each basis once (see window_groups above)."},
    {"window", window, METH_VARARGS, "The k-th term, or the candidates within a limit (see soft_niggli/losses/candidates.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_loss_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__loss_kernel(void) { return PyModule_Create(&module); }
