/*
 * The extension soft_niggli._lattice_kernel: enumerations on single lattices (automorphisms, reduced
 * forms) for soft_niggli.unimodular and soft_niggli.canonical, no loss; one source each (kernels.h lists
 * them and the Python functions they stand in for).
 */
#include "kernels.h"

static PyMethodDef methods[] = {
    {"reduced_forms", sn_reduced_forms, METH_VARARGS,
     "Reduced forms of reduced cells: bases from {-1, 0, 1} meeting the Niggli conditions (see soft_niggli/_reduced_forms.py)."},
    {"automorphisms", sn_automorphisms, METH_VARARGS, "Lattice automorphisms with entries in {-1, 0, 1} (see soft_niggli/unimodular.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lattice_kernel", NULL, -1, methods};

PyMODINIT_FUNC PyInit__lattice_kernel(void) { return PyModule_Create(&module); }
