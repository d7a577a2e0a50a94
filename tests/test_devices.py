"""Every public function runs on the input's device and returns tensors there.

Two devices: ``meta`` (shapes and dtypes without values: it catches a tensor created on the CPU by
accident, cheaply, on any machine) and CUDA where available (skipped otherwise). Functions that need
values (the reducer, a loop over the cells on the host; the metrics, which run spglib and pymatgen;
indexing a batch, whose atom ranges are values) raise a clear ``ValueError`` on ``meta``, and on CUDA
compute on the host and return on the input's device.
"""

from __future__ import annotations

import pytest
import torch

from soft_niggli import CrystalBatch, get_loss, is_niggli_reduced, niggli_reduce, random_unimodular
from soft_niggli.crystal import atom_slots
from soft_niggli.lattice import (apply_basis_change, g6, gram, integer_inverse, lattice_from_parameters,
                                 lattice_parameters, random_rotations, to_cartesian, to_fractional, volume, wrap)
from soft_niggli.testing import assert_gl3z_invariant

DEVICES = [
    pytest.param("meta", id="meta"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def _lattices(B=4):
    gen = torch.Generator().manual_seed(0)
    return 4 * torch.eye(3, dtype=torch.float64) + torch.rand(B, 3, 3, generator=gen, dtype=torch.float64)


def _batch():
    gen = torch.Generator().manual_seed(1)
    return CrystalBatch(_lattices(3), torch.rand(6, 3, generator=gen, dtype=torch.float64), [1, 2, 3],
                        [1, 8, 8, 11, 17, 17])


def _check(out, cpu_out, device):
    """``out`` lives on ``device`` with ``cpu_out``'s shape and dtype, and (with values) its values."""
    assert isinstance(out, torch.Tensor) and out.device.type == device
    assert out.shape == cpu_out.shape and out.dtype == cpu_out.dtype
    if device != "meta":
        torch.testing.assert_close(out.cpu(), cpu_out)


# ---------------------------------------------------------------------------- lattice


@pytest.mark.parametrize("device", DEVICES)
def test_lattice_functions_keep_the_device(device):
    L = _lattices()
    F = torch.rand(4, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3 - 1
    M = random_unimodular((4,), generator=torch.Generator().manual_seed(3))
    params = lattice_parameters(L).unbind(-1)
    calls = {
        "gram": (gram, (L,)),
        "volume": (volume, (L,)),
        "g6": (g6, (L,)),
        "wrap": (wrap, (F,)),
        "to_cartesian": (to_cartesian, (F, L)),
        "to_fractional": (to_fractional, (F, L)),
        "lattice_parameters": (lattice_parameters, (L,)),
        "lattice_from_parameters": (lattice_from_parameters, params),
        "integer_inverse": (integer_inverse, (M,)),
        "apply_basis_change[0]": (lambda *a: apply_basis_change(*a)[0], (L, F, M)),
        "apply_basis_change[1]": (lambda *a: apply_basis_change(*a)[1], (L, F, M)),
    }
    for name, (fn, args) in calls.items():
        out = fn(*[a.to(device) for a in args])
        try:
            _check(out, fn(*args), device)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from err
    Q = random_rotations(4, generator=torch.Generator().manual_seed(4), device=device, dtype=torch.float32)
    _check(Q, random_rotations(4, generator=torch.Generator().manual_seed(4), dtype=torch.float32), device)


# ---------------------------------------------------------------------------- CrystalBatch


@pytest.mark.parametrize("device", DEVICES)
def test_crystal_batch_builds_and_moves_on_the_device(device):
    cpu = _batch()
    for cb in (cpu.to(device),
               CrystalBatch(cpu.lattice.to(device), cpu.frac.to(device), [1, 2, 3], [1, 8, 8, 11, 17, 17]),
               CrystalBatch.from_flat(cpu.lattice.to(device), cpu.frac.to(device), cpu.batch.to(device),
                                      cpu.species.to(device))):
        assert cb.device.type == device
        for t in (cb.lattice, cb.frac, cb.num_atoms, cb.species, cb.batch, cb._ptr):
            assert t.device.type == device
        _check(cb.batch, cpu.batch, device)
        _check(cb.num_atoms, cpu.num_atoms, device)
        _check(cb.cartesian(), cpu.cartesian(), device)
        _check(cb.atom_slots, cpu.atom_slots, device)
        _check(atom_slots(cb.num_atoms, cb.batch), cpu.atom_slots, device)
        M = random_unimodular((3,), generator=torch.Generator().manual_seed(5))
        moved = cb.apply_basis_change(M.to(device))
        _check(moved.lattice, cpu.apply_basis_change(M).lattice, device)
        _check(moved.frac, cpu.apply_basis_change(M).frac, device)
        _check(cb.to(torch.float32).lattice, cpu.lattice.float(), device)
        if device != "meta":  # a meta tensor has no values to copy
            assert cb.to("cpu").device.type == "cpu"


def test_crystal_batch_needs_values_to_select_pad_or_export_on_meta():
    cb = _batch().to("meta")
    for call in (lambda: cb[0], lambda: cb[1:], lambda: cb[[0, 2]], lambda: cb.to_padded(), lambda: cb.to_structures(),
                 lambda: list(cb), lambda: atom_slots(cb.num_atoms),
                 lambda: CrystalBatch.from_padded(cb.lattice, torch.zeros(3, 2, 3, dtype=torch.float64, device="meta"),
                                                  torch.ones(3, 2, dtype=torch.bool, device="meta"))):
        with pytest.raises(ValueError, match="meta device"):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_crystal_batch_selects_and_pads_on_cuda():
    cpu = _batch()
    cb = cpu.to("cuda")
    for index in (1, slice(0, 2), [2, 0], torch.tensor([True, False, True], device="cuda")):
        picked = cb[index]
        assert picked.device.type == "cuda"
        expected = cpu[index.cpu() if isinstance(index, torch.Tensor) else index]
        torch.testing.assert_close(picked.frac.cpu(), expected.frac)
    for out, ref in zip(cb.to_padded(), cpu.to_padded()):
        _check(out, ref, "cuda")


def test_from_structures_builds_on_the_requested_device():
    pytest.importorskip("pymatgen.core")
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        cb = CrystalBatch.from_structures([s, s], device=device)
        assert cb.device.type == device and cb.species.device.type == device and cb.lattice.shape == (2, 3, 3)


# ---------------------------------------------------------------------------- reducer and metrics


def test_reducer_refuses_meta_tensors_clearly():
    for fn in (niggli_reduce, is_niggli_reduced):
        with pytest.raises(ValueError, match="meta device"):
            fn(_lattices().to("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reducer_computes_on_the_host_and_returns_on_cuda():
    L = _lattices()
    on_cpu, on_cuda = niggli_reduce(L), niggli_reduce(L.to("cuda"))
    for field in ("lattice", "transform", "status", "iterations"):
        out = getattr(on_cuda, field)
        assert out.device.type == "cuda", field
        assert torch.equal(out.cpu(), getattr(on_cpu, field)), field
    assert is_niggli_reduced(on_cuda.lattice).device.type == "cuda"


def test_metrics_refuse_meta_tensors_clearly():
    pytest.importorskip("spglib")
    from soft_niggli.metrics import lattice_error, spglib_niggli_g6, volume_error

    cb = _batch().to("meta")
    for call in (lambda: lattice_error(cb, cb), lambda: volume_error(cb.lattice, cb.lattice),
                 lambda: spglib_niggli_g6(cb.lattice)):
        with pytest.raises(ValueError, match="meta device"):
            call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_metrics_return_on_the_predictions_device():
    pytest.importorskip("pymatgen")
    from soft_niggli.metrics import lattice_error, match_structures, spglib_niggli_g6, volume_error

    cb = _batch().to("cuda")
    result = lattice_error(cb, cb)
    assert result.error.device.type == result.failed.device.type == "cuda"
    assert volume_error(cb.lattice, cb.lattice).device.type == "cuda"
    assert spglib_niggli_g6(cb.lattice).g6.device.type == "cuda"
    assert match_structures(cb, cb).matched.device.type == "cuda"


# ---------------------------------------------------------------------------- testing helpers


@pytest.mark.parametrize("device", DEVICES)
def test_assert_gl3z_invariant_runs_on_the_device(device):
    assert_gl3z_invariant(lambda b: volume(b.lattice), _batch().to(device))


# ---------------------------------------------------------------------------- losses, through the public API


@pytest.mark.parametrize("coords", ["sinkhorn", "periodic"])
@pytest.mark.parametrize("lattice_metric", ["cartesian", "gram"])
def test_mse_loss_runs_on_meta(coords, lattice_metric):
    pred, target = _batch().to("meta"), _batch().to("meta")
    result = get_loss("mse", coords=coords, lattice_metric=lattice_metric)(pred, target)
    assert result.loss.device.type == "meta" and result.per_crystal.shape == (3,)


@pytest.mark.parametrize("name", ["proxy", "softmin", "gram", "reduced-forms"])
def test_losses_that_reduce_a_cell_refuse_meta_tensors_clearly(name):
    # They run the Niggli reducer (a loop over values on the host): meta tensors have none.
    pred, target = _batch().to("meta"), _batch().to("meta")
    with pytest.raises(ValueError, match="meta device"):
        get_loss(name)(pred, target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name, options", [("mse", {"coords": "sinkhorn"}), ("proxy", {}), ("softmin", {}),
                                           ("gram", {"coords": "sinkhorn"}), ("reduced-forms", {})])
def test_every_loss_runs_on_cuda_and_matches_the_cpu(name, options):
    pred, target = _batch(), _batch()
    loss = get_loss(name, **options)
    on_cpu = loss(pred, target).per_crystal
    on_gpu = loss(pred.to("cuda"), target.to("cuda")).per_crystal
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------- the losses' terms and distances, one by one


def _term_inputs(device):
    gen = torch.Generator().manual_seed(3)
    L = _lattices(3).to(device)
    F = torch.rand(6, 3, generator=gen, dtype=torch.float64).to(device)
    batch = torch.tensor([0, 1, 1, 2, 2, 2]).to(device)
    return L, F, batch


def _term_calls():
    from soft_niggli.losses import candidates, invariants, periodic, sinkhorn, terms

    return {
        "lattice_term cartesian": lambda L, F, b: terms.lattice_term(L, 1.01 * L, "cartesian"),
        "lattice_term gram": lambda L, F, b: terms.lattice_term(L, 1.01 * L, "gram"),
        "coordinate_term periodic": lambda L, F, b: terms.coordinate_term("periodic", F, F.flip(0), b, L),
        "coordinate_term sinkhorn": lambda L, F, b: terms.coordinate_term("sinkhorn", F, F.flip(0), b, L),
        "periodic_coordinate_loss": lambda L, F, b: periodic.periodic_coordinate_loss(F, F.flip(0), b, 3),
        "best_translation": lambda L, F, b: periodic.best_translation(F - F.flip(0), b, 3),
        "sinkhorn_coordinate_loss": lambda L, F, b: sinkhorn.sinkhorn_coordinate_loss(
            F.reshape(3, 2, 3), F.flip(0).reshape(3, 2, 3), torch.ones(3, 2, dtype=torch.bool, device=F.device), L),
        "lattice_distances": lambda L, F, b: candidates.lattice_distances(L, 1.01 * L),
        "metric_distances": lambda L, F, b: candidates.metric_distances(L @ L.mT, 1.01 * L @ L.mT),
        "candidate_lattice_terms": lambda L, F, b: candidates.candidate_lattice_terms(L, 1.01 * L)[0],
        "soft_minimum": lambda L, F, b: candidates.soft_minimum(L.flatten(1), 0.1),
        "volume_term": lambda L, F, b: invariants.volume_term(L, 1.01 * L),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(_term_calls()))
def test_loss_terms_run_on_the_device_and_match_the_cpu(device, name):
    fn = _term_calls()[name]
    cpu_out = fn(*_term_inputs("cpu"))
    _check(fn(*_term_inputs(device)), cpu_out, device)


def test_theta_series_needs_the_reducer_and_refuses_meta_tensors_clearly():
    from soft_niggli.losses.invariants import theta_series

    with pytest.raises(ValueError, match="meta device"):
        theta_series(_lattices(3).to("meta"))


@pytest.mark.parametrize("name", ["canonicalize_labels", "reduced_forms", "reduce_or_identity"])
def test_canonical_bases_need_the_reducer_and_refuse_meta_tensors_clearly(name):
    from soft_niggli import canonical

    batch = _batch().to("meta")
    call = {"canonicalize_labels": lambda: canonical.canonicalize_labels(batch),
            "reduced_forms": lambda: canonical.reduced_forms(batch.lattice),
            "reduce_or_identity": lambda: canonical.reduce_or_identity(
                batch.lattice, torch.ones(3, dtype=torch.bool, device="meta"))}[name]
    with pytest.raises(ValueError, match="meta device"):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reduced_forms_and_canonical_labels_return_on_the_inputs_cuda_device():
    from soft_niggli import canonicalize_labels, reduced_forms

    batch = _batch()
    on_gpu = reduced_forms(batch.lattice.to("cuda"))
    on_cpu = reduced_forms(batch.lattice)
    assert on_gpu.lattice.device.type == "cuda" and torch.equal(on_gpu.transform.cpu(), on_cpu.transform)
    assert canonicalize_labels(batch.to("cuda")).batch.lattice.device.type == "cuda"
