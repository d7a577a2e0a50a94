/*
 * The periodic coordinate term of many (crystal, re-basing) pairs and its gradient
 * (soft_niggli/losses/periodic.py, `periodic_loss_of_pairs`; see kernels.h).
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
#include "kernels.h"

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
PyObject *sn_periodic_pairs(PyObject *self, PyObject *args) {
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
PyObject *sn_periodic_pairs_grad(PyObject *self, PyObject *args) {
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
