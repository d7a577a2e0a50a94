"""Tests for the peer-reducer adapters of soft_niggli.baselines.reducers (rows = lattice vectors).

Tool availability is probed with importlib.util.find_spec, NOT by importing:
importing cctbx in a process that already imported torch (tests/conftest.py
does) segfaults, which is exactly why the adapters run cctbx in a worker.
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest

from soft_niggli.baselines.reducers import PEER_REDUCERS, PeerResult, reduce_with, shutdown_workers
from soft_niggli.testing.reduction_check import classify

# spglib 2.x warns about its legacy error handling on every call
pytestmark = pytest.mark.filterwarnings("ignore:Set OLD_ERROR_HANDLING:DeprecationWarning")

_MODULE = {"spglib": "spglib", "pymatgen": "pymatgen", "ase": "ase", "cctbx": "cctbx", "moyopy": "moyopy"}


def _need(tool: str) -> None:
    if importlib.util.find_spec(_MODULE[tool]) is None:
        pytest.skip(f"{tool} not installed")


def _cells():
    cubic = 4.0 * np.eye(3)
    rng = np.random.default_rng(3)
    while True:  # a random cell with a healthy volume, then a scrambled basis of it
        L = rng.normal(size=(3, 3)) * 4.0
        if abs(np.linalg.det(L)) > 0.3 * np.linalg.norm(L, axis=1).prod():
            break
    U = np.array([[1, 2, 0], [0, 1, -1], [1, 3, -2]])  # det = 1
    return np.stack([cubic, U @ L])


@pytest.mark.parametrize("tool", PEER_REDUCERS)
def test_adapter_ok_with_transform(tool):
    _need(tool)
    cells = _cells()
    results = reduce_with(tool, cells, timeout=30.0)
    assert len(results) == len(cells)
    for L, r in zip(cells, results):
        assert isinstance(r, PeerResult)
        assert r.outcome == "ok", r
        assert r.lattice.shape == (3, 3) and r.transform.dtype == np.int64
        assert round(abs(np.linalg.det(r.transform))) == 1
        np.testing.assert_allclose(r.transform @ L, r.lattice, atol=1e-9 * np.abs(L).max())
        assert classify(L, r.lattice) == "reduced"
        assert r.seconds >= 0


def test_unknown_tool_and_bad_shape():
    with pytest.raises(ValueError) as exc:
        reduce_with("nope", np.eye(3)[None])
    for name in PEER_REDUCERS:
        assert name in str(exc.value)
    with pytest.raises(ValueError, match=r"lattices: expected shape \(\.\.\., 3, 3\), got \(3, 4\)"):
        reduce_with("spglib", np.ones((3, 4)))
    assert reduce_with("spglib", np.zeros((0, 3, 3))) == []
    # One cell is a list of one; a stack is listed over its flattened cells.
    (one,) = reduce_with("spglib", 2 * np.eye(3))
    stack = reduce_with("spglib", 2 * np.eye(3) * np.arange(1.0, 7.0)[:, None, None].reshape(2, 3, 1, 1))
    assert len(stack) == 6 and np.array_equal(stack[0].lattice, one.lattice)
    assert [float(np.abs(r.lattice).max()) for r in stack] == [2.0 * k for k in range(1, 7)]


def test_tool_exception_is_error_not_raised():
    _need("pymatgen")
    # pymatgen fails on a zero cell (ValueError inside); nothing must escape.
    (r,) = reduce_with("pymatgen", np.zeros((1, 3, 3)), timeout=30.0)
    assert r.outcome == "error" and r.lattice is None and r.message


def _mixed_scale_cell() -> np.ndarray:
    """Lengths 1e-4, 1 and 1e4: pymatgen's find_mapping enumerates lattice points in a huge sphere and
    moyopy's reduction loops; both run for minutes."""
    v = np.random.default_rng(0).normal(size=(3, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * np.array([1e-4, 1.0, 1e4])[:, None]


@pytest.mark.parametrize("tool", ["pymatgen", "moyopy"])
def test_a_hanging_call_times_out_and_a_fresh_worker_takes_over(tool):
    _need(tool)
    reduce_with(tool, 4.0 * np.eye(3)[None], timeout=30.0)  # warm the worker up
    t0 = time.monotonic()
    r_hang, r_next = reduce_with(tool, np.stack([_mixed_scale_cell(), 4.0 * np.eye(3)]), timeout=1.0)
    wall = time.monotonic() - t0
    assert r_hang.outcome == "timeout", r_hang
    assert 0.9 <= r_hang.seconds < 3.0
    assert r_next.outcome == "ok"            # a fresh worker took over
    assert wall < 15.0


def test_moyopy_refusing_a_singular_cell_is_an_error_not_raised():
    _need("moyopy")
    (r,) = reduce_with("moyopy", np.zeros((1, 3, 3)), timeout=30.0)
    assert r.outcome == "error" and r.lattice is None and "ValueError" in r.message


def test_moyopy_transform_is_its_transformation_transposed():
    _need("moyopy")
    # moyopy returns basis = transformation.T @ L (column convention); the adapter reports T = transformation.T.
    L = np.array([[4.0, 0, 0], [4, 4, 0], [1, 2, 5]])
    (r,) = reduce_with("moyopy", L[None], timeout=30.0)
    assert r.outcome == "ok" and r.message == ""
    np.testing.assert_allclose(r.transform @ L, r.lattice, atol=1e-12)
    assert classify(L, r.lattice) == "reduced"
    # A left-handed input: moyopy returns a right-handed basis and a transform of determinant -1.
    (r,) = reduce_with("moyopy", -L[None], timeout=30.0)
    assert round(np.linalg.det(r.transform)) == -1 and np.linalg.det(r.lattice) > 0
    np.testing.assert_allclose(r.transform @ -L, r.lattice, atol=1e-12)


def test_shutdown_leaves_no_worker():
    _need("ase")
    from soft_niggli.baselines import reducers

    reduce_with("ase", 4.0 * np.eye(3)[None], timeout=30.0)
    pids = [w.proc.pid for w in reducers._WORKERS.values() if w.proc is not None]
    assert pids
    shutdown_workers()
    assert not reducers._WORKERS
    for pid in pids:  # reaped: the pid no longer exists as our child
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


# ------------------------------------------------------------------------------ the spglib adapter

def test_spglib_adapter_keeps_the_batch_shape_and_flags_each_failure():
    from soft_niggli._spglib import spglib_niggli_reduce

    cells = np.stack([4.0 * np.eye(3), _mixed_scale_cell(), _cells()[1], 3.0 * np.eye(3)]).reshape(2, 2, 3, 3)
    result = spglib_niggli_reduce(cells)
    assert result.lattice.shape == (2, 2, 3, 3) and result.ok.shape == (2, 2)
    assert result.ok.tolist() == [[True, False], [True, True]]  # spglib gives up on the mixed-scale cell
    assert np.isnan(result.lattice[0, 1]).all()
    for L, out in ((cells[0, 0], result.lattice[0, 0]), (cells[1, 0], result.lattice[1, 0])):
        assert classify(L, out) == "reduced"
    one = spglib_niggli_reduce(cells[1, 0])
    assert one.lattice.shape == (3, 3) and one.ok.shape == () and bool(one.ok)
    np.testing.assert_array_equal(one.lattice, result.lattice[1, 0])


@pytest.mark.parametrize("old_error_handling", [True, False])
def test_spglib_adapter_reads_both_error_conventions_and_lets_no_warning_out(monkeypatch, old_error_handling):
    import warnings

    import spglib

    from soft_niggli._spglib import spglib_niggli_reduce

    # spglib returns None and warns on every call, or (OLD_ERROR_HANDLING off, the default from 3.0) raises.
    monkeypatch.delenv("SPGLIB_OLD_ERROR_HANDLING", raising=False)
    monkeypatch.setattr(spglib.error, "OLD_ERROR_HANDLING", old_error_handling)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = spglib_niggli_reduce(np.stack([_mixed_scale_cell(), 4.0 * np.eye(3)]))
    assert result.ok.tolist() == [False, True]
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)], [str(w.message) for w in caught]


def test_spglib_adapter_names_a_bad_shape_or_tolerance():
    from soft_niggli._spglib import spglib_niggli_reduce

    with pytest.raises(ValueError, match=r"expected shape \(\.\.\., 3, 3\), got \(3, 2\)"):
        spglib_niggli_reduce(np.ones((3, 2)))
    with pytest.raises(ValueError, match="eps: expected a finite number > 0"):
        spglib_niggli_reduce(np.eye(3), eps=0.0)
