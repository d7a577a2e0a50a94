"""Properties of the lattice toolkit: basis changes, metric, volume, parameters, wrapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from soft_niggli import (
    apply_basis_change,
    g6,
    gram,
    integer_inverse,
    lattice_from_parameters,
    lattice_parameters,
    to_cartesian,
    to_fractional,
    volume,
    wrap,
)
from soft_niggli.lattice import random_rotations
from soft_niggli.testing import lattices, rotations, unimodular_matrices

fracs = st.integers(1, 6).flatmap(
    lambda n: st.lists(st.tuples(*[st.floats(-3.0, 3.0)] * 3), min_size=n, max_size=n)).map(
    lambda v: torch.tensor(v, dtype=torch.float64))


def periodic_distance(F1, F2):
    d = F1 - F2
    return (d - torch.round(d)).abs().max()


@given(lattices("realistic"), fracs, unimodular_matrices(2))
def test_basis_change_round_trips(L, F, M):
    L2, F2 = apply_basis_change(L, F, M)
    L3, F3 = apply_basis_change(L2, F2, integer_inverse(M))
    torch.testing.assert_close(L3, L, rtol=1e-12, atol=1e-12)
    assert periodic_distance(F3, F) < 1e-9


@given(lattices("realistic"), fracs, unimodular_matrices(1, depth=3))
def test_basis_change_preserves_cartesian_positions_modulo_lattice(L, F, M):
    L2, F2 = apply_basis_change(L, F, M)
    # The new Cartesian positions, expressed in the old basis, are the old atoms up to lattice vectors.
    back = to_fractional(to_cartesian(F2, L2), L)
    assert periodic_distance(back, F) < 1e-8


@given(lattices("realistic"), unimodular_matrices(1, depth=3))
def test_volume_and_metric_transform_under_basis_change(L, M):
    L2 = M.to(L.dtype) @ L
    torch.testing.assert_close(volume(L2), volume(L), rtol=1e-9, atol=0)
    Mf = M.to(L.dtype)
    torch.testing.assert_close(gram(L2), Mf @ gram(L) @ Mf.T, rtol=1e-9, atol=1e-9)


@given(lattices("realistic"), rotations())
def test_metric_and_volume_are_rotation_invariant(L, Q):
    torch.testing.assert_close(gram(L @ Q.T), gram(L), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(volume(L @ Q.T), volume(L), rtol=1e-10, atol=0)


@given(lattices("realistic"))
def test_parameters_round_trip_through_matrix(L):
    params = lattice_parameters(L)
    L2 = lattice_from_parameters(*params.unbind(-1))
    torch.testing.assert_close(gram(L2), gram(L), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lattice_parameters(L2), params, rtol=1e-9, atol=1e-7)


def test_parameters_of_known_cells():
    L = lattice_from_parameters(3.0, 4.0, 5.0, 90.0, 90.0, 120.0)
    torch.testing.assert_close(lattice_parameters(L), torch.tensor([3.0, 4.0, 5.0, 90.0, 90.0, 120.0]))
    torch.testing.assert_close(volume(L), torch.tensor(60.0 * 3**0.5 / 2))


@given(lattices("realistic"))
def test_g6_matches_metric(L):
    G = gram(L)
    A, B, C, xi, eta, zeta = g6(L)
    torch.testing.assert_close(torch.stack([A, B, C]), torch.diagonal(G))
    torch.testing.assert_close(torch.stack([xi, eta, zeta]), 2 * torch.stack([G[1, 2], G[0, 2], G[0, 1]]))


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=20))
def test_wrap_lands_in_half_open_unit_interval_and_keeps_residue(values):
    F = torch.tensor(values, dtype=torch.float64).reshape(-1, 1).expand(-1, 3).contiguous()
    W = wrap(F)
    assert bool(((W >= 0) & (W < 1)).all())
    assert periodic_distance(W, F) < 1e-9


def test_wrap_of_tiny_negative_is_zero_not_one():
    assert wrap(torch.tensor([[-1e-20, 0.0, 1.0]])).tolist() == [[0.0, 0.0, 0.0]]


@given(unimodular_matrices(2))
def test_integer_inverse_is_exact(M):
    assert torch.equal(integer_inverse(M) @ M, torch.eye(3, dtype=torch.int64))


def test_functions_broadcast_and_keep_dtype():
    L = torch.randn(4, 5, 3, 3, dtype=torch.float32)
    F = torch.rand(4, 5, 7, 3, dtype=torch.float32)
    assert gram(L).shape == (4, 5, 3, 3) and gram(L).dtype == torch.float32
    assert volume(L, signed=True).shape == (4, 5)
    assert g6(L).shape == (4, 5, 6)
    assert to_cartesian(F, L).shape == (4, 5, 7, 3)
    assert lattice_parameters(L).shape == (4, 5, 6)


def test_gram_is_differentiable():
    L = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gram(x), (L,))
    assert torch.autograd.gradcheck(lambda x: volume(x + 3 * torch.eye(3, dtype=x.dtype)), (L,))


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 2, 2)])
def test_bad_shapes_raise_value_error_naming_shape(bad):
    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 3, 3\)"):
        gram(bad)


def test_integer_dtype_lattice_raises_value_error():
    with pytest.raises(ValueError, match="floating dtype"):
        volume(torch.eye(3, dtype=torch.int64))


def test_non_unimodular_basis_change_raises():
    with pytest.raises(ValueError, match="unimodular"):
        apply_basis_change(torch.eye(3), torch.zeros(1, 3), 2 * torch.eye(3, dtype=torch.int64))


def test_integer_inverse_refuses_to_overflow_int64():
    a = 2**40
    # Unimodular (upper unitriangular), but its inverse holds a * a = 2^80, past int64.
    M = torch.tensor([[1, a, 0], [0, 1, a], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"largest entry .*2\^80.* int64 limit 2\^63 - 1"):
        integer_inverse(M)
    with pytest.raises(ValueError, match=r"int64 limit"):
        apply_basis_change(torch.eye(3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64), M)
    # Products past int64 whose exact inverse still fits: returned, and exact.
    N = torch.tensor([[[a + 1, a, 0], [a, a - 1, 0], [0, 0, 1]], [[1, 2, 0], [0, 1, 0], [0, 0, 1]]])
    expected = torch.tensor([[[1 - a, a, 0], [a, -a - 1, 0], [0, 0, 1]], [[1, -2, 0], [0, 1, 0], [0, 0, 1]]])
    assert torch.equal(integer_inverse(N), expected)
    # det = 2^64 + 1 wraps to 1 in int64: not unimodular, however the products wrap.
    b = 2**32
    with pytest.raises(ValueError, match="unimodular"):
        integer_inverse(torch.tensor([[b, 1, 0], [-1, b, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match=r"int64"):
        integer_inverse(torch.tensor([[1e30, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64))


# ---------------------------------------------------------------------------- random rotations


def test_random_rotations_are_orthogonal_and_reproducible():
    Q = random_rotations(500, generator=torch.Generator().manual_seed(0))
    assert Q.shape == (500, 3, 3) and Q.dtype == torch.float64
    torch.testing.assert_close(Q @ Q.mT, torch.eye(3, dtype=torch.float64).expand(500, 3, 3), atol=1e-12, rtol=0)
    det = torch.linalg.det(Q)
    torch.testing.assert_close(det.abs(), torch.ones(500, dtype=torch.float64), atol=1e-12, rtol=0)
    # O(3): reflections half of the time.
    assert 200 < int((det < 0).sum()) < 300
    assert torch.equal(Q, random_rotations(500, generator=torch.Generator().manual_seed(0)))
    proper = random_rotations(500, generator=torch.Generator().manual_seed(0), proper=True)
    assert bool((torch.linalg.det(proper) > 0).all())
    # Uniform (Haar): the mean of each entry vanishes, the mean square is 1/3.
    assert float(proper.mean(0).abs().max()) < 0.1
    assert float((proper.pow(2).mean(0) - 1 / 3).abs().max()) < 0.05


def test_random_rotations_dtype_device_and_shape():
    Q = random_rotations((2, 4), dtype=torch.float32, proper=True)
    assert Q.shape == (2, 4, 3, 3) and Q.dtype == torch.float32
    assert random_rotations(0).shape == (0, 3, 3)
    assert random_rotations(3, device="meta").device.type == "meta"
    # The same seed gives the same rotations on every device: drawn on the generator's device, then moved.
    a = random_rotations(3, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    b = random_rotations(3, generator=torch.Generator().manual_seed(1)).float()
    assert torch.equal(a, b)


@pytest.mark.parametrize("call, error, match", [
    (lambda: random_rotations(2.0), TypeError, "shape: expected an int >= 0, got float"),
    (lambda: random_rotations(True), TypeError, "shape: expected an int"),
    (lambda: random_rotations(-1), ValueError, "shape: expected an int >= 0, got -1"),
    (lambda: random_rotations(2, dtype=torch.int64), ValueError, "dtype: expected a floating dtype"),
    (lambda: random_rotations(2, dtype="float64"), TypeError, "dtype: expected a torch.dtype"),
    (lambda: random_rotations(2, proper=1), TypeError, "proper: expected a bool"),
    (lambda: random_rotations(2, generator=0), TypeError, "generator: expected a torch.Generator"),
])
def test_random_rotations_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- inputs and outputs


def test_numpy_and_lists_in_tensors_out():
    L = np.diag([3.0, 4.0, 5.0])
    F = np.array([[0.25, 0.5, -0.25]])
    for out in (gram(L), volume(L), g6(L), wrap(F), to_cartesian(F, L), to_fractional(F, L), lattice_parameters(L),
                apply_basis_change(L, F, np.eye(3, dtype=np.int64))[0], integer_inverse(np.eye(3, dtype=np.int64))):
        assert isinstance(out, torch.Tensor)
    assert g6(L).dtype == torch.float64 and g6(L).tolist() == [9.0, 16.0, 25.0, 0.0, 0.0, 0.0]
    assert volume(L.tolist()).item() == pytest.approx(60.0)  # a list: the default dtype
    assert volume(L.tolist()).dtype == torch.get_default_dtype()
    # Numbers give the default dtype; the first tensor or array argument sets it otherwise.
    assert lattice_from_parameters(np.float64(3.0), 4.0, 5.0, 90.0, 90.0, 120.0).dtype == torch.get_default_dtype()
    assert lattice_from_parameters(3.0, 4.0, 5.0, 90.0, 90.0, np.array(120.0)).dtype == torch.float64
    assert lattice_from_parameters(np.array([3.0]), 4.0, torch.tensor(5.0), 90, 90, 120).dtype == torch.float64
    assert torch.equal(integer_inverse([[1, 1, 0], [0, 1, 0], [0, 0, 1]]), torch.tensor([[1, -1, 0], [0, 1, 0], [0, 0, 1]]))


@pytest.mark.parametrize("call, match", [
    (lambda: gram("L"), "lattice: expected a torch.Tensor"),
    (lambda: gram(None), "lattice: expected .* got None"),
    (lambda: wrap(True), "frac: expected .* got bool"),
    (lambda: volume(torch.eye(3), signed="yes"), "signed: expected a bool"),
    (lambda: integer_inverse("M"), "M: expected"),
    (lambda: apply_basis_change(torch.eye(3), torch.zeros(1, 3), None), "M: expected"),
    (lambda: lattice_from_parameters(3.0, 4.0, None, 90, 90, 90), "c: expected"),
    (lambda: gram([["a", "b", "c"]] * 3), "lattice: expected"),
])
def test_wrong_python_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("call, match", [
    (lambda: to_cartesian(torch.zeros(2, 3), torch.eye(3, dtype=torch.float64)),
     "frac: expected the lattice's dtype torch.float64, got torch.float32"),
    (lambda: to_fractional(torch.zeros(2, 3, dtype=torch.float64), torch.eye(3)), "cartesian: expected the lattice's dtype"),
    (lambda: gram(np.eye(3).astype(object)), "floating dtype"),
    (lambda: gram([[1.0, 2.0], [3.0]]), "regular shape"),
    (lambda: integer_inverse(torch.eye(3, dtype=torch.bool)), "M: expected an integer"),
    (lambda: lattice_from_parameters(True and torch.tensor([True]), 4.0, 5.0, 90, 90, 90), "a: expected real numbers"),
])
def test_wrong_values_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_integer_inverse_on_meta_skips_the_checks_and_keeps_shapes():
    M = torch.zeros(4, 3, 3, dtype=torch.int64, device="meta")  # would not be unimodular: not checked
    inv = integer_inverse(M)
    assert inv.shape == (4, 3, 3) and inv.dtype == torch.int64 and inv.device.type == "meta"
