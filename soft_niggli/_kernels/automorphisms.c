/*
 * Lattice automorphisms (soft_niggli/unimodular.py, `lattice_automorphisms`; see kernels.h).
 *
 * automorphisms(L, V, rel_tol, owner, matrices) -> count: for each cell (float64, B x 9, rows are
 * lattice vectors) the matrices A with rows among the 26 vectors V of {-1,0,1}^3, |det A| = 1 and
 * A G A^T = G to the relative tolerance (|(A G A^T - G)_ij| <= rel_tol sqrt(G_ii G_jj)), G = L L^T of
 * the cell divided by its longest row. Written in the order of the PyTorch code: per cell the identity
 * first, then the others by their rows' indices in V (lexicographic). Non-finite or flat cells
 * (|det| below 1e-6 of the product of the row lengths) get the identity only. owner (int64, capacity)
 * and matrices (int64, capacity x 9) receive them while count < capacity; the total is returned. */
#include "kernels.h"

PyObject *sn_automorphisms(PyObject *self, PyObject *args) {
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
