/*
 * The extension soft_niggli._loss_kernel: the compiled loops of the losses, one source each
 * (kernels.h lists them and the Python functions they stand in for).
 */
#include "kernels.h"

static PyMethodDef methods[] = {
    {"periodic_pairs", sn_periodic_pairs, METH_VARARGS,
     "Periodic coordinate term and residuals of many (crystal, re-basing) pairs (see soft_niggli/losses/periodic.py)."},
    {"periodic_pairs_grad", sn_periodic_pairs_grad, METH_VARARGS, "Gradient of periodic_pairs from its residuals."},
    {"ball_vectors", sn_ball_vectors, METH_VARARGS,
     "Integer vectors of a metric within a ball, one of each +- pair (see soft_niggli/losses/invariants.py)."},
    {"window_margin", sn_window_margin, METH_VARARGS, "The window within a margin of the k-th term, in one search (see window)."},
    {"window_groups", sn_window_groups, METH_VARARGS,
     "The window of groups of rows ranked together, each basis once (see soft_niggli/_kernels/window.c)."},
    {"window", sn_window, METH_VARARGS, "The k-th term, or the candidates within a limit (see soft_niggli/losses/windows.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_loss_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__loss_kernel(void) { return PyModule_Create(&module); }
