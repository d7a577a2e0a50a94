/*
 * What the compiled loops of soft_niggli's losses and lattice enumerations share. The sources in this
 * folder build two extensions (setup.py), each optional:
 *
 *   soft_niggli._loss_kernel (loss_kernel.c: its method table), the losses' loops
 *     periodic_pairs, periodic_pairs_grad   periodic_pairs.c   soft_niggli/losses/periodic.py, `periodic_loss_of_pairs`
 *     window, window_margin, window_groups  window.c           soft_niggli/losses/windows.py
 *     ball_vectors                          ball_vectors.c     soft_niggli/losses/invariants.py, `theta_series`
 *   soft_niggli._lattice_kernel (lattice_kernel.c), enumerations on single lattices, used outside the losses
 *     automorphisms                         automorphisms.c    soft_niggli/unimodular.py, `lattice_automorphisms`
 *     reduced_forms                         reduced_forms.c    soft_niggli/_reduced_forms.py, `reduced_forms_unchecked`
 *
 * (The reducer's loop is an extension of its own, soft_niggli/niggli/_niggli_kernel.c.) Each function is the
 * counterpart of a PyTorch (or NumPy) function that stays the reference and the fallback where its
 * extension was not built (or the tensors are on a GPU); tests/losses/test_loss_kernel.py and
 * tests/test_lattice_kernel.py compare each with its counterpart. Buffers come from NumPy views of
 * contiguous CPU tensors; every size and index is checked (a mismatch is a ValueError). Lattices are
 * 3x3 with the lattice vectors as rows, as everywhere in soft_niggli.
 */
#ifndef SOFT_NIGGLI_KERNELS_H
#define SOFT_NIGGLI_KERNELS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RELEASE_ALL(bufs, count)                                 \
    for (int i_ = 0; i_ < (count); i_++) PyBuffer_Release(&(bufs)[i_])

/* The determinant of the integer matrix with rows a, b, c. */
static inline int64_t det3(const int64_t *a, const int64_t *b, const int64_t *c) {
    return a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0]);
}

/* The functions of the extensions' method tables (METH_VARARGS), one source each as listed above. */
PyObject *sn_periodic_pairs(PyObject *self, PyObject *args);
PyObject *sn_periodic_pairs_grad(PyObject *self, PyObject *args);
PyObject *sn_window(PyObject *self, PyObject *args);
PyObject *sn_window_margin(PyObject *self, PyObject *args);
PyObject *sn_window_groups(PyObject *self, PyObject *args);
PyObject *sn_ball_vectors(PyObject *self, PyObject *args);
PyObject *sn_automorphisms(PyObject *self, PyObject *args);
PyObject *sn_reduced_forms(PyObject *self, PyObject *args);

#endif
