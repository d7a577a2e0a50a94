"""The compiled reducer core (soft_niggli/_niggli_kernel.c) against the NumPy core it ports.

Both cores must give the same transform, status and iteration count, and bit for bit the same
lattice: the C code repeats the NumPy core's arithmetic in the same order (and is compiled without
fused multiply-adds). The other reducer tests (test_niggli.py) run on both cores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import soft_niggli.niggli as niggli_module
from soft_niggli import niggli_reduce, random_unimodular
from soft_niggli.testing import lattices

needs_kernel = pytest.mark.skipif(niggli_module._kernel is None, reason="the compiled kernel was not built")


def reduce_with_numpy_core(L, **options):
    saved, niggli_module._kernel = niggli_module._kernel, None
    try:
        return niggli_reduce(L, **options)
    finally:
        niggli_module._kernel = saved


def assert_same_results(L, **options):
    compiled, numpy_core = niggli_reduce(L, **options), reduce_with_numpy_core(L, **options)
    np.testing.assert_array_equal(compiled.lattice, numpy_core.lattice)  # NaN in the same places counts as equal
    for field in ("transform", "status", "iterations"):
        np.testing.assert_array_equal(getattr(compiled, field), getattr(numpy_core, field), err_msg=field)


@needs_kernel
@settings(max_examples=200)
@given(st.lists(st.one_of(lattices("realistic"), lattices("pathological"), lattices("any_float")),
                min_size=1, max_size=8))
def test_compiled_core_gives_the_numpy_cores_results(cells):
    assert_same_results(torch.stack(cells).numpy())


@needs_kernel
@pytest.mark.parametrize("max_iter", [1, 2, 1000])
def test_compiled_core_matches_on_skewed_cells_and_iteration_caps(max_iter):
    gen = torch.Generator().manual_seed(3)
    M = random_unimodular((2000,), max_entry=10**5, num_operations=40, generator=gen).double()
    L = M @ torch.randn(2000, 3, 3, generator=gen, dtype=torch.float64)
    assert_same_results(L, max_iter=max_iter)
    assert_same_results(L, max_iter=max_iter, rel_eps=1e-3)


@needs_kernel
def test_compiled_core_uses_the_numpy_cores_constants():
    kernel = niggli_module._kernel
    for name in ("DEGENERATE_LENGTH_RATIO", "DEGENERATE_VOLUME_RATIO", "MAX_TRANSFORM_ENTRY", "PLAIN_PRODUCT_LIMIT",
                 "SWEEPS"):
        assert getattr(kernel, name) == getattr(niggli_module, "_" + name), name


def test_compiled_core_is_built_in_ci():
    # CI installs with a C compiler; a silent fallback to the NumPy core there would hide a build break.
    if os.environ.get("CI") != "true":
        pytest.skip("only enforced in CI")
    assert niggli_module.COMPILED_KERNEL
