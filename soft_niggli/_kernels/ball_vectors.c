/*
 * Lattice vectors in a ball (soft_niggli/losses/invariants.py, `theta_series`; see kernels.h).
 *
 * ball_vectors(G, radius2, cap, owner, n) -> count: for each metric G (float64, B x 9, symmetric positive
 * definite, in the units of the ball), every integer vector x != 0 with x G x^T <= radius2, one of each
 * pair +-x (the last nonzero coordinate positive), by Fincke-Pohst enumeration over the decomposition
 * x G x^T = a11 (x1 + a12 x2 + a13 x3)^2 + a22 (x2 + a23 x3)^2 + a33 x3^2 (last coordinate outermost);
 * the exact test decides points the bounds' rounding lets in. owner (int64, capacity) and n (int64,
 * capacity x 3) receive them while count < capacity; the total is returned. A cell's enumeration stops
 * after `cap` candidate points and rows, checked in every loop (the innermost too: a nearly flat metric's
 * ball holds a line of millions of points along its shortest vector), so its list is truncated, never
 * endless. Non-finite or non-positive metrics give none. */
#include "kernels.h"

PyObject *sn_ball_vectors(PyObject *self, PyObject *args) {
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
        for (double x3 = 0; x3 <= m3 && visited < cap; x3++) {
            double rest3 = radius2 + slack - a33 * x3 * x3;
            if (rest3 < 0) break;
            double half2 = sqrt(rest3 / a22), centre2 = -a23 * x3;
            double lo2 = ceil(centre2 - half2), hi2 = floor(centre2 + half2);
            if (x3 == 0) lo2 = fmax(lo2, 0);
            for (double x2 = lo2; x2 <= hi2 && visited < cap; x2++) {
                visited++;  /* a row, even an empty one, counts: hand-made metrics can hold many empty rows */
                double u = x2 + a23 * x3, rest2 = rest3 - a22 * u * u;
                if (rest2 < 0) continue;
                double half1 = sqrt(rest2 / a11), centre1 = -(a12 * x2 + a13 * x3);
                double lo1 = ceil(centre1 - half1), hi1 = floor(centre1 + half1);
                if (x3 == 0 && x2 == 0) lo1 = fmax(lo1, 1);
                for (double x1 = lo1; x1 <= hi1 && visited < cap; x1++) {
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
