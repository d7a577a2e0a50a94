"""The compiled reducer core (soft_niggli/niggli/_niggli_kernel.c) against the NumPy core it ports.

Both cores must give the same transform, status and iteration count, and bit for bit the same
lattice: the C code repeats the NumPy core's arithmetic in the same order (and is compiled without
fused multiply-adds). The other reducer tests (niggli/test_reducer.py) run on both cores.
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
from soft_niggli.niggli import _constants, _kernel
from soft_niggli.testing import lattices

needs_kernel = pytest.mark.skipif(_kernel.compiled is None, reason="the compiled kernel was not built")


def reduce_with_numpy_core(L, **options):
    saved, _kernel.compiled = _kernel.compiled, None
    try:
        return niggli_reduce(L, **options)
    finally:
        _kernel.compiled = saved


def assert_same_results(L, **options):
    compiled, numpy_core = niggli_reduce(L, **options), reduce_with_numpy_core(L, **options)
    assert isinstance(compiled.lattice, torch.Tensor) and isinstance(numpy_core.lattice, torch.Tensor)
    # Bit for bit; NaN in the same places counts as equal.
    torch.testing.assert_close(compiled.lattice, numpy_core.lattice, rtol=0, atol=0, equal_nan=True)
    for field in ("transform", "status", "iterations"):
        assert torch.equal(getattr(compiled, field), getattr(numpy_core, field)), field


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
    assert_same_results(L, max_iter=max_iter, rel_tol=1e-3)


@needs_kernel
def test_compiled_core_uses_the_numpy_cores_constants():
    kernel = _kernel.compiled
    for name in ("PLAIN_PRODUCT_ERROR", "EXACT_PRODUCT_ERROR", "SPLIT", "ACCURACY_MARGIN", "CROSS_MARGIN", "EPS",
                 "MIN_SQUARED_LENGTH", "DEGENERATE_VOLUME_RATIO", "MAX_TRANSFORM_ENTRY", "PLAIN_PRODUCT_LIMIT",
                 "SWEEPS", "LEVELS", "LEVEL_FACTOR", "STALL_ROUNDS"):
        assert getattr(kernel, name) == getattr(_constants, name), name


def test_compiled_core_is_built_in_ci():
    # CI installs with a C compiler; a silent fallback to the NumPy core there would hide a build break.
    if os.environ.get("CI") != "true":
        pytest.skip("only enforced in CI")
    assert niggli_module.COMPILED_KERNEL


@needs_kernel
@pytest.mark.parametrize("rel_tol", [1e-12, 1e-5, 0.0999])
def test_compiled_core_matches_where_tolerance_levels_and_resolution_tests_decide(rel_tol):
    """Cells distorted by about rel_tol (the finer tolerance levels and the type-II-blocked sign rule),
    mixed scales near float64's resolution, cells squeezed flat, and cubes re-based with huge entries."""
    rng = np.random.default_rng(11)
    gen = torch.Generator().manual_seed(11)
    n = 300
    hexagonal = np.array([[2.0, 0, 0], [-1.0, 3**0.5, 0], [0, 0, 7.0]])
    fcc = np.array([[0, 2.0, 2], [2, 0, 2], [2, 2, 0]])
    M = random_unimodular((n,), max_entry=5, num_operations=20, generator=gen).double().numpy()
    cells = []
    for scale in (0.3, 1.0, 3.0):
        D = np.eye(3) + scale * rel_tol * rng.normal(size=(n, 3, 3))
        cells += [M @ hexagonal @ D, M @ fcc @ D]
    cells.append(rng.normal(size=(n, 3, 3)) * 10.0 ** rng.uniform(-9, 9, size=(n, 3, 1)))
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    squeeze = np.eye(3) - (1 - 10.0 ** rng.uniform(-16, -3, size=(n, 1, 1))) * v[:, :, None] * v[:, None, :]
    cells.append(rng.normal(size=(n, 3, 3)) @ squeeze)
    big = random_unimodular((n,), max_entry=10**12, num_operations=200, generator=gen).double().numpy()
    cells.append(4.0 * big)
    assert_same_results(np.ascontiguousarray(np.concatenate(cells)), rel_tol=rel_tol)
