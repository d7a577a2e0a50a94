/*
 * Reduced forms (soft_niggli/_reduced_forms.py, `reduced_forms_unchecked`; see kernels.h).
 *
 * reduced_forms(R, V, rel_tol, owner, rows) -> count: for each reduced cell R (float64, B x 9, rows are
 * lattice vectors, scaled so that its longest row is about 1), every X with rows among the 26 vectors V
 * of {-1,0,1}^3, |det X| = 1, whose basis X R satisfies the main Niggli conditions within rel_tol
 * (niggli_violation <= rel_tol). Candidates are built as the PyTorch code builds them: rows whose
 * squared length matches the cell's (A <= B <= C) within 8 rel_tol, pairwise products |2 b_i.b_j| at
 * most the shorter squared length (1 + 8 rel_tol), the three products all >= or all <= 0 within
 * 8 rel_tol of the cosines; then the exact test on the basis X R, whose metric is formed by explicit
 * sums in the order of _reduced_forms.py's `_metric_of` (so both agree bit for bit). owner (int64, capacity)
 * and rows (int64, capacity x 3, indices into V) receive the forms while count < capacity, cell by
 * cell, rows in lexicographic order of their indices; the total is returned. */
#include "kernels.h"

/* The largest relative violation of the main Niggli conditions by the metric G (0 or below: met), in
 * the order of operations of _reduced_forms.py's `violation`. */
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

PyObject *sn_reduced_forms(PyObject *self, PyObject *args) {
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
