"""The compiled enumerations on single lattices (``soft_niggli._lattice_kernel``, sources in
soft_niggli/_kernels/) against the PyTorch code they replace: the lattice automorphisms and the reduced
forms, the same matrices in the same order, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import soft_niggli._reduced_forms as enumeration
import soft_niggli.canonical as canonical
import soft_niggli.unimodular as unimodular
from soft_niggli.niggli import niggli_reduce
from soft_niggli.testing import lattices, near_face_lattices, symmetric_lattices

pytestmark = pytest.mark.skipif(unimodular._kernel is None, reason="the compiled lattice kernel was not built")


@settings(max_examples=40, deadline=None)
@given(cells=st.lists(st.one_of(symmetric_lattices(noise=0.0), symmetric_lattices(noise=1e-3), lattices("realistic"),
                                lattices("pathological")), min_size=1, max_size=4),
       rel_tol=st.sampled_from([1e-4, 1e-2, 0.09]))
def test_automorphisms_kernel_matches_the_pytorch_code_in_content_and_order(cells, rel_tol):
    L = torch.stack([c.to(torch.float64).reshape(3, 3) for c in cells])
    L = torch.cat([L, niggli_reduce(L).lattice])  # as given, and reduced (where all automorphisms are found)
    compiled = unimodular.lattice_automorphisms(L, rel_tol=rel_tol)
    saved, unimodular._kernel = unimodular._kernel, None
    try:
        reference = unimodular.lattice_automorphisms(L, rel_tol=rel_tol)
    finally:
        unimodular._kernel = saved
    # The order matters: closest_automorphism keeps the first of tied choices.
    assert torch.equal(compiled.owner, reference.owner)
    assert torch.equal(compiled.matrices, reference.matrices)


@settings(max_examples=40, deadline=None)
@given(cells=st.lists(st.one_of(symmetric_lattices(noise=0.0), symmetric_lattices(noise=1e-3), near_face_lattices(),
                                lattices("realistic"), lattices("pathological")), min_size=1, max_size=4),
       rel_tol=st.sampled_from([1e-5, 1e-4, 1e-2]), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_reduced_forms_kernel_finds_the_forms_of_the_pytorch_enumeration(cells, rel_tol, dtype):
    # Both decide the tolerance's edge on the same metric, formed by the same sums: the same forms, in
    # the same order, bit for bit.
    L = torch.stack([c.reshape(3, 3) for c in cells]).to(dtype)
    compiled = canonical.reduced_forms(L, rel_tol=rel_tol)
    saved, enumeration._compiled_reduced_forms = enumeration._compiled_reduced_forms, None
    try:
        reference = canonical.reduced_forms(L, rel_tol=rel_tol)
    finally:
        enumeration._compiled_reduced_forms = saved
    for a, b in zip((compiled.owner, compiled.transform, compiled.lattice, compiled.status),
                    (reference.owner, reference.transform, reference.lattice, reference.status)):
        assert torch.equal(a, b)


def test_lattice_kernels_reject_mismatched_buffers():
    kernel = unimodular._kernel
    V = np.zeros((26, 3), dtype=np.int64)
    owner, rows = np.zeros(4, dtype=np.int64), np.zeros((4, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="do not match"):  # a cell of 8 numbers
        kernel.reduced_forms(np.zeros(8), V, 1e-5, owner, rows)
    with pytest.raises(ValueError, match="do not match"):  # 25 short vectors instead of 26
        kernel.automorphisms(np.eye(3).reshape(1, 9), V[:25], 1e-5, owner, np.zeros((4, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="do not match"):  # matrices of 3 entries
        kernel.automorphisms(np.eye(3).reshape(1, 9), V, 1e-5, owner, rows)
